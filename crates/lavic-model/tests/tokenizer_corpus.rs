//! Token ids of the recommendation prompt equal the reference tokenizer's for every validation
//! conversation of Reddit-Amazon (mojibake included). Candidate titles are taken round-robin from
//! `item2meta_valid.jsonl` with one counter over all conversations, as `generate.py` did; the
//! reference recorded sha256("id,id,...") per prompt.

mod common;

use common::*;
use lavic_model::prompt::recommendation_prompt;
use lavic_model::{LavicTokenizer, PromptCandidate};
use sha2::{Digest, Sha256};

fn jsonl(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (set LAVIC_SHARED_DATA to the shared data folder)", path.display()));
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn every_validation_prompt_tokenizes_like_the_reference() {
    let data = shared_data().join("reddit-amazon");
    let titles: Vec<String> = jsonl(&data.join("item2meta_valid.jsonl"))
        .iter()
        .map(|v| v["title"].as_str().unwrap_or("").to_string())
        .collect();
    let expected = jsonl(&fixtures().join("reference/prompt_hashes.jsonl"));
    let tok = LavicTokenizer::from_file(&fixtures().join("tokenizer/tokenizer.json")).unwrap();
    let mut k = 0usize;
    let mut checked = 0usize;
    let mut expected_iter = expected.iter();
    for category in ["all_beauty", "amazon_fashion", "amazon_home"] {
        for (i, conv) in jsonl(&data.join(category).join("valid.jsonl")).iter().enumerate() {
            let ids: Vec<&str> = conv["candidates_st"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
            let cands: Vec<PromptCandidate> = ids
                .iter()
                .map(|id| {
                    let title = &titles[k % titles.len()];
                    k += 1;
                    PromptCandidate { id, title }
                })
                .collect();
            let prompt = recommendation_prompt(conv["context"].as_str().unwrap(), &cands);
            let tokens = tok.tokenize_prompt(&prompt).unwrap();
            assert_eq!(tokens.image_slots.len(), cands.len());
            let joined: Vec<String> = tokens.ids.iter().map(u32::to_string).collect();
            let digest = hex(&Sha256::digest(joined.join(",").as_bytes()));
            let want = expected_iter.next().expect("more prompts than the reference recorded");
            assert_eq!((want["category"].as_str().unwrap(), want["index"].as_u64().unwrap() as usize), (category, i));
            assert_eq!(tokens.ids.len() as u64, want["n_tokens"].as_u64().unwrap(), "{category} #{i}: token count");
            assert_eq!(digest, want["sha256"].as_str().unwrap(), "{category} #{i}: token ids differ");
            checked += 1;
        }
    }
    assert_eq!(checked, expected.len());
    assert_eq!(checked, 758 + 797 + 368);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

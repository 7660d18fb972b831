//! `lavic prompt` prints, byte for byte, the prompt the reference's builder makes for the fixture
//! conversations (`tests/fixtures/eval/reference_prompts.jsonl`, recorded by
//! `tests/fixtures/generate.py eval-prompts` with the reference's string building and titles from
//! `eval/items.jsonl`, `No Title` for the others), and the same token count (BOS included) as the
//! reference tokenizer stack.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const LAVIC: &str = env!("CARGO_BIN_EXE_lavic");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn jsonl(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn prompts_equal_the_reference_builder_for_both_candidate_lists() {
    let f = fixtures();
    let reference = jsonl(&std::fs::read_to_string(f.join("eval/reference_prompts.jsonl")).unwrap());
    for list in ["candidates_st", "candidates_gpt_large"] {
        let out = Command::new(LAVIC)
            .args(["prompt", "--data", f.join("eval/conversations.jsonl").to_str().unwrap()])
            .args(["--items", f.join("eval/items.jsonl").to_str().unwrap(), "--candidates", list])
            .args(["--tokenizer", f.join("tokenizer/tokenizer.json").to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let ours = jsonl(&String::from_utf8(out.stdout).unwrap());
        let expected: Vec<&Value> = reference.iter().filter(|r| r["candidates"] == list).collect();
        assert_eq!(ours.len(), 6);
        assert_eq!(ours.len(), expected.len());
        for (a, b) in ours.iter().zip(expected) {
            assert_eq!(a["index"], b["index"]);
            assert_eq!(a["candidate_list"], list);
            assert_eq!(a["prompt"], b["prompt"], "{list} #{}: prompt text differs from the reference", a["index"]);
            assert_eq!(a["prompt_tokens"], b["n_tokens"], "{list} #{}", a["index"]);
            let k = a["candidate_ids"].as_array().unwrap().len();
            assert_eq!(a["image_tokens"], 5 * k);
        }
    }
}

#[test]
fn without_items_every_title_is_no_title_and_limit_stops_early() {
    let f = fixtures();
    let out = Command::new(LAVIC)
        .args(["prompt", "--data", f.join("eval/conversations.jsonl").to_str().unwrap(), "--limit", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = jsonl(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(lines.len(), 2);
    let p = lines[1]["prompt"].as_str().unwrap();
    assert!(p.contains("B07NRD1BPJ: No Title\n<ItemImageEmb1><ItemImageEmb2><ItemImageEmb3><ItemImageEmb4><ItemImageEmb5>\n"), "{p}");
    assert!(p.ends_with("<ItemImageEmb5>\n\nAssistant:"));
    assert_eq!(lines[1]["fallback_ids"].as_array().unwrap().len(), 4);
    assert!(lines[1].get("prompt_tokens").is_none(), "token counts need --tokenizer");
}

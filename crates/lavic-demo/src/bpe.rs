//! A small, deterministic BPE vocabulary learned from the world's text, written as a
//! `tokenizer.json` in the llava-hf **legacy** structure that lavic-model loads (see
//! `tests/fixtures/README.md`, "Tokenizer"): normalizer `Prepend("▁")` + `Replace(" "→"▁")`, no
//! pre-tokenizer, BPE with `byte_fallback` (all 256 `<0xNN>` pieces, ids 3..258, as
//! SentencePiece's Llama vocabulary), the same decoder and `<s> $A` post-processor; `<unk>`,
//! `<s>`, `</s>` are ids 0..2 and `<image>`, `<pad>` follow the vocabulary as added tokens.
//! Merges are learned inside "▁"-prefixed words only, as SentencePiece's are, so encoding without
//! a pre-tokenizer never merges across a space; and inside runs of letters or of punctuation, with
//! every digit and line break a piece of its own (see [`words`]).

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

/// A learned vocabulary: pieces in id order (specials and bytes first) and merges in rank order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    /// Pieces; the index is the id.
    pub pieces: Vec<String>,
    /// Merges, highest priority first.
    pub merges: Vec<(String, String)>,
}

impl Vocab {
    /// Pieces plus the added `<image>` and `<pad>` (ids `pieces.len()` and `+ 1`).
    pub fn len_with_added(&self) -> usize {
        self.pieces.len() + 2
    }
}

/// Character classes whose runs merges never cross (SentencePiece's `split_by_unicode_script`
/// and Llama/Mistral's `split_digits`, with line breaks kept apart as their byte pieces are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Letters (any script) and everything not listed below.
    Letter,
    /// Punctuation and symbols.
    Punct,
    /// A single digit or control character (never merged).
    Alone,
}

fn class(c: char) -> Class {
    if c.is_ascii_digit() || c.is_control() {
        Class::Alone
    } else if c.is_alphabetic() || c == '▁' {
        Class::Letter
    } else {
        Class::Punct
    }
}

/// Merge units of `text` as SentencePiece sees them: split on spaces, each word prefixed with
/// "▁", then cut into runs of one [`Class`] (digits and line breaks one character each); the
/// "▁" stays with the word's first run unless that run is a digit or a line break. So an id like
/// `BDEMO00123` gets the same pieces after `\n` as after `Assistant:` (`BDEMO`, then one piece
/// per digit), as in Mistral's vocabulary, and a model can copy it token by token.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(' ').filter(|w| !w.is_empty()).flat_map(|w| {
        let mut runs: Vec<String> = vec!["▁".to_string()];
        let mut prev: Option<Class> = None;
        for c in w.chars() {
            let k = class(c);
            // The first run takes the "▁"; a digit or line break leaves it alone.
            let joins = k != Class::Alone && prev.is_none_or(|p| p == k);
            match runs.last_mut() {
                Some(run) if joins => run.push(c),
                _ => runs.push(c.to_string()),
            }
            prev = Some(k);
        }
        runs
    })
}

/// Learns up to `size` pieces from `texts`: the 259 specials and bytes, every character seen at
/// least twice, then merges of the most frequent adjacent pair until `size` is reached or no
/// pair occurs twice. Ties between pair counts go to the lexicographically smallest pair, so the
/// same texts give the same vocabulary.
pub fn learn(texts: &[String], size: usize) -> Vocab {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in texts {
        for w in words(t) {
            *counts.entry(w).or_default() += 1;
        }
    }
    let mut pieces: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    pieces.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    // Characters by frequency (ties by code point); rare ones are left to byte fallback.
    let mut chars: BTreeMap<char, usize> = BTreeMap::new();
    for (w, n) in &counts {
        for c in w.chars() {
            *chars.entry(c).or_default() += n;
        }
    }
    let mut alphabet: Vec<(char, usize)> = chars.into_iter().filter(|(_, n)| *n >= 2).collect();
    alphabet.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut id: HashMap<String, u32> = HashMap::new();
    for (c, _) in &alphabet {
        pieces.push(c.to_string());
    }
    for (i, p) in pieces.iter().enumerate() {
        id.insert(p.clone(), i as u32);
    }
    // Words as symbol ids; a character outside the alphabet blocks merges across it.
    let unknown = u32::MAX;
    let mut corpus: Vec<(Vec<u32>, usize)> =
        counts.iter().map(|(w, n)| (w.chars().map(|c| id.get(&c.to_string()).copied().unwrap_or(unknown)).collect(), *n)).collect();
    let mut merges = Vec::new();
    while pieces.len() < size {
        let mut pairs: HashMap<(u32, u32), usize> = HashMap::new();
        for (syms, n) in &corpus {
            for w in syms.windows(2) {
                if w[0] != unknown && w[1] != unknown {
                    *pairs.entry((w[0], w[1])).or_default() += n;
                }
            }
        }
        let best = pairs.iter().filter(|(_, n)| **n >= 2).max_by(|(pa, na), (pb, nb)| {
            na.cmp(nb).then_with(|| {
                let key = |p: &(u32, u32)| (pieces[p.0 as usize].clone(), pieces[p.1 as usize].clone());
                key(pb).cmp(&key(pa))
            })
        });
        let Some((&(a, b), _)) = best else { break };
        let merged = format!("{}{}", pieces[a as usize], pieces[b as usize]);
        let new_id = match id.get(&merged) {
            Some(i) => *i,
            None => {
                pieces.push(merged.clone());
                id.insert(merged, pieces.len() as u32 - 1);
                pieces.len() as u32 - 1
            }
        };
        merges.push((pieces[a as usize].clone(), pieces[b as usize].clone()));
        for (syms, _) in &mut corpus {
            let mut out = Vec::with_capacity(syms.len());
            let mut i = 0;
            while i < syms.len() {
                if i + 1 < syms.len() && syms[i] == a && syms[i + 1] == b {
                    out.push(new_id);
                    i += 2;
                } else {
                    out.push(syms[i]);
                    i += 1;
                }
            }
            *syms = out;
        }
    }
    Vocab { pieces, merges }
}

fn added(id: usize, content: &str) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})
}

/// `tokenizer.json` of a vocabulary, in the llava-hf legacy structure.
pub fn tokenizer_json(v: &Vocab) -> Value {
    let n = v.pieces.len();
    let vocab: serde_json::Map<String, Value> = v.pieces.iter().enumerate().map(|(i, p)| (p.clone(), json!(i))).collect();
    let merges: Vec<Value> = v.merges.iter().map(|(a, b)| json!([a, b])).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>"), added(n, "<image>"), added(n + 1, "<pad>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        ]},
        "pre_tokenizer": null,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": "<unk>",
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_frequent_words_deterministically() {
        let texts: Vec<String> = (0..20).map(|i| format!("a red bag {i} with a red strap:\nB00{i}: 10 inch")).collect();
        let v = learn(&texts, 360);
        assert_eq!(v, learn(&texts, 360));
        assert_eq!(&v.pieces[..3], ["<unk>", "<s>", "</s>"]);
        assert_eq!(v.pieces[3], "<0x00>");
        assert_eq!(v.pieces[258], "<0xFF>");
        assert!(v.pieces.iter().any(|p| p == "▁red") && v.pieces.iter().any(|p| p == "▁strap"), "{:?}", &v.pieces[259..]);
        // No merge crosses a word boundary: "▁" only ever starts a piece.
        assert!(v.pieces.iter().all(|p| p.chars().skip(1).all(|c| c != '▁')));
        let mut seen = std::collections::HashSet::new();
        assert!(v.pieces.iter().all(|p| seen.insert(p)), "duplicate piece");
        // Digits and line breaks stay single characters; no piece mixes letters and punctuation.
        assert!(v.pieces[259..].iter().all(|p| p.chars().count() == 1 || !p.chars().any(|c| c.is_ascii_digit() || c == '\n')));
        let j = tokenizer_json(&v);
        assert_eq!(j["added_tokens"][3]["id"], v.pieces.len());
        assert_eq!(j["model"]["merges"].as_array().unwrap().len(), v.merges.len());
    }
}

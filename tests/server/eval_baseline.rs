//! `lavic eval --baseline` (issue 15's reference rows) on hand-made conversations, with no model:
//! `title-similarity` picks the item whose title the dialogue names; `random` lands near
//! 1 / candidates over many conversations and repeats with its seed; both answer valid (VR 1)
//! and the summary names the baseline.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

const LAVIC: &str = env!("CARGO_BIN_EXE_lavic");

fn lavic(args: &[&str]) -> Output {
    Command::new(LAVIC).args(args).output().unwrap()
}

fn write_lines(path: &Path, rows: &[Value]) {
    std::fs::write(path, rows.iter().map(|r| r.to_string() + "\n").collect::<String>()).unwrap();
}

fn conversation(context: &str, gt: &str, candidates: &[&str]) -> Value {
    json!({"context": context, "context_items": [], "gt": "", "gt_items": [gt], "candidates_st": candidates, "candidates_gpt_large": candidates})
}

/// Runs a baseline and returns its summary and records.
fn eval(dir: &Path, data: &Path, extra: &[&str]) -> (Value, Vec<Value>) {
    let (out, summary) = (dir.join("out.jsonl"), dir.join("summary.json"));
    let mut args = vec!["eval", "--progress", "off", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend(["--summary", summary.to_str().unwrap()]);
    args.extend(extra);
    let o = lavic(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let records = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap(), records)
}

fn ratio(s: &Value, key: &str) -> (u64, u64) {
    (s[key]["count"].as_u64().unwrap(), s[key]["of"].as_u64().unwrap())
}

#[test]
fn title_similarity_picks_the_item_the_dialogue_names() {
    let dir = tempfile::tempdir().unwrap();
    let items = dir.path().join("items.jsonl");
    let titles = [
        ("B000000001", "Selkirk Vista Desk Lamp"),
        ("B000000002", "Maddox Ceramic Vase, 10 inch"),
        ("B000000003", "Aurora Travel Mug by Pellham"),
        ("B000000004", "Norvik Canvas Backpack"),
    ];
    write_lines(&items, &titles.iter().map(|(id, t)| json!({"id": id, "title": t, "image": format!("{id}.png")})).collect::<Vec<_>>());
    let all = ["B000000001", "B000000002", "B000000003", "B000000004", "B000000099"];
    let convs = [
        conversation("<submission>I want a desk lamp, maybe a Selkirk?</submission>\n", "B000000001", &all),
        conversation("<submission>Any ceramic vase around 10 inch?</submission>\n<comment>Maddox makes nice ones.</comment>\n", "B000000002", &all),
        conversation("<submission>A mug for travel.</submission>\n<comment>Pellham!</comment>\n", "B000000003", &all),
        conversation("<submission>Looking for a canvas backpack.</submission>\n", "B000000004", &all[..4]),
    ];
    let data = dir.path().join("test.jsonl");
    write_lines(&data, &convs);
    let (s, records) = eval(dir.path(), &data, &["--baseline", "title-similarity", "--items", items.to_str().unwrap()]);
    let picks: Vec<&str> = records.iter().map(|r| r["pick"].as_str().unwrap()).collect();
    assert_eq!(picks, ["B000000001", "B000000002", "B000000003", "B000000004"]);
    assert_eq!(ratio(&s, "hr1_per_pair"), (4, 4));
    assert_eq!(ratio(&s, "hr1_per_conversation"), (4, 4));
    assert_eq!(ratio(&s, "vr"), (4, 4));
    assert_eq!(ratio(&s, "candidate_recall"), (4, 4));
    // The id without an item is a fallback slot (an empty title), as for a model.
    assert_eq!((ratio(&s, "fallback_slots"), s["fallback_ids"].as_u64()), ((3, 19), Some(1)));
    assert_eq!(s["run"]["baseline"]["name"], "title-similarity");
    assert_eq!(s["run"]["baseline"]["seed"], 42);
    // Without titles there is nothing to compare: refused, naming the flag.
    let o = lavic(&["eval", "--baseline", "title-similarity", "--data", data.to_str().unwrap(), "--out", "/dev/null"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--items"));
}

#[test]
fn random_lands_near_one_in_ten_and_repeats_with_its_seed() {
    let dir = tempfile::tempdir().unwrap();
    let n = 2000;
    let convs: Vec<Value> = (0..n)
        .map(|i| {
            let cands: Vec<String> = (0..10).map(|j| format!("B{:09}", i * 10 + j)).collect();
            let refs: Vec<&str> = cands.iter().map(String::as_str).collect();
            conversation("<submission>anything</submission>\n", refs[i % 10], &refs)
        })
        .collect();
    let data = dir.path().join("many.jsonl");
    write_lines(&data, &convs);
    let (s, first) = eval(dir.path(), &data, &["--baseline", "random"]);
    let (hits, of) = ratio(&s, "hr1_per_conversation");
    assert_eq!(of, n as u64);
    // Binomial(2000, 0.1): mean 200, standard deviation ~13.4; 5 of them either side.
    assert!((133..=267).contains(&hits), "{hits} hits of {n}");
    assert_eq!(ratio(&s, "vr"), (n as u64, n as u64));
    assert_eq!(s["run"]["baseline"]["name"], "random");
    assert_eq!(s["errors"], 0);
    let picks = |r: &[Value]| r.iter().map(|v| v["pick"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let (_, again) = eval(dir.path(), &data, &["--baseline", "random"]);
    assert_eq!(picks(&first), picks(&again), "same seed, same picks");
    let (s7, other) = eval(dir.path(), &data, &["--baseline", "random", "--seed", "7"]);
    assert_ne!(picks(&first), picks(&other), "another seed, other picks");
    assert_eq!(s7["run"]["baseline"]["seed"], 7);
    // --limit takes a prefix of the same picks.
    let (_, prefix) = eval(dir.path(), &data, &["--baseline", "random", "--limit", "50"]);
    assert_eq!(picks(&prefix), picks(&first)[..50].to_vec());
}

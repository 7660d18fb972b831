//! `lavic eval` on the fixture conversations (`tests/fixtures/eval`) with a model whose greedy
//! answer is arranged to be `B07XKQ5M9Z` (lavic_model::testing): HR@1 (per pair and per
//! conversation), VR, the reference's VR and candidate recall equal a hand count, in-process and
//! against a running server; a failing conversation makes the command fail after writing it.
//!
//! The fixture, conversation by conversation (A = B07XKQ5M9Z, the arranged answer):
//!
//! | # | candidates_st         | gt_items               | answer                 | pairs | hits (default / FREE) | recall |
//! |---|-----------------------|------------------------|------------------------|-------|-----------------------|--------|
//! | 0 | X, A, Y               | A, A (a duplicate)     | A, valid               | 2     | 2 / 2                 | yes    |
//! | 1 | X, Y, A, G1           | G1, A, Z (Z no cand.)  | A, valid               | 3     | 1 / 1                 | yes    |
//! | 2 | A, X, G               | G                      | A, valid               | 1     | 0 / 0                 | yes    |
//! | 3 | X, Y, Z               | G (not a candidate)    | invalid                | 1     | 0 / 0                 | no     |
//! | 4 | X, A, Y               | G1, G2 (not cand.)     | A, valid               | 2     | 0 / 0                 | no     |
//! | 5 | G1, G2                | G1, G2 (every cand.)   | invalid                | 2     | 1 / 0                 | yes    |
//!
//! Default mode picks the best-scoring candidate when the answer is invalid: in #3 it cannot be a
//! ground truth, in #5 it must be one (whichever it is), so the counts are known either way.
//! FREE mode's pick is empty when invalid. The reference's parse finds A in #3 and #5 too (the
//! model answers A, which is not a candidate there): invalid for the reference as well.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use lavic_server::Config;
use serde_json::Value;

const LAVIC: &str = env!("CARGO_BIN_EXE_lavic");
const ANSWER: &str = "B07XKQ5M9Z";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn tokenizer() -> PathBuf {
    fixtures().join("tokenizer/tokenizer.json")
}

/// A copy of tiny-mistral whose greedy answer after `Assistant:` is ANSWER.
fn arranged(dir: &Path) -> PathBuf {
    let model = dir.join("arranged");
    lavic_model::testing::write_arranged_checkpoint(&fixtures().join("tiny-mistral"), &tokenizer(), &model, ANSWER).unwrap();
    model
}

/// Runs `lavic eval` and returns (success, stdout, summary JSON, result lines).
fn eval(dir: &Path, name: &str, extra: &[&str]) -> (bool, String, Value, Vec<Value>) {
    let out = dir.join(format!("{name}.jsonl"));
    let summary = dir.join(format!("{name}.json"));
    let mut args: Vec<String> = ["eval", "--data"].map(String::from).to_vec();
    args.push(fixtures().join("eval/conversations.jsonl").display().to_string());
    args.extend(["--out".into(), out.display().to_string(), "--summary".into(), summary.display().to_string()]);
    args.extend(["--progress".into(), "off".into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let o = Command::new(LAVIC).args(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success() || summary.exists(), "lavic eval failed: {}", String::from_utf8_lossy(&o.stderr));
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let lines = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (o.status.success(), stdout, s, lines)
}

fn model_flags(model: &Path) -> Vec<String> {
    let f = fixtures();
    vec![
        "--model".into(),
        model.display().to_string(),
        "--tokenizer".into(),
        tokenizer().display().to_string(),
        "--vision-adapter".into(),
        f.join("adapters/mistral-vision").display().to_string(),
    ]
}

fn ratio(s: &Value, key: &str) -> (u64, u64) {
    (s[key]["count"].as_u64().unwrap(), s[key]["of"].as_u64().unwrap())
}

#[test]
fn in_process_metrics_equal_the_hand_count() {
    let dir = tempfile::tempdir().unwrap();
    let model = arranged(dir.path());
    let f = fixtures();
    let mut flags = model_flags(&model);
    flags.extend(["--items".into(), f.join("eval/items.jsonl").display().to_string()]);
    flags.extend(["--images".into(), f.join("images").display().to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();

    let (ok, stdout, s, lines) = eval(dir.path(), "default", &flags);
    assert!(ok);
    assert_eq!(s["conversations"], 6);
    assert_eq!(ratio(&s, "hr1_per_pair"), (4, 11), "{s:#}");
    assert_eq!(ratio(&s, "hr1_per_conversation"), (3, 6));
    assert_eq!(ratio(&s, "vr"), (4, 6));
    assert_eq!(ratio(&s, "candidate_recall"), (4, 6));
    assert_eq!(ratio(&s, "candidate_recall_per_pair"), (7, 11));
    assert!(s["reference_vr"].is_null(), "the reference's VR is a FREE-mode figure");
    // 8 of the 18 candidate slots are not in items.jsonl; two items have no image file.
    assert_eq!(ratio(&s, "fallback_slots"), (8, 18));
    assert_eq!(s["fallback_ids"], 8);
    assert_eq!(s["run"]["missing_image_items"], 2);
    assert_eq!(s["shortened_conversations"], 0);
    assert!(s["mean_prompt_tokens"].as_f64().unwrap() > 200.0);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], i);
        let valid = ![3, 5].contains(&i);
        assert_eq!(l["valid"], valid, "conversation {i}: {l}");
        if valid {
            assert_eq!(l["pick"], ANSWER);
            assert_eq!(l["raw_answer"], ANSWER);
        } else {
            assert!(l["candidates"].as_array().unwrap().contains(&l["pick"]), "default mode always names a candidate");
        }
        assert!(l["latency_ms"].as_f64().unwrap() > 0.0 && l["error"].is_null());
    }
    assert_eq!(lines[0]["hit_pairs"], 2, "a duplicated ground truth counts twice, as in the reference");
    assert_eq!(lines[5]["hit"], true);
    assert!(stdout.contains("HR@1, reference (per ground-truth pair)      0.3636  (4 / 11 pairs)"), "{stdout}");
    assert!(stdout.contains("VR (the model's answer is a candidate)       0.6667  (4 / 6 conversations)"), "{stdout}");

    let free: Vec<&str> = flags.iter().copied().chain(["--mode", "free", "--batch", "4"]).collect();
    let (ok, _, s, lines) = eval(dir.path(), "free", &free);
    assert!(ok);
    assert_eq!(ratio(&s, "hr1_per_pair"), (3, 11), "{s:#}");
    assert_eq!(ratio(&s, "hr1_per_conversation"), (2, 6));
    assert_eq!(ratio(&s, "vr"), (4, 6));
    assert_eq!(ratio(&s, "reference_vr"), (4, 6));
    assert_eq!(ratio(&s, "reference_hr1_per_pair"), (3, 11));
    assert_eq!(ratio(&s, "candidate_recall"), (4, 6));
    for i in [3, 5] {
        assert!(lines[i]["pick"].is_null());
        assert_eq!(lines[i]["reference_parsed_id"], ANSWER, "the regex finds the answer although it is no candidate");
        assert_eq!(lines[i]["reference_valid"], false);
    }

    // --candidates switches the list; --limit stops early. Every gpt_large list has A.
    let gpt: Vec<&str> = flags.iter().copied().chain(["--candidates", "candidates_gpt_large", "--limit", "3"]).collect();
    let (_, _, s, _) = eval(dir.path(), "gpt", &gpt);
    assert_eq!(s["conversations"], 3);
    assert_eq!(ratio(&s, "vr"), (3, 3));
    assert_eq!(s["run"]["candidates"], "candidates_gpt_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_gives_the_same_answers_as_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let model = arranged(dir.path());
    let config = Config {
        model_dir: Some(model.clone()),
        tokenizer: Some(tokenizer()),
        vision_adapter: Some(fixtures().join("adapters/mistral-vision")),
        ..config()
    };
    let server = start_serving(config).await;
    let addr = server.addr.to_string();
    let d = dir.path().to_path_buf();
    let (local, remote) = tokio::task::spawn_blocking(move || {
        // No items: every candidate gets the fallback, as from the server's demo catalog.
        let flags = model_flags(&model);
        let local = eval(&d, "local", &flags.iter().map(String::as_str).collect::<Vec<_>>());
        let remote = eval(&d, "remote", &["--addr", &addr, "--concurrency", "3"]);
        (local, remote)
    })
    .await
    .unwrap();
    server.stop().await;
    let (ok, _, ls, ll) = local;
    let (rok, rstdout, rs, rl) = remote;
    assert!(ok && rok);
    assert!(rstdout.contains("gRPC"), "{rstdout}");
    for key in ["hr1_per_pair", "hr1_per_conversation", "vr", "candidate_recall", "fallback_slots"] {
        assert_eq!(ls[key], rs[key], "{key}");
    }
    assert_eq!(ratio(&rs, "fallback_slots"), (18, 18));
    assert_eq!(ratio(&rs, "hr1_per_pair"), (4, 11));
    for (a, b) in ll.iter().zip(&rl) {
        for key in ["index", "pick", "valid", "raw_answer", "hit", "prompt_tokens", "fallback_ids"] {
            assert_eq!(a[key], b[key], "conversation {}: {key}", a["index"]);
        }
    }
}

#[test]
fn a_failed_conversation_is_recorded_and_fails_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.jsonl");
    let ok = r#"{"context": "<submission>hi</submission>\n", "gt_items": ["B1"], "candidates_st": ["B1", "B2"]}"#;
    let dup = r#"{"context": "<submission>hi</submission>\n", "gt_items": ["B1"], "candidates_st": ["B1", "B1"]}"#;
    std::fs::write(&data, format!("{ok}\n{dup}\n")).unwrap();
    let f = fixtures();
    let out = dir.path().join("out.jsonl");
    let o = Command::new(LAVIC)
        .args(["eval", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--progress", "off"])
        .args(["--model", f.join("tiny-mistral").to_str().unwrap(), "--tokenizer", tokenizer().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 of 2 conversations failed"), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines[0]["error"].is_null());
    assert!(lines[1]["error"].as_str().unwrap().contains("same id tokens"), "{}", lines[1]);
    assert_eq!(lines[1]["valid"], false);
}

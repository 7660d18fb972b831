//! Issue 15: `lavic demo-world` writes a world that the existing commands read unchanged:
//! `lavic prompt` (conversations + item titles), `lavic catalog build` (items JSONL + PNG images)
//! and `lavic eval` (in-process, over the items and over the built catalog), with every ground
//! truth among the candidates and no fallback title or image; a second run into the same folder
//! is refused. `--base DIR` writes an untrained base model that `lavic eval` runs on the world.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const LAVIC: &str = env!("CARGO_BIN_EXE_lavic");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn lavic(args: &[&str]) -> Output {
    Command::new(LAVIC).args(args).env("LAVIC_LOG", "error").env_remove("LAVIC_DTYPE").env_remove("LAVIC_DEVICE").output().unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn ratio(s: &Value, key: &str) -> (u64, u64) {
    (s[key]["count"].as_u64().unwrap(), s[key]["of"].as_u64().unwrap())
}

/// A small world for the fixture's 32-pixel tile: 6 test conversations.
fn world(dir: &Path) -> PathBuf {
    let out = dir.join("world");
    let flags =
        ["--lines-per-kind", "3", "--valid-lines", "1", "--test-lines", "1", "--tile", "32", "--train", "8", "--valid", "4", "--test", "6"];
    let base = dir.join("base");
    let mut args = vec!["demo-world", "--seed", "7", "--out", out.to_str().unwrap(), "--base", base.to_str().unwrap()];
    args.extend(flags);
    let printed: Value = serde_json::from_str(ok(lavic(&args)).trim()).unwrap();
    assert_eq!(printed["summary"]["conversations"], serde_json::json!([8, 4, 6]));
    // A small world has fewer pair merges to learn than the 2000 pieces asked for.
    assert!((300..=2000).contains(&printed["base"]["pieces"].as_u64().unwrap()), "{printed}");
    let again = lavic(&args[..5]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists and is not empty"));
    out
}

#[test]
fn the_demo_world_is_read_by_prompt_catalog_build_and_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let w = world(tmp.path());
    let (f, s) = (fixtures(), |p: &Path| p.to_str().unwrap().to_string());
    let (items, images, test) = (s(&w.join("items.jsonl")), s(&w.join("images")), s(&w.join("test.jsonl")));
    let tokenizer = s(&f.join("tokenizer/tokenizer.json"));

    let prompts = ok(lavic(&["prompt", "--data", &test, "--items", &items, "--tokenizer", &tokenizer]));
    let prompts: Vec<Value> = prompts.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(prompts.len(), 6);
    for p in &prompts {
        let text = p["prompt"].as_str().unwrap();
        assert!(text.contains("<submission>") && !text.contains("No Title"), "{text}");
        assert_eq!(p["image_tokens"], 50);
    }

    let model = ["--model".to_string(), s(&f.join("tiny-mistral")), "--vision-adapter".to_string(), s(&f.join("adapters/mistral-vision"))];
    let catalog = s(&tmp.path().join("catalog"));
    let mut build = vec!["catalog", "build", "--items", &items, "--images", &images, "--out", &catalog, "--progress", "off"];
    build.extend(model.iter().map(String::as_str));
    ok(lavic(&build));

    for (from_items, source) in
        [(true, vec!["--items", items.as_str(), "--images", images.as_str()]), (false, vec!["--catalog", catalog.as_str()])]
    {
        let (out, summary) = (s(&tmp.path().join("eval.jsonl")), s(&tmp.path().join("eval.json")));
        let mut args = vec!["eval", "--data", &test, "--out", &out, "--summary", &summary, "--progress", "off", "--tokenizer", &tokenizer];
        args.extend(model.iter().map(String::as_str));
        args.extend(source);
        ok(lavic(&args));
        let sum: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
        assert_eq!(ratio(&sum, "candidate_recall"), (6, 6), "{sum:#}");
        assert_eq!((sum["conversations"].as_u64(), sum["errors"].as_u64()), (Some(6), Some(0)), "{sum:#}");
        // Default mode always picks one of the conversation's candidates (the random model's
        // own answer is rarely valid, so VR says nothing here).
        let picks = std::fs::read_to_string(&out).unwrap();
        for (line, conv) in picks.lines().zip(std::fs::read_to_string(&test).unwrap().lines()) {
            let (r, c): (Value, Value) = (serde_json::from_str(line).unwrap(), serde_json::from_str(conv).unwrap());
            assert!(c["candidates_st"].as_array().unwrap().contains(&r["pick"]), "{r}");
        }
        assert_eq!(ratio(&sum, "fallback_slots").0, 0, "{sum:#}");
        if from_items {
            assert_eq!(sum["run"]["missing_image_items"], 0, "{sum:#}");
        }
    }

    // The untrained base (its own tokenizer and vision tile) reads the world as well.
    let base = s(&tmp.path().join("base"));
    let (out, summary) = (s(&tmp.path().join("base.jsonl")), s(&tmp.path().join("base.json")));
    ok(lavic(&[
        "eval",
        "--data",
        &test,
        "--items",
        &items,
        "--images",
        &images,
        "--model",
        &base,
        "--out",
        &out,
        "--summary",
        &summary,
        "--progress",
        "off",
    ]));
    let sum: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!((sum["conversations"].as_u64(), sum["errors"].as_u64()), (Some(6), Some(0)), "{sum:#}");
    assert_eq!(ratio(&sum, "candidate_recall"), (6, 6));
}

//! Issue 15, the training smoke test: `scripts/train-demo.sh --smoke` (the script that rebuilds
//! the shipped demo, on a sliver of a small world with a few steps of each stage) runs every
//! stage with this build's `lavic` (the tower-alone phase of stage 0 reports its accuracy), and
//! stage 0 (its first question run), stage 1 (`lavic train distill`) and stage 2
//! (`lavic train recommend`) each lower their loss on fixed data (held-out stage-0 lines; the
//! validation items / conversations measured at step 0 and after the last step). The test split
//! is then evaluated in both modes and by both baselines, with a result for every conversation.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok()).collect()
}

/// Validation losses of a train command's `log.jsonl`, in checkpoint order.
fn validation_losses(log: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    json_lines(&text)
        .iter()
        .filter(|v| v["event"] == "checkpoint")
        .filter_map(|v| v["validation"]["loss"].as_f64())
        .collect()
}

#[test]
fn the_demo_training_script_smoke_run_lowers_every_stage_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = Command::new("bash")
        .arg(repo().join("scripts/train-demo.sh"))
        .args(["--smoke", "--skip-ablations"])
        .arg(&out)
        .env("LAVIC", env!("CARGO_BIN_EXE_lavic"))
        .env("LAVIC_LOG", "error")
        .env_remove("LAVIC_DTYPE")
        .env_remove("LAVIC_DEVICE")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "train-demo.sh --smoke failed\n{stdout}\n{stderr}");

    // Stage 0: two runs, each with the held-out lines' loss before and after; the first, from
    // the untrained base, lowers it.
    let events = json_lines(&stderr);
    let held: Vec<f64> =
        events.iter().filter(|v| v["event"] == "held_out_loss").map(|v| v["loss"].as_f64().unwrap()).collect();
    assert_eq!(held.len(), 4, "{stderr}");
    assert!(held[1] < held[0], "stage 0 held-out loss {} -> {}", held[0], held[1]);
    // Before them, the tower alone on the pre-training world (`--attributes`): the held-out
    // items' accuracy per attribute, before and after.
    let acc: Vec<&Value> = events.iter().filter(|v| v["event"] == "held_out_accuracy").collect();
    assert_eq!(acc.len(), 2, "{stderr}");
    assert_eq!(acc[1]["per_attribute"].as_object().unwrap().len(), 5, "{}", acc[1]);
    let described = events.iter().find(|v| v["event"] == "described").expect("no describe summary");
    assert!(described["summary"]["items"].as_u64().unwrap() > 0, "{described}");

    // Stages 1 and 2: validation loss at step 0 and after the last step.
    for stage in ["vision", "lm"] {
        let v = validation_losses(&out.join(stage).join("log.jsonl"));
        assert!(v.len() >= 2, "{stage}: {v:?}");
        assert!(v.last().unwrap() < &v[0], "{stage} validation loss did not fall: {v:?}");
    }

    // The evaluations: every test conversation answered, in both modes and by the baselines.
    let test = std::fs::read_to_string(out.join("world/test.jsonl")).unwrap().lines().count() as u64;
    for name in ["lavic-free", "lavic-default", "random", "title-similarity"] {
        let s: Value = serde_json::from_str(&std::fs::read_to_string(out.join(format!("results/{name}.json"))).unwrap()).unwrap();
        assert_eq!(s["candidate_recall"]["of"].as_u64(), Some(test), "{name}: {s}");
        assert_eq!(s["errors"].as_u64(), Some(0), "{name}: {s}");
    }
    let times = std::fs::read_to_string(out.join("times.tsv")).unwrap();
    for stage in ["world", "pretrain-world", "base-vision", "base-a", "base-b", "distill", "recommend", "eval-free", "eval-default"] {
        assert!(times.lines().any(|l| l.starts_with(&format!("{stage}\t"))), "{stage} missing from times.tsv:\n{times}");
    }
}

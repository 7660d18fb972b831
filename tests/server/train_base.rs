//! `lavic train base` (issue 15, the demo's stage 0) on a small generated world with a tiny base
//! (2 vision layers, 1 decoder layer, width 32, 32 px tiles):
//!
//! - a short run lowers the held-out loss and writes a model folder that `lavic eval` runs;
//! - `--describe` writes one line per item, each the items line with the model's text (or the
//!   generator's) and a `teacher` field, and a summary that agrees with it; `lavic train distill`
//!   reads the file unchanged;
//! - a `--state` that has reached `--steps` only saves: the same bytes as the run that wrote it;
//!   `--steps 0` trains nothing and still evaluates, saves and describes;
//! - bad input (unknown task, missing world, too few lines, a non-empty output) is a clear error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lavic_demo::base::{write_base, BaseConfig};
use lavic_demo::{generate, write, CatalogConfig, WorldConfig};
use serde_json::Value;

const LAVIC: &str = env!("CARGO_BIN_EXE_lavic");

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn lavic(args: &[String]) -> Output {
    Command::new(LAVIC).args(args).env("LAVIC_LOG", "error").env_remove("LAVIC_DEVICE").env_remove("LAVIC_DTYPE").output().unwrap()
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "lavic failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn fails(o: Output, want: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(want), "expected an error containing {want:?}, got: {err}");
}

/// The JSON lines a run printed on stderr.
fn events(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stderr).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// A small world (about 80 items) and its untrained tiny base.
fn sliver(dir: &Path) -> (PathBuf, PathBuf) {
    let mut c = WorldConfig::new(5);
    c.catalog = CatalogConfig { lines_per_kind: 3, valid_lines: 1, test_lines: 1, tile: 32 };
    c.conversations = [8, 4, 6];
    let world = generate(&c).unwrap();
    let (w, b) = (dir.join("world"), dir.join("base"));
    write(&world, &w).unwrap();
    let mut cfg = BaseConfig::demo(1);
    (cfg.vision_hidden, cfg.vision_layers, cfg.text_hidden, cfg.text_layers, cfg.text_intermediate, cfg.vocab) = (32, 2, 32, 1, 64, 500);
    let extra = vec![lavic_model::prompt::distillation_prompt(""), lavic_model::prompt::recommendation_head().to_string()];
    write_base(&world, &cfg, &extra, &b).unwrap();
    (w, b)
}

fn base_args(world: &Path, base: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["train", "base", "--world", &s(world), "--base", &s(base), "--out", &s(out)].map(String::from).to_vec();
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

/// The items line `orig` as `--describe` must write it: `description` replaced, `teacher` added.
fn expected_line(orig: &str, description: &str, teacher: &str) -> String {
    let v: Value = serde_json::from_str(orig).unwrap();
    let old = format!("\"description\":{}", serde_json::to_string(v["description"].as_str().unwrap()).unwrap());
    assert_eq!(orig.matches(&old).count(), 1, "{orig}");
    let new = format!("\"description\":{}", serde_json::to_string(description).unwrap());
    let mut line = orig.replacen(&old, &new, 1);
    line.insert_str(line.len() - 1, &format!(",\"teacher\":\"{teacher}\""));
    line
}

#[test]
fn train_base_lowers_the_held_out_loss_describes_every_item_and_its_outputs_load() {
    let tmp = tempfile::tempdir().unwrap();
    let (world, base) = sliver(tmp.path());
    let (out, desc, log, state) =
        (tmp.path().join("out"), tmp.path().join("described.jsonl"), tmp.path().join("log.jsonl"), tmp.path().join("state"));
    // `distill` lines: LaViC's stage-1 prompt, which `--describe` asks the model too.
    let flags = [
        "--tasks",
        "distill",
        "--limit",
        "10",
        "--eval",
        "2",
        "--steps",
        "120",
        "--batch",
        "8",
        "--lr",
        "1e-2",
        "--warmup",
        "0",
        "--answers",
        "2",
        "--describe",
        &s(&desc),
        "--describe-max-tokens",
        "30",
        "--describe-teacher",
        "usable",
        "--log",
        &s(&log),
        "--state",
        &s(&state),
        "--save-every",
        "50",
    ];
    let run = ok(lavic(&base_args(&world, &base, &out, &flags)));
    let ev = events(&run);
    let held = |when: &str| ev.iter().find(|v| v["event"] == "held_out_loss" && v["when"] == when).unwrap()["loss"].as_f64().unwrap();
    let (before, after) = (held("before"), held("after"));
    eprintln!("held-out loss {before:.3} -> {after:.3}");
    assert!(after < 0.85 * before, "held-out loss {before} -> {after}");
    let steps: Vec<Value> = std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(steps.len(), 120);
    assert_eq!(ev.iter().filter(|v| v["event"] == "answer").count(), 2);

    // The described items: one line per item, the items line with the new text and teacher.
    let items = std::fs::read_to_string(world.join("items.jsonl")).unwrap();
    let described = std::fs::read_to_string(&desc).unwrap();
    assert_eq!(described.lines().count(), items.lines().count());
    let (mut model, mut equal) = (0, 0);
    for (orig, line) in items.lines().zip(described.lines()) {
        let v: Value = serde_json::from_str(line).unwrap();
        let (text, teacher) = (v["description"].as_str().unwrap(), v["teacher"].as_str().unwrap());
        assert_eq!(line, expected_line(orig, text, teacher));
        let generator = serde_json::from_str::<Value>(orig).unwrap()["description"].clone();
        match teacher {
            "model" => {
                model += 1;
                equal += (v["description"] == generator) as usize;
            }
            "generator" => assert_eq!(v["description"], generator),
            t => panic!("teacher {t:?}"),
        }
    }
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(format!("{}.summary.json", desc.display())).unwrap()).unwrap();
    eprintln!("describe summary: {summary}");
    assert_eq!(summary["items"].as_u64(), Some(items.lines().count() as u64));
    assert_eq!(summary["from_model"].as_u64(), Some(model));
    assert_eq!(summary["equal_to_generator"].as_u64(), Some(equal as u64));
    let n = |k: &str| summary[k].as_u64().unwrap();
    assert_eq!(n("from_model") + n("empty") + n("no_eos"), n("items"));
    assert_eq!((n("usable"), n("not_correct")), (model, 0), "usable mode uses every usable text: {summary}");
    assert!(n("all_named") <= model);
    assert!(model > 0 && n("from_model") < n("items"), "both teachers occur: {summary}");
    for k in ["kind", "main", "secondary", "pattern", "detail"] {
        assert!(summary["named"][k].as_u64().unwrap() <= model, "{summary}");
    }
    // Some of the model's texts name the true kind (Look::named_in is tested in lavic-demo).
    assert!(summary["named"]["kind"].as_u64().unwrap() > 0, "{summary}");

    // The trained folder runs in `lavic eval`.
    let (eval_out, eval_sum) = (tmp.path().join("eval.jsonl"), tmp.path().join("eval.json"));
    let images = s(&world.join("images"));
    let mut a: Vec<String> =
        ["eval", "--progress", "off", "--data", &s(&world.join("test.jsonl")), "--items", &s(&world.join("items.jsonl"))]
            .map(String::from)
            .to_vec();
    a.extend(["--images", &images, "--model", &s(&out), "--out", &s(&eval_out), "--summary", &s(&eval_sum)].map(String::from));
    ok(lavic(&a));
    let sum: Value = serde_json::from_str(&std::fs::read_to_string(&eval_sum).unwrap()).unwrap();
    assert_eq!((sum["conversations"].as_u64(), sum["errors"].as_u64()), (Some(6), Some(0)), "{sum:#}");

    // `lavic train distill` reads the described file unchanged: every item has a description.
    let mut a: Vec<String> = ["train", "distill", "--progress", "log", "--max-steps", "1", "--batch-size", "2"].map(String::from).to_vec();
    a.extend(["--model", &s(&out), "--items", &s(&desc), "--images", &images, "--out", &s(&tmp.path().join("distill"))].map(String::from));
    let d = ok(lavic(&a));
    let data = events(&d).into_iter().find(|v| v["event"] == "data").unwrap();
    assert_eq!(data["items"].as_u64(), Some(items.lines().count() as u64), "{data}");
    assert_eq!(data["skipped_no_description"], 0);

    // A --state that has reached --steps only evaluates and saves: the same weights.
    let again = tmp.path().join("again");
    let flags = ["--tasks", "describe", "--limit", "10", "--eval", "2", "--steps", "120", "--state", &s(&state), "--answers", "0"];
    let r = ok(lavic(&base_args(&world, &base, &again, &flags)));
    assert!(events(&r).iter().any(|v| v["event"] == "resume" && v["step"] == 120));
    assert_eq!(std::fs::read(again.join("model.safetensors")).unwrap(), std::fs::read(out.join("model.safetensors")).unwrap());
}

#[test]
fn train_base_with_zero_steps_only_evaluates_saves_and_describes() {
    let tmp = tempfile::tempdir().unwrap();
    let (world, base) = sliver(tmp.path());
    let (out, desc) = (tmp.path().join("out"), tmp.path().join("d.jsonl"));
    let flags = ["--steps", "0", "--eval", "4", "--answers", "1", "--describe", &s(&desc), "--describe-max-tokens", "8"];
    let ev = events(&ok(lavic(&base_args(&world, &base, &out, &flags))));
    let losses: Vec<f64> = ev.iter().filter(|v| v["event"] == "held_out_loss").map(|v| v["loss"].as_f64().unwrap()).collect();
    assert_eq!(losses.len(), 2);
    assert_eq!(losses[0], losses[1], "no step was taken");
    assert!(!ev.iter().any(|v| v["event"] == "step"));
    assert!(out.join("model.safetensors").is_file() && out.join("config.json").is_file());
    let items = std::fs::read_to_string(world.join("items.jsonl")).unwrap().lines().count();
    assert_eq!(std::fs::read_to_string(&desc).unwrap().lines().count(), items);
    let summary = &ev.iter().find(|v| v["event"] == "described").unwrap()["summary"];
    assert_eq!(summary["items"].as_u64(), Some(items as u64));
    // The default teacher rule (`correct`): a model text is used only where it names every
    // true attribute; every other usable text is counted as not correct.
    let n = |k: &str| summary[k].as_u64().unwrap();
    assert_eq!(summary["require_correct"], true);
    assert_eq!(n("from_model"), n("all_named"), "{summary}");
    assert_eq!(n("from_model") + n("not_correct"), n("usable"), "{summary}");
    assert_eq!(n("usable") + n("empty") + n("no_eos"), n("items"), "{summary}");
    let used = std::fs::read_to_string(&desc).unwrap().lines().filter(|l| l.contains("\"teacher\":\"model\"")).count();
    assert_eq!(used as u64, n("from_model"));
}

#[test]
fn train_base_bad_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (world, base) = sliver(tmp.path());
    let out = tmp.path().join("out");
    fails(lavic(&base_args(&world, &base, &out, &["--tasks", "describe,colour"])), "invalid value 'colour' for '--tasks");
    fails(lavic(&base_args(&world, &base, &out, &["--splits", "dev"])), "invalid value 'dev' for '--splits");
    fails(lavic(&base_args(&tmp.path().join("nope"), &base, &out, &[])), "nope: no such folder");
    fails(lavic(&base_args(&base, &base, &out, &[])), "no stage0.jsonl");
    fails(lavic(&base_args(&world, &world, &out, &[])), "not a model folder");
    fails(lavic(&base_args(&world, &base, &out, &["--limit", "5", "--eval", "8"])), "5 stage-0 lines selected");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("x"), "").unwrap();
    fails(lavic(&base_args(&world, &base, &out, &[])), "exists and is not empty");
    // A bad stage0.jsonl line is named.
    let text = std::fs::read_to_string(world.join("stage0.jsonl")).unwrap();
    std::fs::write(world.join("stage0.jsonl"), text.replacen("\"task\"", "\"tusk\"", 1)).unwrap();
    fails(lavic(&base_args(&world, &base, &tmp.path().join("o2"), &["--steps", "0", "--eval", "0"])), "stage0.jsonl line 1");
}

/// `quiz` lines (a list, then several questions, each answered) train with recitation and match
/// flags, and `--eval-every` reports the held-out loss and teacher-forced answers during the run.
#[test]
fn train_base_on_quiz_lines_with_aids_reports_held_out_answers_every_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let (world, base) = sliver(tmp.path());
    let out = tmp.path().join("out");
    let flags = [
        "--tasks", "quiz", "--limit", "6", "--eval", "2", "--steps", "4", "--batch", "2", "--pool", "4", "--recite", "--match-flag",
        "--eval-every", "2", "--answers", "1",
    ];
    let ev = events(&ok(lavic(&base_args(&world, &base, &out, &flags))));
    let data = ev.iter().find(|v| v["event"] == "data").unwrap();
    assert_eq!((data["recite"].as_bool(), data["match_flag"].as_bool(), data["train"].as_u64()), (Some(true), Some(true), Some(4)));
    let evals: Vec<&Value> = ev.iter().filter(|v| v["event"] == "held_out_loss" && v["when"] == "step").collect();
    assert_eq!(evals.iter().map(|v| v["step"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 4]);
    for v in &evals {
        assert!(v["loss"].as_f64().unwrap().is_finite());
        for k in ["teacher_forced_exact", "teacher_forced_tokens"] {
            let x = v[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&x), "{k} {x}");
        }
    }
    let answers: Vec<&Value> = ev.iter().filter(|v| v["event"] == "answer").collect();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0]["task"], "quiz");
}

/// `--attributes`: the tower and projector learn the items' looks through heads that are not
/// saved; the language model's tensors are saved unchanged; flags that do not apply are refused.
#[test]
fn train_base_attributes_trains_the_tower_alone_and_saves_the_language_model_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let (world, base) = sliver(tmp.path());
    let out = tmp.path().join("out");
    let flags = ["--attributes", "--pool", "4", "--eval", "8", "--steps", "40", "--batch", "12", "--lr", "1e-2", "--warmup", "0"];
    let ev = events(&ok(lavic(&base_args(&world, &base, &out, &flags))));
    let data = ev.iter().find(|v| v["event"] == "data").unwrap();
    let items = std::fs::read_to_string(world.join("items.jsonl")).unwrap().lines().count() as u64;
    assert_eq!((data["train"].as_u64(), data["held_out"].as_u64()), (Some(items - 8), Some(8)), "{data}");
    let heads: Vec<&String> = data["attributes"].as_object().unwrap().keys().collect();
    assert_eq!(heads, ["detail", "kind", "main", "pattern", "secondary"]);
    let acc: Vec<&Value> = ev.iter().filter(|v| v["event"] == "held_out_accuracy").collect();
    assert_eq!(acc.len(), 2, "accuracy before and after");
    assert_eq!(ev.iter().filter(|v| v["event"] == "step").count(), 4, "a line every 10 steps");
    let tensors = |dir: &Path| {
        let t = candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
        let flat = |v: candle_core::Tensor| v.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        t.into_iter().map(|(n, v)| (n, flat(v))).collect::<std::collections::BTreeMap<_, _>>()
    };
    let (before, after) = (tensors(&base), tensors(&out));
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>(), "no head is saved");
    for (name, data) in &after {
        if name.starts_with("language_model.") {
            assert_eq!(data, &before[name], "{name} changed");
        }
    }
    assert!(after.iter().any(|(n, d)| n.starts_with("vision_tower.") && d != &before[n]), "the tower trained");
    assert!(after.iter().any(|(n, d)| n.starts_with("multi_modal_projector.") && d != &before[n]), "the projector trained");

    for (extra, want) in [("--describe", "do not apply"), ("--readout", "do not apply")] {
        let mut f = flags.to_vec();
        let val = if extra == "--describe" { s(&tmp.path().join("d.jsonl")) } else { "1".to_string() };
        f.extend([extra, val.as_str()]);
        fails(lavic(&base_args(&world, &base, &tmp.path().join("o2"), &f)), want);
    }
    for extra in [["--recite", ""], ["--match-flag", ""], ["--eval-every", "2"]] {
        let mut f = flags.to_vec();
        f.extend(extra.iter().filter(|x| !x.is_empty()));
        fails(lavic(&base_args(&world, &base, &tmp.path().join("o2"), &f)), "do not apply");
    }
    std::fs::remove_file(world.join("items.jsonl")).unwrap();
    fails(lavic(&base_args(&world, &base, &tmp.path().join("o3"), &flags)), "no items.jsonl");
}

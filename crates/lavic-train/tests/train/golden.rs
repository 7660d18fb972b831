//! Golden training tests against PyTorch + peft (values recorded by
//! `tests/fixtures/generate_train.py`: transformers 4.51.3, peft 0.15.2, torch 2.7.1, f32 CPU).
//!
//! Both sides start from the same LoRA weights (the recorded `*-init` adapters, non-zero B,
//! dropout 0). Tolerances, as the issue asks: losses and gradients within 1e-5 relative or 1e-6
//! absolute (f32 on the same inputs; what remains is summation order), weights after AdamW steps
//! within 1e-6 absolute.

use std::collections::HashMap;

use crate::common::*;
use lavic_model::prompt::{distillation_prompt, recommendation_prompt};
use lavic_model::PromptCandidate;
use lavic_train::linear::Ctx;
use lavic_train::model::{Encoded, Example, TrainModel};
use lavic_train::optim::{AdamWConfig, Schedule};
use lavic_train::spec::LoraSpec;
use lavic_train::trainer::{gradients, TrainConfig, Trainer};
use serde_json::Value;

const REL: f64 = 1e-5;
const ABS: f64 = 1e-6;

struct Golden {
    kind: &'static str,
    stage: &'static str,
    meta: Value,
    tensors: HashMap<String, candle_core::Tensor>,
    model: TrainModel,
    examples: Vec<Encoded>,
}

fn load(kind: &'static str, stage: &'static str) -> Golden {
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join(format!("train/{kind}.json"))).unwrap()).unwrap();
    let tensors = train_tensors(&format!("{kind}.safetensors"));
    let init = fixtures().join(format!("train/{kind}-{stage}-init"));
    let spec = LoraSpec::from_adapter_config(&init.join("adapter_config.json")).unwrap();
    assert_eq!(spec.dropout, 0.0);
    let mut o = options(kind);
    if stage == "s1" {
        o.vision = Some(spec);
        o.vision_init = Some(init);
    } else {
        o.lm = Some(spec);
        o.lm_init = Some(init);
    }
    let model = TrainModel::load(&o).unwrap();
    let m = &meta[stage];
    let want: Vec<&str> = m["trainable"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let mut have: Vec<&str> = model.params().vars.keys().map(String::as_str).collect();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    have.sort();
    assert_eq!(have, want_sorted, "{kind} {stage}: trainable tensors differ from peft's");
    let mut examples = Vec::new();
    for ex in m["examples"].as_array().unwrap() {
        let prompt = ex["prompt"].as_str().unwrap();
        // the prompt is what our own builders produce
        let ours = if stage == "s1" {
            distillation_prompt(ex["title"].as_str().unwrap())
        } else {
            let cands: Vec<(String, String)> = ex["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| (c[0].as_str().unwrap().to_string(), c[1].as_str().unwrap().to_string()))
                .collect();
            let pc: Vec<PromptCandidate> = cands.iter().map(|(i, t)| PromptCandidate { id: i, title: t }).collect();
            recommendation_prompt(ex["context"].as_str().unwrap(), &pc)
        };
        assert_eq!(ours, prompt, "{kind} {stage}: prompt text differs from the reference");
        let images = ex["images"].as_array().unwrap().iter().map(|n| pixels(kind, n.as_str().unwrap())).collect();
        let e = model
            .encode(&Example { prompt: prompt.into(), target: ex["target"].as_str().unwrap().into(), images })
            .unwrap();
        let ids: Vec<u32> = ex["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let labels: Vec<i64> = ex["labels"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(e.ids, ids, "{kind} {stage}: input ids");
        assert_eq!(e.labels, labels, "{kind} {stage}: labels");
        examples.push(e);
    }
    Golden { kind, stage, meta, tensors, model, examples }
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= ABS + REL * want.abs()
}

fn check_grads(g: &Golden, batch: &str, n: usize) {
    let (loss, grads) = gradients(&g.model, &g.examples[..n], &mut Ctx::eval()).unwrap();
    let want = g.meta[g.stage][format!("loss_{batch}")].as_f64().unwrap();
    assert!(close(loss, want), "{} {} {batch}: loss {loss} vs {want}", g.kind, g.stage);
    let mut worst = 0f64;
    for (name, grad) in &grads {
        let sum = grad.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(sum > 0.0, "{} {} {batch}: {name} has a zero gradient", g.kind, g.stage);
        let r = tol_ratio(grad, &g.tensors[&format!("{}.{batch}.grad.{name}", g.stage)], REL, ABS);
        assert!(r <= 1.0, "{} {} {batch}: gradient of {name} off by {r} x tolerance", g.kind, g.stage);
        worst = worst.max(r);
    }
    eprintln!("{} {} {batch}: loss {loss:.7} (torch {want:.7}); worst grad error {worst:.3} x tolerance", g.kind, g.stage);
}

fn check_steps(g: &Golden, batch_size: usize, accumulation: usize) {
    let hp = &g.meta[g.stage]["hp"];
    let betas = hp["betas"].as_array().unwrap();
    let config = TrainConfig {
        optim: AdamWConfig {
            lr: hp["lr"].as_f64().unwrap(),
            betas: (betas[0].as_f64().unwrap(), betas[1].as_f64().unwrap()),
            eps: hp["eps"].as_f64().unwrap(),
            weight_decay: hp["weight_decay"].as_f64().unwrap(),
        },
        schedule: Schedule::Constant { warmup: 0 },
        max_grad_norm: Some(hp["max_grad_norm"].as_f64().unwrap()),
        batch_size,
        accumulation,
        seed: 1,
        shuffle: false,
    };
    let start = g.model.params().tensors();
    let mut t = Trainer::new(&g.model, config).unwrap();
    let norms = g.meta[g.stage]["grad_norms"].as_array().unwrap();
    let losses = g.meta[g.stage]["step_losses"].as_array().unwrap();
    for step in 1..=3 {
        let r = t.step(&g.examples).unwrap();
        let (wl, wn) = (losses[step - 1].as_f64().unwrap(), norms[step - 1].as_f64().unwrap());
        assert!(close(r.loss, wl), "{} {} step {step}: loss {} vs {wl}", g.kind, g.stage, r.loss);
        assert!(close(r.grad_norm, wn), "{} {} step {step}: grad norm {} vs {wn}", g.kind, g.stage, r.grad_norm);
        if step == 1 || step == 3 {
            let mut worst = 0f32;
            for (name, var) in &g.model.params().vars {
                let e = max_abs(var.as_tensor(), &g.tensors[&format!("{}.step{step}.{name}", g.stage)]);
                assert!(e <= 1e-6, "{} {} step {step}: {name} differs by {e}", g.kind, g.stage);
                worst = worst.max(e);
            }
            eprintln!("{} {} step {step} (batch {batch_size} x {accumulation}): worst weight error {worst:e}", g.kind, g.stage);
        }
    }
    // leave the model as loaded for the next check
    let start: HashMap<_, _> = start.into_iter().map(|(k, v)| (k, v.copy().unwrap())).collect();
    g.model.params().set_all(&start).unwrap();
}

fn run(kind: &'static str, stage: &'static str) {
    let g = load(kind, stage);
    check_grads(&g, "b1", 1);
    check_grads(&g, "b3", 3);
    check_steps(&g, 3, 1);
}

#[test]
fn mistral_stage1_matches_torch() {
    run("mistral", "s1");
}

#[test]
fn mistral_stage2_matches_torch() {
    run("mistral", "s2");
}

#[test]
fn llama_stage1_matches_torch() {
    run("llama", "s1");
}

#[test]
fn llama_stage2_matches_torch() {
    run("llama", "s2");
}

/// Three micro-batches of one example accumulated equal the padded batch of three.
#[test]
fn accumulation_equals_the_padded_batch() {
    let g = load("mistral", "s2");
    check_steps(&g, 1, 3);
}

#[test]
fn schedules_match_transformers() {
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("train/mistral.json")).unwrap()).unwrap();
    let (w, n) = (meta["warmup"].as_u64().unwrap(), meta["total"].as_u64().unwrap());
    for (name, s) in [
        ("constant", Schedule::Constant { warmup: w }),
        ("linear", Schedule::Linear { warmup: w, total: n }),
        ("cosine", Schedule::Cosine { warmup: w, total: n }),
    ] {
        for (step, want) in meta["schedules"][name].as_array().unwrap().iter().enumerate() {
            let got = s.multiplier(step as u64);
            let want = want.as_f64().unwrap();
            assert!((got - want).abs() < 1e-12, "{name} step {step}: {got} vs {want}");
        }
    }
}

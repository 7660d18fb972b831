//! Stage 0 of the demo (issue 15): pre-trains the demo base model on the world's `stage0.jsonl`
//! with every parameter trainable and images as full patch features, then saves a llava-hf
//! folder that `lavic serve` / lavic-model loads. An example rather than a `lavic train`
//! subcommand while the server's train commands are being written.
//!
//! ```sh
//! lavic demo-world --seed 15 --out demo/world --base demo/base0
//! cargo run --release -p lavic-train --example train_base -- \
//!     --world demo/world --base demo/base0 --out demo/base --steps 600 [--splits train,valid,test]
//!     [--tasks describe,main] [--limit N] [--batch 8] [--lr 1e-3] [--warmup 30] [--seed 42]
//!     [--pool 2] [--dialogue true] [--dtype f16] [--state DIR] [--save-every 100] [--eval 64] [--answers 7] [--log FILE]
//! ```
//!
//! Prints one line per step (step, loss, grad norm, lr, seconds), a held-out loss (the last
//! `--eval` samples, not trained on) before and after, and greedy answers to the first
//! `--answers` of those with exact matches per task. Resuming a `--state` that has already
//! reached `--steps` only evaluates and saves.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use candle_core::{DType, Device};
use lavic_train::save::save_full;
use lavic_train::full::{stage0_prompt, FullModel, PatchEncoded, PatchExample};
use lavic_train::linear::Ctx;
use lavic_train::optim::{AdamWConfig, Schedule};
use lavic_train::stage0::{dialogue_examples, examples, read_lines, Stage0Filter, Stage0Line};
use lavic_train::trainer::{TrainConfig, Trainer};

fn args() -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let key = k.strip_prefix("--").ok_or_else(|| anyhow!("unexpected argument {k:?} (flags are --name value)"))?;
        let v = it.next().ok_or_else(|| anyhow!("--{key} needs a value"))?;
        out.insert(key.to_string(), v);
    }
    Ok(out)
}

fn list(a: &HashMap<String, String>, k: &str) -> Vec<String> {
    a.get(k).map(|v| v.split(',').map(str::to_string).collect()).unwrap_or_default()
}

fn num<T: std::str::FromStr>(a: &HashMap<String, String>, k: &str, default: T) -> anyhow::Result<T> {
    match a.get(k) {
        Some(v) => v.parse().map_err(|_| anyhow!("--{k} {v:?} is not a number")),
        None => Ok(default),
    }
}

fn mean_loss(model: &FullModel, data: &[PatchEncoded]) -> anyhow::Result<f64> {
    let (mut sum, mut n) = (0f64, 0usize);
    for chunk in data.chunks(8) {
        let (s, k) = model.loss_sum(chunk, &mut Ctx::eval())?;
        sum += s.to_scalar::<f32>()? as f64;
        n += k;
    }
    Ok(sum / n.max(1) as f64)
}

/// Greedy answers to the first `n` held-out samples, printed, with exact matches per task.
fn answers(model: &FullModel, lines: &[Stage0Line], exs: &[PatchExample], n: usize) -> anyhow::Result<()> {
    let mut hits: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for (l, e) in lines.iter().zip(exs).take(n) {
        let got = model.generate(&stage0_prompt(&l.question), &e.images, 48)?;
        let h = hits.entry(l.task.as_str()).or_default();
        h.0 += (got.trim() == l.answer) as usize;
        h.1 += 1;
        println!("{} {}: {:?} (truth {:?})", l.id, l.task, got, l.answer);
    }
    let per: Vec<String> = hits.iter().map(|(t, (k, m))| format!("{t} {k}/{m}")).collect();
    println!("exact answers on {} held-out samples: {}", n.min(lines.len()), per.join(", "));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let path = |k: &str| a.get(k).map(PathBuf::from).ok_or_else(|| anyhow!("--{k} is required"));
    let (world, base, out) = (path("world")?, path("base")?, path("out")?);
    let dtype = match a.get("dtype").map(String::as_str) {
        None | Some("f32") => DType::F32,
        Some("f16") => DType::F16,
        Some(o) => bail!("--dtype {o:?}: f32 or f16"),
    };
    let steps: u64 = num(&a, "steps", 300)?;
    let eval_n: usize = num(&a, "eval", 64)?;
    let mut log: Box<dyn Write> = match a.get("log") {
        Some(p) => Box::new(std::fs::File::create(p).with_context(|| p.clone())?),
        None => Box::new(std::io::sink()),
    };
    let model = FullModel::load(&base, None, &Device::Cpu)?.with_pool(num(&a, "pool", 1)?)?;
    let filter = Stage0Filter {
        splits: list(&a, "splits"),
        tasks: list(&a, "tasks"),
        limit: a.get("limit").map(|v| v.parse()).transpose()?,
    };
    let lines = read_lines(&world, &filter)?;
    if lines.len() <= eval_n {
        bail!("{} stage-0 lines selected, need more than --eval {eval_n}", lines.len());
    }
    let t0 = Instant::now();
    let dialogue = a.get("dialogue").is_some_and(|v| v == "true" || v == "1");
    let (train_lines, held_lines) = lines.split_at(lines.len() - eval_n);
    let train_ex =
        if dialogue { dialogue_examples(&world, train_lines, &model.anyres)? } else { examples(&world, train_lines, &model.anyres)? };
    let held_ex = examples(&world, held_lines, &model.anyres)?;
    let train = train_ex.iter().map(|e| model.encode(e)).collect::<Result<Vec<_>, _>>()?;
    let held = held_ex.iter().map(|e| model.encode(e)).collect::<Result<Vec<_>, _>>()?;
    let (train, held) = (&train[..], &held[..]);
    println!(
        "{} train samples ({} lines{}) / {} held-out samples, {} trainable parameters, {} patch tokens per image, encoded in {:.1}s",
        train.len(),
        train_lines.len(),
        if dialogue { ", dialogues" } else { "" },
        held.len(),
        model.params().numel(),
        model.patch_tokens(),
        t0.elapsed().as_secs_f64()
    );
    let cfg = TrainConfig {
        optim: AdamWConfig { lr: num(&a, "lr", 1e-3)?, weight_decay: 0.0, ..AdamWConfig::default() },
        schedule: Schedule::Constant { warmup: num(&a, "warmup", 30)? },
        batch_size: num(&a, "batch", 8)?,
        seed: num(&a, "seed", 42)?,
        shuffle: true,
        ..TrainConfig::default()
    };
    let state = a.get("state").map(PathBuf::from);
    let mut trainer = match &state {
        Some(d) if d.join("state.json").exists() => Trainer::resume(&model, d)?,
        _ => Trainer::new(&model, cfg)?,
    };
    let save_every: u64 = num(&a, "save-every", 100)?;
    println!("held-out loss before: {:.4}", mean_loss(&model, held)?);
    let t0 = Instant::now();
    while trainer.step_count() < steps {
        let r = trainer.step(train)?;
        let line = format!(
            "step {} loss {:.4} grad_norm {:.3} lr {:.2e} t {:.1}s",
            trainer.step_count(),
            r.loss,
            r.grad_norm,
            r.lr,
            t0.elapsed().as_secs_f64()
        );
        println!("{line}");
        writeln!(log, "{line}")?;
        if let Some(d) = &state {
            if trainer.step_count() % save_every == 0 {
                trainer.save_state(d)?;
            }
        }
    }
    println!("held-out loss after: {:.4} ({} steps, {:.1}s)", mean_loss(&model, held)?, steps, t0.elapsed().as_secs_f64());
    answers(&model, held_lines, &held_ex, num(&a, "answers", 7)?)?;
    let saved = save_full(&model, &out, dtype)?;
    println!("saved {} ({} tensors, {} trained, {} bytes)", out.display(), saved.tensors, saved.trained, saved.bytes);
    Ok(())
}

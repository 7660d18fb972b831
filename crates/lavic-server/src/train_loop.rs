//! The loop shared by both `lavic train` stages: optimizer steps over encoded samples with a
//! progress bar (terminal) or JSON log lines, a validation pass after every epoch, and the
//! output folder, which is never left half-written.
//!
//! Output folder: `ckpt-NNNNNNNN/` per kept checkpoint (a PEFT adapter folder, `adapter_config.json`
//! and `adapter_model.safetensors`, plus `state/` to resume, `checkpoint.json` with the metrics and,
//! for stage 2, the validation answers), and two symlinks `best` and `last` naming checkpoints,
//! `log.jsonl` (every log line). A checkpoint is written into `.ckpt-NNNNNNNN.tmp/`, synced and
//! renamed into place, then each symlink is replaced by an atomic rename: a run killed at any
//! point leaves `best` and `last` naming complete checkpoints. Checkpoints neither names are
//! removed.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lavic_train::model::{Encoded, TrainModel};
use lavic_train::peft::{save_adapter, Layout};
use lavic_train::spec::LoraSpec;
use lavic_train::trainer::{StepReport, TrainConfig, Trainer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::progress::ProgressArg;

/// Environment variable that makes a run abort in the middle of writing its next checkpoint
/// (after the adapter, before the rename): the crash-safety tests use it.
pub const CRASH_IN_SAVE_ENV: &str = "LAVIC_TRAIN_CRASH_IN_SAVE";

/// A validation pass's result.
#[derive(Debug, Clone)]
pub struct Validation {
    /// Metrics written to `checkpoint.json` and the log.
    pub metrics: Value,
    /// Higher is better; compared lexicographically to pick the best checkpoint.
    pub score: (f64, f64),
}

/// Evaluates a checkpoint.
pub trait Validate {
    /// Evaluates `model` (whose adapter has just been written to `dir`); may write files in `dir`.
    fn validate(&mut self, model: &TrainModel, dir: &Path) -> anyhow::Result<Validation>;
}

/// What the loop needs besides the model and samples.
pub struct LoopSettings<'a> {
    /// Output folder.
    pub out: &'a Path,
    /// Continue the run in `out` from its `last` checkpoint.
    pub resume: bool,
    /// Optimizer, schedule, batch, seed.
    pub config: TrainConfig,
    /// Optimizer steps per epoch.
    pub steps_per_epoch: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
    /// What is trained (written into the adapter config).
    pub spec: &'a LoraSpec,
    /// Trainable tensor name prefixes that go into the adapter.
    pub prefixes: &'a [&'a str],
    /// Key layout of the saved adapter.
    pub layout: Layout,
    /// `base_model_name_or_path` of the adapter.
    pub base_model: String,
    /// Progress display.
    pub progress: ProgressArg,
    /// Steps between JSON log lines (without a terminal bar).
    pub log_every: u64,
}

/// `checkpoint.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Optimizer steps taken.
    pub step: u64,
    /// Epochs completed (fractional when the run stopped inside one).
    pub epoch: f64,
    /// Mean training loss of the steps since the previous checkpoint (none at step 0).
    pub train_loss: Option<f64>,
    /// Validation metrics (null without validation data).
    pub validation: Value,
    /// Score of this checkpoint (higher is better).
    pub score: (f64, f64),
    /// Step and score of the best checkpoint so far (this one included).
    pub best_step: u64,
    /// Score of the best checkpoint.
    pub best_score: (f64, f64),
}

fn ckpt_name(step: u64) -> String {
    format!("ckpt-{step:08}")
}

/// Prepares `out`: a fresh run needs it absent or empty; a resumed one needs its `last`.
/// Leftovers of a killed save are removed.
fn prepare_out(out: &Path, resume: bool) -> anyhow::Result<Option<CheckpointInfo>> {
    if resume {
        let info = read_checkpoint(&out.join("last")).with_context(|| format!("--resume: {} holds no complete checkpoint", out.display()))?;
        remove_leftovers(out)?;
        return Ok(Some(info));
    }
    if out.exists() {
        let mut entries = std::fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))?;
        if entries.next().is_some() {
            bail!("{} already holds files: pass --resume to continue the run there, or choose another --out", out.display());
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    Ok(None)
}

fn remove_leftovers(out: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(out)?.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if n.starts_with(".ckpt-") || n.ends_with(".link.tmp") {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() { std::fs::remove_dir_all(&p)? } else { std::fs::remove_file(&p)? }
        }
    }
    Ok(())
}

/// Reads `checkpoint.json` of a checkpoint folder.
pub fn read_checkpoint(dir: &Path) -> anyhow::Result<CheckpointInfo> {
    let p = dir.join("checkpoint.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid checkpoint file", p.display()))
}

fn sync_tree(dir: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            File::open(&p)?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Points the symlink `out/name` at `target` by an atomic rename.
fn swap_link(out: &Path, name: &str, target: &str) -> anyhow::Result<()> {
    let tmp = out.join(format!(".{name}.link.tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    std::fs::rename(&tmp, out.join(name)).with_context(|| format!("cannot replace {}", out.join(name).display()))?;
    Ok(())
}

fn link_target(out: &Path, name: &str) -> Option<String> {
    std::fs::read_link(out.join(name)).ok().map(|p| p.to_string_lossy().to_string())
}

/// Progress on stderr and the log file.
struct Reporter {
    bar: bool,
    log: bool,
    every: u64,
    file: File,
    start: Instant,
    first_step: u64,
    total: u64,
    tokens: usize,
    last_draw: Option<Instant>,
}

impl Reporter {
    fn new(out: &Path, mode: ProgressArg, every: u64, first_step: u64, total: u64) -> anyhow::Result<Self> {
        let bar = match mode {
            ProgressArg::Auto => std::io::stderr().is_terminal(),
            ProgressArg::Bar => true,
            ProgressArg::Log | ProgressArg::Off => false,
        };
        let p = out.join("log.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&p).with_context(|| format!("cannot open {}", p.display()))?;
        let log = !bar && mode != ProgressArg::Off;
        Ok(Self { bar, log, every: every.max(1), file, start: Instant::now(), first_step, total, tokens: 0, last_draw: None })
    }

    fn line(&mut self, v: &Value) {
        let _ = writeln!(self.file, "{v}");
        if self.log {
            eprintln!("{v}");
        } else if self.bar && v["event"] != "step" {
            eprintln!("\r\x1b[2K{v}");
        }
    }

    fn step(&mut self, step: u64, epoch: f64, r: &StepReport, tokens: usize) {
        self.tokens += tokens;
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let done = (step - self.first_step) as f64;
        let eta = secs / done.max(1.0) * (self.total - step) as f64;
        let tps = self.tokens as f64 / secs;
        let v = json!({"event": "step", "step": step, "epoch": epoch, "loss": r.loss, "grad_norm": r.grad_norm, "lr": r.lr,
            "tokens_per_s": tps, "elapsed_s": secs, "eta_s": eta});
        let _ = writeln!(self.file, "{v}");
        if self.log && (step.is_multiple_of(self.every) || step == self.total) {
            eprintln!("{v}");
        }
        if self.bar && self.last_draw.is_none_or(|t| t.elapsed() >= Duration::from_millis(200) || step == self.total) {
            self.last_draw = Some(Instant::now());
            let w = 30usize;
            let filled = (w as u64 * step / self.total.max(1)) as usize;
            eprint!(
                "\r\x1b[2K[{}{}] {step}/{} loss {:.4} {:.0} tok/s ETA {}",
                "#".repeat(filled),
                "-".repeat(w - filled),
                self.total,
                r.loss,
                tps,
                fmt_secs(eta)
            );
            let _ = std::io::stderr().flush();
        }
    }

    fn finish(&self) {
        if self.bar {
            eprintln!();
        }
    }
}

fn fmt_secs(s: f64) -> String {
    let s = s.round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Runs (or resumes) the training of `model` on `data`, validating and checkpointing after every
/// epoch and at the end. Returns the info of the last checkpoint.
pub fn run(model: &TrainModel, data: &[Encoded], s: &LoopSettings<'_>, mut validator: Option<&mut dyn Validate>) -> anyhow::Result<CheckpointInfo> {
    if data.is_empty() {
        bail!("no training samples");
    }
    let resumed = prepare_out(s.out, s.resume)?;
    let mut trainer = match &resumed {
        Some(_) => {
            let t = Trainer::resume(model, &s.out.join("last").join("state"))?;
            if t.config != s.config {
                bail!("--resume with other hyperparameters than the run in {} (saved: {:?})", s.out.display(), t.config);
            }
            t
        }
        None => Trainer::new(model, s.config.clone())?,
    };
    let mut best = resumed.as_ref().map(|i| (i.best_step, i.best_score));
    let mut rep = Reporter::new(s.out, s.progress, s.log_every, trainer.step_count(), s.total_steps)?;
    if let Some(info) = &resumed {
        rep.line(&json!({"event": "resume", "step": info.step, "from": s.out.join("last").display().to_string()}));
    }
    let mut losses = Vec::new();
    let mut last = resumed;
    if last.is_none() && validator.is_some() {
        // The untrained model's validation: the baseline every later checkpoint is compared to.
        last = Some(checkpoint(model, &trainer, s, &mut validator, &mut best, (0.0, &losses), &mut rep)?);
    }
    while trainer.step_count() < s.total_steps {
        let n = data.len();
        let per_step = (s.config.batch_size * s.config.accumulation) as u64;
        let tokens: usize = (trainer.position..trainer.position + per_step).map(|p| data[trainer.example_index(p, n)].ids.len()).sum();
        let r = trainer.step(data)?;
        let step = trainer.step_count();
        let epoch = step as f64 / s.steps_per_epoch as f64;
        rep.step(step, epoch, &r, tokens);
        losses.push(r.loss);
        if step.is_multiple_of(s.steps_per_epoch) || step == s.total_steps {
            let info = checkpoint(model, &trainer, s, &mut validator, &mut best, (epoch, &losses), &mut rep)?;
            losses.clear();
            last = Some(info);
        }
    }
    rep.finish();
    last.context("the run had no step to take (already at --max-steps / --epochs)")
}

/// Writes, validates and publishes the checkpoint of the current step.
fn checkpoint(
    model: &TrainModel,
    trainer: &Trainer<'_>,
    s: &LoopSettings<'_>,
    validator: &mut Option<&mut dyn Validate>,
    best: &mut Option<(u64, (f64, f64))>,
    (epoch, losses): (f64, &[f64]),
    rep: &mut Reporter,
) -> anyhow::Result<CheckpointInfo> {
    let step = trainer.step_count();
    let name = ckpt_name(step);
    let tmp = s.out.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    save_adapter(&tmp, model.params(), s.spec, s.prefixes, s.layout, &s.base_model)?;
    trainer.save_state(&tmp.join("state"))?;
    if std::env::var_os(CRASH_IN_SAVE_ENV).is_some() {
        eprintln!("{CRASH_IN_SAVE_ENV} is set: aborting in the middle of writing {name}");
        std::process::abort();
    }
    let train_loss = (!losses.is_empty()).then(|| losses.iter().sum::<f64>() / losses.len() as f64);
    let (validation, score) = match validator.as_mut() {
        Some(v) => {
            let r = v.validate(model, &tmp)?;
            (r.metrics, r.score)
        }
        None => (Value::Null, (-train_loss.unwrap_or(f64::INFINITY), 0.0)),
    };
    let is_best = best.is_none_or(|(_, b)| score > b);
    if is_best {
        *best = Some((step, score));
    }
    let (best_step, best_score) = best.unwrap_or((step, score));
    let info = CheckpointInfo { step, epoch, train_loss, validation, score, best_step, best_score };
    std::fs::write(tmp.join("checkpoint.json"), serde_json::to_string_pretty(&info)? + "\n")?;
    sync_tree(&tmp)?;
    let dir = s.out.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
    swap_link(s.out, "last", &name)?;
    if is_best {
        swap_link(s.out, "best", &name)?;
    }
    File::open(s.out)?.sync_all()?;
    let keep: Vec<String> = ["last", "best"].iter().filter_map(|l| link_target(s.out, l)).collect();
    for e in std::fs::read_dir(s.out)?.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if n.starts_with("ckpt-") && !keep.contains(&n) {
            std::fs::remove_dir_all(e.path())?;
        }
    }
    let mut line = json!({"event": "checkpoint", "step": step, "epoch": epoch, "train_loss": train_loss, "best": is_best,
        "path": dir.display().to_string()});
    line["validation"] = info.validation.clone();
    rep.line(&line);
    Ok(info)
}

/// Folder of the `best` checkpoint.
pub fn best_dir(out: &Path) -> PathBuf {
    out.join("best")
}

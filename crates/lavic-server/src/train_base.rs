//! `lavic train base`: stage 0 of the demo (issue 15, docs/TRAINING.md "Stage 0"). Pre-trains
//! the tiny LLaVA-NeXT base on the demo world's `stage0.jsonl` with every parameter trainable
//! and images as full patch features (lavic-train's `FullModel`), then saves a llava-hf folder
//! that lavic-model loads; with `--describe`, also writes the stage-1 teacher texts (the
//! model's own description of every item, [`crate::describe`]).
//!
//! The last `--eval` selected lines are held out (never trained on): their loss is reported
//! before and after, and greedy answers to the first `--answers` of them with exact matches per
//! task. `--state DIR` saves the optimizer state every `--save-every` steps; a run with a
//! `DIR/state.json` resumes from it (its saved hyperparameters, not the flags'), and one that
//! has already reached `--steps` only evaluates, saves and describes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::DType;
use clap::{Args, ValueEnum};
use lavic_train::full::{Aids, FullModel, PatchEncoded, PatchExample};
use lavic_train::generate::Question;
use lavic_train::linear::Ctx;
use lavic_train::optim::{AdamWConfig, Schedule};
use lavic_train::save::save_full;
use lavic_train::stage0::{examples, read_lines, Stage0Filter, Stage0Line};
use lavic_train::trainer::{Objective, TrainConfig, Trainer};
use serde_json::json;

use crate::describe::{self, DescribeSettings};

/// A split of the demo world (`--splits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    /// Items of training conversations.
    Train,
    /// Items of validation conversations.
    Valid,
    /// Items of test conversations.
    Test,
}

/// A stage-0 task (`--tasks`), as `stage0.jsonl` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TaskArg {
    /// The teacher description.
    Describe,
    /// What kind of product it is.
    Kind,
    /// The main colour.
    Main,
    /// The trim (secondary) colour.
    Trim,
    /// The pattern.
    Pattern,
    /// The shape detail.
    Detail,
    /// A yes/no colour question.
    #[value(name = "yes_no")]
    YesNo,
    /// LaViC's stage-1 prompt answered with the teacher description.
    Distill,
    /// Which of 10 listed products fits a request (multi-image).
    Pick,
    /// The id of the listed product with a given title (text only).
    Copy,
    /// 10 listed products, then several questions, each answered with one's id (multi-image).
    Quiz,
}

/// `--describe-teacher`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DescribeTeacher {
    /// Model texts that name every true attribute.
    Correct,
    /// Any usable model text.
    Usable,
}

/// `--dtype` of the saved weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaveDtype {
    /// 32-bit floats.
    F32,
    /// 16-bit floats (half the size; what the demo ships).
    F16,
}

impl SaveDtype {
    /// The candle dtype the weights are saved in.
    pub fn dtype(self) -> DType {
        match self {
            SaveDtype::F32 => DType::F32,
            SaveDtype::F16 => DType::F16,
        }
    }
}

/// Flags of `lavic train base`.
#[derive(Debug, Clone, Args)]
pub struct BaseArgs {
    /// Demo world folder (`lavic demo-world`): `stage0.jsonl`, `items.jsonl`, `images/`.
    #[arg(long)]
    pub world: PathBuf,
    /// Base model to train: a llava-hf folder (`lavic demo-world --base`, or a trained one).
    #[arg(long)]
    pub base: PathBuf,
    /// Output folder of the trained model (llava-hf); must be absent or empty.
    #[arg(long)]
    pub out: PathBuf,
    /// Optimizer steps to reach (0: no training; evaluate, describe and save only).
    #[arg(long, default_value_t = 300)]
    pub steps: u64,
    /// Use only the lines of these splits (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub splits: Vec<SplitArg>,
    /// Use only the lines of these tasks (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub tasks: Vec<TaskArg>,
    /// Use at most this many selected lines, in file order.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Samples per optimizer step.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Peak learning rate (AdamW, no weight decay, gradient norm clipped at 1).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Learning-rate warm-up steps (then constant).
    #[arg(long, default_value_t = 30)]
    pub warmup: u64,
    /// Seed of the data order.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Dtype of the saved weights.
    #[arg(long, value_enum, default_value_t = SaveDtype::F32)]
    pub dtype: SaveDtype,
    /// Optimizer state folder: saved every --save-every steps, resumed from when it holds one.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Steps between saves of --state.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub save_every: u64,
    /// Held-out samples: the last this many selected lines, never trained on.
    #[arg(long, default_value_t = 64)]
    pub eval: usize,
    /// Greedy answers printed for the first this many held-out samples.
    #[arg(long, default_value_t = 7)]
    pub answers: usize,
    /// Also write every step's JSON line to this file.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Steps between step lines on stderr.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub log_every: u64,
    /// After training, write the stage-1 items file here: `items.jsonl` with each item's
    /// description replaced by the model's own greedy description (`"teacher": "model"`), or
    /// kept (`"teacher": "generator"`) where the model gives no usable text; and a summary in
    /// FILE.summary.json.
    #[arg(long)]
    pub describe: Option<PathBuf>,
    /// cpu, cuda or cuda:N (a binary built with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Average-pool each view's patch features over `pool x pool` windows (1: every patch;
    /// must divide the patch grid). The demo uses 2: 16 tokens per view, ~3x faster.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub pool: u64,
    /// Weight of the image read-out loss: each image's pooled patch features, through the final
    /// norm and lm_head alone, must predict its answer's words (a caption bag-of-words loss
    /// that gives the vision tower a direct gradient; 0: off). Added to the language-model loss.
    #[arg(long, default_value_t = 0.0)]
    pub readout: f64,
    /// Most tokens of a model description; one without `</s>` by then is not used.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub describe_max_tokens: u64,
    /// Which model descriptions become stage-1 teacher texts: `correct`, only those naming every
    /// true attribute of the item (the kind, both colours, the pattern and the detail: "where it
    /// can produce them"); `usable`, any non-empty text ended by `</s>`. The generator's
    /// description stays elsewhere (`"teacher": "generator"`).
    #[arg(long, value_enum, default_value_t = DescribeTeacher::Correct)]
    pub describe_teacher: DescribeTeacher,
    /// Items per batched generation pass.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub describe_batch: u64,
    /// Train only the vision tower and projector, with one classification head per visual
    /// attribute (`look` in the world's `items.jsonl`: kind, colours, pattern, detail) over each
    /// image's pooled patch features, instead of the stage-0 questions (lavic-train's
    /// `attributes`). Every item of the world is a sample (`--splits` and `--tasks` do not
    /// apply); `--eval` items are held out and their per-attribute accuracy is reported before
    /// and after. The heads are not saved.
    #[arg(long)]
    pub attributes: bool,
    /// Id recitation on multi-image (`pick`) lines: each image token also predicts a token of
    /// the id its image is listed under (the line's `listed`; view v the id's token 1 + v), in
    /// the same mean as the answer tokens (lavic-train's `FullModel::encode_reciting`). The
    /// held-out loss and answers stay the plain ones.
    #[arg(long)]
    pub recite: bool,
    /// Match flags on multi-image (`pick`) lines: the token after each image also predicts
    /// `yes` if its listed id is the line's answer, else `no` (lavic-train's
    /// `FullModel::encode_aided`), in the same mean as the answer tokens. The held-out loss and
    /// answers stay the plain ones.
    #[arg(long)]
    pub match_flag: bool,
    /// Also report the held-out loss and teacher-forced answers (the share of held-out samples
    /// whose every target token is the model's top choice, and of target tokens) every this
    /// many steps (0: only before and after).
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
}

pub(crate) fn event(v: serde_json::Value) {
    eprintln!("{v}");
}

/// Checks the folders before anything slow runs.
fn check_paths(a: &BaseArgs) -> anyhow::Result<()> {
    if !a.world.is_dir() {
        bail!("--world {}: no such folder (write one with `lavic demo-world`)", a.world.display());
    }
    let needed: &[&str] = if a.attributes {
        &["items.jsonl"]
    } else if a.describe.is_some() {
        &["stage0.jsonl", "items.jsonl"]
    } else {
        &["stage0.jsonl"]
    };
    for f in needed {
        if !a.world.join(f).is_file() {
            bail!("--world {}: no {f} in it (is it a `lavic demo-world` folder?)", a.world.display());
        }
    }
    if !a.base.join("config.json").is_file() {
        bail!("--base {}: not a model folder (no config.json)", a.base.display());
    }
    if a.out.exists() && std::fs::read_dir(&a.out).with_context(|| format!("--out {}", a.out.display()))?.next().is_some() {
        bail!("--out {}: exists and is not empty", a.out.display());
    }
    Ok(())
}

fn names<T: ValueEnum>(values: &[T]) -> Vec<String> {
    values.iter().filter_map(ValueEnum::to_possible_value).map(|p| p.get_name().to_string()).collect()
}

fn filter(a: &BaseArgs) -> Stage0Filter {
    Stage0Filter { splits: names(&a.splits), tasks: names(&a.tasks), limit: a.limit }
}

/// Token-weighted mean loss of `data` (eval mode), in batches of 8.
fn mean_loss(model: &FullModel, data: &[PatchEncoded]) -> anyhow::Result<f64> {
    let (mut sum, mut n) = (0f64, 0usize);
    for chunk in data.chunks(8) {
        let (s, k) = model.lm_loss_sum(chunk, &mut Ctx::eval())?;
        sum += s.to_scalar::<f32>()? as f64;
        n += k;
    }
    Ok(sum / n.max(1) as f64)
}

/// Teacher-forced answers of `data`: the share of samples whose every target token is the
/// model's top choice, and the share of target tokens that are.
fn teacher_forced(model: &FullModel, data: &[PatchEncoded]) -> anyhow::Result<(f64, f64)> {
    let (mut exact, mut right, mut total) = (0usize, 0usize, 0usize);
    for e in data {
        let top: Vec<u32> = model.logits(e, &mut Ctx::eval())?.argmax(1)?.to_vec1()?;
        // Position p predicts label p + 1.
        let (mut all, mut n) = (true, 0);
        for (p, &l) in e.labels.iter().enumerate().skip(1) {
            if l >= 0 {
                let ok = top[p - 1] as i64 == l;
                all &= ok;
                right += ok as usize;
                n += 1;
            }
        }
        total += n;
        exact += (all && n > 0) as usize;
    }
    Ok((exact as f64 / data.len().max(1) as f64, right as f64 / total.max(1) as f64))
}

/// Greedy answers to the first `n` held-out samples, one line each, and exact matches per task.
fn answers(model: &FullModel, lines: &[Stage0Line], exs: &[PatchExample], n: usize) -> anyhow::Result<()> {
    let n = n.min(lines.len());
    let questions: Vec<Question> = exs[..n].iter().map(|e| Question { prompt: e.prompt.clone(), images: e.images.clone() }).collect();
    let got = model.generate_batch(&questions, 48)?;
    let mut hits: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (l, g) in lines.iter().zip(&got) {
        let h = hits.entry(l.task.as_str()).or_default();
        h.0 += (g.text.trim() == l.answer) as usize;
        h.1 += 1;
        event(json!({"event": "answer", "id": l.id, "task": l.task, "answer": g.text, "truth": l.answer}));
    }
    let exact: BTreeMap<&str, String> = hits.iter().map(|(t, (k, m))| (*t, format!("{k}/{m}"))).collect();
    event(json!({"event": "exact_answers", "samples": n, "per_task": exact}));
    Ok(())
}

/// Runs `lavic train base`.
pub fn run(a: &BaseArgs) -> anyhow::Result<()> {
    check_paths(a)?;
    if a.attributes {
        return crate::train_attributes::run(a);
    }
    let device = lavic_model::model::parse_device(&a.device).context("--device")?;
    let model = FullModel::load(&a.base, None, &device)
        .with_context(|| format!("--base {}", a.base.display()))?
        .with_pool(a.pool as usize)
        .context("--pool")?
        .with_readout(a.readout)
        .context("--readout")?;
    let lines = read_lines(&a.world, &filter(a))?;
    let need = if a.steps > 0 { a.eval + 1 } else { a.eval };
    if lines.len() < need.max(1) {
        bail!(
            "{}: {} stage-0 lines selected (--splits / --tasks / --limit), need at least {} (--eval {} held out{})",
            a.world.join("stage0.jsonl").display(),
            lines.len(),
            need.max(1),
            a.eval,
            if a.steps > 0 { " + 1 to train on" } else { "" }
        );
    }
    let t0 = Instant::now();
    let cut = lines.len() - a.eval;
    let train_ex = examples(&a.world, &lines[..cut], &model.anyres)?;
    let held_ex = examples(&a.world, &lines[cut..], &model.anyres)?;
    let encode = |exs: &[PatchExample], aids: Aids| exs.iter().map(|e| model.encode_aided(e, aids)).collect::<Result<Vec<_>, _>>();
    let aids = Aids { recite: a.recite, flag: a.match_flag };
    let (train, held) = (encode(&train_ex, aids)?, encode(&held_ex, Aids::default())?);
    let (train, held) = (&train[..], &held[..]);
    event(json!({"event": "data", "stage": "base", "train": train.len(), "held_out": held.len(), "lines": cut,
        "parameters": model.params().numel(), "patch_tokens": model.patch_tokens(), "readout": a.readout, "recite": a.recite, "match_flag": a.match_flag, "encode_s": t0.elapsed().as_secs_f64()}));
    if !held.is_empty() {
        event(json!({"event": "held_out_loss", "when": "before", "loss": mean_loss(&model, held)?}));
    }
    let t0 = Instant::now();
    let mut on_eval = |step: u64| -> anyhow::Result<()> {
        if !held.is_empty() {
            let (exact, tokens) = teacher_forced(&model, held)?;
            event(json!({"event": "held_out_loss", "when": "step", "step": step, "loss": mean_loss(&model, held)?,
                "teacher_forced_exact": exact, "teacher_forced_tokens": tokens}));
        }
        Ok(())
    };
    train_steps(a, &model, train, &mut on_eval)?;
    if !held.is_empty() {
        event(json!({"event": "held_out_loss", "when": "after", "loss": mean_loss(&model, held)?, "train_s": t0.elapsed().as_secs_f64()}));
        answers(&model, &lines[cut..], &held_ex, a.answers)?;
    }
    let saved = save_full(&model, &a.out, a.dtype.dtype())?;
    event(
        json!({"event": "saved", "out": a.out.display().to_string(), "tensors": saved.tensors, "trained": saved.trained, "bytes": saved.bytes}),
    );
    if let Some(file) = &a.describe {
        let s = DescribeSettings {
            out: file.clone(),
            max_tokens: a.describe_max_tokens as usize,
            batch: a.describe_batch as usize,
            require_correct: a.describe_teacher == DescribeTeacher::Correct,
        };
        let summary = describe::run(&model, &a.world, &s)?;
        event(json!({"event": "described", "summary": summary}));
    }
    Ok(())
}

/// Trains up to `--steps` (resuming `--state` when it holds a run), with step lines on stderr
/// and in `--log`.
/// `on_eval(step)` runs every `--eval-every` steps.
pub(crate) fn train_steps<M: Objective>(
    a: &BaseArgs,
    model: &M,
    train: &[M::Item],
    on_eval: &mut dyn FnMut(u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let cfg = TrainConfig {
        optim: AdamWConfig { lr: a.lr, weight_decay: 0.0, ..AdamWConfig::default() },
        schedule: Schedule::Constant { warmup: a.warmup },
        batch_size: a.batch as usize,
        seed: a.seed,
        shuffle: true,
        ..TrainConfig::default()
    };
    let resume = a.state.as_deref().filter(|d| d.join("state.json").exists());
    let mut trainer = match resume {
        Some(d) => Trainer::resume(model, d).with_context(|| format!("--state {}", d.display()))?,
        None => Trainer::new(model, cfg)?,
    };
    if let Some(d) = resume {
        event(json!({"event": "resume", "step": trainer.step_count(), "from": d.display().to_string()}));
    }
    if trainer.step_count() >= a.steps {
        return Ok(());
    }
    if train.is_empty() {
        bail!("no training samples (all selected lines are held out by --eval {})", a.eval);
    }
    let mut log = open_log(a.log.as_deref())?;
    let (t0, first) = (Instant::now(), trainer.step_count());
    while trainer.step_count() < a.steps {
        let r = trainer.step(train)?;
        let step = trainer.step_count();
        let secs = t0.elapsed().as_secs_f64();
        let eta = secs / (step - first) as f64 * (a.steps - step) as f64;
        let line =
            json!({"event": "step", "step": step, "loss": r.loss, "grad_norm": r.grad_norm, "lr": r.lr, "elapsed_s": secs, "eta_s": eta});
        if let Some(f) = log.as_mut() {
            writeln!(f, "{line}").context("--log")?;
        }
        if step.is_multiple_of(a.log_every) || step == a.steps {
            event(line);
        }
        if let Some(d) = &a.state {
            if step.is_multiple_of(a.save_every) || step == a.steps {
                trainer.save_state(d)?;
            }
        }
        if a.eval_every > 0 && step.is_multiple_of(a.eval_every) {
            on_eval(step)?;
        }
    }
    Ok(())
}

fn open_log(path: Option<&Path>) -> anyhow::Result<Option<std::fs::File>> {
    path.map(|p| std::fs::File::create(p).with_context(|| format!("--log {}", p.display()))).transpose()
}

//! `lavic train distill` (stage 1: visual knowledge self-distillation) and `lavic train
//! recommend` (stage 2: recommendation fine-tuning), LaViC's two stages (`LAVIC_REFERENCE.md`
//! sections 5 and 6) on lavic-train, with the reference's bugs fixed (docs/TRAINING.md). `lavic
//! train base` (the demo's stage 0) is in [`crate::train_base`].
//!
//! Stage 2 never runs the vision tower per sample: every candidate's 5 image tokens come from a
//! catalog built with the stage-1 adapter (`--catalog`, whose encoder fingerprint must match, or
//! built here from `--items`), projected once. Validation after every epoch: stage 1 the
//! token-weighted description loss and perplexity, stage 2 the loss and HR@1 / VR of `lavic
//! eval`'s in-process default mode on the checkpoint just written.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use lavic_catalog::{BuildOptions, Catalog, InputFormat, ProgressMode};
use lavic_model::{parse_device, parse_dtype, DType, Device, ImageEncoder, LoadOptions};
use lavic_train::linear::Ctx;
use lavic_train::model::{Encoded, TrainModel, TrainOptions};
use lavic_train::optim::{AdamWConfig, Schedule};
use lavic_train::peft::Layout;
use lavic_train::spec::LoraSpec;
use lavic_train::trainer::TrainConfig;
use serde_json::json;

use crate::dataset::{read_conversations, CandidateList, Conversation};
use crate::eval::{self, EvalArgs, EvalMode};
use crate::progress::ProgressArg;
use crate::train_data::{self, ItemTokens, PromptRules};
use crate::train_loop::{self, LoopSettings, Validate, Validation};

/// `lavic train ...`.
#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Stage 0 of the demo: pre-train the tiny LLaVA-NeXT base on a demo world's `stage0.jsonl`
    /// (every parameter, full patch tokens); `--describe` writes the stage-1 teacher texts.
    Base(Box<crate::train_base::BaseArgs>),
    /// Stage 1: teach the 5 CLS image tokens the teacher's description (LoRA on the vision tower
    /// and projector).
    Distill(Box<DistillArgs>),
    /// Stage 2: teach the language model to answer a conversation with the right candidate id
    /// (LoRA on the language model), on catalog image tokens.
    Recommend(Box<RecommendTrainArgs>),
}

/// `--lr-scheduler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum SchedulerArg {
    /// Warm-up, then constant (the reference).
    #[default]
    Constant,
    /// Warm-up, then linear decay to 0.
    Linear,
    /// Warm-up, then cosine decay to 0.
    Cosine,
}

/// `--adapter-layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LayoutArg {
    /// transformers < 4.52 key names (what the reference saved).
    #[default]
    Legacy,
    /// transformers >= 4.52 key names.
    Modern,
}

/// Flags both stages share (names as Hugging Face's Trainer's).
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// llava-hf LLaVA-NeXT checkpoint folder.
    #[arg(long)]
    pub model: PathBuf,
    /// tokenizer.json [default: MODEL/tokenizer.json].
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Output folder (checkpoints, `best` and `last`); must be absent or empty unless --resume.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint (same hyperparameters).
    #[arg(long)]
    pub resume: bool,
    /// Epochs [default: stage 1 5, stage 2 1, as the reference].
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Stop after this many optimizer steps (overrides --epochs).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f64,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 1e-5)]
    pub weight_decay: f64,
    /// Gradient-norm clipping threshold (0 disables).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Samples per micro-batch [default: stage 1 4, stage 2 1, as the reference].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Learning-rate warm-up steps.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    /// Learning-rate schedule after the warm-up.
    #[arg(long, value_enum, default_value_t = SchedulerArg::Constant)]
    pub lr_scheduler: SchedulerArg,
    /// Seed of the LoRA initialisation, dropout, data order and ground-truth slots.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub lora_r: usize,
    /// LoRA alpha (scale alpha / r).
    #[arg(long, default_value_t = 32.0)]
    pub lora_alpha: f64,
    /// Dropout on the LoRA input.
    #[arg(long, default_value_t = 0.1)]
    pub lora_dropout: f64,
    /// Most tokens of prompt + target.
    #[arg(long, default_value_t = 2048)]
    pub max_length: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Frozen weights' dtype: f32, f16 or bf16 (LoRA weights and optimizer state are f32).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Gradient checkpointing of the decoder and vision layers: each layer's forward is re-run
    /// in the backward pass instead of keeping its activations (same gradients, ~1 extra
    /// forward per step, a fraction of the memory; see docs/TRAINING.md). Default: on for CUDA,
    /// off on CPU; `--grad-checkpoint=false` turns it off.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub grad_checkpoint: Option<bool>,
    /// Key names of the saved adapters.
    #[arg(long, value_enum, default_value_t = LayoutArg::Legacy)]
    pub adapter_layout: LayoutArg,
    /// Progress: a bar on a terminal, JSON lines on stderr otherwise.
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
    pub progress: ProgressArg,
    /// Steps between JSON progress lines.
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
}

/// Flags of `lavic train distill`.
#[derive(Debug, Clone, Args)]
pub struct DistillArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Items with descriptions (item2meta_valid.jsonl, item2meta_train.json or our items JSONL).
    #[arg(long)]
    pub items: PathBuf,
    /// Folder the items' image paths are relative to (missing files: the white image).
    #[arg(long)]
    pub images: PathBuf,
    /// Validation items (same layouts), evaluated after every epoch.
    #[arg(long)]
    pub valid_items: Option<PathBuf>,
}

/// Flags of `lavic train recommend`.
#[derive(Debug, Clone, Args)]
pub struct RecommendTrainArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Stage-1 adapter (from `lavic train distill`); without it the stock vision side is used
    /// (the paper's "w/o self-distillation").
    #[arg(long)]
    pub vision_adapter: Option<PathBuf>,
    /// Training conversations (Reddit-Amazon JSONL as distributed).
    #[arg(long)]
    pub data: PathBuf,
    /// Validation conversations, evaluated after every epoch.
    #[arg(long)]
    pub valid: Option<PathBuf>,
    /// Items file for titles and images; a catalog of the items the conversations use is built
    /// with the stage-1 adapter.
    #[arg(long, requires = "images", conflicts_with = "catalog")]
    pub items: Option<PathBuf>,
    /// Folder the items' image paths are relative to.
    #[arg(long, requires = "items")]
    pub images: Option<PathBuf>,
    /// A catalog built with this model and --vision-adapter (`lavic catalog build`).
    #[arg(long, required_unless_present = "items")]
    pub catalog: Option<PathBuf>,
    /// Which candidate list to use.
    #[arg(long, value_enum, default_value_t = CandidateList::St)]
    pub candidates: CandidateList,
    /// Append `</s>` to the target so the model learns to stop (the reference never does).
    #[arg(long)]
    pub eos: bool,
    /// Also put LoRA on lm_head (what the reference got with transformers < 4.52).
    #[arg(long)]
    pub lora_lm_head: bool,
    /// Ids missing from the items / catalog get the reference's fallback ("No Title", white
    /// image) instead of an error.
    #[arg(long)]
    pub allow_unknown_ids: bool,
    /// Conversations per model call in validation.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub eval_batch: u32,
}

/// Runs a `lavic train` command.
pub fn run(cmd: TrainCommand) -> anyhow::Result<()> {
    match cmd {
        TrainCommand::Base(a) => crate::train_base::run(&a),
        TrainCommand::Distill(a) => distill(&a),
        TrainCommand::Recommend(a) => recommend(&a),
    }
}

fn device_dtype(c: &CommonArgs) -> anyhow::Result<(Device, DType)> {
    Ok((parse_device(&c.device)?, parse_dtype(&c.dtype)?))
}

fn spec(c: &CommonArgs, base: LoraSpec) -> LoraSpec {
    LoraSpec { r: c.lora_r, alpha: c.lora_alpha, dropout: c.lora_dropout, ..base }
}

fn train_options(c: &CommonArgs) -> anyhow::Result<TrainOptions> {
    let (device, dtype) = device_dtype(c)?;
    let mut o = TrainOptions::new(&c.model);
    o.tokenizer = c.tokenizer.clone();
    o.device = device;
    o.dtype = dtype;
    o.seed = c.seed;
    o.grad_checkpoint = c.grad_checkpoint.unwrap_or(o.device.is_cuda());
    Ok(o)
}

/// Loop settings from the flags, `n` samples and the stage's default epochs / batch.
fn settings<'a>(c: &'a CommonArgs, n: usize, stage: (u64, usize), spec: &'a LoraSpec, prefixes: &'a [&'a str]) -> anyhow::Result<LoopSettings<'a>> {
    let (epochs, batch) = (c.epochs.unwrap_or(stage.0), c.batch_size.unwrap_or(stage.1));
    if batch == 0 || c.grad_accum == 0 {
        bail!("--batch-size and --grad-accum must be at least 1");
    }
    let steps_per_epoch = n.div_ceil(batch * c.grad_accum).max(1) as u64;
    let total_steps = c.max_steps.unwrap_or(epochs * steps_per_epoch);
    if total_steps == 0 {
        bail!("nothing to train: --epochs / --max-steps give 0 steps");
    }
    let schedule = match c.lr_scheduler {
        SchedulerArg::Constant => Schedule::Constant { warmup: c.warmup_steps },
        SchedulerArg::Linear => Schedule::Linear { warmup: c.warmup_steps, total: total_steps },
        SchedulerArg::Cosine => Schedule::Cosine { warmup: c.warmup_steps, total: total_steps },
    };
    let config = TrainConfig {
        optim: AdamWConfig { lr: c.lr, weight_decay: c.weight_decay, ..Default::default() },
        schedule,
        max_grad_norm: (c.max_grad_norm > 0.0).then_some(c.max_grad_norm),
        batch_size: batch,
        accumulation: c.grad_accum,
        seed: c.seed,
        shuffle: true,
    };
    Ok(LoopSettings {
        out: &c.out,
        resume: c.resume,
        config,
        steps_per_epoch,
        total_steps,
        spec,
        prefixes,
        layout: match c.adapter_layout {
            LayoutArg::Legacy => Layout::Legacy,
            LayoutArg::Modern => Layout::Modern,
        },
        base_model: c.model.display().to_string(),
        progress: c.progress,
        log_every: c.log_every,
    })
}

/// Token-weighted mean loss of `data` in eval mode (no dropout), batches of one.
fn eval_loss(model: &TrainModel, data: &[Encoded]) -> anyhow::Result<f64> {
    let (mut sum, mut n) = (0f64, 0usize);
    for e in data {
        let (s, k) = model.loss_sum(std::slice::from_ref(e), &mut Ctx::eval())?;
        sum += s.to_scalar::<f32>()? as f64;
        n += k;
    }
    Ok(sum / n.max(1) as f64)
}

fn report_done(out: &Path, info: &train_loop::CheckpointInfo) {
    let best = train_loop::best_dir(out);
    eprintln!("{}", json!({"event": "done", "step": info.step, "best": best.display().to_string(), "best_step": info.best_step,
        "last": out.join("last").display().to_string()}));
}

// ---- stage 1 --------------------------------------------------------------------------------

struct DistillValidator {
    data: Vec<Encoded>,
}

impl Validate for DistillValidator {
    fn validate(&mut self, model: &TrainModel, _dir: &Path) -> anyhow::Result<Validation> {
        let loss = eval_loss(model, &self.data)?;
        Ok(Validation { metrics: json!({"loss": loss, "perplexity": loss.exp(), "items": self.data.len()}), score: (-loss, 0.0) })
    }
}

fn distill(a: &DistillArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let set = train_data::read_distill_items(&a.items, &a.images)?;
    if set.items.is_empty() {
        bail!("{}: no item has a description ({} items without one)", a.items.display(), set.no_description.len());
    }
    let mut o = train_options(c)?;
    let spec = spec(c, LoraSpec::stage1());
    o.vision = Some(spec.clone());
    let model = TrainModel::load(&o)?;
    let (data, missing) = train_data::distill_examples(&model, &set.items)?;
    eprintln!(
        "{}",
        json!({"event": "data", "stage": "distill", "items": data.len(), "skipped_no_description": set.no_description.len(),
            "missing_images": missing, "grad_checkpoint": model.grad_checkpoint()})
    );
    let mut validator = match &a.valid_items {
        Some(p) => {
            let v = train_data::read_distill_items(p, &a.images)?;
            let (vdata, _) = train_data::distill_examples(&model, &v.items)?;
            if vdata.is_empty() {
                bail!("{}: no validation item has a description", p.display());
            }
            Some(DistillValidator { data: vdata })
        }
        None => None,
    };
    let prefixes = ["vision_tower.", "multi_modal_projector."];
    let s = settings(c, data.len(), (5, 4), &spec, &prefixes)?;
    let info = train_loop::run(&model, &data, &s, validator.as_mut().map(|v| v as &mut dyn Validate))?;
    report_done(&c.out, &info);
    Ok(())
}

// ---- stage 2 --------------------------------------------------------------------------------

fn encoder_options(a: &RecommendTrainArgs) -> anyhow::Result<LoadOptions> {
    let (device, dtype) = device_dtype(&a.common)?;
    let mut o = LoadOptions::new(&a.common.model);
    o.tokenizer = a.common.tokenizer.clone();
    o.vision_adapter = a.vision_adapter.clone();
    o.dtype = Some(dtype);
    o.device = device;
    Ok(o)
}

/// The catalog the image tokens come from: `--catalog` (checked against the encoder) or one
/// built from `--items` for `ids` in a temporary folder (kept alive by the returned guard; none
/// when the items file holds none of `ids`).
fn open_catalog(a: &RecommendTrainArgs, enc: &ImageEncoder, ids: &HashSet<&str>) -> anyhow::Result<(Option<Catalog>, Option<tempfile::TempDir>)> {
    if let Some(dir) = &a.catalog {
        let c = Catalog::open_read_only(dir)?;
        let adapter = a.vision_adapter.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into());
        c.check_encoder(enc).with_context(|| {
            format!("catalog {} was not built with this model and vision adapter ({adapter}); rebuild it with `lavic catalog build`", dir.display())
        })?;
        return Ok((Some(c), None));
    }
    let (items, images) = (a.items.as_ref().context("--items or --catalog")?, a.images.as_ref().context("--images")?);
    let temp = tempfile::Builder::new().prefix("lavic-train-catalog-").tempdir()?;
    let mut lines = String::new();
    for it in lavic_catalog::read_items(items, InputFormat::Auto)? {
        if ids.contains(it.id.as_str()) {
            lines += &json!({ "id": it.id, "title": it.title, "image": it.image }).to_string();
            lines.push('\n');
        }
    }
    if lines.is_empty() {
        eprintln!("{}", json!({"event": "catalog", "items": 0}));
        return Ok((None, None));
    }
    let subset = temp.path().join("items.jsonl");
    std::fs::write(&subset, lines)?;
    let mut opts = BuildOptions::new(&subset, images, temp.path().join("catalog"));
    opts.format = InputFormat::Items;
    opts.progress = ProgressMode::Off;
    let report = lavic_catalog::build(&opts, enc)?;
    if let Some((id, why)) = report.failed.first() {
        bail!("item {id}: {why}");
    }
    eprintln!("{}", json!({"event": "catalog", "items": report.items, "missing_images": report.missing_images.len()}));
    Ok((Some(Catalog::open_read_only(&temp.path().join("catalog"))?), Some(temp)))
}

/// Title and projected tokens of every id the conversations use; unknown ids are an error
/// naming the conversation unless `--allow-unknown-ids` (then the reference's fallback).
fn item_tokens(a: &RecommendTrainArgs, sets: &[(&Path, &[Conversation])]) -> anyhow::Result<(HashMap<String, ItemTokens>, Option<tempfile::TempDir>)> {
    let enc = ImageEncoder::load(&encoder_options(a)?).context("cannot load the vision side with --vision-adapter")?;
    // Every id once, in file order (so an error names the first unknown one).
    let mut ids: HashSet<&str> = HashSet::new();
    let list: Vec<&str> = sets
        .iter()
        .flat_map(|(_, cs)| cs.iter().flat_map(|c| c.candidates.iter().chain(&c.gt_items)))
        .map(String::as_str)
        .filter(|id| ids.insert(id))
        .collect();
    let (catalog, temp) = open_catalog(a, &enc, &ids)?;
    let found = match &catalog {
        Some(c) => c.tokens(&list, &enc)?,
        None => list.iter().map(|_| None).collect(),
    };
    let white = enc.project(&enc.encode_cls(&[enc.white_image()])?)?.get(0)?;
    let mut out = HashMap::new();
    let mut unknown = 0;
    for (id, item) in list.iter().zip(found) {
        let it = match item {
            Some(it) => ItemTokens { title: it.title, tokens: it.tokens },
            None => {
                if !a.allow_unknown_ids {
                    let (path, conv) = sets
                        .iter()
                        .find_map(|(p, cs)| cs.iter().find(|c| c.candidates.iter().chain(&c.gt_items).any(|x| x == id)).map(|c| (p, c)))
                        .context("id without conversation")?;
                    bail!(
                        "{}: conversation {}: item id {id:?} is not in the items / catalog (pass --allow-unknown-ids for the reference's fallback: \"No Title\" and the white image)",
                        path.display(),
                        conv.index + 1
                    );
                }
                unknown += 1;
                ItemTokens { title: String::new(), tokens: white.clone() }
            }
        };
        out.insert(id.to_string(), it);
    }
    eprintln!("{}", json!({"event": "items", "ids": out.len(), "fallback_ids": unknown}));
    Ok((out, temp))
}

fn encode_pairs(model: &TrainModel, convs: &[Conversation], items: &HashMap<String, ItemTokens>, rules: PromptRules, seed: u64) -> anyhow::Result<(Vec<Encoded>, usize)> {
    let mut out = Vec::new();
    let mut shortened = 0;
    for p in train_data::pairs(convs, seed) {
        let (e, cut) = train_data::recommend_example(model, &convs[p.conversation], &p, items, rules)?;
        shortened += (cut > 0) as usize;
        out.push(e);
    }
    Ok((out, shortened))
}

struct RecommendValidator {
    data: Vec<Encoded>,
    eval: EvalArgs,
}

impl Validate for RecommendValidator {
    fn validate(&mut self, model: &TrainModel, dir: &Path) -> anyhow::Result<Validation> {
        let loss = eval_loss(model, &self.data)?;
        let mut args = self.eval.clone();
        args.lm_adapter = Some(dir.to_path_buf());
        args.out = dir.join("valid.jsonl");
        args.summary = Some(dir.join("valid_summary.json"));
        let s = eval::evaluate(&args)?;
        let metrics = json!({"loss": loss, "hr1_per_pair": s.hr1_per_pair.value, "hr1_per_conversation": s.hr1_per_conversation.value,
            "vr": s.vr.value, "conversations": s.conversations, "pairs": s.hr1_per_pair.of});
        Ok(Validation { metrics, score: (s.hr1_per_pair.value, -loss) })
    }
}

fn recommend(a: &RecommendTrainArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let convs = read_conversations(&a.data, a.candidates, None)?;
    let valid = match &a.valid {
        Some(p) => Some((p.as_path(), read_conversations(p, a.candidates, None)?)),
        None => None,
    };
    let mut sets: Vec<(&Path, &[Conversation])> = vec![(a.data.as_path(), &convs)];
    if let Some((p, v)) = &valid {
        sets.push((p, v));
    }
    let (items, temp) = item_tokens(a, &sets)?;
    let mut o = train_options(c)?;
    let spec = spec(c, LoraSpec::stage2(a.lora_lm_head));
    o.lm = Some(spec.clone());
    let model = TrainModel::load(&o)?;
    let rules = PromptRules { max_length: c.max_length, eos: a.eos };
    let (data, shortened) = encode_pairs(&model, &convs, &items, rules, c.seed)?;
    eprintln!("{}", json!({"event": "data", "stage": "recommend", "conversations": convs.len(), "samples": data.len(), "shortened": shortened,
        "grad_checkpoint": model.grad_checkpoint()}));
    let mut validator = match &valid {
        Some((p, v)) => {
            let (vdata, _) = encode_pairs(&model, v, &items, rules, c.seed)?;
            let catalog = match (&a.catalog, &temp) {
                (Some(dir), _) => Some(dir.clone()),
                (None, Some(t)) => Some(t.path().join("catalog")),
                (None, None) => None,
            };
            Some(RecommendValidator { data: vdata, eval: eval_args(a, p, catalog) })
        }
        None => None,
    };
    let prefixes = ["language_model."];
    let s = settings(c, data.len(), (1, 1), &spec, &prefixes)?;
    let info = train_loop::run(&model, &data, &s, validator.as_mut().map(|v| v as &mut dyn Validate))?;
    report_done(&c.out, &info);
    drop(temp);
    Ok(())
}

/// `lavic eval` in-process, default mode, on the training run's catalog.
fn eval_args(a: &RecommendTrainArgs, data: &Path, catalog: Option<PathBuf>) -> EvalArgs {
    let c = &a.common;
    EvalArgs {
        data: data.to_path_buf(),
        items: None,
        images: None,
        catalog,
        model: Some(c.model.clone()),
        tokenizer: c.tokenizer.clone(),
        vision_adapter: a.vision_adapter.clone(),
        lm_adapter: None,
        device: c.device.clone(),
        dtype: c.dtype.clone(),
        candidates: a.candidates,
        mode: EvalMode::Default,
        limit: None,
        batch: a.eval_batch,
        max_prompt_tokens: c.max_length,
        addr: None,
        concurrency: 1,
        timeout_secs: 600,
        tls: lavic_server::client::TlsArgs { tls_ca: None, tls_domain: None },
        out: PathBuf::new(),
        summary: None,
        progress: ProgressArg::Off,
    }
}

//! `lavic dev ...`: developer tools for the real-size proof (`scripts/real-size.sh`,
//! `scripts/gpu-check.sh`), not needed to serve.
//!
//! - `write-realsize`: a random-weight checkpoint with the exact names, shapes and dtype of
//!   llava-v1.6-mistral-7b-hf (or vicuna-7b) plus LaViC-shaped adapters
//!   (`lavic_model::testing::realsize`), streamed to disk.
//! - `probe`: loads a model as `lavic serve` does, then times the vision tower and one
//!   recommendation, printing one JSON object per phase (with the process's peak RSS).
//! - `synthetic-catalog`: writes a catalog of N items with random features for an encoder
//!   fingerprint and times its open and lookups.
//! - `compare`: our side of `benches/compare-torch.py` (prefill, decode steps, vision tower,
//!   default and FREE requests on one checkpoint), in [`compare`].

mod compare;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use lavic_model::testing::realsize::{
    write_realsize, RealSizeOptions, Size, Variant, DEFAULT_SHARD_BYTES,
};
use lavic_model::{Candidate, LavicModel, LoadOptions, Mode, RecommendInput, RecommendOptions};
use serde_json::json;

/// `lavic dev` subcommands.
#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Write a random real-size checkpoint (model/, vision-adapter/, lm-adapter/) under --out.
    WriteRealsize(WriteArgs),
    /// Load a model and time the vision tower and one recommendation (JSON lines on stdout).
    Probe(ProbeArgs),
    /// Write a synthetic catalog of random features and time its open and lookups.
    SyntheticCatalog(SyntheticArgs),
    /// Encode one image with the vision side only and save its pixel views and CLS features
    /// (safetensors `pixels`, `cls`, f32) for `tests/fixtures/realsize_cls_check.py`.
    EncodeCls(EncodeClsArgs),
    /// Compare a device against the CPU on a (tiny) checkpoint: f32 CLS features and candidate
    /// logits within --tolerance, bf16 picks identical. Exits non-zero on a mismatch.
    DeviceCheck(DeviceCheckArgs),
    /// Time prefill, decode steps, the vision tower and requests on one checkpoint, for
    /// `benches/compare-torch.py` (JSON lines on stdout).
    Compare(compare::CompareArgs),
}

/// Flags of `lavic dev device-check`.
#[derive(Debug, Args)]
pub struct DeviceCheckArgs {
    /// llava-hf checkpoint folder (e.g. tests/fixtures/tiny-mistral).
    #[arg(long)]
    pub model_dir: PathBuf,
    /// tokenizer.json (default: the model folder's).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Stage-1 adapter.
    #[arg(long)]
    pub vision_adapter: Option<PathBuf>,
    /// Stage-2 adapter.
    #[arg(long)]
    pub lm_adapter: Option<PathBuf>,
    /// The device to check against the CPU.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Images (their tokens are the candidates', in turn).
    #[arg(long, value_delimiter = ',', required = true)]
    pub images: Vec<PathBuf>,
    /// Largest absolute difference allowed between f32 CPU and device values.
    #[arg(long, default_value_t = 1e-3)]
    pub tolerance: f32,
}

/// Flags of `lavic dev encode-cls`.
#[derive(Debug, Args)]
pub struct EncodeClsArgs {
    /// llava-hf checkpoint folder.
    #[arg(long)]
    pub model_dir: PathBuf,
    /// Stage-1 adapter.
    #[arg(long)]
    pub vision_adapter: Option<PathBuf>,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// The image.
    #[arg(long)]
    pub image: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
}

/// Flags of `lavic dev write-realsize`.
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// Output folder (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Which checkpoint to mimic: mistral (llava-v1.6-mistral-7b-hf) or vicuna.
    #[arg(long, default_value = "mistral")]
    pub variant: String,
    /// full (the published sizes) or mid (~137M parameters, for `benches/compare-torch.py`).
    #[arg(long, default_value = "full")]
    pub size: String,
    /// Seed of every value.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder with the llava-hf tokenizer files (default: the repository's tests/fixtures/tokenizer).
    #[arg(long)]
    pub tokenizer_dir: Option<PathBuf>,
    /// Shard size limit in bytes.
    #[arg(long, default_value_t = DEFAULT_SHARD_BYTES)]
    pub max_shard_bytes: u64,
}

/// Flags of `lavic dev probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// llava-hf checkpoint folder.
    #[arg(long)]
    pub model_dir: PathBuf,
    /// Stage-1 adapter.
    #[arg(long)]
    pub vision_adapter: Option<PathBuf>,
    /// Stage-2 adapter.
    #[arg(long)]
    pub lm_adapter: Option<PathBuf>,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Images to encode (each: 5 views through the tower); their tokens are reused for the
    /// candidates in turn.
    #[arg(long, value_delimiter = ',', required_unless_present = "load_only")]
    pub images: Vec<PathBuf>,
    /// Candidates in the request.
    #[arg(long, default_value_t = 10)]
    pub candidates: usize,
    /// Dialogue file (the reference's raw context); default: a one-line request.
    #[arg(long)]
    pub context_file: Option<PathBuf>,
    /// Also run the request in FREE mode (the reference's 10-token greedy generation).
    #[arg(long)]
    pub free: bool,
    /// Times to run each request (after the first, which is reported as cold).
    #[arg(long, default_value_t = 0)]
    pub repeats: usize,
    /// Do not run the instruction head through the decoder at load (`LoadOptions::share_prefix`
    /// off): the load time is then the weights alone.
    #[arg(long)]
    pub no_shared_prefix: bool,
    /// Stop after loading.
    #[arg(long)]
    pub load_only: bool,
}

/// Flags of `lavic dev synthetic-catalog`.
#[derive(Debug, Args)]
pub struct SyntheticArgs {
    /// Catalog folder (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Items.
    #[arg(long)]
    pub items: usize,
    /// Values per view (the vision width, 1024 for ViT-L, for CLS features).
    #[arg(long, default_value_t = 1024)]
    pub width: usize,
    /// Encoder fingerprint the catalog claims (from `lavic dev probe`), 64 hex characters.
    #[arg(long)]
    pub fingerprint: String,
    /// Random lookups to time after opening.
    #[arg(long, default_value_t = 10_000)]
    pub lookups: usize,
}

/// Runs a `lavic dev` command.
pub fn run(cmd: DevCommand) -> anyhow::Result<()> {
    match cmd {
        DevCommand::WriteRealsize(a) => write(&a),
        DevCommand::Probe(a) => probe(&a),
        DevCommand::SyntheticCatalog(a) => synthetic(&a),
        DevCommand::EncodeCls(a) => encode_cls(&a),
        DevCommand::DeviceCheck(a) => device_check(&a),
        DevCommand::Compare(a) => compare::compare(&a),
    }
}

fn fixture_tokenizer() -> anyhow::Result<PathBuf> {
    [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer"),
        PathBuf::from("tests/fixtures/tokenizer"),
    ]
    .into_iter()
    .find(|p| p.join("tokenizer.json").is_file())
    .context("tests/fixtures/tokenizer not found: pass --tokenizer-dir")
}

fn write(a: &WriteArgs) -> anyhow::Result<()> {
    let variant: Variant = a.variant.parse()?;
    let size: Size = a.size.parse()?;
    let tokenizer_dir = match &a.tokenizer_dir {
        Some(d) => d.clone(),
        None => fixture_tokenizer()?,
    };
    let opts = RealSizeOptions {
        out: a.out.clone(),
        variant,
        size,
        seed: a.seed,
        max_shard_bytes: a.max_shard_bytes,
        tokenizer_dir,
    };
    let t0 = Instant::now();
    let w = write_realsize(&opts, |path, bytes| {
        eprintln!(
            "wrote {} ({:.2} GB, {:.0} s)",
            path.display(),
            bytes as f64 / 1e9,
            t0.elapsed().as_secs_f64()
        );
    })?;
    let secs = t0.elapsed().as_secs_f64();
    let report = json!({
        "phase": "write",
        "variant": variant.repo(),
        "size": format!("{size:?}"),
        "model_dir": w.model_dir,
        "vision_adapter": w.vision_adapter,
        "lm_adapter": w.lm_adapter,
        "params": w.params,
        "checkpoint_bytes": w.checkpoint_bytes,
        "adapter_bytes": w.adapter_bytes,
        "shards": w.shards.len(),
        "seconds": secs,
        "mb_per_s": (w.checkpoint_bytes + w.adapter_bytes) as f64 / 1e6 / secs,
        "peak_rss_bytes": peak_rss(),
    });
    println!("{report}");
    Ok(())
}

/// `VmHWM` (peak resident set) and `VmRSS` of this process in bytes, from /proc (Linux).
fn rss() -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<u64>().ok())
                .map(|kb| kb * 1024)
        })
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn peak_rss() -> Option<u64> {
    rss().0
}

const DEFAULT_CONTEXT: &str = "<submission>Looking for a sturdy everyday backpack with a red strap, nothing too bulky. Any recommendations?</submission>\n<comment>I had good luck with a canvas one.</comment>\n";

fn probe(a: &ProbeArgs) -> anyhow::Result<()> {
    let mut opts = LoadOptions::new(&a.model_dir);
    opts.vision_adapter = a.vision_adapter.clone();
    opts.lm_adapter = a.lm_adapter.clone();
    opts.dtype = Some(lavic_model::parse_dtype(&a.dtype)?);
    opts.device = lavic_model::parse_device(&a.device)?;
    opts.share_prefix = !a.no_shared_prefix;
    let t0 = Instant::now();
    let model = LavicModel::load(&opts)?;
    let (hwm, now) = rss();
    let ckpt_bytes = checkpoint_bytes(&a.model_dir)?;
    println!(
        "{}",
        json!({
            "phase": "load",
            "seconds": t0.elapsed().as_secs_f64(),
            "checkpoint_bytes": ckpt_bytes,
            "peak_rss_bytes": hwm,
            "rss_bytes": now,
            "peak_rss_over_checkpoint": hwm.map(|h| h as f64 / ckpt_bytes as f64),
            "dtype": a.dtype,
            "device": a.device,
            "encoder_fingerprint": model.encoder.fingerprint(),
            "vocab": model.tokenizer.len(),
            "shared_prefix": opts.share_prefix,
        })
    );
    if a.load_only {
        return Ok(());
    }

    let images = a
        .images
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Ok(model.encoder.decode(&bytes)?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if images.is_empty() || a.candidates == 0 {
        anyhow::bail!("--images and --candidates must not be empty (or pass --load-only)");
    }
    let t = Instant::now();
    let pixels = model.encoder.pixels(&images)?;
    let prep = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let cls = model.encoder.cls_from_pixels(&pixels)?;
    let tower = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let tokens = model.encoder.project(&cls)?;
    let proj = t.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "phase": "encode",
            "images": images.len(),
            "views": pixels.dim(0)?,
            "view_size": pixels.dim(2)?,
            "preprocess_seconds": prep,
            "tower_seconds": tower,
            "projector_seconds": proj,
            "images_per_second": images.len() as f64 / (prep + tower + proj),
            "cls_shape": cls.dims(),
            "tokens_shape": tokens.dims(),
            "peak_rss_bytes": peak_rss(),
        })
    );

    let context = match &a.context_file {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => DEFAULT_CONTEXT.to_string(),
    };
    let candidates = (0..a.candidates)
        .map(|i| {
            Ok(Candidate {
                id: format!("B{:09}", 100_000 + i),
                title: format!("Product number {i} with a descriptive title"),
                tokens: tokens.get(i % images.len())?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut modes = vec![Mode::Default];
    if a.free {
        modes.push(Mode::Free);
    }
    for mode in modes {
        let input = RecommendInput {
            context: context.clone(),
            candidates: candidates.clone(),
            options: RecommendOptions {
                mode,
                ..RecommendOptions::default()
            },
        };
        for run in 0..=a.repeats {
            let passes = model.forward_passes();
            let t = Instant::now();
            let r = model.recommend(&input)?;
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{}",
                json!({
                    "phase": "recommend",
                    "mode": format!("{mode:?}"),
                    "run": run,
                    "candidates": a.candidates,
                    "prompt_tokens": r.prompt_tokens,
                    "seconds": secs,
                    "forward_passes": model.forward_passes() - passes,
                    "pick": r.pick,
                    "valid": r.valid,
                    "raw_answer": r.raw_answer,
                    "peak_rss_bytes": peak_rss(),
                })
            );
        }
    }
    Ok(())
}

fn encode_cls(a: &EncodeClsArgs) -> anyhow::Result<()> {
    let mut opts = LoadOptions::new(&a.model_dir);
    opts.vision_adapter = a.vision_adapter.clone();
    opts.dtype = Some(lavic_model::parse_dtype(&a.dtype)?);
    let t = Instant::now();
    let encoder = lavic_model::ImageEncoder::load(&opts)?;
    let load_s = t.elapsed().as_secs_f64();
    let bytes =
        std::fs::read(&a.image).with_context(|| format!("reading {}", a.image.display()))?;
    let image = encoder.decode(&bytes)?;
    let pixels = encoder.pixels(std::slice::from_ref(&image))?;
    let t = Instant::now();
    let cls = encoder.cls_from_pixels(&pixels)?;
    let tower_s = t.elapsed().as_secs_f64();
    let f32 = lavic_model::DType::F32;
    let cls = cls.squeeze(0)?.to_dtype(f32)?;
    let tensors = std::collections::HashMap::from([
        ("pixels".to_string(), pixels.to_dtype(f32)?),
        ("cls".to_string(), cls),
    ]);
    candle_core::safetensors::save(&tensors, &a.out)?;
    println!(
        "{}",
        json!({"phase": "encode-cls", "load_seconds": load_s, "tower_seconds": tower_s, "views": pixels.dims(), "out": a.out, "peak_rss_bytes": peak_rss()})
    );
    Ok(())
}

fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> anyhow::Result<f32> {
    let f32 = lavic_model::DType::F32;
    let cpu = candle_core::Device::Cpu;
    let (a, b) = (
        a.to_device(&cpu)?.to_dtype(f32)?,
        b.to_device(&cpu)?.to_dtype(f32)?,
    );
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

const CHECK_CONTEXTS: [&str; 4] = [
    "<submission>I need a bag with a red strap for work.</submission>\n",
    "<submission>A mug that keeps coffee warm?</submission>\n<comment>Get a double-walled one.</comment>\n",
    "<submission>Desk light for late nights, warm white please.</submission>\n",
    "<submission>Gift ideas for someone who likes retro games?</submission>\n<comment>Pixel art pins!</comment>\n",
];

fn device_check(a: &DeviceCheckArgs) -> anyhow::Result<()> {
    let device = lavic_model::parse_device(&a.device)?;
    let load = |dtype, device: candle_core::Device| -> anyhow::Result<LavicModel> {
        let mut o = LoadOptions::new(&a.model_dir);
        o.tokenizer = a.tokenizer.clone();
        o.vision_adapter = a.vision_adapter.clone();
        o.lm_adapter = a.lm_adapter.clone();
        o.dtype = Some(dtype);
        o.device = device;
        Ok(LavicModel::load(&o)?)
    };
    let bytes = a
        .images
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let requests = |m: &LavicModel| -> anyhow::Result<(candle_core::Tensor, Vec<RecommendInput>)> {
        let images = bytes
            .iter()
            .map(|b| Ok(m.encoder.decode(b)?))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cls = m.encoder.encode_cls(&images)?;
        let tokens = m.encoder.project(&cls)?;
        let inputs = CHECK_CONTEXTS
            .iter()
            .enumerate()
            .map(|(k, ctx)| {
                let candidates = (0..images.len().max(2))
                    .map(|i| {
                        Ok(Candidate {
                            id: format!("B{:09}", 1000 * k + i),
                            title: format!("Item {i}"),
                            tokens: tokens.get((i + k) % images.len())?,
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let options = RecommendOptions {
                    scores: true,
                    ..RecommendOptions::default()
                };
                Ok(RecommendInput {
                    context: ctx.to_string(),
                    candidates,
                    options,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((cls, inputs))
    };
    let mut ok = true;
    // f32: values within the tolerance
    let (cpu, dev) = (
        load(lavic_model::DType::F32, candle_core::Device::Cpu)?,
        load(lavic_model::DType::F32, device.clone())?,
    );
    let (cls_cpu, in_cpu) = requests(&cpu)?;
    let (cls_dev, in_dev) = requests(&dev)?;
    let cls_diff = max_abs_diff(&cls_cpu, &cls_dev)?;
    let mut logit_diff = 0f32;
    for (x, y) in in_cpu.iter().zip(&in_dev) {
        for (l1, l2) in cpu
            .candidate_logits(x)?
            .iter()
            .zip(dev.candidate_logits(y)?)
        {
            logit_diff = logit_diff.max(max_abs_diff(l1, &l2)?);
        }
    }
    ok &= cls_diff <= a.tolerance && logit_diff <= a.tolerance;
    println!(
        "{}",
        json!({"phase": "device-check-f32", "device": a.device, "cls_max_abs_diff": cls_diff, "logits_max_abs_diff": logit_diff, "tolerance": a.tolerance, "ok": cls_diff <= a.tolerance && logit_diff <= a.tolerance})
    );
    drop((cpu, dev));
    // bf16: identical picks (and validity) on every request, default and FREE
    let (cpu, dev) = (
        load(lavic_model::DType::BF16, candle_core::Device::Cpu)?,
        load(lavic_model::DType::BF16, device)?,
    );
    let (_, in_cpu) = requests(&cpu)?;
    let (_, in_dev) = requests(&dev)?;
    let mut same = 0;
    let mut total = 0;
    for (x, y) in in_cpu.iter().zip(&in_dev) {
        for mode in [Mode::Default, Mode::Free] {
            let (mut x, mut y) = (x.clone(), y.clone());
            x.options.mode = mode;
            y.options.mode = mode;
            let (r1, r2) = (cpu.recommend(&x)?, dev.recommend(&y)?);
            total += 1;
            if r1.pick == r2.pick && r1.valid == r2.valid {
                same += 1;
            } else {
                eprintln!(
                    "bf16 {mode:?}: cpu picked {:?} (valid {}), device {:?} (valid {})",
                    r1.pick, r1.valid, r2.pick, r2.valid
                );
            }
        }
    }
    ok &= same == total;
    println!(
        "{}",
        json!({"phase": "device-check-bf16", "requests": total, "identical_picks": same, "ok": same == total})
    );
    if !ok {
        anyhow::bail!("device check failed");
    }
    Ok(())
}

/// Bytes of the checkpoint's safetensors files.
fn checkpoint_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        if e.path().extension().is_some_and(|x| x == "safetensors") {
            total += e.metadata()?.len();
        }
    }
    Ok(total)
}

fn synthetic(a: &SyntheticArgs) -> anyhow::Result<()> {
    use lavic_catalog::{synthetic_id, write_synthetic, Catalog, StoreForm};
    if a.items == 0 {
        anyhow::bail!("--items must be at least 1");
    }
    let t = Instant::now();
    let cat = write_synthetic(&a.out, a.items, a.width, StoreForm::Cls, &a.fingerprint)?;
    let write_s = t.elapsed().as_secs_f64();
    let bytes_per_item = cat.bytes_per_item();
    drop(cat);
    let t = Instant::now();
    let cat = Catalog::open_read_only(&a.out)?;
    let open_s = t.elapsed().as_secs_f64();
    let mut disk = 0u64;
    for e in std::fs::read_dir(&a.out)? {
        disk += e?.metadata()?.len();
    }
    // random ids (xorshift), features read and checksum-verified on each lookup
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let t = Instant::now();
    let mut found = 0usize;
    for _ in 0..a.lookups {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let id = synthetic_id((state % a.items as u64) as usize);
        if cat.stored_features(&id)?.is_some() {
            found += 1;
        }
    }
    let lookup_s = t.elapsed().as_secs_f64();
    if found != a.lookups {
        anyhow::bail!("only {found} of {} lookups found their item", a.lookups);
    }
    println!(
        "{}",
        json!({
            "phase": "catalog",
            "items": a.items,
            "width": a.width,
            "feature_bytes_per_item": bytes_per_item,
            "disk_bytes": disk,
            "disk_bytes_per_item": disk as f64 / a.items as f64,
            "write_seconds": write_s,
            "open_seconds": open_s,
            "lookups": a.lookups,
            "lookup_us_mean": lookup_s * 1e6 / a.lookups.max(1) as f64,
            "peak_rss_bytes": peak_rss(),
        })
    );
    Ok(())
}

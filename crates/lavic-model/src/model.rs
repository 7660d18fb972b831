//! The assembled LaViC model: loading a llava-hf LLaVA-NeXT folder with its adapters, the
//! 5-token image encoder, prompt embedding with image tokens spliced in, logits and the
//! reference's greedy decoding.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::anyres::{self, AnyResConfig, DecodeLimits, NUM_VIEWS};
use crate::clip::ClipVisionTower;
use crate::config::{LlavaConfig, PreprocessorConfig};
use crate::decoder::{causal_mask, Decoder, KvCache};
use crate::error::{Error, Result};
use crate::lora::Adapter;
use crate::projector::Projector;
use crate::prompt::{LavicTokenizer, TokenizedPrompt};
use crate::resample::Rgb8;
use crate::weights::{Checkpoint, Weights};

/// What to load and how.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// llava-hf checkpoint folder.
    pub model_dir: PathBuf,
    /// `tokenizer.json`; defaults to the one in `model_dir`.
    pub tokenizer: Option<PathBuf>,
    /// Stage-1 adapter (vision tower + projector).
    pub vision_adapter: Option<PathBuf>,
    /// Stage-2 adapter (language model, lm_head).
    pub lm_adapter: Option<PathBuf>,
    /// Compute dtype; the checkpoint's own dtype when None.
    pub dtype: Option<DType>,
    /// Device.
    pub device: Device,
    /// Merge LoRA into the weights (inference); false keeps updates unmerged on each layer.
    pub merge_lora: bool,
    /// Image decoding limits.
    pub decode_limits: DecodeLimits,
    /// Run the recommendation prompt's fixed instruction head through the decoder once at load
    /// and start every default-mode pass from its cached keys/values (same answers; see
    /// `recommend`). Costs one pass over ~110 tokens at load.
    pub share_prefix: bool,
}

impl LoadOptions {
    /// CPU, checkpoint dtype, merged adapters.
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        Self {
            model_dir: model_dir.into(),
            tokenizer: None,
            vision_adapter: None,
            lm_adapter: None,
            dtype: None,
            device: Device::Cpu,
            merge_lora: true,
            decode_limits: DecodeLimits::default(),
            share_prefix: true,
        }
    }
}

/// Parses `f32`, `f16` or `bf16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(Error::Input(format!("dtype {other:?} (expected f32, f16 or bf16)"))),
    }
}

/// The compute dtype used when none is configured, the same for `lavic serve` and `lavic catalog
/// build` (its catalog's fingerprint depends on it): f32 on CPU (candle's fast path there),
/// `None` (the checkpoint's own dtype) on a GPU.
pub fn default_dtype(device: &Device) -> Option<DType> {
    device.is_cpu().then_some(DType::F32)
}

/// Which encoder settings explain a fingerprint: `target` is compared with the fingerprints of
/// `opts` under each compute dtype, with and without its vision adapter. Returns a description
/// of the first combination that matches (e.g. `dtype bf16`, `no vision adapter, dtype f32`),
/// or None. Reads the checkpoint's vision tensors once per combination, loads nothing.
pub fn explain_fingerprint(opts: &LoadOptions, target: &str) -> Option<String> {
    let adapters: Vec<Option<std::path::PathBuf>> = match &opts.vision_adapter {
        Some(a) => vec![Some(a.clone()), None],
        None => vec![None],
    };
    for adapter in &adapters {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let mut o = opts.clone();
            o.dtype = Some(dtype);
            o.vision_adapter = adapter.clone();
            let Ok(opened) = open(&o) else { return None };
            if encoder_fingerprint(&opened, &o).ok().as_deref() == Some(target) {
                let d = format!("{dtype:?}").to_lowercase();
                return Some(match (adapter, &opts.vision_adapter) {
                    (None, Some(_)) => format!("no vision adapter, dtype {d}"),
                    _ => format!("dtype {d}"),
                });
            }
        }
    }
    None
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s.strip_prefix("cuda:").map(str::parse::<usize>).transpose().map_err(|_| {
                Error::Input(format!("device {s:?} (expected cuda:N)"))
            })?;
            Device::new_cuda(ordinal.unwrap_or(0)).map_err(|e| Error::Unsupported(format!("device {s}: {e}")))
        }
        other => Err(Error::Input(format!("device {other:?} (expected cpu or cuda[:N])"))),
    }
}

struct Opened {
    config: LlavaConfig,
    anyres: AnyResConfig,
    ckpt: Arc<Checkpoint>,
    dtype: DType,
}

fn open(opts: &LoadOptions) -> Result<Opened> {
    let dir = &opts.model_dir;
    if !dir.is_dir() {
        return Err(Error::Checkpoint(format!("{} is not a folder", dir.display())));
    }
    let config = LlavaConfig::from_file(&dir.join("config.json"))?;
    let anyres = AnyResConfig::new(&config, &PreprocessorConfig::from_dir_or_default(dir)?)?;
    let ckpt = Arc::new(Checkpoint::open(dir)?);
    let dtype = match opts.dtype {
        Some(d) => d,
        None => ckpt
            .dtype_of("language_model.lm_head.weight")
            .or_else(|| ckpt.dtype_of("multi_modal_projector.linear_1.weight"))
            .unwrap_or(DType::F32),
    };
    Ok(Opened { config, anyres, ckpt, dtype })
}

fn weights(o: &Opened, opts: &LoadOptions, adapter: Option<&Path>) -> Result<Weights> {
    let adapters = match adapter {
        Some(p) => vec![Arc::new(Adapter::load(p, &opts.device)?)],
        None => vec![],
    };
    Ok(Weights::new(o.ckpt.clone(), o.dtype, opts.device.clone(), adapters, opts.merge_lora))
}

/// Vision tower + projector: image -> 5 CLS features -> 5 tokens.
pub struct ImageEncoder {
    vision: ClipVisionTower,
    projector: Projector,
    anyres: AnyResConfig,
    limits: DecodeLimits,
    device: Device,
    dtype: DType,
    encodes: AtomicU64,
    fingerprint: String,
}

/// sha256 over everything that changes an image's CLS features and projected tokens: the bytes
/// of every vision-tower and projector tensor, the vision adapter's files, the preprocessing
/// settings and the compute dtype. Equal fingerprints mean equal numbers.
fn encoder_fingerprint(o: &Opened, opts: &LoadOptions) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"lavic-image-encoder/1\n");
    for name in o.ckpt.names() {
        if name.starts_with("vision_tower.") || name.starts_with("multi_modal_projector.") {
            o.ckpt.with_raw(&name, |dtype, shape, bytes| {
                h.update(format!("{name} {dtype} {shape:?}\n").as_bytes());
                h.update(bytes);
            })?;
        }
    }
    if let Some(dir) = &opts.vision_adapter {
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            let p = dir.join(file);
            let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            h.update(format!("{file} {}\n", bytes.len()).as_bytes());
            h.update(&bytes);
        }
    }
    h.update(format!("{}\n{:?}\nmerge={}\n", o.anyres.describe(), o.dtype, opts.merge_lora).as_bytes());
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl ImageEncoder {
    /// Loads only the vision side (what a catalog build needs).
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let o = open(opts)?;
        Self::from_opened(&o, opts)
    }

    fn from_opened(o: &Opened, opts: &LoadOptions) -> Result<Self> {
        let w = weights(o, opts, opts.vision_adapter.as_deref())?;
        let cfg = &o.config;
        let vision = ClipVisionTower::load(&w.pp("vision_tower").pp("vision_model"), &cfg.vision)?;
        let projector = Projector::load(
            &w.pp("multi_modal_projector"),
            cfg.vision.hidden_size,
            cfg.text.hidden_size,
            cfg.projector_hidden_act,
            cfg.projector_bias,
        )?;
        w.check_adapters_used()?;
        Ok(Self {
            fingerprint: encoder_fingerprint(o, opts)?,
            vision,
            projector,
            anyres: o.anyres.clone(),
            limits: opts.decode_limits,
            device: opts.device.clone(),
            dtype: o.dtype,
            encodes: AtomicU64::new(0),
        })
    }

    /// Hex sha256 identifying the numbers this encoder produces (see `encoder_fingerprint`).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Preprocessing settings.
    pub fn anyres(&self) -> &AnyResConfig {
        &self.anyres
    }

    /// Vision width (size of one CLS feature).
    pub fn vision_width(&self) -> usize {
        self.vision.hidden_size()
    }

    /// Device the encoder runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Decodes image bytes within the configured limits.
    pub fn decode(&self, bytes: &[u8]) -> Result<Rgb8> {
        anyres::decode_rgb(bytes, &self.limits)
    }

    /// The reference's white fallback image.
    pub fn white_image(&self) -> Rgb8 {
        anyres::white_image(&self.anyres)
    }

    /// `[N * 5, 3, S, S]` normalised views of `images`.
    pub fn pixels(&self, images: &[Rgb8]) -> Result<Tensor> {
        let views: Vec<Vec<f32>> = images.iter().map(|i| anyres::preprocess(i, &self.anyres).0).collect();
        anyres::stack_views(&views, &self.anyres, &self.device)
    }

    /// CLS features `[N, 5, vision]` of pixel views `[N * 5, 3, S, S]`.
    pub fn cls_from_pixels(&self, pixels: &Tensor) -> Result<Tensor> {
        let n = pixels.dim(0)?;
        if n % NUM_VIEWS != 0 {
            return Err(Error::Input(format!("{n} views is not a multiple of {NUM_VIEWS}")));
        }
        self.encodes.fetch_add((n / NUM_VIEWS) as u64, Ordering::Relaxed);
        let cls = self.vision.cls(&pixels.to_dtype(self.dtype)?)?;
        Ok(cls.reshape((n / NUM_VIEWS, NUM_VIEWS, ()))?)
    }

    /// CLS features `[N, 5, vision]` of decoded images (one vision pass over all their views).
    pub fn encode_cls(&self, images: &[Rgb8]) -> Result<Tensor> {
        if images.is_empty() {
            return Err(Error::Input("no images to encode".into()));
        }
        self.cls_from_pixels(&self.pixels(images)?)
    }

    /// Projects CLS features `[.., vision]` to LM embeddings `[.., hidden]`.
    pub fn project(&self, cls: &Tensor) -> Result<Tensor> {
        self.projector.forward(&cls.to_device(&self.device)?)
    }

    /// Images encoded so far (each counts once, whatever its view count).
    pub fn images_encoded(&self) -> u64 {
        self.encodes.load(Ordering::Relaxed)
    }
}

/// The full LaViC model: image encoder, tokenizer and language model.
pub struct LavicModel {
    /// Vision side.
    pub encoder: ImageEncoder,
    /// Tokenizer with the five item tokens.
    pub tokenizer: LavicTokenizer,
    decoder: Decoder,
    config: LlavaConfig,
    forwards: AtomicU64,
    /// Keys/values of the instruction head, shared by every default-mode pass.
    pub(crate) prefix: Option<SharedPrefix>,
}

/// A prompt prefix that every recommendation starts with, run through the decoder once.
pub(crate) struct SharedPrefix {
    /// Its tokens (BOS first).
    pub ids: Vec<u32>,
    /// Its keys and values, one row.
    pub cache: KvCache,
}

impl LavicModel {
    /// Loads checkpoint, tokenizer and adapters; resizes the vocabulary to the tokenizer.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let o = open(opts)?;
        let tok_path = opts.tokenizer.clone().unwrap_or_else(|| opts.model_dir.join("tokenizer.json"));
        let tokenizer = LavicTokenizer::from_file(&tok_path)?;
        let encoder = ImageEncoder::from_opened(&o, opts)?;
        let w = weights(&o, opts, opts.lm_adapter.as_deref())?;
        let decoder = Decoder::load(&w.pp("language_model"), &o.config.text, tokenizer.len())?;
        w.check_adapters_used()?;
        let mut model = Self { encoder, tokenizer, decoder, config: o.config, forwards: AtomicU64::new(0), prefix: None };
        if opts.share_prefix {
            model.prefix = model.instruction_prefix()?;
        }
        Ok(model)
    }

    /// The checkpoint configuration.
    pub fn config(&self) -> &LlavaConfig {
        &self.config
    }

    /// The language model.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Language-model forward passes run so far (prefill and each decode step count one).
    pub fn forward_passes(&self) -> u64 {
        self.forwards.load(Ordering::Relaxed)
    }

    /// Runs the decoder and counts the pass.
    pub fn forward(&self, embeds: &Tensor, positions: &[Vec<u32>], mask: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.forwards.fetch_add(1, Ordering::Relaxed);
        self.decoder.forward(embeds, positions, mask, cache)
    }

    /// Input embeddings `[1, T, H]` of a prompt with each image's 5 tokens (`[5, H]` each, in
    /// prompt order) written over its placeholders.
    pub fn prompt_embeds(&self, prompt: &TokenizedPrompt, images: &[Tensor]) -> Result<Tensor> {
        if images.len() != prompt.image_slots.len() {
            return Err(Error::Input(format!(
                "prompt has {} image slots but {} images were given",
                prompt.image_slots.len(),
                images.len()
            )));
        }
        let device = self.encoder.device();
        let ids = Tensor::new(prompt.ids.as_slice(), device)?.unsqueeze(0)?;
        let embeds = self.decoder.embed(&ids)?.squeeze(0)?;
        if images.is_empty() {
            return Ok(embeds.unsqueeze(0)?);
        }
        // Rebuild the sequence as runs of text rows and image rows.
        let dtype = embeds.dtype();
        let mut pieces = Vec::with_capacity(images.len() * 2 + 1);
        let mut at = 0usize;
        for (slot, img) in prompt.image_slots.iter().zip(images) {
            let h = self.decoder.hidden_size();
            if img.dims() != [NUM_VIEWS, h] {
                return Err(Error::Input(format!("image tokens have shape {:?}, expected [5, {h}]", img.dims())));
            }
            for (k, &pos) in slot.iter().enumerate() {
                if pos > at {
                    pieces.push(embeds.narrow(0, at, pos - at)?);
                }
                pieces.push(img.narrow(0, k, 1)?.to_dtype(dtype)?);
                at = pos + 1;
            }
        }
        if at < prompt.ids.len() {
            pieces.push(embeds.narrow(0, at, prompt.ids.len() - at)?);
        }
        Ok(Tensor::cat(&pieces, 0)?.unsqueeze(0)?)
    }

    /// Full-vocabulary f32 logits `[P, vocab]` at `positions` of a single prompt.
    pub fn prompt_logits(&self, embeds: &Tensor, positions: &[usize]) -> Result<Tensor> {
        let t = embeds.dim(1)?;
        let mask = causal_mask(&[0], 0, t, self.decoder.sliding_window(), embeds.device())?;
        let pos: Vec<u32> = (0..t as u32).collect();
        let mut cache = self.decoder.new_cache();
        let hidden = self.forward(embeds, &[pos], &mask, &mut cache)?;
        let rows: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        self.decoder.logits_at(&hidden, &rows)
    }

    /// The reference's free mode: greedy decoding of up to `max_new` tokens with a KV cache,
    /// stopping early only at `</s>`. Returns the new ids.
    pub fn generate_greedy(&self, embeds: &Tensor, max_new: usize) -> Result<Vec<u32>> {
        let t = embeds.dim(1)?;
        let device = embeds.device().clone();
        let window = self.decoder.sliding_window();
        let mut cache = self.decoder.new_cache();
        let mask = causal_mask(&[0], 0, t, window, &device)?;
        let hidden = self.forward(embeds, &[(0..t as u32).collect()], &mask, &mut cache)?;
        let mut logits = self.decoder.logits_at(&hidden, &[t as u32 - 1])?;
        let mut out = Vec::with_capacity(max_new);
        for step in 0..max_new {
            let next = argmax(&logits.squeeze(0)?.to_vec1::<f32>()?);
            out.push(next);
            if next == self.tokenizer.eos_id() || step + 1 == max_new {
                break;
            }
            let pos = (t + step) as u32;
            let e = self.decoder.embed(&Tensor::new(&[[next]], &device)?)?;
            let mask = causal_mask(&[0], cache.len(), 1, window, &device)?;
            let h = self.forward(&e, &[vec![pos]], &mask, &mut cache)?;
            logits = self.decoder.logits_at(&h, &[0])?;
        }
        Ok(out)
    }
}

/// Index of the first maximum (torch's argmax tie rule).
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

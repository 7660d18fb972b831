//! The LaViC model in training form: loading with trainable LoRA for either stage, tokenising a
//! (prompt, target) pair with lavic-model's tokenizer, splicing each image's 5 projected CLS
//! tokens into the embeddings (differentiably, so stage 1 trains the vision side through the
//! frozen LM; or precomputed tokens, e.g. a catalog's, for stage 2), right-padded batches, and the
//! loss.
//!
//! Loss as transformers' `ForCausalLMLoss`: shifted cross-entropy over positions whose label is
//! not -100 (the target's tokens), averaged over every target token of the batch. The final norm
//! and lm_head run only at the positions that predict a target token.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lavic_model::anyres::{AnyResConfig, NUM_VIEWS};
use lavic_model::config::{LlavaConfig, PreprocessorConfig};
use lavic_model::lora::Adapter;
use lavic_model::weights::{Checkpoint, Weights};
use lavic_model::LavicTokenizer;

use crate::decoder::Decoder;
use crate::error::{Error, Result};
use crate::linear::{Builder, Ctx, Init, Params};
use crate::ops;
use crate::rng::Rng;
use crate::spec::LoraSpec;
use crate::vision::{Projector, VisionTower};

/// Label of a position that is not supervised.
pub const IGNORE: i64 = -100;

/// What to load and what to train.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// llava-hf checkpoint folder.
    pub model_dir: PathBuf,
    /// `tokenizer.json`; defaults to the one in `model_dir`.
    pub tokenizer: Option<PathBuf>,
    /// Dtype of the frozen weights and activations (f32 by default; bf16 on CUDA). LoRA weights,
    /// their gradients and the optimizer state are always f32.
    pub dtype: DType,
    /// Device.
    pub device: Device,
    /// Stage-1 LoRA (vision tower + projector), if trained.
    pub vision: Option<LoraSpec>,
    /// Stage-2 LoRA (language model, optionally lm_head), if trained.
    pub lm: Option<LoraSpec>,
    /// Initial values of the vision-side trainable tensors (a PEFT adapter folder) instead of
    /// PEFT's initialisation.
    pub vision_init: Option<PathBuf>,
    /// Initial values of the LM-side trainable tensors (a PEFT adapter folder).
    pub lm_init: Option<PathBuf>,
    /// Adapters merged into the frozen weights at load, as inference does (e.g. the trained
    /// stage-1 adapter while training stage 2). Every tensor of each must be used.
    pub frozen_adapters: Vec<PathBuf>,
    /// Seed of the LoRA initialisation.
    pub seed: u64,
    /// Gradient checkpointing: the trainer re-runs each decoder and vision layer in the backward
    /// pass instead of keeping its activations (see [`crate::checkpoint`]). Same gradients.
    pub grad_checkpoint: bool,
}

impl TrainOptions {
    /// f32 on CPU, nothing trained yet.
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        Self {
            model_dir: model_dir.into(),
            tokenizer: None,
            dtype: DType::F32,
            device: Device::Cpu,
            vision: None,
            lm: None,
            vision_init: None,
            lm_init: None,
            frozen_adapters: Vec::new(),
            seed: 42,
            grad_checkpoint: false,
        }
    }
}

/// One training sample: a prompt with one `<ItemImageEmb1..5>` block per image, the target
/// text appended directly after it, and the images in prompt order.
///
/// Each image is given either as its 5 pixel views `[5, C, S, S]` (run through the vision tower
/// and projector, so gradients reach a stage-1 LoRA) or as its 5 precomputed projected tokens
/// `[5, hidden]` (used as they are, e.g. a catalog's tokens while training stage 2 with the
/// vision side frozen: the reference re-ran the vision tower on every candidate image instead).
#[derive(Debug, Clone)]
pub struct Example {
    /// Prompt text (BOS is added by the tokenizer).
    pub prompt: String,
    /// Supervised continuation.
    pub target: String,
    /// Per image: pixel views `[5, C, S, S]` or projected tokens `[5, hidden]`.
    pub images: Vec<Tensor>,
}

/// A tokenised [`Example`].
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Token ids of prompt + target (BOS first).
    pub ids: Vec<u32>,
    /// `ids` at target positions, [`IGNORE`] elsewhere.
    pub labels: Vec<i64>,
    /// Placeholder positions of each image.
    pub slots: Vec<[usize; NUM_VIEWS]>,
    /// Per image: pixel views `[5, C, S, S]` or projected tokens `[5, hidden]`.
    pub images: Vec<Tensor>,
}

impl Encoded {
    /// Number of supervised tokens.
    pub fn target_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }
}

/// The model with its trainable tensors.
pub struct TrainModel {
    pub(crate) vision: VisionTower,
    projector: Projector,
    pub(crate) decoder: Decoder,
    /// The tokenizer with LaViC's five item tokens.
    pub tokenizer: LavicTokenizer,
    /// Image preprocessing settings of the checkpoint.
    pub anyres: AnyResConfig,
    config: LlavaConfig,
    params: Params,
    device: Device,
    grad_checkpoint: bool,
}

impl TrainModel {
    /// Loads the checkpoint, adding trainable LoRA where the specs say.
    pub fn load(opts: &TrainOptions) -> Result<Self> {
        let dir = &opts.model_dir;
        let config = LlavaConfig::from_file(&dir.join("config.json"))?;
        let anyres = AnyResConfig::new(&config, &PreprocessorConfig::from_dir_or_default(dir)?)?;
        let ckpt = Arc::new(Checkpoint::open(dir)?);
        let tok_path = opts.tokenizer.clone().unwrap_or_else(|| dir.join("tokenizer.json"));
        let tokenizer = LavicTokenizer::from_file(&tok_path)?;
        for spec in [&opts.vision, &opts.lm].into_iter().flatten() {
            spec.validate()?;
        }
        let frozen = opts
            .frozen_adapters
            .iter()
            .map(|p| Adapter::load(p, &opts.device).map(Arc::new))
            .collect::<lavic_model::Result<Vec<_>>>()?;
        let w = Weights::new(ckpt, opts.dtype, opts.device.clone(), frozen, true);
        let mut params = Params::default();
        let mut rng = Rng::new(opts.seed);
        let load_init = |p: &Option<PathBuf>| p.as_deref().map(Init::from_adapter).transpose();
        let mut vision_init = load_init(&opts.vision_init)?;
        let mut lm_init = load_init(&opts.lm_init)?;
        let (vision, projector) = {
            let mut b = Builder { spec: opts.vision.as_ref(), params: &mut params, init: vision_init.as_mut(), rng: &mut rng };
            let v = VisionTower::load(&mut b, &w.pp("vision_tower").pp("vision_model"), &config.vision)?;
            let p = Projector::load(
                &mut b,
                &w.pp("multi_modal_projector"),
                config.vision.hidden_size,
                config.text.hidden_size,
                config.projector_hidden_act,
                config.projector_bias,
            )?;
            (v, p)
        };
        let decoder = {
            let mut b = Builder { spec: opts.lm.as_ref(), params: &mut params, init: lm_init.as_mut(), rng: &mut rng };
            Decoder::load(&mut b, &w.pp("language_model"), &config.text, tokenizer.len())?
        };
        for init in [&vision_init, &lm_init].into_iter().flatten() {
            init.check_all_used()?;
        }
        w.check_adapters_used()?;
        if (opts.vision.is_some() || opts.lm.is_some()) && params.vars.is_empty() {
            return Err(Error::Spec("the LoRA specs match no module of this model".into()));
        }
        let grad_checkpoint = opts.grad_checkpoint;
        Ok(Self { vision, projector, decoder, tokenizer, anyres, config, params, device: opts.device.clone(), grad_checkpoint })
    }

    /// The trainable tensors.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The checkpoint configuration.
    pub fn config(&self) -> &LlavaConfig {
        &self.config
    }

    /// Whether training uses gradient checkpointing ([`TrainOptions::grad_checkpoint`]).
    pub fn grad_checkpoint(&self) -> bool {
        self.grad_checkpoint
    }

    /// Device of the model.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Tokenises prompt + target together (token boundaries depend on context) and supervises
    /// the tokens after the prompt's own token count.
    pub fn encode(&self, ex: &Example) -> Result<Encoded> {
        let full = self.tokenizer.tokenize_prompt(&format!("{}{}", ex.prompt, ex.target))?;
        let prompt_len = self.tokenizer.encode(&ex.prompt)?.len();
        if prompt_len >= full.ids.len() {
            return Err(Error::Input(format!("target {:?} adds no token after the prompt", ex.target)));
        }
        if full.image_slots.len() != ex.images.len() {
            return Err(Error::Input(format!(
                "prompt has {} image blocks but {} images were given",
                full.image_slots.len(),
                ex.images.len()
            )));
        }
        if full.image_slots.iter().any(|s| s[NUM_VIEWS - 1] >= prompt_len) {
            return Err(Error::Input("the target holds image placeholder tokens".into()));
        }
        let s = self.config.vision.image_size;
        let views = [NUM_VIEWS, self.config.vision.num_channels, s, s];
        let tokens = [NUM_VIEWS, self.config.text.hidden_size];
        if let Some(bad) = ex.images.iter().find(|t| t.dims() != views && t.dims() != tokens) {
            return Err(Error::Input(format!(
                "image views have shape {:?}, expected views {views:?} or projected tokens {tokens:?}",
                bad.dims()
            )));
        }
        let labels = full.ids.iter().enumerate().map(|(i, &t)| if i < prompt_len { IGNORE } else { t as i64 }).collect();
        Ok(Encoded { ids: full.ids, labels, slots: full.image_slots, images: ex.images.clone() })
    }

    /// Pixel views of every image of the batch given as views, concatenated `[5 N, C, S, S]`
    /// on the model's device (None when every image is given as projected tokens).
    pub(crate) fn pixel_views(&self, batch: &[Encoded]) -> Result<Option<Tensor>> {
        let views: Vec<&Tensor> = batch.iter().flat_map(|e| e.images.iter()).filter(|t| t.rank() == 4).collect();
        if views.is_empty() {
            return Ok(None);
        }
        Ok(Some(Tensor::cat(&views, 0)?.to_device(&self.device)?))
    }

    /// Projected tokens `[5, H]` of every image of the batch, in order: pixel views go through
    /// the vision tower and projector in one pass, precomputed tokens are used as they are.
    fn image_tokens(&self, batch: &[Encoded], ctx: &mut Ctx) -> Result<Vec<Tensor>> {
        let cls = match self.pixel_views(batch)? {
            Some(pixels) => Some(self.vision.cls(&pixels, ctx)?),
            None => None,
        };
        self.project_images(batch, cls.as_ref(), ctx)
    }

    /// Projected tokens `[5, H]` of every image of the batch, given the vision tower's CLS
    /// features `[5 N, vision_hidden]` of the images given as views ([`Self::pixel_views`]).
    pub(crate) fn project_images(&self, batch: &[Encoded], cls: Option<&Tensor>, ctx: &mut Ctx) -> Result<Vec<Tensor>> {
        let images: Vec<&Tensor> = batch.iter().flat_map(|e| e.images.iter()).collect();
        let mut encoded = Vec::new();
        if let Some(cls) = cls {
            let n = cls.dim(0)? / NUM_VIEWS;
            let projected = self.projector.forward(&cls.reshape((n, NUM_VIEWS, ()))?, ctx)?;
            encoded = (0..n).map(|i| projected.get(i)).collect::<candle_core::Result<Vec<_>>>()?;
        }
        let mut encoded = encoded.into_iter();
        images
            .into_iter()
            .map(|t| match t.rank() {
                4 => encoded.next().ok_or_else(|| Error::Input("image views lost".into())),
                _ => Ok(t.to_device(&self.device)?),
            })
            .collect()
    }

    /// Right-padded input embeddings `[B, T, H]` (pad = `</s>`, as LaViC) and row lengths.
    fn embeds(&self, batch: &[Encoded], ctx: &mut Ctx) -> Result<(Tensor, Vec<usize>)> {
        if batch.is_empty() {
            return Err(Error::Input("empty batch".into()));
        }
        let images = self.image_tokens(batch, ctx)?;
        self.splice(batch, &images)
    }

    /// Right-padded input embeddings `[B, T, H]` of the batch with the projected `images`
    /// spliced into their slots, and row lengths.
    pub(crate) fn splice(&self, batch: &[Encoded], images: &[Tensor]) -> Result<(Tensor, Vec<usize>)> {
        if batch.is_empty() {
            return Err(Error::Input("empty batch".into()));
        }
        let t = batch.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let lens: Vec<usize> = batch.iter().map(|e| e.ids.len()).collect();
        let pad = self.tokenizer.eos_id();
        let mut rows = Vec::with_capacity(batch.len());
        let mut img = 0usize;
        for e in batch {
            let mut ids = e.ids.clone();
            ids.resize(t, pad);
            let emb = self.decoder.embed(&ids, &self.device)?;
            let mut blocks = Vec::new();
            for slot in &e.slots {
                let tokens = images.get(img).ok_or_else(|| Error::Input("image slots without images".into()))?;
                img += 1;
                for (k, &pos) in slot.iter().enumerate() {
                    blocks.push((pos, tokens.narrow(0, k, 1)?));
                }
            }
            rows.push(splice_row(&emb, &blocks)?);
        }
        Ok((Tensor::stack(&rows, 0)?, lens))
    }

    /// Sum of the target tokens' negative log-likelihoods (f32 scalar) and their number.
    pub fn loss_sum(&self, batch: &[Encoded], ctx: &mut Ctx) -> Result<(Tensor, usize)> {
        let (embeds, lens) = self.embeds(batch, ctx)?;
        let (rows, targets) = target_rows(batch.iter().map(|e| e.labels.as_slice()), embeds.dim(1)?)?;
        let hidden = self.decoder.forward(&embeds, &lens, ctx)?;
        Ok((head_loss(&self.decoder, &hidden, &rows, &targets, ctx)?, rows.len()))
    }

    /// Mean cross-entropy over the batch's target tokens (what transformers reports as `loss`).
    pub fn loss(&self, batch: &[Encoded], ctx: &mut Ctx) -> Result<Tensor> {
        let (sum, n) = self.loss_sum(batch, ctx)?;
        Ok((sum / n as f64)?)
    }

    /// Full-vocabulary f32 logits `[T, vocab]` at every position of one example (for checks).
    pub fn logits(&self, e: &Encoded, ctx: &mut Ctx) -> Result<Tensor> {
        let batch = std::slice::from_ref(e);
        let (embeds, lens) = self.embeds(batch, ctx)?;
        let hidden = self.decoder.forward(&embeds, &lens, ctx)?;
        let rows: Vec<u32> = (0..e.ids.len() as u32).collect();
        self.decoder.logits_at(&hidden, &rows, ctx)
    }
}

/// One row's input embeddings `[T, H]`: `emb` with each `(position, block [k, H])` of `blocks`
/// (in position order, not overlapping) written over rows `position..position + k`, in `emb`'s
/// dtype. The image splice of both the LoRA model (5 CLS rows per image) and stage 0's
/// [`crate::full::FullModel`] (one block of patch rows per image).
pub(crate) fn splice_row(emb: &Tensor, blocks: &[(usize, Tensor)]) -> Result<Tensor> {
    let t = emb.dim(0)?;
    let (mut pieces, mut at) = (Vec::with_capacity(2 * blocks.len() + 1), 0usize);
    for (pos, block) in blocks {
        if *pos > at {
            pieces.push(emb.narrow(0, at, pos - at)?);
        }
        pieces.push(block.to_dtype(emb.dtype())?);
        at = pos + block.dim(0)?;
    }
    if at < t {
        pieces.push(emb.narrow(0, at, t - at)?);
    }
    Ok(Tensor::cat(&pieces, 0)?)
}

/// Flat indices (into `B * T`) of the positions that predict a target token, and those tokens,
/// from each row's labels (shifted: position `p` predicts label `p + 1`). Fails when the batch
/// supervises nothing.
pub(crate) fn target_rows<'a>(labels: impl Iterator<Item = &'a [i64]>, t: usize) -> Result<(Vec<u32>, Vec<u32>)> {
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for (r, labels) in labels.enumerate() {
        for p in 0..labels.len().saturating_sub(1) {
            let l = labels[p + 1];
            if l != IGNORE {
                rows.push((r * t + p) as u32);
                targets.push(l as u32);
            }
        }
    }
    if rows.is_empty() {
        return Err(Error::Input("the batch has no target tokens".into()));
    }
    Ok((rows, targets))
}

/// Summed negative log-likelihood (f32 scalar) of `targets` from the last hidden states
/// `[B, T, H]` at flat positions `rows`: the final norm and lm_head run at those rows only.
pub(crate) fn head_loss(decoder: &Decoder, hidden: &Tensor, rows: &[u32], targets: &[u32], ctx: &mut Ctx) -> Result<Tensor> {
    let logits = decoder.logits_at(hidden, rows, ctx)?;
    let logp = ops::log_softmax_last_dim(&logits)?;
    let tgt = Tensor::new(targets, hidden.device())?.unsqueeze(1)?;
    Ok(logp.gather(&tgt, 1)?.sum_all()?.neg()?)
}

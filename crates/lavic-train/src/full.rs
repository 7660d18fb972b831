//! Stage 0 (our stand-in for LLaVA-v1.6 pre-training): the whole LLaVA-NeXT model trained, every
//! tensor that the stage-0 forward uses an f32 [`Var`](candle_core::Var), with images fed as
//! full patch features as LLaVA does, not LaViC's 5 CLS tokens.
//!
//! The image slot: a prompt marks each image with the checkpoint's image token (`<image>`,
//! `config.image_token_index`), which [`FullModel::encode`] expands to
//! [`FullModel::patch_tokens`] positions: the 5 AnyRes views in order (base view first), each
//! view's `grid^2` patch tokens in row-major order, taken from transformers' `hidden_states`
//! at `vision_feature_layer` (penultimate by default) with the CLS row dropped (strategy
//! `default`) and passed through the projector. Simpler than LLaVA-NeXT's unpadded grid with
//! `image_newline` rows (not used), and the same for every image.
//!
//! Trainable: every tensor of the checkpoint's modules except the vision layers after
//! `vision_feature_layer` (stage 0 never runs them; they stay as loaded and are saved as they
//! were, so the CLS path of LaViC's stages 1 and 2 starts from them). The stage-0 target is
//! supervised up to and including `</s>`, so the model learns where an answer ends.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lavic_model::anyres::{AnyResConfig, NUM_VIEWS};
use lavic_model::config::{LlavaConfig, PreprocessorConfig};
use lavic_model::prompt::ANSWER_PREFIX;
use lavic_model::weights::{Checkpoint, Weights};
use lavic_model::LavicTokenizer;

use crate::decoder::Decoder;
use crate::error::{Error, Result};
use crate::linear::{Builder, Ctx, Params};
use crate::model::{head_loss, splice_row, target_rows, IGNORE};
use crate::rng::Rng;
use crate::spec::{LoraSpec, Targets};
use crate::trainer::Objective;
use crate::vision::{Projector, VisionTower};

/// The text that marks an image in a stage-0 prompt.
pub const IMAGE_TOKEN: &str = "<image>";

/// The stage-0 prompt of a question about one image: `<image>\n{question}\nAssistant:`.
pub fn stage0_prompt(question: &str) -> String {
    format!("{IMAGE_TOKEN}\n{question}{ANSWER_PREFIX}")
}

/// One stage-0 sample: a prompt with one [`IMAGE_TOKEN`] per image, its answer, and each
/// image's 5 views `[5, 3, S, S]` in prompt order.
#[derive(Debug, Clone)]
pub struct PatchExample {
    /// Prompt text (BOS is added by the tokenizer).
    pub prompt: String,
    /// Supervised continuation (`</s>` is appended and supervised too).
    pub target: String,
    /// Pixel views per image.
    pub images: Vec<Tensor>,
    /// The id each image is listed under (empty, or one per image): recited by
    /// [`FullModel::encode_reciting`].
    pub listed: Vec<String>,
    /// Follow-up turns after the answer, each `(prompt, target)`: `</s>` ends the previous
    /// answer (supervised), then the turn's prompt (not supervised) and its target (supervised);
    /// the last target is followed by `</s>` as `target` is. Text only (no image token).
    pub turns: Vec<(String, String)>,
}

/// Stage 0's pre-training aids for LaViC's copy step ([`FullModel::encode_aided`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Aids {
    /// Each image token recites a token of its listed id.
    pub recite: bool,
    /// The token after each image predicts whether its listed id is the answer.
    pub flag: bool,
}

/// A tokenised [`PatchExample`] with each image token expanded to its patch block.
#[derive(Debug, Clone)]
pub struct PatchEncoded {
    /// Token ids (BOS first, `</s>` last); a patch block holds the image token id.
    pub ids: Vec<u32>,
    /// `ids` at target positions, [`IGNORE`] elsewhere.
    pub labels: Vec<i64>,
    /// First position of each image's patch block, in prompt order.
    pub blocks: Vec<usize>,
    /// Pixel views per image, `[5, 3, S, S]`.
    pub images: Vec<Tensor>,
}

impl PatchEncoded {
    /// Number of supervised tokens.
    pub fn target_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }
}

/// The whole model with every used tensor trainable.
pub struct FullModel {
    vision: VisionTower,
    projector: Projector,
    pub(crate) decoder: Decoder,
    /// The tokenizer with LaViC's five item tokens.
    pub tokenizer: LavicTokenizer,
    /// Image preprocessing settings of the checkpoint.
    pub anyres: AnyResConfig,
    config: LlavaConfig,
    params: Params,
    device: Device,
    feature_layers: usize,
    /// Side of the average-pooling window over each view's patch grid (1: every patch).
    pool: usize,
    /// Weight of the image read-out loss ([`FullModel::with_readout`]; 0: off).
    readout: f64,
    pub(crate) ckpt: Arc<Checkpoint>,
    pub(crate) model_dir: PathBuf,
    pub(crate) tokenizer_path: PathBuf,
}

/// transformers' `hidden_states` index of `vision_feature_layer` (negative counts from the end).
pub fn feature_layers(config: &LlavaConfig) -> Result<usize> {
    let n = config.vision.num_hidden_layers as i64;
    let fl = config.vision_feature_layer;
    let idx = if fl < 0 { n + 1 + fl } else { fl };
    if !(1..=n).contains(&idx) {
        return Err(Error::Spec(format!("vision_feature_layer {fl} does not select a layer of a {n}-layer tower")));
    }
    Ok(idx as usize)
}

/// A spec that trains every module of `names` whole (no LoRA), except the vision layers from
/// `feature_layers` on.
fn full_spec(names: &[String], feature_layers: usize) -> LoraSpec {
    let unused = |m: &str| {
        m.strip_prefix("vision_tower.vision_model.encoder.layers.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| i >= feature_layers)
    };
    let modules: BTreeSet<String> =
        names.iter().filter_map(|n| n.rsplit_once('.').map(|(m, _)| m.to_string())).filter(|m| !unused(m)).collect();
    LoraSpec {
        target_modules: Targets::Names(Vec::new()),
        modules_to_save: modules.into_iter().collect(),
        dropout: 0.0,
        ..LoraSpec::stage1()
    }
}

impl FullModel {
    /// Loads a llava-hf checkpoint folder (f32 on `device`) with every used tensor trainable;
    /// `tokenizer` defaults to the folder's `tokenizer.json`.
    pub fn load(model_dir: impl Into<PathBuf>, tokenizer: Option<PathBuf>, device: &Device) -> Result<Self> {
        let dir: PathBuf = model_dir.into();
        let config = LlavaConfig::from_file(&dir.join("config.json"))?;
        let anyres = AnyResConfig::new(&config, &PreprocessorConfig::from_dir_or_default(&dir)?)?;
        let ckpt = Arc::new(Checkpoint::open(&dir)?);
        let tokenizer_path = tokenizer.unwrap_or_else(|| dir.join("tokenizer.json"));
        let tok = LavicTokenizer::from_file(&tokenizer_path)?;
        let image_ids = tok.encode_plain(IMAGE_TOKEN)?;
        if image_ids != [config.image_token_index] {
            return Err(Error::Spec(format!(
                "{}: {IMAGE_TOKEN} tokenises to {image_ids:?}, not to image_token_index {}",
                tokenizer_path.display(),
                config.image_token_index
            )));
        }
        let feature_layers = feature_layers(&config)?;
        let spec = full_spec(&ckpt.names(), feature_layers);
        let w = Weights::new(ckpt.clone(), DType::F32, device.clone(), Vec::new(), true);
        let mut params = Params::default();
        let mut rng = Rng::new(0);
        let mut b = Builder { spec: Some(&spec), params: &mut params, init: None, rng: &mut rng };
        let vision = VisionTower::load(&mut b, &w.pp("vision_tower").pp("vision_model"), &config.vision)?;
        let projector = Projector::load(
            &mut b,
            &w.pp("multi_modal_projector"),
            config.vision.hidden_size,
            config.text.hidden_size,
            config.projector_hidden_act,
            config.projector_bias,
        )?;
        let decoder = Decoder::load(&mut b, &w.pp("language_model"), &config.text, tok.len())?;
        Ok(Self {
            vision,
            projector,
            decoder,
            tokenizer: tok,
            anyres,
            config,
            params,
            device: device.clone(),
            feature_layers,
            pool: 1,
            readout: 0.0,
            ckpt,
            model_dir: dir,
            tokenizer_path,
        })
    }

    /// The trainable tensors, by checkpoint name (`vocab` rows for the embeddings and lm_head).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The checkpoint configuration.
    pub fn config(&self) -> &LlavaConfig {
        &self.config
    }

    /// Device of the model.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Positions one image takes in a stage-0 prompt: 5 views x `(grid / pool)^2` patches.
    pub fn patch_tokens(&self) -> usize {
        let side = self.config.vision.grid() / self.pool;
        NUM_VIEWS * side * side
    }

    /// Average-pools each view's patch features over `pool x pool` windows (LLaVA-NeXT-Video /
    /// OneVision style spatial pooling): `pool` 2 gives a quarter of the positions, so stage 0
    /// runs ~3x faster while the model still sees 16 tokens per view instead of LaViC's 1.
    /// `pool` must divide the patch grid.
    pub fn with_pool(mut self, pool: usize) -> Result<Self> {
        let g = self.config.vision.grid();
        if pool == 0 || !g.is_multiple_of(pool) {
            return Err(Error::Input(format!("pool {pool} does not divide the {g}x{g} patch grid")));
        }
        self.pool = pool;
        Ok(self)
    }

    /// The pooling window side (1: none).
    pub fn pool(&self) -> usize {
        self.pool
    }

    /// Adds `weight` x the **image read-out loss** to [`FullModel::loss_sum`]: each image's
    /// projected patch features, averaged over its patch tokens, go straight through the
    /// decoder's final norm and `lm_head`, and must predict every token of its example's answer
    /// (`</s>` excluded; examples with one image only), a bag-of-words caption loss as in
    /// visual pre-training from captions (VirTex, Tag2Text). It gives the vision tower and
    /// projector a direct gradient towards features the language model can read ("red",
    /// "stripes", "strap") without waiting for attention to find the image; the language-model
    /// loss is unchanged. 0 turns it off.
    pub fn with_readout(mut self, weight: f64) -> Result<Self> {
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(Error::Input(format!("read-out weight {weight} must be a finite number >= 0")));
        }
        self.readout = weight;
        Ok(self)
    }

    /// Summed read-out negative log-likelihood (see [`FullModel::with_readout`]) of `batch`, whose
    /// projected patch features `[M, patch_tokens, H]` are `feats` (images in batch order).
    pub fn readout_sum(&self, batch: &[PatchEncoded], feats: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let pooled = feats.mean(1)?.unsqueeze(0)?;
        let eos = self.tokenizer.eos_id() as i64;
        let (mut rows, mut targets, mut img) = (Vec::new(), Vec::new(), 0u32);
        for e in batch {
            // A multi-image example's answer is about one of its images at most: no read-out.
            if e.images.len() == 1 {
                let words: Vec<u32> = e.labels.iter().filter(|&&l| l != IGNORE && l != eos).map(|&l| l as u32).collect();
                rows.extend(std::iter::repeat_n(img, words.len()));
                targets.extend(&words);
            }
            img += e.images.len() as u32;
        }
        if rows.is_empty() {
            return Ok(Tensor::zeros((), DType::F32, &self.device)?);
        }
        head_loss(&self.decoder, &pooled, &rows, &targets, ctx)
    }

    /// Checks the image count against the prompt's image tokens and each image's shape.
    fn check_images(&self, ids: &[u32], images: &[Tensor]) -> Result<()> {
        let count = ids.iter().filter(|&&t| t == self.config.image_token_index).count();
        if count != images.len() {
            return Err(Error::Input(format!("prompt has {count} {IMAGE_TOKEN} tokens but {} images were given", images.len())));
        }
        let s = self.config.vision.image_size;
        let want = [NUM_VIEWS, self.config.vision.num_channels, s, s];
        if let Some(bad) = images.iter().find(|t| t.dims() != want) {
            return Err(Error::Input(format!("image views have shape {:?}, expected {want:?}", bad.dims())));
        }
        Ok(())
    }

    /// Tokenises prompt + target (and any follow-up turns), expands each image token to its patch
    /// block, appends `</s>`, and supervises every target and the `</s>` after it.
    pub fn encode(&self, ex: &PatchExample) -> Result<PatchEncoded> {
        let img = self.config.image_token_index;
        if let Some(t) = std::iter::once(&ex.target).chain(ex.turns.iter().map(|(_, t)| t)).find(|t| t.is_empty()) {
            return Err(Error::Input(format!("target {t:?} adds no token after the prompt")));
        }
        let eos_text = self.tokenizer.decode(&[self.tokenizer.eos_id()], false)?;
        // Text pieces, alternately not supervised (prompts) and supervised (targets).
        let mut pieces: Vec<String> = vec![ex.prompt.clone(), ex.target.clone()];
        for (prompt, target) in &ex.turns {
            if let Some(t) = pieces.last_mut() {
                t.push_str(&eos_text);
            }
            pieces.push(prompt.clone());
            pieces.push(target.clone());
        }
        let full = self.tokenizer.encode(&pieces.concat())?;
        // Each piece's end in `full`; with follow-up turns, every prefix must tokenise as the
        // start of the whole (so that each label span is exactly its piece).
        let (mut ends, mut text) = (Vec::with_capacity(pieces.len()), String::new());
        for (k, piece) in pieces.iter().enumerate() {
            text.push_str(piece);
            let end = match k + 1 == pieces.len() {
                true => full.len(),
                false => {
                    let prefix = self.tokenizer.encode(&text)?;
                    if !ex.turns.is_empty() && full.get(..prefix.len()) != Some(&prefix[..]) {
                        return Err(Error::Input(format!("the text tokenises across the end of {piece:?}")));
                    }
                    prefix.len()
                }
            };
            let start = ends.last().copied().unwrap_or(0);
            if k % 2 == 1 && end <= start {
                return Err(Error::Input(format!("target {piece:?} adds no token after the prompt")));
            }
            ends.push(end);
        }
        let prompt_len = ends[0];
        if full[prompt_len..].contains(&img) {
            return Err(Error::Input(format!("a target or follow-up turn holds the image token: {:?}", &pieces[1..])));
        }
        self.check_images(&full, &ex.images)?;
        let supervised = |i: usize| ends.iter().position(|&e| i < e).is_some_and(|k| k % 2 == 1);
        let n = self.patch_tokens();
        let (mut ids, mut labels, mut blocks) = (Vec::new(), Vec::new(), Vec::new());
        for (i, &t) in full.iter().enumerate() {
            if t == img {
                blocks.push(ids.len());
                ids.extend(std::iter::repeat_n(img, n));
                labels.extend(std::iter::repeat_n(IGNORE, n));
            } else {
                ids.push(t);
                labels.push(if supervised(i) { t as i64 } else { IGNORE });
            }
        }
        let eos = self.tokenizer.eos_id();
        ids.push(eos);
        labels.push(eos as i64);
        Ok(PatchEncoded { ids, labels, blocks, images: ex.images.clone() })
    }

    /// [`Self::encode`] with id recitation alone: `self.encode_aided(ex, Aids { recite: true,
    /// flag: false })`.
    pub fn encode_reciting(&self, ex: &PatchExample) -> Result<PatchEncoded> {
        self.encode_aided(ex, Aids { recite: true, flag: false })
    }

    /// [`Self::encode`], plus the stand-in base's pre-training aids for LaViC's copy step on a
    /// multi-image example (`lavic train base --recite` / `--match-flag`); an example without
    /// `listed` is encoded as [`Self::encode`] does.
    ///
    /// - **Recitation** (`aids.recite`): each image token predicts one token of the id its image
    ///   is listed under (`ex.listed`), as that id is tokenised in an answer; view `v` recites
    ///   token `1 + v mod (n - 1)` of the id's `n` tokens (its varying part when the first token
    ///   is a shared prefix such as `BDEMO`; token 0 when `n` is 1). So the listed id flows into
    ///   the image's own positions, where the answer can later find it by what the image shows.
    /// - **Match flag** (`aids.flag`): the first token after each image (the newline of
    ///   LaViC's candidate layout) predicts `yes` if that image's listed id is the answer
    ///   (`ex.target`), else `no` (the first token of each as an answer tokenises it). With the question before the
    ///   list, each candidate can then judge itself against the question where it stands, and
    ///   the answer only has to find the one marked `yes`.
    pub fn encode_aided(&self, ex: &PatchExample, aids: Aids) -> Result<PatchEncoded> {
        let mut enc = self.encode(ex)?;
        if ex.listed.is_empty() || aids == Aids::default() {
            return Ok(enc);
        }
        if ex.listed.len() != enc.blocks.len() {
            return Err(Error::Input(format!("{} listed ids for {} images", ex.listed.len(), enc.blocks.len())));
        }
        let prefix = self.tokenizer.encode(ANSWER_PREFIX)?.len();
        let flags = match aids.flag {
            true => {
                if !ex.listed.iter().any(|id| id == &ex.target) {
                    return Err(Error::Input(format!("the answer {:?} is none of the listed ids", ex.target)));
                }
                let (yes, no) = (self.answer_tokens("yes", prefix)?[0], self.answer_tokens("no", prefix)?[0]);
                if yes == no {
                    return Err(Error::Input("\"yes\" and \"no\" start with the same token".into()));
                }
                Some((yes, no))
            }
            false => None,
        };
        let n = self.patch_tokens();
        let per_view = n / NUM_VIEWS;
        // Position p predicts label p + 1 (see `target_rows`); a prompt label is free to take.
        let blocks = enc.blocks.clone();
        let labels = &mut enc.labels;
        let mut set = |p: usize, t: u32, id: &str| -> Result<()> {
            match labels.get_mut(p + 1) {
                Some(l) if *l == IGNORE => {
                    *l = t as i64;
                    Ok(())
                }
                _ => Err(Error::Input(format!("the image listed as {id} is directly followed by the answer"))),
            }
        };
        for (&block, id) in blocks.iter().zip(&ex.listed) {
            if aids.recite {
                let tokens = self.answer_tokens(id, prefix)?;
                for v in 0..NUM_VIEWS {
                    let t = if tokens.len() == 1 { tokens[0] } else { tokens[1 + v % (tokens.len() - 1)] };
                    for p in block + v * per_view..block + (v + 1) * per_view {
                        set(p, t, id)?;
                    }
                }
            }
            if let Some((yes, no)) = flags {
                set(block + n, if *id == ex.target { yes } else { no }, id)?;
            }
        }
        Ok(enc)
    }

    /// The tokens of `text` as an answer tokenises it (after [`ANSWER_PREFIX`], whose own token
    /// count is `prefix`); an error if there are none.
    fn answer_tokens(&self, text: &str, prefix: usize) -> Result<Vec<u32>> {
        let full = self.tokenizer.encode(&format!("{ANSWER_PREFIX}{text}"))?;
        match full.get(prefix..) {
            Some(t) if !t.is_empty() => Ok(t.to_vec()),
            _ => Err(Error::Input(format!("{text:?} has no token after {ANSWER_PREFIX:?}"))),
        }
    }

    /// Projected patch features `[M, patch_tokens, text hidden]` of `M` images' views
    /// `[M * 5, 3, S, S]`.
    pub fn patch_features(&self, pixels: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let m = pixels.dim(0)? / NUM_VIEWS;
        let g2 = self.config.vision.grid() * self.config.vision.grid();
        let h = self.vision.hidden_states(&pixels.to_device(&self.device)?, self.feature_layers, ctx)?;
        let mut patches = h.narrow(1, 1, g2)?.contiguous()?;
        if self.pool > 1 {
            let (g, p, d) = (self.config.vision.grid(), self.pool, patches.dim(2)?);
            // row-major (row, col) = (R * p + i, C * p + j): mean over j, then over i
            patches = patches.reshape((m * NUM_VIEWS, g / p, p, g / p, p, d))?.mean(4)?.mean(2)?;
        }
        let patches = patches.reshape((m, self.patch_tokens(), ()))?;
        self.projector.forward(&patches, ctx)
    }

    /// Right-padded input embeddings `[B, T, H]` (pad `</s>`) with each patch block written over
    /// its placeholders, and row lengths.
    pub(crate) fn embeds(&self, batch: &[PatchEncoded], ctx: &mut Ctx) -> Result<(Tensor, Vec<usize>)> {
        let (embeds, lens, _) = self.embeds_and_features(batch, ctx)?;
        Ok((embeds, lens))
    }

    /// [`FullModel::embeds`] and the batch's projected patch features (None without images).
    fn embeds_and_features(&self, batch: &[PatchEncoded], ctx: &mut Ctx) -> Result<(Tensor, Vec<usize>, Option<Tensor>)> {
        if batch.is_empty() {
            return Err(Error::Input("empty batch".into()));
        }
        let t = batch.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let lens: Vec<usize> = batch.iter().map(|e| e.ids.len()).collect();
        let images: Vec<&Tensor> = batch.iter().flat_map(|e| e.images.iter()).collect();
        let feats = match images.is_empty() {
            true => None,
            false => Some(self.patch_features(&Tensor::cat(&images, 0)?, ctx)?),
        };
        let (pad, mut img, mut rows) = (self.tokenizer.eos_id(), 0usize, Vec::with_capacity(batch.len()));
        for e in batch {
            let mut ids = e.ids.clone();
            ids.resize(t, pad);
            let emb = self.decoder.embed(&ids, &self.device)?;
            let mut blocks = Vec::with_capacity(e.blocks.len());
            for &pos in &e.blocks {
                let f = feats.as_ref().ok_or_else(|| Error::Input("patch blocks without images".into()))?;
                blocks.push((pos, f.get(img)?));
                img += 1;
            }
            rows.push(splice_row(&emb, &blocks)?);
        }
        Ok((Tensor::stack(&rows, 0)?, lens, feats))
    }

    /// Sum of the target tokens' negative log-likelihoods (f32 scalar) and their number.
    /// With a read-out weight ([`FullModel::with_readout`]), its weighted sum is added (the
    /// count stays the language model's target tokens).
    ///
    /// A batch without images (text-only `copy` lines) does not depend on the vision tower and
    /// projector: they get a zero gradient (a term: their sum times a zero tensor), not none, so
    /// the trainer, which refuses a tensor without a gradient, trains on such batches too.
    pub fn loss_sum(&self, batch: &[PatchEncoded], ctx: &mut Ctx) -> Result<(Tensor, usize)> {
        let (mut sum, n, feats) = self.lm_loss_parts(batch, ctx)?;
        match &feats {
            Some(f) if self.readout > 0.0 => sum = (sum + (self.readout_sum(batch, f, ctx)? * self.readout)?)?,
            Some(_) => {}
            None => {
                // A zero tensor, not `* 0.0`: candle's backward skips an affine map by 0.
                let zero = Tensor::zeros((), DType::F32, &self.device)?;
                for (name, v) in &self.params.vars {
                    if name.starts_with("vision_tower.") || name.starts_with("multi_modal_projector.") {
                        sum = (sum + v.as_tensor().sum_all()?.to_dtype(DType::F32)?.mul(&zero)?)?;
                    }
                }
            }
        }
        Ok((sum, n))
    }

    /// The language model's part of [`FullModel::loss_sum`] alone (what held-out losses report).
    pub fn lm_loss_sum(&self, batch: &[PatchEncoded], ctx: &mut Ctx) -> Result<(Tensor, usize)> {
        let (sum, n, _) = self.lm_loss_parts(batch, ctx)?;
        Ok((sum, n))
    }

    fn lm_loss_parts(&self, batch: &[PatchEncoded], ctx: &mut Ctx) -> Result<(Tensor, usize, Option<Tensor>)> {
        let (embeds, lens, feats) = self.embeds_and_features(batch, ctx)?;
        let (rows, targets) = target_rows(batch.iter().map(|e| e.labels.as_slice()), embeds.dim(1)?)?;
        let hidden = self.decoder.forward(&embeds, &lens, ctx)?;
        Ok((head_loss(&self.decoder, &hidden, &rows, &targets, ctx)?, rows.len(), feats))
    }

    /// Mean cross-entropy over the batch's target tokens.
    pub fn loss(&self, batch: &[PatchEncoded], ctx: &mut Ctx) -> Result<Tensor> {
        let (sum, n) = self.loss_sum(batch, ctx)?;
        Ok((sum / n as f64)?)
    }

    /// Full-vocabulary f32 logits `[T, vocab]` at every position of one example.
    pub fn logits(&self, e: &PatchEncoded, ctx: &mut Ctx) -> Result<Tensor> {
        let (embeds, lens) = self.embeds(std::slice::from_ref(e), ctx)?;
        let hidden = self.decoder.forward(&embeds, &lens, ctx)?;
        let rows: Vec<u32> = (0..e.ids.len() as u32).collect();
        self.decoder.logits_at(&hidden, &rows, ctx)
    }

    /// Greedy answer (up to `max_new` tokens, stopping at `</s>`) to a stage-0 prompt about
    /// `images`. No KV cache: each step reruns the sequence (stage-0 prompts are short).
    /// [`crate::generate`] answers many prompts at once, much faster.
    pub fn generate(&self, prompt: &str, images: &[Tensor], max_new: usize) -> Result<String> {
        let mut e = self.encode_prompt(prompt, images)?;
        let mut out = Vec::new();
        let mut ctx = Ctx::eval();
        for _ in 0..max_new {
            let (embeds, lens) = self.embeds(std::slice::from_ref(&e), &mut ctx)?;
            let hidden = self.decoder.forward(&embeds, &lens, &mut ctx)?;
            let logits = self.decoder.logits_at(&hidden, &[e.ids.len() as u32 - 1], &mut ctx)?;
            let next = lavic_model::model::argmax(&logits.squeeze(0)?.to_vec1::<f32>()?);
            if next == self.tokenizer.eos_id() {
                break;
            }
            out.push(next);
            e.ids.push(next);
        }
        Ok(self.tokenizer.decode(&out, true)?)
    }

    /// A prompt alone (no target, no `</s>`), each image token expanded to its patch block.
    pub(crate) fn encode_prompt(&self, prompt: &str, images: &[Tensor]) -> Result<PatchEncoded> {
        let tokens = self.tokenizer.encode(prompt)?;
        self.check_images(&tokens, images)?;
        let (img, n) = (self.config.image_token_index, self.patch_tokens());
        let (mut ids, mut blocks) = (Vec::new(), Vec::new());
        for t in tokens {
            if t == img {
                blocks.push(ids.len());
                ids.extend(std::iter::repeat_n(img, n));
            } else {
                ids.push(t);
            }
        }
        Ok(PatchEncoded { ids, labels: Vec::new(), blocks, images: images.to_vec() })
    }

    /// Logits `[T, vocab]` of a LaViC prompt (`<ItemImageEmb1..5>` blocks) over `views` (one
    /// `[5, 3, S, S]` per block), through LaViC's path: each image's 5 CLS tokens of the final
    /// vision layer, projected. What lavic-model computes for the same weights.
    pub fn lavic_logits(&self, prompt: &str, views: &[Tensor]) -> Result<Tensor> {
        let tp = self.tokenizer.tokenize_prompt(prompt)?;
        if tp.image_slots.len() != views.len() {
            return Err(Error::Input(format!(
                "prompt has {} image blocks but {} images were given",
                tp.image_slots.len(),
                views.len()
            )));
        }
        let mut ctx = Ctx::eval();
        let emb = self.decoder.embed(&tp.ids, &self.device)?;
        let (mut pieces, mut at) = (Vec::new(), 0usize);
        for (slot, v) in tp.image_slots.iter().zip(views) {
            let cls = self.vision.cls(&v.to_device(&self.device)?, &mut ctx)?;
            let tokens = self.projector.forward(&cls, &mut ctx)?;
            for (k, &pos) in slot.iter().enumerate() {
                if pos > at {
                    pieces.push(emb.narrow(0, at, pos - at)?);
                }
                pieces.push(tokens.narrow(0, k, 1)?);
                at = pos + 1;
            }
        }
        if at < tp.ids.len() {
            pieces.push(emb.narrow(0, at, tp.ids.len() - at)?);
        }
        let embeds = Tensor::cat(&pieces, 0)?.unsqueeze(0)?;
        let hidden = self.decoder.forward(&embeds, &[tp.ids.len()], &mut ctx)?;
        let rows: Vec<u32> = (0..tp.ids.len() as u32).collect();
        self.decoder.logits_at(&hidden, &rows, &mut ctx)
    }

    /// Text-side pieces for reference computations in tests: token embeddings of `ids` and the
    /// decoder's logits `[T, vocab]` of one unpadded row of input embeddings `[T, H]`.
    pub fn embed_ids(&self, ids: &[u32]) -> Result<Tensor> {
        self.decoder.embed(ids, &self.device)
    }

    /// Logits `[T, vocab]` of one row of input embeddings `[T, H]`.
    pub fn logits_of_embeds(&self, embeds: &Tensor) -> Result<Tensor> {
        let t = embeds.dim(0)?;
        let mut ctx = Ctx::eval();
        let hidden = self.decoder.forward(&embeds.unsqueeze(0)?, &[t], &mut ctx)?;
        let rows: Vec<u32> = (0..t as u32).collect();
        self.decoder.logits_at(&hidden, &rows, &mut ctx)
    }

    /// transformers' vision `hidden_states[layers]` of views `[N, 3, S, S]` (for checks).
    pub fn vision_hidden_states(&self, pixels: &Tensor, layers: usize) -> Result<Tensor> {
        self.vision.hidden_states(pixels, layers, &mut Ctx::eval())
    }

    /// The `hidden_states` index stage 0 takes patch features from.
    pub fn feature_layer_index(&self) -> usize {
        self.feature_layers
    }
}

impl Objective for FullModel {
    type Item = PatchEncoded;
    fn params(&self) -> &Params {
        &self.params
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn loss_sum(&self, batch: &[PatchEncoded], ctx: &mut Ctx) -> Result<(Tensor, usize)> {
        FullModel::loss_sum(self, batch, ctx)
    }
    fn target_tokens(item: &PatchEncoded) -> usize {
        item.target_tokens()
    }
}

//! Stage-0 vision pre-training with **attribute heads** (issue 15, docs/DEMO.md): the vision
//! tower and projector of a [`FullModel`] learn to see the demo world's visual attributes from
//! direct labels, one softmax head per attribute (kind, main colour, secondary colour, pattern,
//! detail) over each image's projected patch features (their mean and their maximum over every
//! patch of the 5 views, concatenated). The language model does not take part and its tensors
//! are not trained; the heads are scaffolding and are never saved.
//!
//! Why: through the language model alone the tower learned almost nothing on our CPU budget
//! (the gradient reaches it only once attention has found the image), while direct heads on the
//! same tower, in a PyTorch side check, learned kind and colours within a few hundred steps.
//! This is supervised pre-training of the tower, as CLIP's tower itself was pre-trained before
//! LLaVA ever saw it.

use candle_core::{DType, Tensor, Var, D};

use crate::error::{Error, Result};
use crate::full::FullModel;
use crate::linear::{Ctx, Params};
use crate::ops;
use crate::rng::Rng;
use crate::trainer::Objective;

/// One image and the index of its value for every attribute head.
#[derive(Debug, Clone)]
pub struct AttributeExample {
    /// The 5 normalised views `[5, 3, S, S]`.
    pub views: Tensor,
    /// One value index per head, in head order.
    pub labels: Vec<u32>,
}

/// The tower + projector of a [`FullModel`] with one linear head per attribute.
pub struct AttributeObjective<'a> {
    model: &'a FullModel,
    /// `(weight [values, 2H], bias [values])` per head.
    heads: Vec<(Var, Var)>,
    params: Params,
}

/// Checkpoint-name prefixes of what this objective trains (besides its heads).
const TRAINED: [&str; 2] = ["vision_tower.", "multi_modal_projector."];

impl<'a> AttributeObjective<'a> {
    /// Heads of `sizes[i]` values each (weights N(0, 1e-3), biases 0: every head starts near the
    /// uniform guess), over `model`'s tower and projector. The trainable set is the tower's and
    /// projector's tensors of `model` (shared: training updates the model) and the heads.
    pub fn new(model: &'a FullModel, sizes: &[usize]) -> Result<Self> {
        if sizes.is_empty() || sizes.contains(&0) {
            return Err(Error::Input(format!("attribute heads need at least one value each, got sizes {sizes:?}")));
        }
        let mut params = Params::default();
        for (name, var) in &model.params().vars {
            if TRAINED.iter().any(|p| name.starts_with(p)) {
                params.vars.insert(name.clone(), var.clone());
            }
        }
        let width = 2 * model.config().text.hidden_size;
        let device = model.device();
        let mut heads = Vec::with_capacity(sizes.len());
        // A tiny random start breaks the symmetry between a head's values without biasing it.
        let mut rng = Rng::new(7);
        for (i, &n) in sizes.iter().enumerate() {
            let w: Vec<f32> = (0..n * width).map(|_| (rng.normal() * 1e-3) as f32).collect();
            let w = Var::from_tensor(&Tensor::from_vec(w, (n, width), device)?)?;
            let b = Var::from_tensor(&Tensor::zeros(n, DType::F32, device)?)?;
            params.vars.insert(format!("attribute_head.{i}.weight"), w.clone());
            params.vars.insert(format!("attribute_head.{i}.bias"), b.clone());
            heads.push((w, b));
        }
        Ok(Self { model, heads, params })
    }

    /// Number of heads.
    pub fn heads(&self) -> usize {
        self.heads.len()
    }

    /// Logits `[M, values]` of every head for `batch` (in batch order).
    pub fn logits(&self, batch: &[AttributeExample], ctx: &mut Ctx) -> Result<Vec<Tensor>> {
        if batch.is_empty() {
            return Err(Error::Input("empty batch".into()));
        }
        let views: Vec<Tensor> = batch.iter().map(|e| e.views.clone()).collect();
        let feats = self.model.patch_features(&Tensor::cat(&views, 0)?, ctx)?;
        let pooled = Tensor::cat(&[feats.mean(1)?, feats.max(1)?], D::Minus1)?;
        self.heads
            .iter()
            .map(|(w, b)| Ok(pooled.matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())?))
            .collect()
    }

    /// Per-head share of `data`'s images whose arg-max value is the label (eval mode, batches
    /// of 32).
    pub fn accuracy(&self, data: &[AttributeExample]) -> Result<Vec<f64>> {
        let mut hits = vec![0usize; self.heads.len()];
        for chunk in data.chunks(32) {
            let logits = self.logits(chunk, &mut Ctx::eval())?;
            for (h, l) in logits.iter().enumerate() {
                let pred = l.argmax(D::Minus1)?.to_vec1::<u32>()?;
                hits[h] += pred.iter().zip(chunk).filter(|(p, e)| **p == e.labels[h]).count();
            }
        }
        Ok(hits.iter().map(|&k| k as f64 / data.len().max(1) as f64).collect())
    }
}

impl Objective for AttributeObjective<'_> {
    type Item = AttributeExample;
    fn params(&self) -> &Params {
        &self.params
    }
    fn device(&self) -> &candle_core::Device {
        self.model.device()
    }
    /// Summed cross-entropy of every head over the batch; one "token" per (image, head).
    fn loss_sum(&self, batch: &[AttributeExample], ctx: &mut Ctx) -> Result<(Tensor, usize)> {
        if let Some(bad) = batch.iter().find(|e| e.labels.len() != self.heads.len()) {
            return Err(Error::Input(format!("an example has {} labels for {} attribute heads", bad.labels.len(), self.heads.len())));
        }
        let logits = self.logits(batch, ctx)?;
        let mut total = Tensor::zeros((), DType::F32, self.model.device())?;
        for (h, l) in logits.iter().enumerate() {
            let n = l.dim(1)?;
            let targets: Vec<u32> = batch.iter().map(|e| e.labels[h]).collect();
            if let Some(t) = targets.iter().find(|&&t| t as usize >= n) {
                return Err(Error::Input(format!("attribute head {h} has {n} values, label {t} is outside them")));
            }
            let tgt = Tensor::new(targets.as_slice(), l.device())?.unsqueeze(1)?;
            let nll = ops::log_softmax_last_dim(l)?.gather(&tgt, 1)?.sum_all()?.neg()?;
            total = (total + nll)?;
        }
        Ok((total, batch.len() * self.heads.len()))
    }
    fn target_tokens(item: &AttributeExample) -> usize {
        item.labels.len()
    }
}

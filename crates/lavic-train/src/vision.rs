//! Training forward of the CLIP vision tower and the multi-modal projector: the same
//! computation as lavic-model's `clip.rs` / `projector.rs` (CLS of the final layer before
//! `post_layernorm`; the final layer computes only the CLS row), with differentiable LayerNorm and
//! softmax and [`LoraLinear`] layers.

use candle_core::Tensor;
use lavic_model::config::{Activation, VisionConfig};
use lavic_model::weights::Weights;

use crate::error::{Error, Result};
use crate::linear::{Builder, Ctx, LoraLinear};
use crate::ops;

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(b: &mut Builder, w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: b.get(w, &[dim], "weight")?, bias: b.get(w, &[dim], "bias")?, eps })
    }
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(ops::layer_norm(xs, &self.weight, &self.bias, self.eps)?)
    }
}

struct EncoderLayer {
    ln1: LayerNorm,
    q: LoraLinear,
    k: LoraLinear,
    v: LoraLinear,
    out: LoraLinear,
    ln2: LayerNorm,
    fc1: LoraLinear,
    fc2: LoraLinear,
    heads: usize,
    act: Activation,
}

impl EncoderLayer {
    fn load(b: &mut Builder, w: &Weights, cfg: &VisionConfig) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let a = w.pp("self_attn");
        Ok(Self {
            ln1: LayerNorm::load(b, &w.pp("layer_norm1"), h, cfg.layer_norm_eps)?,
            q: b.linear(&a.pp("q_proj"), h, h, true, false)?,
            k: b.linear(&a.pp("k_proj"), h, h, true, false)?,
            v: b.linear(&a.pp("v_proj"), h, h, true, false)?,
            out: b.linear(&a.pp("out_proj"), h, h, true, false)?,
            ln2: LayerNorm::load(b, &w.pp("layer_norm2"), h, cfg.layer_norm_eps)?,
            fc1: b.linear(&w.pp("mlp").pp("fc1"), h, i, true, false)?,
            fc2: b.linear(&w.pp("mlp").pp("fc2"), i, h, true, false)?,
            heads: cfg.num_attention_heads,
            act: cfg.hidden_act,
        })
    }

    /// Output rows of the first `rows` tokens (all when None).
    fn forward(&self, xs: &Tensor, rows: Option<usize>, ctx: &mut Ctx) -> Result<Tensor> {
        let normed = self.ln1.forward(xs)?;
        let (residual, queries) = match rows {
            Some(n) => (xs.narrow(1, 0, n)?, normed.narrow(1, 0, n)?),
            None => (xs.clone(), normed.clone()),
        };
        let (b, tq, h) = queries.dims3()?;
        let t = normed.dim(1)?;
        let hd = h / self.heads;
        let split = |x: Tensor, len: usize| -> Result<Tensor> {
            Ok(x.reshape((b, len, self.heads, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = split((self.q.forward(&queries, ctx)? * (hd as f64).powf(-0.5))?, tq)?;
        let k = split(self.k.forward(&normed, ctx)?, t)?;
        let v = split(self.v.forward(&normed, ctx)?, t)?;
        let attn = ops::attention(&q, &k, &v, None, 1.0)?.transpose(1, 2)?.reshape((b, tq, h))?;
        let x = (residual + self.out.forward(&attn, ctx)?)?;
        let m = self.fc2.forward(&self.act.apply(&self.fc1.forward(&self.ln2.forward(&x)?, ctx)?)?, ctx)?;
        Ok((x + m)?)
    }
}

/// CLIP vision tower (`vision_tower.vision_model`) in training form.
pub struct VisionTower {
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    cfg: VisionConfig,
}

impl VisionTower {
    /// Loads from `vision_tower.vision_model`.
    pub fn load(b: &mut Builder, w: &Weights, cfg: &VisionConfig) -> Result<Self> {
        let (h, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let emb = w.pp("embeddings");
        let positions = cfg.grid() * cfg.grid() + 1;
        let patch_weight = b.get(&emb.pp("patch_embedding"), &[h, c, p, p], "weight")?.reshape((h, c * p * p))?;
        let class_embedding = b.get(&emb, &[h], "class_embedding")?;
        let position_embedding = b.get(&emb.pp("position_embedding"), &[positions, h], "weight")?;
        let pre_layrnorm = LayerNorm::load(b, &w.pp("pre_layrnorm"), h, cfg.layer_norm_eps)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(b, &w.pp(format!("encoder.layers.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { patch_weight, class_embedding, position_embedding, pre_layrnorm, layers, cfg: cfg.clone() })
    }

    /// CLS row of the final layer per view: pixels `[N, C, S, S]` -> `[N, hidden]`.
    pub fn cls(&self, pixels: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let mut x = self.stem(pixels)?;
        for i in 0..self.layers.len() {
            x = self.layer(i, &x, ctx)?;
        }
        Self::cls_row(&x)
    }

    /// Number of encoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Patch and position embeddings and `pre_layrnorm`: pixels `[N, C, S, S]` -> `[N, 1 + P, hidden]`.
    pub fn stem(&self, pixels: &Tensor) -> Result<Tensor> {
        let s = self.cfg.image_size;
        let dims = pixels.dims();
        if dims.len() != 4 || dims[1] != self.cfg.num_channels || dims[2] != s || dims[3] != s {
            return Err(Error::Input(format!(
                "pixel tensor has shape {dims:?}, expected [N, {}, {s}, {s}]",
                self.cfg.num_channels
            )));
        }
        let (n, c, _, _) = pixels.dims4()?;
        let p = self.cfg.patch_size;
        let g = s / p;
        let patches = pixels
            .to_dtype(self.patch_weight.dtype())?
            .reshape((n, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((n, g * g, c * p * p))?;
        let x = patches.broadcast_matmul(&self.patch_weight.t()?)?;
        let cls = self.class_embedding.reshape((1, 1, ()))?.broadcast_as((n, 1, self.cfg.hidden_size))?;
        let x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        self.pre_layrnorm.forward(&x)
    }

    /// Encoder layer `i` (the last one computes only the CLS row).
    pub fn layer(&self, i: usize, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let layer = self.layers.get(i).ok_or_else(|| Error::Input(format!("no vision layer {i}")))?;
        layer.forward(x, (i + 1 == self.layers.len()).then_some(1), ctx)
    }

    /// `[N, 1.., hidden]` -> the CLS rows `[N, hidden]`.
    pub fn cls_row(x: &Tensor) -> Result<Tensor> {
        Ok(x.narrow(1, 0, 1)?.squeeze(1)?)
    }

    /// transformers' `hidden_states[layers]`: every token (CLS first) after the first `layers`
    /// encoder layers, `[N, 1 + grid^2, hidden]` (0: the embeddings after `pre_layrnorm`).
    pub fn hidden_states(&self, pixels: &Tensor, layers: usize, ctx: &mut Ctx) -> Result<Tensor> {
        if layers > self.layers.len() {
            return Err(Error::Input(format!("hidden state {layers} of a tower with {} layers", self.layers.len())));
        }
        let mut x = self.stem(pixels)?;
        for layer in &self.layers[..layers] {
            x = layer.forward(&x, None, ctx)?;
        }
        Ok(x)
    }
}

/// `multi_modal_projector`: `linear_2(act(linear_1(x)))`.
pub struct Projector {
    linear_1: LoraLinear,
    linear_2: LoraLinear,
    act: Activation,
}

impl Projector {
    /// Loads `multi_modal_projector.linear_{1,2}`.
    pub fn load(b: &mut Builder, w: &Weights, vision: usize, text: usize, act: Activation, bias: bool) -> Result<Self> {
        Ok(Self {
            linear_1: b.linear(&w.pp("linear_1"), vision, text, bias, false)?,
            linear_2: b.linear(&w.pp("linear_2"), text, text, bias, false)?,
            act,
        })
    }

    /// Vision features `[.., vision]` -> text embeddings `[.., text]`.
    pub fn forward(&self, xs: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let xs = xs.to_dtype(self.linear_1.weight().dtype())?;
        let h = self.act.apply(&self.linear_1.forward(&xs, ctx)?)?;
        self.linear_2.forward(&h, ctx)
    }
}

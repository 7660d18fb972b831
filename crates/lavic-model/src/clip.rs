//! CLIP ViT vision tower (transformers' `CLIPVisionModel`): patch embedding, class token,
//! absolute positions, `pre_layrnorm`, pre-norm encoder layers with quick_gelu MLPs.
//!
//! LaViC reads token 0 (CLS) of the final layer's output, before `post_layernorm`, so this tower
//! returns the final encoder output and never applies `post_layernorm`. The final layer only
//! computes the CLS row when asked for CLS features (its other rows are never read), which is
//! exact: every row of a transformer layer's output depends only on that row's query.

use candle_core::{DType, Module, Tensor};

use crate::config::{Activation, VisionConfig};
use crate::error::Result;
use crate::lora::Linear;
use crate::weights::Weights;

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: w.get(&[dim], "weight")?, bias: w.get(&[dim], "bias")?, eps })
    }
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        // Computed in f32 like torch's LayerNorm does internally for half inputs.
        let dtype = xs.dtype();
        let x = xs.to_dtype(DType::F32)?;
        let y = candle_nn::ops::layer_norm(
            &x,
            &self.weight.to_dtype(DType::F32)?,
            &self.bias.to_dtype(DType::F32)?,
            self.eps as f32,
        )?;
        y.to_dtype(dtype)
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(w: &Weights, cfg: &VisionConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            q: w.pp("q_proj").linear(h, h, true)?,
            k: w.pp("k_proj").linear(h, h, true)?,
            v: w.pp("v_proj").linear(h, h, true)?,
            out: w.pp("out_proj").linear(h, h, true)?,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
        })
    }

    /// `queries` are the rows whose outputs are wanted (all rows, or CLS only).
    fn forward(&self, queries: &Tensor, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, tq, _) = queries.dims3()?;
        let (_, t, _) = xs.dims3()?;
        let split = |x: Tensor, len: usize| {
            x.reshape((b, len, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()
        };
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = split((self.q.forward(queries)? * scale)?, tq)?;
        let k = split(self.k.forward(xs)?, t)?;
        let v = split(self.v.forward(xs)?, t)?;
        let dtype = q.dtype();
        let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, tq, self.heads * self.head_dim))?;
        self.out.forward(&ctx)
    }
}

struct EncoderLayer {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    fn load(w: &Weights, cfg: &VisionConfig) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            ln1: LayerNorm::load(&w.pp("layer_norm1"), h, cfg.layer_norm_eps)?,
            attn: Attention::load(&w.pp("self_attn"), cfg)?,
            ln2: LayerNorm::load(&w.pp("layer_norm2"), h, cfg.layer_norm_eps)?,
            fc1: w.pp("mlp").pp("fc1").linear(h, i, true)?,
            fc2: w.pp("mlp").pp("fc2").linear(i, h, true)?,
            act: cfg.hidden_act,
        })
    }

    /// Output rows for the first `rows` tokens (all tokens when `rows` is None).
    fn forward(&self, xs: &Tensor, rows: Option<usize>) -> candle_core::Result<Tensor> {
        let normed = self.ln1.forward(xs)?;
        let (residual, queries) = match rows {
            Some(n) => (xs.narrow(1, 0, n)?, normed.narrow(1, 0, n)?),
            None => (xs.clone(), normed.clone()),
        };
        let h = (residual + self.attn.forward(&queries, &normed)?)?;
        let m = self.fc2.forward(&self.act.apply(&self.fc1.forward(&self.ln2.forward(&h)?)?)?)?;
        h + m
    }
}

/// The CLIP vision tower of a LLaVA-NeXT checkpoint.
pub struct ClipVisionTower {
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    cfg: VisionConfig,
}

impl ClipVisionTower {
    /// Loads from `vision_tower.vision_model`.
    pub fn load(w: &Weights, cfg: &VisionConfig) -> Result<Self> {
        let (h, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let emb = w.pp("embeddings");
        let positions = cfg.grid() * cfg.grid() + 1;
        // The stride-p, kernel-p convolution is a matmul over flattened patches.
        let patch_weight = emb.pp("patch_embedding").get(&[h, c, p, p], "weight")?.reshape((h, c * p * p))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(&w.pp(format!("encoder.layers.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_weight,
            class_embedding: emb.get(&[h], "class_embedding")?,
            position_embedding: emb.pp("position_embedding").get(&[positions, h], "weight")?,
            pre_layrnorm: LayerNorm::load(&w.pp("pre_layrnorm"), h, cfg.layer_norm_eps)?,
            layers,
            cfg: cfg.clone(),
        })
    }

    fn embed(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, s, _) = pixels.dims4()?;
        let p = self.cfg.patch_size;
        let g = s / p;
        let patches = pixels
            .to_dtype(self.patch_weight.dtype())?
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, g * g, c * p * p))?;
        let x = patches.broadcast_matmul(&self.patch_weight.t()?)?;
        let cls = self.class_embedding.reshape((1, 1, ()))?.broadcast_as((b, 1, self.cfg.hidden_size))?;
        let x = Tensor::cat(&[&cls, &x], 1)?;
        x.broadcast_add(&self.position_embedding.unsqueeze(0)?)
    }

    fn check(&self, pixels: &Tensor) -> Result<()> {
        let s = self.cfg.image_size;
        let dims = pixels.dims();
        if dims.len() != 4 || dims[1] != self.cfg.num_channels || dims[2] != s || dims[3] != s {
            return Err(crate::Error::Input(format!(
                "pixel tensor has shape {dims:?}, expected [N, {}, {s}, {s}]",
                self.cfg.num_channels
            )));
        }
        Ok(())
    }

    /// Final-layer output for all tokens, `[N, 1 + grid^2, hidden]` (before `post_layernorm`).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        self.check(pixels)?;
        let mut x = self.pre_layrnorm.forward(&self.embed(pixels)?)?;
        for layer in &self.layers {
            x = layer.forward(&x, None)?;
        }
        Ok(x)
    }

    /// CLS row of the final layer's output per view, `[N, hidden]`.
    pub fn cls(&self, pixels: &Tensor) -> Result<Tensor> {
        self.check(pixels)?;
        let mut x = self.pre_layrnorm.forward(&self.embed(pixels)?)?;
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, (i == last).then_some(1))?;
        }
        Ok(x.narrow(1, 0, 1)?.squeeze(1)?)
    }

    /// Tower width.
    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }
}


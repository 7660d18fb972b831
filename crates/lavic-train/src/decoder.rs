//! Training forward of the Mistral / Llama decoder: the computation of lavic-model's
//! `decoder.rs` (RMSNorm in f32, rotary tables `pos * inv_freq` in f32, grouped-query attention
//! with f32 scores, optional sliding window, SiLU-gated MLP) with differentiable RMSNorm, rotary
//! embedding and softmax, [`LoraLinear`] layers, and right-padded batches. A training pass sees
//! whole sequences; for greedy generation ([`crate::generate`]) the same layers also run
//! incrementally over a [`KvCache`] of a right-padded prefix (ragged rows, one new token per row
//! and step), which gives the full-sequence forward's values at those positions.

use candle_core::{DType, Device, Tensor};
use lavic_model::config::{Activation, TextConfig};
use lavic_model::weights::Weights;

use crate::error::{Error, Result};
use crate::linear::{Builder, Ctx, LoraLinear};
use crate::ops;

/// Additive f32 mask `[B, 1, T, T]` for right-padded rows of the given lengths: query `q` of
/// row `r` sees key `k` iff `k <= q`, `k < len[r]` and `q - k < window`. Padded query rows see
/// the whole real prefix, so no row is fully blocked (their outputs are never supervised).
pub fn right_padded_mask(lens: &[usize], t: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; lens.len() * t * t];
    for (r, &len) in lens.iter().enumerate() {
        for q in 0..t {
            for k in 0..t {
                if !(k <= q && k < len && window.is_none_or(|w| q - k < w)) {
                    m[(r * t + q) * t + k] = f32::NEG_INFINITY;
                }
            }
        }
    }
    Ok(Tensor::from_vec(m, (lens.len(), 1, t, t), device)?)
}

struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn load(b: &mut Builder, w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: b.get(w, &[dim], "weight")?, eps })
    }
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(ops::rms_norm(xs, &self.weight, self.eps)?)
    }
}

struct Layer {
    input_norm: RmsNorm,
    q: LoraLinear,
    k: LoraLinear,
    v: LoraLinear,
    o: LoraLinear,
    post_norm: RmsNorm,
    gate: LoraLinear,
    up: LoraLinear,
    down: LoraLinear,
}

/// What the layers of one pass share (see [`Decoder::layer_inputs`]).
pub struct LayerInputs {
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
    b: usize,
    t: usize,
}

/// The language model (`language_model.*`) in training form.
pub struct Decoder {
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: LoraLinear,
    inv_freq: Vec<f32>,
    cfg: TextConfig,
    vocab: usize,
}

impl Decoder {
    /// Loads `language_model.model.*` and `language_model.lm_head`, keeping the first `vocab`
    /// rows of the embeddings and lm_head (the reference's `resize_token_embeddings`).
    pub fn load(b: &mut Builder, w: &Weights, cfg: &TextConfig, vocab: usize) -> Result<Self> {
        let m = w.pp("model");
        let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (qd, kvd) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
        let (ab, mb) = (cfg.attention_bias, cfg.mlp_bias);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for n in 0..cfg.num_hidden_layers {
            let l = m.pp(format!("layers.{n}"));
            let (a, p) = (l.pp("self_attn"), l.pp("mlp"));
            layers.push(Layer {
                input_norm: RmsNorm::load(b, &l.pp("input_layernorm"), h, cfg.rms_norm_eps)?,
                q: b.linear(&a.pp("q_proj"), h, qd, ab, false)?,
                k: b.linear(&a.pp("k_proj"), h, kvd, ab, false)?,
                v: b.linear(&a.pp("v_proj"), h, kvd, ab, false)?,
                o: b.linear(&a.pp("o_proj"), qd, h, ab, false)?,
                post_norm: RmsNorm::load(b, &l.pp("post_attention_layernorm"), h, cfg.rms_norm_eps)?,
                gate: b.linear(&p.pp("gate_proj"), h, i, mb, false)?,
                up: b.linear(&p.pp("up_proj"), h, i, mb, false)?,
                down: b.linear(&p.pp("down_proj"), i, h, mb, false)?,
            });
        }
        let inv_freq = (0..hd / 2)
            .map(|k| 1.0f32 / (cfg.rope_theta as f32).powf((2 * k) as f32 / hd as f32))
            .collect();
        Ok(Self {
            embed_tokens: b.get_rows(&m.pp("embed_tokens"), vocab, h, "weight")?,
            layers,
            norm: RmsNorm::load(b, &m.pp("norm"), h, cfg.rms_norm_eps)?,
            lm_head: b.linear(&w.pp("lm_head"), h, vocab, false, true)?,
            inv_freq,
            cfg: cfg.clone(),
            vocab,
        })
    }

    /// Rows of the output vocabulary.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Model width.
    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// Token embeddings `[N, H]` of `ids` (frozen unless `embed_tokens` is in modules_to_save).
    pub fn embed(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(Error::Input(format!("token id {bad} is outside the vocabulary of {}", self.vocab)));
        }
        Ok(self.embed_tokens.index_select(&Tensor::new(ids, device)?, 0)?)
    }

    /// The attention mask of a right-padded batch (see [`right_padded_mask`]).
    pub fn mask(&self, lens: &[usize], t: usize, device: &Device) -> Result<Tensor> {
        right_padded_mask(lens, t, self.cfg.sliding_window, device)
    }

    /// Rotary tables `[T, D/2]` for positions `0..T` (right padding: every row starts at 0).
    fn rope_tables(&self, t: usize, device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
        let positions: Vec<usize> = (0..t).collect();
        self.rope_at(&positions, device, dtype)
    }

    /// Rotary tables `[N, D/2]` for the given positions.
    fn rope_at(&self, positions: &[usize], device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
        let (n, half) = (positions.len(), self.inv_freq.len());
        let (mut cos, mut sin) = (Vec::with_capacity(n * half), Vec::with_capacity(n * half));
        for &p in positions {
            for &f in &self.inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok((
            Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?,
            Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?,
        ))
    }

    /// Hidden states `[B, T, H]` after the last layer (before the final norm) of right-padded
    /// `embeds` `[B, T, H]` whose rows have real lengths `lens`.
    pub fn forward(&self, embeds: &Tensor, lens: &[usize], ctx: &mut Ctx) -> Result<Tensor> {
        let shared = self.layer_inputs(embeds, lens)?;
        let mut x = embeds.to_dtype(self.dtype())?;
        for i in 0..self.layers.len() {
            x = self.layer(i, &x, &shared, ctx)?;
        }
        Ok(x)
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Dtype of the frozen weights and of the hidden states between layers.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// What every layer of a pass over `embeds` `[B, T, H]` with row lengths `lens` shares:
    /// rotary tables and the attention mask.
    pub fn layer_inputs(&self, embeds: &Tensor, lens: &[usize]) -> Result<LayerInputs> {
        let (b, t, _) = embeds.dims3()?;
        if lens.len() != b || lens.iter().any(|&l| l == 0 || l > t) {
            return Err(Error::Input(format!("row lengths {lens:?} do not fit a batch of {b} x {t}")));
        }
        let device = embeds.device();
        let (cos, sin) = self.rope_tables(t, device, self.dtype())?;
        let mask = self.mask(lens, t, device)?;
        Ok(LayerInputs { cos, sin, mask, b, t })
    }

    /// Decoder layer `i` on hidden states `x` `[B, T, H]`.
    pub fn layer(&self, i: usize, x: &Tensor, s: &LayerInputs, ctx: &mut Ctx) -> Result<Tensor> {
        Ok(self.layer_kv(i, x, s, None, ctx)?.0)
    }

    /// Decoder layer `i` on hidden states `x` `[B, Tq, H]` whose queries attend to `past` keys
    /// and values `[B, KV, S0, D]` (if any) followed by their own; `s.mask` is `[B, 1, Tq, S0 +
    /// Tq]`. Returns the output and the keys (after rotary) and values of all `S0 + Tq` positions.
    fn layer_kv(
        &self,
        i: usize,
        x: &Tensor,
        s: &LayerInputs,
        past: Option<&(Tensor, Tensor)>,
        ctx: &mut Ctx,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let l = self.layers.get(i).ok_or_else(|| Error::Input(format!("no decoder layer {i}")))?;
        let (b, t) = (s.b, s.t);
        let (heads, kv, hd) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim);
        let scale = 1.0 / (hd as f64).sqrt();
        let h = l.input_norm.forward(x)?;
        let split = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = ops::rope(&split(l.q.forward(&h, ctx)?, heads)?, &s.cos, &s.sin)?;
        let mut k = ops::rope(&split(l.k.forward(&h, ctx)?, kv)?, &s.cos, &s.sin)?;
        let mut v = split(l.v.forward(&h, ctx)?, kv)?;
        if let Some((pk, pv)) = past {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
        }
        let a = ops::attention(&q, &k, &v, Some(&s.mask), scale)?.transpose(1, 2)?.reshape((b, t, heads * hd))?;
        let x1 = (x + l.o.forward(&a, ctx)?)?;
        let h2 = l.post_norm.forward(&x1)?;
        let g = Activation::Silu.apply(&l.gate.forward(&h2, ctx)?)?;
        let mlp = l.down.forward(&(g * l.up.forward(&h2, ctx)?)?, ctx)?;
        Ok(((x1 + mlp)?, (k, v)))
    }

    /// Hidden states `[B, T, H]` (as [`Decoder::forward`]) of a right-padded prefix, and the cache
    /// of its keys and values for [`Decoder::decode_step`]. Inference only: the cache is
    /// detached from the autograd graph.
    pub fn prefill(&self, embeds: &Tensor, lens: &[usize], ctx: &mut Ctx) -> Result<(Tensor, KvCache)> {
        let shared = self.layer_inputs(embeds, lens)?;
        let mut x = embeds.to_dtype(self.dtype())?;
        let mut layers = Vec::with_capacity(self.layers.len());
        for i in 0..self.layers.len() {
            let (y, (k, v)) = self.layer_kv(i, &x, &shared, None, ctx)?;
            layers.push((k.detach(), v.detach()));
            x = y;
        }
        Ok((x, KvCache { layers, lens: lens.to_vec(), prefix: shared.t, steps: 0 }))
    }

    /// Hidden states `[B, 1, H]` of one new token per cached row (`embeds` `[B, 1, H]`): row `r`'s
    /// token sits at position `lens[r] + steps` and sees the row's real prefix and every token
    /// decoded after it, as in a full forward of the unpadded row. Appends its keys and values.
    pub fn decode_step(&self, embeds: &Tensor, cache: &mut KvCache, ctx: &mut Ctx) -> Result<Tensor> {
        let b = cache.lens.len();
        if embeds.dims3()? != (b, 1, self.cfg.hidden_size) {
            return Err(Error::Input(format!("decode step of shape {:?} for a cache of {b} rows", embeds.dims())));
        }
        let device = embeds.device();
        let positions: Vec<usize> = cache.lens.iter().map(|l| l + cache.steps).collect();
        let (cos, sin) = self.rope_at(&positions, device, self.dtype())?;
        let (cos, sin) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?);
        let mask = cache.step_mask(self.cfg.sliding_window, device)?;
        let shared = LayerInputs { cos, sin, mask, b, t: 1 };
        let mut x = embeds.to_dtype(self.dtype())?;
        for i in 0..self.layers.len() {
            let (y, (k, v)) = self.layer_kv(i, &x, &shared, Some(&cache.layers[i]), ctx)?;
            cache.layers[i] = (k.detach(), v.detach());
            x = y;
        }
        cache.steps += 1;
        Ok(x)
    }

    /// f32 logits `[N, vocab]` of the hidden states at flat indices `rows` (into `B * T`): the
    /// final norm and lm_head run on those rows only.
    pub fn logits_at(&self, hidden: &Tensor, rows: &[u32], ctx: &mut Ctx) -> Result<Tensor> {
        let (b, t, h) = hidden.dims3()?;
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= b * t) {
            return Err(Error::Input(format!("logit row {bad} is outside {b} x {t}")));
        }
        let idx = Tensor::new(rows, hidden.device())?;
        let picked = hidden.reshape((b * t, h))?.index_select(&idx, 0)?;
        let normed = self.norm.forward(&picked)?;
        Ok(self.lm_head.forward(&normed, ctx)?.to_dtype(DType::F32)?)
    }
}

/// Every layer's keys (after rotary) and values `[B, KV, S, D]` of a batch decoded so far: a
/// right-padded prefix of `prefix` columns ([`Decoder::prefill`]), then one column per
/// [`Decoder::decode_step`].
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    /// Real prefix length of each row.
    lens: Vec<usize>,
    prefix: usize,
    steps: usize,
}

impl KvCache {
    /// Rows in the cache.
    pub fn rows(&self) -> usize {
        self.lens.len()
    }

    /// Keeps only the rows `rows` (indices into the current rows), in that order.
    pub fn keep(&mut self, rows: &[usize]) -> Result<()> {
        if let Some(bad) = rows.iter().find(|&&r| r >= self.lens.len()) {
            return Err(Error::Input(format!("row {bad} is outside a cache of {} rows", self.lens.len())));
        }
        let Some((k0, _)) = self.layers.first() else { return Ok(()) };
        let idx = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), k0.device())?;
        for (k, v) in &mut self.layers {
            *k = k.index_select(&idx, 0)?;
            *v = v.index_select(&idx, 0)?;
        }
        self.lens = rows.iter().map(|&r| self.lens[r]).collect();
        Ok(())
    }

    /// Additive mask `[B, 1, 1, prefix + steps + 1]` of the next decoded token: row `r`'s query at
    /// position `lens[r] + steps` sees prefix column `k` iff `k < lens[r]`, and every decoded
    /// column, each subject to the sliding window.
    fn step_mask(&self, window: Option<usize>, device: &Device) -> Result<Tensor> {
        let s = self.prefix + self.steps + 1;
        let mut m = vec![0f32; self.lens.len() * s];
        for (r, &len) in self.lens.iter().enumerate() {
            let q = len + self.steps;
            for k in 0..s {
                let pos = if k < self.prefix { (k < len).then_some(k) } else { Some(len + k - self.prefix) };
                if pos.is_none_or(|p| window.is_some_and(|w| q - p >= w)) {
                    m[r * s + k] = f32::NEG_INFINITY;
                }
            }
        }
        Ok(Tensor::from_vec(m, (self.lens.len(), 1, 1, s), device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For an unpadded row the mask is lavic-model's inference mask, with and without a
    /// sliding window; padded rows block exactly the padding keys.
    #[test]
    fn mask_matches_inference_and_blocks_padding() {
        let dev = Device::Cpu;
        for window in [None, Some(3)] {
            let ours = right_padded_mask(&[6], 6, window, &dev).unwrap();
            let theirs = lavic_model::decoder::causal_mask(&[0], 0, 6, window, &dev).unwrap();
            assert_eq!(ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(), theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        let m = right_padded_mask(&[6, 4], 6, None, &dev).unwrap().squeeze(1).unwrap().to_vec3::<f32>().unwrap();
        for (q, row) in m[1].iter().enumerate() {
            for (k, v) in row.iter().enumerate() {
                let open = *v == 0.0;
                assert_eq!(open, k <= q && k < 4, "row 1 q {q} k {k}");
            }
        }
    }
}

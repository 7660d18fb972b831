//! Mistral / Llama decoder (transformers' `MistralForCausalLM` / `LlamaForCausalLM`) that takes
//! input embeddings, per-row positions and an arbitrary additive attention mask, keeps a
//! forkable KV cache (decode steps write into room reserved ahead instead of concatenating the
//! whole cache every step), and computes logits only at the positions asked for.
//!
//! Numerics follow the reference's eager path: RMSNorm in f32 then cast, rotary tables in f32
//! (`pos * inv_freq`), attention scores softmaxed in f32 after adding the mask.

use candle_core::{DType, Device, Module, Tensor, D};

use crate::config::{Activation, TextConfig};
use crate::error::{Error, Result};
use crate::lora::Linear;
use crate::weights::Weights;

/// Additive mask value for a blocked position. Infinite, because `exp` of a huge finite negative
/// number takes libm's slow underflow path (it dominated CPU profiles); masks never leave a row
/// fully blocked (see [`finish_rows`]), so softmax stays NaN-free.
pub const MASKED: f32 = f32::NEG_INFINITY;

/// Query rows per attention block (see `Attention::forward`).
const QUERY_BLOCK: usize = 256;

/// Positions of room a one-token append (a decode step) reserves when its cache is full, so the
/// next steps write in place instead of copying the whole cache (see [`LayerKv::append`]).
const DECODE_ROOM: usize = 32;

/// Opens every fully blocked row (padding queries) to all keys: their outputs are never read,
/// and a row of only `-inf` would make softmax produce NaN, which then leaks into other rows
/// through `0 * NaN` in `probs @ V`.
pub(crate) fn finish_rows(data: &mut [f32], s: usize) {
    for row in data.chunks_mut(s) {
        if row.iter().all(|&v| v == MASKED) {
            row.fill(0.0);
        }
    }
}

struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: w.get(&[dim], "weight")?, eps })
    }
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = xs.dtype();
        let x = xs.to_dtype(DType::F32)?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_div(&(var + self.eps)?.sqrt()?)?.to_dtype(dtype)?;
        normed.broadcast_mul(&self.weight)
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(w: &Weights, c: &TextConfig) -> Result<Self> {
        let (h, hd) = (c.hidden_size, c.head_dim);
        let b = c.attention_bias;
        Ok(Self {
            q: w.pp("q_proj").linear(h, c.num_attention_heads * hd, b)?,
            k: w.pp("k_proj").linear(h, c.num_key_value_heads * hd, b)?,
            v: w.pp("v_proj").linear(h, c.num_key_value_heads * hd, b)?,
            o: w.pp("o_proj").linear(c.num_attention_heads * hd, h, b)?,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: hd,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &Tensor,
        cache: &mut Option<LayerKv>,
        room: usize,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let hd = self.head_dim;
        let q = self.q.forward(xs)?.reshape((b, t, self.heads, hd))?.transpose(1, 2)?.contiguous()?;
        let k = self.k.forward(xs)?.reshape((b, t, self.kv_heads, hd))?.transpose(1, 2)?.contiguous()?;
        let v = self.v.forward(xs)?.reshape((b, t, self.kv_heads, hd))?.transpose(1, 2)?.contiguous()?;
        let q = candle_nn::rotary_emb::rope(&q, &rope.0, &rope.1)?;
        let k = candle_nn::rotary_emb::rope(&k, &rope.0, &rope.1)?;
        let (k, v) = LayerKv::append(cache, k, v, room)?;
        // Long inputs run in blocks of query rows, so the f32 score tensor of one block
        // (`heads x rows x keys`) stays small instead of growing with the square of the length;
        // every row's softmax is independent, so the result is the same.
        let mut blocks = Vec::new();
        let mut start = 0;
        while start < t {
            let n = QUERY_BLOCK.min(t - start);
            let (qb, mb) = if n == t { (q.clone(), mask.clone()) } else { (q.narrow(2, start, n)?, mask.narrow(2, start, n)?) };
            blocks.push(self.attend(&qb, &k, &v, &mb)?);
            start += n;
        }
        let ctx = if blocks.len() == 1 { blocks.remove(0) } else { Tensor::cat(&blocks, 2)? };
        let ctx = ctx.transpose(1, 2)?.reshape((b, t, self.heads * hd))?;
        self.o.forward(&ctx)
    }

    /// Softmax attention of queries `[B, heads, n, hd]` over keys/values `[B, kv_heads, s, hd]`
    /// with the additive f32 mask `[B, 1, n, s]`; returns `[B, heads, n, hd]`.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, _, t, hd) = q.dims4()?;
        let s = k.dim(2)?;
        let rep = self.heads / self.kv_heads;
        // Grouped-query attention without copying K/V: fold the query heads of a group together.
        let q = q.contiguous()?.reshape((b, self.kv_heads, rep * t, hd))?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?
            .to_dtype(DType::F32)?
            .reshape((b, self.kv_heads, rep, t, s))?
            .broadcast_add(&mask.contiguous()?.reshape((b, 1, 1, t, s))?)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?
            .to_dtype(v.dtype())?
            .reshape((b, self.kv_heads, rep * t, s))?;
        probs.matmul(v)?.reshape((b, self.heads, t, hd))
    }
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
    act: Activation,
}

impl Mlp {
    fn load(w: &Weights, c: &TextConfig) -> Result<Self> {
        let (h, i, b) = (c.hidden_size, c.intermediate_size, c.mlp_bias);
        Ok(Self {
            gate: w.pp("gate_proj").linear(h, i, b)?,
            up: w.pp("up_proj").linear(h, i, b)?,
            down: w.pp("down_proj").linear(i, h, b)?,
            act: c.hidden_act,
        })
    }
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.down.forward(&(self.act.apply(&self.gate.forward(xs)?)? * self.up.forward(xs)?)?)
    }
}

struct Layer {
    input_norm: RmsNorm,
    attn: Attention,
    post_norm: RmsNorm,
    mlp: Mlp,
}

/// Keys and values `[B, kv_heads, len, head_dim]` of one layer, as views of buffers that may have
/// room for more positions.
#[derive(Debug)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
    /// Buffers `[B, kv_heads, capacity, head_dim]` that `k` and `v` are the first `len`
    /// positions of, when there is room left; owned by this cache alone (a clone gets `None`).
    room: Option<(Tensor, Tensor)>,
}

impl Clone for LayerKv {
    /// A fork shares the cached positions but not the room after them: its first append copies
    /// into buffers of its own, so two forks never write into the same buffer.
    fn clone(&self) -> Self {
        Self { k: self.k.clone(), v: self.v.clone(), room: None }
    }
}

impl LayerKv {
    /// Appends new keys and values `[B, kv_heads, t, head_dim]` (contiguous) and returns the
    /// whole cache's. With room left they are written in place; else the cache is copied with
    /// the new positions (a concatenation), plus `room` reserved positions when `t` is 1 (a
    /// decode step: the next steps then write in place). Prefills and multi-token passes copy
    /// exactly what they need, as a plain concatenation does.
    fn append(slot: &mut Option<Self>, k: Tensor, v: Tensor, room: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let next = match slot.take() {
            None => Self { k, v, room: None },
            Some(prev) => {
                let (len, t) = (prev.k.dim(2)?, k.dim(2)?);
                match prev.room {
                    Some((kb, vb)) if kb.dim(2)? >= len + t => {
                        kb.slice_set(&k, 2, len)?;
                        vb.slice_set(&v, 2, len)?;
                        Self { k: kb.narrow(2, 0, len + t)?, v: vb.narrow(2, 0, len + t)?, room: Some((kb, vb)) }
                    }
                    _ if t == 1 && room > 0 => {
                        let pad = |x: &Tensor| -> candle_core::Result<Tensor> {
                            let mut dims = x.dims().to_vec();
                            dims[2] = room;
                            Tensor::zeros(dims, x.dtype(), x.device())
                        };
                        let kb = Tensor::cat(&[&prev.k, &k, &pad(&k)?], 2)?;
                        let vb = Tensor::cat(&[&prev.v, &v, &pad(&v)?], 2)?;
                        Self { k: kb.narrow(2, 0, len + t)?, v: vb.narrow(2, 0, len + t)?, room: Some((kb, vb)) }
                    }
                    _ => Self { k: Tensor::cat(&[&prev.k, &k], 2)?, v: Tensor::cat(&[&prev.v, &v], 2)?, room: None },
                }
            }
        };
        let out = (next.k.clone(), next.v.clone());
        *slot = Some(next);
        Ok(out)
    }
}

/// Per-layer keys and values of the tokens seen so far.
///
/// Tensors are immutable and reference-counted, so [`KvCache::fork`] shares the prefix with the
/// original at no cost; appending to one fork never changes the other (the room a decode step
/// reserves is written only by the cache that reserved it).
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    /// Positions a full cache reserves on a one-token append ([`DECODE_ROOM`]; 0 in tests: the
    /// plain concatenation every step that the reserved room must match exactly).
    room: usize,
}

impl KvCache {
    /// An empty cache for `layers` decoder layers.
    pub fn new(layers: usize) -> Self {
        Self { layers: vec![None; layers], room: DECODE_ROOM }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map(|l| l.k.dim(2).unwrap_or(0)).unwrap_or(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows (batch size) of the cached tensors, if any.
    pub fn batch(&self) -> Option<usize> {
        self.layers.first().and_then(|l| l.as_ref()).and_then(|l| l.k.dim(0).ok())
    }

    /// A copy sharing the cached prefix.
    pub fn fork(&self) -> Self {
        self.clone()
    }

    /// Repeats a single-row cache `n` times (a shared prefix for a batch).
    pub fn expand(&self, n: usize) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                None => Ok(None),
                Some(LayerKv { k, v, .. }) => {
                    if k.dim(0)? != 1 {
                        return Err(Error::Input(format!("cannot expand a cache of {} rows", k.dim(0)?)));
                    }
                    let rep = |x: &Tensor| -> candle_core::Result<Tensor> {
                        let mut d = x.dims().to_vec();
                        d[0] = n;
                        x.broadcast_as(d)?.contiguous()
                    };
                    Ok(Some(LayerKv { k: rep(k)?, v: rep(v)?, room: None }))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, room: self.room })
    }
}

/// The language model: embeddings, decoder layers, final norm, (resized) lm_head.
pub struct Decoder {
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    inv_freq: Vec<f32>,
    cfg: TextConfig,
    vocab: usize,
}

impl Decoder {
    /// Loads `language_model.model.*` and `language_model.lm_head`, keeping the first `vocab`
    /// rows of the embeddings and lm_head (the reference's `resize_token_embeddings`).
    pub fn load(w: &Weights, cfg: &TextConfig, vocab: usize) -> Result<Self> {
        let m = w.pp("model");
        let h = cfg.hidden_size;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = m.pp(format!("layers.{i}"));
                Ok(Layer {
                    input_norm: RmsNorm::load(&l.pp("input_layernorm"), h, cfg.rms_norm_eps)?,
                    attn: Attention::load(&l.pp("self_attn"), cfg)?,
                    post_norm: RmsNorm::load(&l.pp("post_attention_layernorm"), h, cfg.rms_norm_eps)?,
                    mlp: Mlp::load(&l.pp("mlp"), cfg)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let hd = cfg.head_dim;
        // transformers: 1 / theta ** (arange(0, d, 2).float() / d), in f32.
        let inv_freq = (0..hd / 2)
            .map(|i| 1.0f32 / (cfg.rope_theta as f32).powf((2 * i) as f32 / hd as f32))
            .collect();
        Ok(Self {
            embed_tokens: m.pp("embed_tokens").get_rows(vocab, h, "weight")?,
            layers,
            norm: RmsNorm::load(&m.pp("norm"), h, cfg.rms_norm_eps)?,
            lm_head: w.pp("lm_head").linear_rows(h, vocab)?,
            inv_freq,
            cfg: cfg.clone(),
            vocab,
        })
    }

    /// Rows of the output vocabulary (= tokenizer length).
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Model width.
    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// Sliding attention window, if the config has one.
    pub fn sliding_window(&self) -> Option<usize> {
        self.cfg.sliding_window
    }

    /// A fresh cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Token embeddings `[B, T, H]` of ids `[B, T]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let max = ids.flatten_all()?.to_dtype(DType::U32)?.max(0)?.to_scalar::<u32>()?;
        if max as usize >= self.vocab {
            return Err(Error::Input(format!("token id {max} is outside the vocabulary of {}", self.vocab)));
        }
        Ok(self.embed_tokens.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, ()))?)
    }

    fn rope_tables(&self, positions: &[Vec<u32>], device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
        let b = positions.len();
        let t = positions.first().map(Vec::len).unwrap_or(0);
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(b * t * half);
        let mut sin = Vec::with_capacity(b * t * half);
        for row in positions {
            if row.len() != t {
                return Err(Error::Input("position rows have different lengths".into()));
            }
            for &p in row {
                for &f in &self.inv_freq {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let cos = Tensor::from_vec(cos, (b, t, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (b, t, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// Runs the layers over `embeds` `[B, T, H]` at rotary `positions` (`B` rows of `T`), with an
    /// additive f32 `mask` `[B, 1, T, cache.len() + T]`, appending to `cache`. Returns the
    /// final hidden states before the last norm, `[B, T, H]`.
    pub fn forward(&self, embeds: &Tensor, positions: &[Vec<u32>], mask: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t, _) = embeds.dims3()?;
        let s = cache.len() + t;
        if mask.dims() != [b, 1, t, s] {
            return Err(Error::Input(format!("mask has shape {:?}, expected [{b}, 1, {t}, {s}]", mask.dims())));
        }
        if positions.len() != b {
            return Err(Error::Input(format!("{} position rows for a batch of {b}", positions.len())));
        }
        if let Some(cb) = cache.batch() {
            if cb != b {
                return Err(Error::Input(format!("cache has {cb} rows, input has {b}")));
            }
        }
        let dtype = self.embed_tokens.dtype();
        let rope = self.rope_tables(positions, embeds.device(), dtype)?;
        let mask = mask.to_dtype(DType::F32)?;
        let mut x = embeds.to_dtype(dtype)?;
        let room = cache.room;
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let h = layer.attn.forward(&layer.input_norm.forward(&x)?, &rope, &mask, kv, room)?;
            let x1 = (x + h)?;
            x = (&x1 + layer.mlp.forward(&layer.post_norm.forward(&x1)?)?)?;
        }
        Ok(x)
    }

    /// f32 logits `[N, vocab]` of the hidden states at flat indices `rows` (into `B * T`).
    pub fn logits_at(&self, hidden: &Tensor, rows: &[u32]) -> Result<Tensor> {
        let (b, t, h) = hidden.dims3()?;
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= b * t) {
            return Err(Error::Input(format!("logit row {bad} is outside {b} x {t}")));
        }
        let idx = Tensor::new(rows, hidden.device())?;
        let picked = hidden.reshape((b * t, h))?.index_select(&idx, 0)?;
        Ok(self.lm_head.forward(&self.norm.forward(&picked)?)?.to_dtype(DType::F32)?)
    }
}

/// Builds an additive mask `[B, 1, T, S]` from `allowed(row, query, key)`.
pub fn mask_from_fn(
    b: usize,
    t: usize,
    s: usize,
    device: &Device,
    allowed: impl Fn(usize, usize, usize) -> bool,
) -> Result<Tensor> {
    let mut data = Vec::with_capacity(b * t * s);
    for r in 0..b {
        for q in 0..t {
            for k in 0..s {
                data.push(if allowed(r, q, k) { 0.0 } else { MASKED });
            }
        }
    }
    finish_rows(&mut data, s);
    Ok(Tensor::from_vec(data, (b, 1, t, s), device)?)
}

/// Causal mask for `t` new tokens after `past` cached ones, with `left_pad[r]` padding slots at
/// the start of row `r` (never attended) and an optional sliding window over key positions.
pub fn causal_mask(
    left_pad: &[usize],
    past: usize,
    t: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let s = past + t;
    mask_from_fn(left_pad.len(), t, s, device, |r, q, k| {
        let qa = past + q;
        let in_window = window.is_none_or(|w| qa - k.min(qa) < w);
        k >= left_pad[r] && k <= qa && in_window
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::config::TextModelType;
    use crate::weights::{Checkpoint, Weights};

    /// A random 2-layer decoder with real head shapes (4 query heads of 64, 2 KV heads:
    /// grouped-query attention as Mistral's), f32, saved to `dir` and loaded as a checkpoint.
    fn random_decoder(dir: &Path) -> Decoder {
        let (h, inter, layers, vocab) = (256, 512, 2, 300);
        let cfg = TextConfig {
            model_type: TextModelType::Mistral,
            vocab_size: vocab,
            hidden_size: h,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 64,
            hidden_act: Activation::Silu,
            max_position_embeddings: 4096,
            rms_norm_eps: 1e-5,
            rope_theta: 1e6,
            sliding_window: None,
            attention_bias: false,
            mlp_bias: false,
        };
        let mut t = HashMap::new();
        // std 0: a norm weight of ones
        let mut add = |name: String, shape: &[usize], std: f32| {
            let x = match std {
                0.0 => Tensor::ones(shape, DType::F32, &Device::Cpu),
                _ => Tensor::randn(0f32, std, shape, &Device::Cpu),
            };
            t.insert(name, x.unwrap());
        };
        for i in 0..layers {
            let l = format!("language_model.model.layers.{i}");
            for (p, out, inp) in [("self_attn.q_proj", h, h), ("self_attn.k_proj", 128, h), ("self_attn.v_proj", 128, h), ("self_attn.o_proj", h, h), ("mlp.gate_proj", inter, h), ("mlp.up_proj", inter, h), ("mlp.down_proj", h, inter)] {
                add(format!("{l}.{p}.weight"), &[out, inp], 0.06);
            }
            add(format!("{l}.input_layernorm.weight"), &[h], 0.0);
            add(format!("{l}.post_attention_layernorm.weight"), &[h], 0.0);
        }
        add("language_model.model.embed_tokens.weight".into(), &[vocab, h], 1.0);
        add("language_model.model.norm.weight".into(), &[h], 0.0);
        add("language_model.lm_head.weight".into(), &[vocab, h], 0.06);
        candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
        let w = Weights::new(Arc::new(Checkpoint::open(dir).unwrap()), DType::F32, Device::Cpu, vec![], false);
        Decoder::load(&w.pp("language_model"), &cfg, vocab).unwrap()
    }

    /// Feeds `ids` at positions from `start` and returns the logits after the last one.
    fn feed(d: &Decoder, cache: &mut KvCache, ids: &[u32], start: usize) -> Vec<f32> {
        let dev = Device::Cpu;
        let e = d.embed(&Tensor::new(ids, &dev).unwrap().unsqueeze(0).unwrap()).unwrap();
        let mask = causal_mask(&[0], cache.len(), ids.len(), None, &dev).unwrap();
        let pos = (start as u32..(start + ids.len()) as u32).collect();
        let h = d.forward(&e, &[pos], &mask, cache).unwrap();
        d.logits_at(&h, &[ids.len() as u32 - 1]).unwrap().squeeze(0).unwrap().to_vec1().unwrap()
    }

    /// Prefill of `prompt` then `steps` greedy decode steps: the logits of each.
    fn greedy(d: &Decoder, cache: &mut KvCache, prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
        let mut out = vec![feed(d, cache, prompt, 0)];
        for step in 0..steps {
            let next = crate::model::argmax(out.last().unwrap());
            out.push(feed(d, cache, &[next], prompt.len() + step));
        }
        out
    }

    fn concatenating(d: &Decoder) -> KvCache {
        KvCache { room: 0, ..d.new_cache() }
    }

    const PROMPT: [u32; 37] = [1, 5, 17, 33, 2, 250, 251, 7, 7, 7, 100, 101, 102, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 299, 298, 150, 151, 152, 153, 154, 11, 12, 13, 14, 15, 16, 17];

    #[test]
    fn decode_steps_in_reserved_room_give_the_concatenated_caches_logits_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let d = random_decoder(dir.path());
        // more steps than DECODE_ROOM: the room runs out once and is reserved again
        let steps = DECODE_ROOM + 8;
        let mut reserved = d.new_cache();
        let ours = greedy(&d, &mut reserved, &PROMPT, steps);
        let mut plain = concatenating(&d);
        let reference = greedy(&d, &mut plain, &PROMPT, steps);
        assert_eq!(ours.len(), steps + 1);
        for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "step {i} differs");
        }
        assert_eq!(reserved.len(), PROMPT.len() + steps);
        // the fast path was taken: the last steps wrote into reserved room, the reference never
        // reserves any
        assert!(reserved.layers.iter().all(|l| l.as_ref().unwrap().room.is_some()));
        assert!(plain.layers.iter().all(|l| l.as_ref().unwrap().room.is_none()));
        // and greedy decoding does not just repeat one token (the check would be vacuous)
        let picks: std::collections::HashSet<u32> = ours.iter().map(|l| crate::model::argmax(l)).collect();
        assert!(picks.len() > 3, "{picks:?}");
    }

    #[test]
    fn forks_of_a_cache_with_room_never_write_into_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let d = random_decoder(dir.path());
        let n = PROMPT.len();
        let mut a = d.new_cache();
        feed(&d, &mut a, &PROMPT, 0);
        feed(&d, &mut a, &[40], n);
        feed(&d, &mut a, &[41], n + 1); // `a` now has room
        let mut b = a.fork();
        let a1 = feed(&d, &mut a, &[50], n + 2);
        let b1 = feed(&d, &mut b, &[60], n + 2); // would overwrite position n + 2 if it shared the room
        let a2 = feed(&d, &mut a, &[51], n + 3);
        let b2 = feed(&d, &mut b, &[61], n + 3);
        let reference = |tail: &[u32]| {
            let mut c = concatenating(&d);
            feed(&d, &mut c, &PROMPT, 0);
            let mut last = Vec::new();
            for (i, &t) in tail.iter().enumerate() {
                last.push(feed(&d, &mut c, &[t], n + i));
            }
            last
        };
        assert_eq!(reference(&[40, 41, 50, 51])[2..], [a1, a2]);
        assert_eq!(reference(&[40, 41, 60, 61])[2..], [b1, b2]);
    }
}

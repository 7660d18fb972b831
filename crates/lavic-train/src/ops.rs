//! Differentiable replacements for candle's fused inference ops.
//!
//! candle 0.11.1 builds `softmax_last_dim`, `rms_norm`, `layer_norm`, `rotary_emb::rope*` and
//! `sdpa` with `apply_op*_no_bwd`: their outputs record no backprop op, so gradients silently
//! stop there while the loss still falls (candle issues #2168, #3568, #3569). Every function here
//! is written with plain tensor ops that do record a backward (exp, sum, broadcast arithmetic,
//! sqrt, matmul, narrow, cat), and each has a test that it equals the fused op it replaces
//! (within 1e-6 in f32) and a finite-difference check that its gradient is the true one.

use candle_core::{DType, Result, Tensor, D};

/// The dtype the numerically sensitive parts run in: f32, or f64 when given f64 (the gradient
/// checks of the tests run in f64).
fn wide(dtype: DType) -> DType {
    if dtype == DType::F64 { DType::F64 } else { DType::F32 }
}

/// Softmax over the last dimension: `exp(x - max) / sum(exp(x - max))`.
///
/// The row maximum is detached (softmax does not depend on it, so its gradient is zero). Rows
/// may hold `-inf` (blocked positions) as long as one entry per row is finite.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let e = xs.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Log-softmax over the last dimension: `x - max - log(sum(exp(x - max)))`.
pub fn log_softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let shifted = xs.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// RMSNorm as transformers' `MistralRMSNorm` / `LlamaRMSNorm`: computed in f32,
/// `x / sqrt(mean(x^2) + eps)`, cast back to the input dtype, then times `weight`.
pub fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = xs.dtype();
    let x = xs.to_dtype(wide(dtype))?;
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)?;
    normed.broadcast_mul(weight)
}

/// LayerNorm over the last dimension (biased variance, as torch), computed in f32 and cast back.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = xs.dtype();
    let w = wide(dtype);
    let x = xs.to_dtype(w)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    let y = normed
        .broadcast_mul(&weight.to_dtype(w)?)?
        .broadcast_add(&bias.to_dtype(w)?)?;
    y.to_dtype(dtype)
}

/// Brings rotary tables `[T, D/2]` or `[B, T, D/2]` to `[B or 1, 1, T, D/2]`.
fn rope_tables(cos: &Tensor) -> Result<Tensor> {
    match cos.rank() {
        2 => cos.unsqueeze(0)?.unsqueeze(0),
        3 => cos.unsqueeze(1),
        r => candle_core::bail!("rotary table of rank {r} (expected [T, D/2] or [B, T, D/2])"),
    }
}

/// Non-interleaved rotary embedding (`candle_nn::rotary_emb::rope`, transformers'
/// `rotate_half` form) of `x` `[B, H, T, D]` with tables `[T, D/2]` or `[B, T, D/2]`:
/// halves `x1 = x[..D/2]`, `x2 = x[D/2..]` become `x1 cos - x2 sin` and `x2 cos + x1 sin`.
pub fn rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = xs.dim(D::Minus1)?;
    let half = d / 2;
    let (cos, sin) = (rope_tables(cos)?, rope_tables(sin)?);
    let x1 = xs.narrow(D::Minus1, 0, half)?;
    let x2 = xs.narrow(D::Minus1, half, half)?;
    let a = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let b = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Tensor::cat(&[a, b], D::Minus1)
}

/// Interleaved rotary embedding (`candle_nn::rotary_emb::rope_i`): pairs `(x[2i], x[2i+1])` are
/// rotated by the angle of frequency `i`. Same shapes as [`rope`].
pub fn rope_i(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = xs.dims4()?;
    let (cos, sin) = (rope_tables(cos)?.unsqueeze(D::Minus1)?, rope_tables(sin)?.unsqueeze(D::Minus1)?);
    let x = xs.reshape((b, h, t, d / 2, 2))?;
    let x0 = x.narrow(D::Minus1, 0, 1)?;
    let x1 = x.narrow(D::Minus1, 1, 1)?;
    let y0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let y1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
    Tensor::cat(&[y0, y1], D::Minus1)?.reshape((b, h, t, d))
}

/// Softmax attention of queries `[B, H, Tq, D]` over keys / values `[B, KV, S, D]` (grouped-query
/// attention when `KV < H`: each key/value head serves `H / KV` consecutive query heads, as
/// transformers' `repeat_kv`), scaled by `scale`, with an optional additive f32 `mask`
/// broadcastable to `[B, 1, Tq, S]`. Scores and softmax run in f32. Returns `[B, H, Tq, D]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (_, kv, s, _) = k.dims4()?;
    if kv == 0 || h % kv != 0 {
        candle_core::bail!("{h} query heads is not a multiple of {kv} key/value heads");
    }
    let rep = h / kv;
    // Fold the query heads of a group together instead of copying K and V `rep` times.
    let qf = q.contiguous()?.reshape((b, kv, rep * t, d))?;
    let sdt = wide(q.dtype());
    let scores = (qf.matmul(&k.t()?)? * scale)?.to_dtype(sdt)?.reshape((b, kv, rep, t, s))?;
    let scores = match mask {
        Some(m) => {
            let m = m.to_dtype(sdt)?;
            let m = match m.rank() {
                4 => m.reshape((m.dim(0)?, 1, 1, t, s))?,
                2 => m.reshape((1, 1, 1, t, s))?,
                r => candle_core::bail!("attention mask of rank {r} (expected [T, S] or [B, 1, T, S])"),
            };
            scores.broadcast_add(&m)?
        }
        None => scores,
    };
    let probs = softmax_last_dim(&scores)?.to_dtype(v.dtype())?.reshape((b, kv, rep * t, s))?;
    probs.matmul(&v.contiguous()?)?.reshape((b, h, t, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let mut r = crate::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Central finite differences in f64 of `sum(f(x) * w)` against the autograd gradient, at
    /// every element of `x`. Fails if they differ or if the gradient is missing or all zero.
    fn grad_check(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) {
        let x64 = x.to_dtype(DType::F64).unwrap();
        let out_shape = f(&x64).unwrap().dims().to_vec();
        let n: usize = out_shape.iter().product();
        let w = randn(&out_shape, 99).to_dtype(DType::F64).unwrap();
        let var = Var::from_tensor(&x64).unwrap();
        let loss = (f(var.as_tensor()).unwrap() * &w).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(var.as_tensor()).expect("no gradient recorded: the op has no backward");
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert!(g.iter().any(|v| *v != 0.0), "gradient is all zero");
        let base = x64.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let eps = 1e-6;
        for i in 0..base.len() {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                let t = Tensor::from_vec(v, x64.dims(), &Device::Cpu).unwrap();
                (f(&t).unwrap() * &w).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!((fd - g[i]).abs() <= 1e-6 + 1e-5 * fd.abs(), "element {i}: finite difference {fd}, autograd {}", g[i]);
        }
        let _ = n;
    }

    #[test]
    fn softmax_equals_fused_and_has_gradient() {
        let x = randn(&[2, 3, 7], 1);
        let e = max_abs(&softmax_last_dim(&x).unwrap(), &candle_nn::ops::softmax_last_dim(&x).unwrap());
        assert!(e <= 1e-6, "{e}");
        grad_check(&x, softmax_last_dim);
    }

    #[test]
    fn softmax_handles_blocked_positions() {
        let x = Tensor::new(&[[0.5f32, f32::NEG_INFINITY, 1.0], [f32::NEG_INFINITY, 2.0, -1.0]], &Device::Cpu).unwrap();
        let ours = softmax_last_dim(&x).unwrap();
        assert!(max_abs(&ours, &candle_nn::ops::softmax_last_dim(&x).unwrap()) <= 1e-6);
        let var = Var::from_tensor(&x).unwrap();
        let g = softmax_last_dim(var.as_tensor()).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g = g.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    }

    #[test]
    fn log_softmax_equals_log_of_fused_softmax_and_has_gradient() {
        let x = randn(&[4, 9], 2);
        let fused = candle_nn::ops::softmax_last_dim(&x).unwrap().log().unwrap();
        let e = max_abs(&log_softmax_last_dim(&x).unwrap(), &fused);
        assert!(e <= 1e-6, "{e}");
        let e = max_abs(&log_softmax_last_dim(&x).unwrap(), &candle_nn::ops::log_softmax(&x, D::Minus1).unwrap());
        assert!(e <= 1e-6, "{e}");
        grad_check(&x, log_softmax_last_dim);
    }

    #[test]
    fn rms_norm_equals_fused_and_has_gradient() {
        let x = randn(&[2, 5, 16], 3);
        let w = randn(&[16], 4);
        let e = max_abs(&rms_norm(&x, &w, 1e-5).unwrap(), &candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap());
        assert!(e <= 1e-6, "{e}");
        let w64 = w.to_dtype(DType::F64).unwrap();
        grad_check(&x, |x| rms_norm(x, &w64, 1e-5));
        let x64 = x.to_dtype(DType::F64).unwrap();
        grad_check(&w, |w| rms_norm(&x64, w, 1e-5));
    }

    #[test]
    fn layer_norm_equals_fused_and_has_gradient() {
        let x = randn(&[3, 4, 12], 5).affine(3.0, 1.0).unwrap();
        let w = randn(&[12], 6);
        let b = randn(&[12], 7);
        let e = max_abs(&layer_norm(&x, &w, &b, 1e-5).unwrap(), &candle_nn::ops::layer_norm(&x, &w, &b, 1e-5).unwrap());
        assert!(e <= 1e-6, "{e}");
        let (w64, b64) = (w.to_dtype(DType::F64).unwrap(), b.to_dtype(DType::F64).unwrap());
        grad_check(&x, |x| layer_norm(x, &w64, &b64, 1e-5));
        let x64 = x.to_dtype(DType::F64).unwrap();
        grad_check(&w, |w| layer_norm(&x64, w, &b64, 1e-5));
        grad_check(&b, |b| layer_norm(&x64, &w64, b, 1e-5));
    }

    fn tables(b: Option<usize>, t: usize, half: usize) -> (Tensor, Tensor) {
        let shape: Vec<usize> = match b { Some(b) => vec![b, t, half], None => vec![t, half] };
        let ang = (randn(&shape, 8) * 3.0).unwrap();
        (ang.cos().unwrap(), ang.sin().unwrap())
    }

    #[test]
    fn rope_equals_fused_and_has_gradient() {
        let x = randn(&[2, 3, 5, 8], 9);
        for b in [None, Some(2)] {
            let (c, s) = tables(b, 5, 4);
            let e = max_abs(&rope(&x, &c, &s).unwrap(), &candle_nn::rotary_emb::rope(&x, &c, &s).unwrap());
            assert!(e <= 1e-6, "{e}");
            let (c64, s64) = (c.to_dtype(DType::F64).unwrap(), s.to_dtype(DType::F64).unwrap());
            grad_check(&x, |x| rope(x, &c64, &s64));
        }
    }

    #[test]
    fn rope_i_equals_fused_and_has_gradient() {
        let x = randn(&[2, 3, 5, 8], 10);
        for b in [None, Some(2)] {
            let (c, s) = tables(b, 5, 4);
            let e = max_abs(&rope_i(&x, &c, &s).unwrap(), &candle_nn::rotary_emb::rope_i(&x, &c, &s).unwrap());
            assert!(e <= 1e-6, "{e}");
            let (c64, s64) = (c.to_dtype(DType::F64).unwrap(), s.to_dtype(DType::F64).unwrap());
            grad_check(&x, |x| rope_i(x, &c64, &s64));
        }
    }

    /// The inference path's attention: scores in f32, fused softmax, GQA by explicit repeat.
    fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Tensor {
        let (_, h, _, _) = q.dims4().unwrap();
        let rep = |x: &Tensor| {
            let (b, kv, s, d) = x.dims4().unwrap();
            x.unsqueeze(2).unwrap().broadcast_as((b, kv, h / kv, s, d)).unwrap().reshape((b, h, s, d)).unwrap()
        };
        let scores = (q.matmul(&rep(k).t().unwrap()).unwrap() * scale).unwrap().broadcast_add(mask).unwrap();
        candle_nn::ops::softmax_last_dim(&scores).unwrap().matmul(&rep(v)).unwrap()
    }

    #[test]
    fn attention_equals_fused_and_has_gradient() {
        let (b, h, kv, t, d) = (2, 4, 2, 5, 3);
        let q = randn(&[b, h, t, d], 11);
        let k = randn(&[b, kv, t, d], 12);
        let v = randn(&[b, kv, t, d], 13);
        // causal, and row 1 right-padded to length 3
        let mut m = vec![0f32; b * t * t];
        for r in 0..b {
            for i in 0..t {
                for j in 0..t {
                    if j > i || (r == 1 && j >= 3) {
                        m[(r * t + i) * t + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, t, t), &Device::Cpu).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let ours = attention(&q, &k, &v, Some(&mask), scale).unwrap();
        let e = max_abs(&ours, &fused_attention(&q, &k, &v, &mask, scale));
        assert!(e <= 1e-6, "{e}");
        let m64 = mask.to_dtype(DType::F64).unwrap();
        let (k64, v64, q64) =
            (k.to_dtype(DType::F64).unwrap(), v.to_dtype(DType::F64).unwrap(), q.to_dtype(DType::F64).unwrap());
        grad_check(&q, |q| attention(q, &k64, &v64, Some(&m64), scale));
        grad_check(&k, |k| attention(&q64, k, &v64, Some(&m64), scale));
        grad_check(&v, |v| attention(&q64, &k64, v, Some(&m64), scale));
    }
}

//! Optimisation as PyTorch + transformers do it: `torch.optim.AdamW` (decoupled weight decay,
//! bias correction, `eps` added after `sqrt(v_hat)`), `torch.nn.utils.clip_grad_norm_` (global L2
//! norm, `coef = max_norm / (total + 1e-6)` clamped at 1), and transformers'
//! `get_{constant,linear,cosine}_schedule_with_warmup` learning-rate multipliers.
//!
//! Moments are f32 tensors next to each parameter; the state is plain tensors plus a step
//! count, so it is saved and restored exactly (see `trainer`).

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// AdamW hyper-parameters (defaults: the reference's lr 5e-5 and weight decay 1e-5, torch's
/// betas and eps).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// `(beta1, beta2)`.
    pub betas: (f64, f64),
    /// Added to `sqrt(v_hat)`.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 5e-5, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 1e-5 }
    }
}

/// AdamW over named parameters.
#[derive(Debug)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Steps taken so far.
    pub step: u64,
    params: BTreeMap<String, Var>,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
}

impl AdamW {
    /// An optimizer for `params` with zero moments.
    pub fn new(params: &BTreeMap<String, Var>, config: AdamWConfig) -> Result<Self> {
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (name, p) in params {
            if p.dtype() != DType::F32 {
                return Err(Error::Spec(format!("trainable tensor {name} is {:?}; AdamW keeps f32 parameters", p.dtype())));
            }
            m.insert(name.clone(), p.zeros_like()?);
            v.insert(name.clone(), p.zeros_like()?);
        }
        Ok(Self { config, step: 0, params: params.clone(), m, v })
    }

    /// One update with learning rate `lr` and gradients `grads` (by parameter name; a parameter
    /// without a gradient is an error: it would silently stop training).
    pub fn step(&mut self, grads: &HashMap<String, Tensor>, lr: f64) -> Result<()> {
        let c = self.config;
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = c.betas;
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        let step_size = lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        for (name, p) in &self.params {
            let g = grads.get(name).ok_or_else(|| Error::Input(format!("no gradient for {name}")))?;
            let g = g.to_dtype(DType::F32)?;
            // torch: param.mul_(1 - lr * weight_decay)
            let theta = (p.as_tensor() * (1.0 - lr * c.weight_decay))?;
            // exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
            let m = ((&self.m[name] * b1)? + (&g * (1.0 - b1))?)?;
            let v = ((&self.v[name] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            // denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + eps; param.addcdiv_(exp_avg, denom, -step_size)
            let denom = ((v.sqrt()? / bc2_sqrt)? + c.eps)?;
            let new = (theta - ((&m / denom)? * step_size)?)?;
            p.set(&new)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }

    /// First and second moments, by parameter name (for saving).
    pub fn moments(&self) -> (&BTreeMap<String, Tensor>, &BTreeMap<String, Tensor>) {
        (&self.m, &self.v)
    }

    /// Restores moments and the step count (every parameter must have both, with its shape).
    pub fn restore(&mut self, m: &HashMap<String, Tensor>, v: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for (name, p) in &self.params {
            for (kind, src, dst) in [("m", m, &mut self.m), ("v", v, &mut self.v)] {
                let t = src.get(name).ok_or_else(|| Error::Spec(format!("saved optimizer state has no {kind} for {name}")))?;
                if t.dims() != p.dims() {
                    return Err(Error::Spec(format!("saved {kind} of {name} has shape {:?}, parameter {:?}", t.dims(), p.dims())));
                }
                dst.insert(name.clone(), t.to_dtype(DType::F32)?.to_device(p.device())?);
            }
        }
        self.step = step;
        Ok(())
    }
}

/// `torch.nn.utils.clip_grad_norm_(params, max_norm)`: scales every gradient by
/// `min(1, max_norm / (total + 1e-6))`, where `total` is the L2 norm over all of them; returns
/// `total` (before clipping).
pub fn clip_grad_norm(grads: &mut HashMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let mut names: Vec<&String> = grads.keys().collect();
    names.sort();
    let mut sq = 0f64;
    for n in names {
        let g = &grads[n];
        sq += g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    let total = sq.sqrt();
    if !total.is_finite() {
        return Err(Error::Input(format!("gradient norm is {total}")));
    }
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    if coef < 1.0 {
        for g in grads.values_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(total)
}

/// Learning-rate schedule: transformers' `get_*_schedule_with_warmup` multipliers of the peak
/// rate, by optimizer step (0-based: the first update uses `multiplier(0)`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    /// Linear warm-up, then constant.
    Constant {
        /// Warm-up steps.
        warmup: u64,
    },
    /// Linear warm-up, then linear decay to 0 at `total`.
    Linear {
        /// Warm-up steps.
        warmup: u64,
        /// Total steps.
        total: u64,
    },
    /// Linear warm-up, then half a cosine to 0 at `total`.
    Cosine {
        /// Warm-up steps.
        warmup: u64,
        /// Total steps.
        total: u64,
    },
}

impl Schedule {
    /// Multiplier of the peak learning rate at `step`.
    pub fn multiplier(&self, step: u64) -> f64 {
        let s = step as f64;
        let warm = |w: u64| if step < w { Some(s / (w.max(1) as f64)) } else { None };
        match *self {
            Schedule::Constant { warmup } => warm(warmup).unwrap_or(1.0),
            Schedule::Linear { warmup, total } => warm(warmup)
                .unwrap_or_else(|| (0f64).max((total as f64 - s) / ((total.saturating_sub(warmup)).max(1) as f64))),
            Schedule::Cosine { warmup, total } => warm(warmup).unwrap_or_else(|| {
                let progress = (s - warmup as f64) / ((total.saturating_sub(warmup)).max(1) as f64);
                (0f64).max(0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos()))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn clip_scales_only_above_max_norm() {
        let dev = Device::Cpu;
        let mut g = HashMap::new();
        g.insert("a".to_string(), Tensor::new(&[3f32, 0.0], &dev).unwrap());
        g.insert("b".to_string(), Tensor::new(&[[4f32]], &dev).unwrap());
        let total = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((total - 5.0).abs() < 1e-9);
        let a = g["a"].to_vec1::<f32>().unwrap();
        assert!((a[0] - 3.0 / (5.0 + 1e-6) as f32).abs() < 1e-7, "{a:?}");
        let total = clip_grad_norm(&mut g, 10.0).unwrap();
        assert!((total - 1.0).abs() < 1e-5);
        assert!((g["a"].to_vec1::<f32>().unwrap()[0] - 0.6).abs() < 1e-5, "unchanged below max_norm");
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr() {
        // step 1: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps) after decay.
        let p = Var::new(&[1f32, -2.0, 0.5], &Device::Cpu).unwrap();
        let mut params = BTreeMap::new();
        params.insert("p".to_string(), p.clone());
        let cfg = AdamWConfig { lr: 0.1, weight_decay: 0.01, ..Default::default() };
        let mut opt = AdamW::new(&params, cfg).unwrap();
        let mut g = HashMap::new();
        g.insert("p".to_string(), Tensor::new(&[0.5f32, -3.0, 0.0], &Device::Cpu).unwrap());
        opt.step(&g, 0.1).unwrap();
        let got = p.as_tensor().to_vec1::<f32>().unwrap();
        let want = [1.0 * 0.999 - 0.1, -2.0 * 0.999 + 0.1, 0.5 * 0.999];
        for (a, b) in got.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        assert!(opt.step(&HashMap::new(), 0.1).unwrap_err().to_string().contains("no gradient for p"));
    }
}

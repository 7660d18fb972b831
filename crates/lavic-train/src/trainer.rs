//! The training loop: micro-batches with gradient accumulation, global-norm clipping, AdamW
//! with a warm-up schedule, and a full training state (trainable tensors, AdamW moments, step,
//! RNG state, data position) saved atomically so a killed run resumes to the same weights.
//!
//! Accumulation follows transformers >= 4.46: the loss of every micro-batch is its summed token
//! loss divided by the number of target tokens in the whole accumulation window, so
//! accumulating equals one big batch. Data is consumed in order (optionally shuffled per epoch
//! with an order derived from the seed and the epoch, so it needs no saving).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::checkpoint::accumulate;
use crate::error::{Error, Result};
use crate::linear::Ctx;
use crate::linear::Params;
use crate::model::{Encoded, TrainModel};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule};
use crate::rng::Rng;

/// How to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// AdamW settings.
    pub optim: AdamWConfig,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// `clip_grad_norm_` threshold (the reference's 1.0); None disables clipping.
    pub max_grad_norm: Option<f64>,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub accumulation: usize,
    /// Seed of dropout masks and data order.
    pub seed: u64,
    /// Shuffle the examples every epoch.
    pub shuffle: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            optim: AdamWConfig::default(),
            schedule: Schedule::Constant { warmup: 0 },
            max_grad_norm: Some(1.0),
            batch_size: 1,
            accumulation: 1,
            seed: 42,
            shuffle: false,
        }
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Mean loss over the window's target tokens (before the update).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Target tokens in the window.
    pub tokens: usize,
}

/// Gradients of the mean loss of `batch` for every trainable tensor of `model`, by name. A
/// trainable tensor that receives no gradient is an error (it would silently never train).
/// With [`TrainModel::grad_checkpoint`] the gradients come from the checkpointed path.
pub fn gradients(model: &TrainModel, batch: &[Encoded], ctx: &mut Ctx) -> Result<(f64, HashMap<String, Tensor>)> {
    if model.grad_checkpoint() {
        let tokens: usize = batch.iter().map(Encoded::target_tokens).sum();
        let c = model.checkpointed_grads(batch, tokens as f64, ctx)?;
        if let Some(name) = model.params().vars.keys().find(|n| !c.grads.contains_key(*n)) {
            return Err(Error::Input(format!("{name} received no gradient")));
        }
        return Ok((c.loss, c.grads));
    }
    let loss = model.loss(batch, ctx)?;
    let grads = loss.backward()?;
    let mut out = HashMap::new();
    for (name, var) in &model.params().vars {
        let g = grads.get(var.as_tensor()).ok_or_else(|| Error::Input(format!("{name} received no gradient")))?;
        out.insert(name.clone(), g.clone());
    }
    Ok((loss.to_scalar::<f32>()? as f64, out))
}

/// What a [`Trainer`] trains: a model with trainable tensors and a summed token loss over a
/// micro-batch of its own examples. [`TrainModel`] (the LoRA stages) and
/// [`crate::full::FullModel`] (stage 0, every parameter) implement it.
pub trait Objective {
    /// One tokenised training example.
    type Item: Clone;
    /// The trainable tensors.
    fn params(&self) -> &Params;
    /// Device of the model.
    fn device(&self) -> &Device;
    /// Sum of the target tokens' negative log-likelihoods (f32 scalar) and their number.
    fn loss_sum(&self, batch: &[Self::Item], ctx: &mut Ctx) -> Result<(Tensor, usize)>;
    /// Supervised tokens of one example.
    fn target_tokens(item: &Self::Item) -> usize;
    /// With gradient checkpointing on: the micro-batch's loss (divided by `divisor`) and every
    /// trainable tensor's gradient, computed layer by layer ([`crate::checkpoint`]). `None` (the
    /// default): the plain path, one graph over the whole forward.
    fn checkpointed(&self, _batch: &[Self::Item], _divisor: f64, _ctx: &mut Ctx) -> Result<Option<(f64, HashMap<String, Tensor>)>> {
        Ok(None)
    }
}

impl Objective for TrainModel {
    type Item = Encoded;
    fn params(&self) -> &Params {
        TrainModel::params(self)
    }
    fn device(&self) -> &Device {
        TrainModel::device(self)
    }
    fn loss_sum(&self, batch: &[Encoded], ctx: &mut Ctx) -> Result<(Tensor, usize)> {
        TrainModel::loss_sum(self, batch, ctx)
    }
    fn target_tokens(item: &Encoded) -> usize {
        item.target_tokens()
    }
    fn checkpointed(&self, batch: &[Encoded], divisor: f64, ctx: &mut Ctx) -> Result<Option<(f64, HashMap<String, Tensor>)>> {
        if !self.grad_checkpoint() {
            return Ok(None);
        }
        let c = self.checkpointed_grads(batch, divisor, ctx)?;
        Ok(Some((c.loss, c.grads)))
    }
}

/// Serialised part of the training state (tensors live beside it).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFile {
    format: u32,
    step: u64,
    position: u64,
    rng: Rng,
    config: TrainConfig,
    tensors: String,
}

/// A training run over a fixed list of examples (LoRA stages by default, any [`Objective`]).
pub struct Trainer<'a, M: Objective = TrainModel> {
    model: &'a M,
    opt: AdamW,
    /// Settings.
    pub config: TrainConfig,
    ctx: Ctx,
    /// Examples consumed so far (across epochs).
    pub position: u64,
}

impl<'a, M: Objective> Trainer<'a, M> {
    /// A fresh run.
    pub fn new(model: &'a M, config: TrainConfig) -> Result<Self> {
        if config.batch_size == 0 || config.accumulation == 0 {
            return Err(Error::Input("batch_size and accumulation must be at least 1".into()));
        }
        let opt = AdamW::new(&model.params().vars, config.optim)?;
        let ctx = Ctx { train: true, rng: Rng::new(config.seed) };
        Ok(Self { model, opt, ctx, position: 0, config })
    }

    /// Optimizer steps taken.
    pub fn step_count(&self) -> u64 {
        self.opt.step
    }

    /// Index into `0..n` of the example at absolute position `pos` (epoch `pos / n`).
    pub fn example_index(&self, pos: u64, n: usize) -> usize {
        let (epoch, i) = (pos / n as u64, (pos % n as u64) as usize);
        if !self.config.shuffle {
            return i;
        }
        let mut order: Vec<usize> = (0..n).collect();
        Rng::new(self.config.seed ^ 0x5EED_0000_0000_0000 ^ epoch).shuffle(&mut order);
        order[i]
    }

    /// One optimizer step over the next `batch_size * accumulation` examples of `data`.
    pub fn step(&mut self, data: &[M::Item]) -> Result<StepReport> {
        if data.is_empty() {
            return Err(Error::Input("no training examples".into()));
        }
        let micro: Vec<Vec<M::Item>> = (0..self.config.accumulation)
            .map(|_| {
                (0..self.config.batch_size)
                    .map(|_| {
                        let e = data[self.example_index(self.position, data.len())].clone();
                        self.position += 1;
                        e
                    })
                    .collect()
            })
            .collect();
        let tokens: usize = micro.iter().flatten().map(M::target_tokens).sum();
        if tokens == 0 {
            return Err(Error::Input("the accumulation window has no target tokens".into()));
        }
        let mut acc: HashMap<String, Tensor> = HashMap::new();
        let mut loss = 0f64;
        for batch in &micro {
            if let Some((l, grads)) = self.model.checkpointed(batch, tokens as f64, &mut self.ctx)? {
                loss += l;
                for (name, g) in grads {
                    let g = match acc.remove(&name) {
                        Some(prev) => (prev + g)?,
                        None => g,
                    };
                    acc.insert(name, g);
                }
                continue;
            }
            let (sum, _) = self.model.loss_sum(batch, &mut self.ctx)?;
            let scaled = (sum / tokens as f64)?;
            loss += scaled.to_scalar::<f32>()? as f64;
            let grads = scaled.backward()?;
            accumulate(self.model.params(), &grads, &mut acc)?;
        }
        if let Some(name) = self.model.params().vars.keys().find(|n| !acc.contains_key(*n)) {
            return Err(Error::Input(format!("{name} received no gradient")));
        }
        let grad_norm = match self.config.max_grad_norm {
            Some(max) => clip_grad_norm(&mut acc, max)?,
            None => clip_grad_norm(&mut acc, f64::INFINITY)?,
        };
        let lr = self.config.optim.lr * self.config.schedule.multiplier(self.opt.step);
        self.opt.step(&acc, lr)?;
        Ok(StepReport { loss, grad_norm, lr, tokens })
    }

    /// Saves the whole state under `dir` atomically: the tensors go to a new file named by the
    /// step, then `state.json` is replaced by rename, so a run killed at any point leaves either
    /// the previous state or the new one, never a mix.
    pub fn save_state(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let name = format!("tensors-{:08}.safetensors", self.opt.step);
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        let (m, v) = self.opt.moments();
        for (k, var) in &self.model.params().vars {
            tensors.insert(format!("param.{k}"), var.as_tensor().to_device(&Device::Cpu)?);
            tensors.insert(format!("m.{k}"), m[k].to_device(&Device::Cpu)?);
            tensors.insert(format!("v.{k}"), v[k].to_device(&Device::Cpu)?);
        }
        let tmp = dir.join(format!("{name}.tmp"));
        candle_core::safetensors::save(&tensors, &tmp)?;
        sync(&tmp)?;
        let final_path = dir.join(&name);
        std::fs::rename(&tmp, &final_path).map_err(|e| Error::io(&final_path, e))?;
        let state = StateFile {
            format: 1,
            step: self.opt.step,
            position: self.position,
            rng: self.ctx.rng,
            config: self.config.clone(),
            tensors: name.clone(),
        };
        let json = dir.join("state.json");
        let tmp_json = dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(&state).map_err(|e| Error::Spec(e.to_string()))?;
        std::fs::write(&tmp_json, text).map_err(|e| Error::io(&tmp_json, e))?;
        sync(&tmp_json)?;
        std::fs::rename(&tmp_json, &json).map_err(|e| Error::io(&json, e))?;
        // Older tensor files are no longer referenced.
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
            let n = entry.file_name().to_string_lossy().to_string();
            if n.starts_with("tensors-") && n != name {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Resumes a run saved by [`Trainer::save_state`]: trainable tensors of `model`, AdamW
    /// moments and step, RNG state and data position are restored.
    pub fn resume(model: &'a M, dir: &Path) -> Result<Self> {
        let bad = |reason: String| Error::State { path: dir.to_path_buf(), reason };
        let json = dir.join("state.json");
        let text = std::fs::read_to_string(&json).map_err(|e| Error::io(&json, e))?;
        let state: StateFile = serde_json::from_str(&text).map_err(|e| bad(format!("state.json: {e}")))?;
        if state.format != 1 {
            return Err(bad(format!("format {} (expected 1)", state.format)));
        }
        let file: PathBuf = dir.join(&state.tensors);
        let tensors = candle_core::safetensors::load(&file, model.device()).map_err(|e| bad(format!("{}: {e}", state.tensors)))?;
        let pick = |prefix: &str| -> HashMap<String, Tensor> {
            tensors.iter().filter_map(|(k, t)| k.strip_prefix(prefix).map(|n| (n.to_string(), t.clone()))).collect()
        };
        let params = pick("param.");
        if let Some(extra) = params.keys().find(|k| !model.params().vars.contains_key(*k)) {
            return Err(bad(format!("saved tensor {extra} is not trainable in this model")));
        }
        model.params().set_all(&params).map_err(|e| bad(e.to_string()))?;
        let mut t = Self::new(model, state.config)?;
        t.opt.restore(&pick("m."), &pick("v."), state.step).map_err(|e| bad(e.to_string()))?;
        t.ctx.rng = state.rng;
        t.position = state.position;
        Ok(t)
    }
}

fn sync(path: &Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| Error::io(path, e))
}

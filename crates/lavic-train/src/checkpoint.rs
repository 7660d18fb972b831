//! Gradient checkpointing of the decoder and vision encoder layers (candle 0.11 has none).
//!
//! The forward runs each layer on a detached copy of its input and detaches its output, so no
//! layer's graph outlives the layer: only the layer inputs (one `[B, T, H]` tensor per layer)
//! and the RNG state before the layer (its dropout masks) are kept. The backward goes from the
//! last layer to the first: it re-runs the layer's forward on its saved input as a [`Var`], with
//! the RNG rewound to the saved state so the dropout masks are the same, and backpropagates the
//! upstream gradient through it with `sum(y * grad_y)`, which yields the gradient of the layer's
//! input (passed on to the layer below) and of its trainable tensors (accumulated by name). The
//! small parts between the chains (vision stem; CLS rows -> projector -> spliced embeddings;
//! final norm -> lm_head -> loss) keep their graphs as usual. The gradients equal the plain
//! path's (the same ops on the same values; only the order of a few additions differs), and the
//! RNG ends where the plain path leaves it, so runs stay repeatable and resumable either way.
//!
//! Cost: every checkpointed layer runs its forward twice (one extra forward per step, ~+30% of
//! a step); memory: the layer inputs plus one layer's activations instead of all layers'.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{Error, Result};
use crate::linear::{Ctx, Params};
use crate::model::{head_loss, target_rows, Encoded, TrainModel};
use crate::rng::Rng;
use crate::vision::VisionTower;

/// Name prefix of the vision tower's trainable tensors.
const VISION_PREFIX: &str = "vision_tower.";

/// What the forward of a checkpointed chain keeps of one layer.
pub struct Saved {
    /// The layer's input, detached (it holds no graph).
    pub input: Tensor,
    /// The RNG state before the layer (its dropout masks).
    pub rng: Rng,
}

/// Result of a checkpointed forward + backward.
#[derive(Debug)]
pub struct Checkpointed {
    /// The loss (as given to the backward: the summed token loss divided by the divisor).
    pub loss: f64,
    /// Gradient of every trainable tensor that received one, by name.
    pub grads: HashMap<String, Tensor>,
    /// Layer forwards run (decoder and vision; each layer runs twice: forward and recompute).
    pub layer_forwards: usize,
    /// Layer inputs the forward kept; each was checked to hold no graph.
    pub saved_inputs: usize,
}

/// Runs `n` layers `f(i, x, ctx)` on `x` keeping no graph: returns the last output (detached) and
/// each layer's [`Saved`] input and RNG state.
pub fn forward_chain<F>(n: usize, x: &Tensor, ctx: &mut Ctx, mut f: F) -> Result<(Tensor, Vec<Saved>)>
where
    F: FnMut(usize, &Tensor, &mut Ctx) -> Result<Tensor>,
{
    let mut x = x.detach();
    let mut saved = Vec::with_capacity(n);
    for i in 0..n {
        saved.push(Saved { input: x.clone(), rng: ctx.rng });
        x = f(i, &x, ctx)?.detach();
    }
    Ok((x, saved))
}

/// Backward through a chain run by [`forward_chain`]: from the gradient `grad` of its output,
/// re-runs each layer (last first) on its saved input with its saved RNG state, adds the
/// gradients of `params` into `acc` and returns the gradient of the chain's input. `ctx.rng` is
/// left as it was on entry.
pub fn backward_chain<F>(saved: Vec<Saved>, grad: Tensor, ctx: &mut Ctx, params: &Params, acc: &mut HashMap<String, Tensor>, mut f: F) -> Result<Tensor>
where
    F: FnMut(usize, &Tensor, &mut Ctx) -> Result<Tensor>,
{
    let after = ctx.rng;
    let mut grad = grad;
    for (i, s) in saved.into_iter().enumerate().rev() {
        let input = Var::from_tensor(&s.input)?;
        drop(s.input);
        ctx.rng = s.rng;
        let y = f(i, input.as_tensor(), ctx)?;
        let grads = (y * grad.detach())?.sum_all()?.backward()?;
        accumulate(params, &grads, acc)?;
        grad = grads.get(input.as_tensor()).ok_or_else(|| Error::Input(format!("layer {i} passed no gradient to its input")))?.clone();
    }
    ctx.rng = after;
    Ok(grad)
}

/// Adds the gradients in `grads` of every tensor of `params` into `acc`.
pub fn accumulate(params: &Params, grads: &GradStore, acc: &mut HashMap<String, Tensor>) -> Result<()> {
    for (name, var) in &params.vars {
        let Some(g) = grads.get(var.as_tensor()) else { continue };
        let g = match acc.remove(name) {
            Some(prev) => (prev + g)?,
            None => g.clone(),
        };
        acc.insert(name.clone(), g);
    }
    Ok(())
}

/// Backpropagates `grad` into the graph that produced `y` (nothing when `y` holds no graph).
fn backward_into(y: &Tensor, grad: &Tensor, params: &Params, acc: &mut HashMap<String, Tensor>) -> Result<Option<GradStore>> {
    if !y.track_op() {
        return Ok(None);
    }
    let grads = (y * grad.detach())?.sum_all()?.backward()?;
    accumulate(params, &grads, acc)?;
    Ok(Some(grads))
}

fn untracked(saved: &[Saved]) -> Result<usize> {
    match saved.iter().position(|s| s.input.track_op()) {
        Some(i) => Err(Error::Input(format!("checkpointed layer {i} kept a graph on its input"))),
        None => Ok(saved.len()),
    }
}

impl TrainModel {
    /// The loss `sum / divisor` of `batch` and the gradients of every trainable tensor, with
    /// gradient checkpointing of the vision and decoder layers (see the module docs). Equals
    /// `model.loss_sum(batch, ctx)` divided by `divisor` and backpropagated, with less memory.
    pub fn checkpointed_grads(&self, batch: &[Encoded], divisor: f64, ctx: &mut Ctx) -> Result<Checkpointed> {
        let params = self.params();
        let mut forwards = 0usize;
        let vision = &self.vision;
        // Vision: stem (graph kept) -> checkpointed layers.
        let stem = self.pixel_views(batch)?.map(|p| vision.stem(&p)).transpose()?;
        let (mut vis, mut frozen_out) = (None, None);
        if let Some(stem) = &stem {
            let (out, saved) = forward_chain(vision.num_layers(), stem, ctx, |i, x, c| {
                forwards += 1;
                vision.layer(i, x, c)
            })?;
            // A frozen tower needs no backward: its layer inputs are dropped at once.
            match params.vars.keys().any(|k| k.starts_with(VISION_PREFIX)) {
                true => vis = Some((Var::from_tensor(&out)?, saved)),
                false => frozen_out = Some(out),
            }
        }
        // CLS -> projector -> embeddings (graph kept) -> checkpointed decoder layers.
        let cls = match (&vis, &frozen_out) {
            (Some((v, _)), _) => Some(VisionTower::cls_row(v.as_tensor())?),
            (None, Some(out)) => Some(VisionTower::cls_row(out)?),
            (None, None) => None,
        };
        let images = self.project_images(batch, cls.as_ref(), ctx)?;
        let (embeds, lens) = self.splice(batch, &images)?;
        let dec = &self.decoder;
        let shared = dec.layer_inputs(&embeds, &lens)?;
        let x0 = embeds.to_dtype(dec.dtype())?;
        let (hidden, dec_saved) = forward_chain(dec.num_layers(), &x0, ctx, |i, x, c| {
            forwards += 1;
            dec.layer(i, x, &shared, c)
        })?;
        let saved_inputs = untracked(&dec_saved)? + vis.as_ref().map(|(_, s)| untracked(s)).transpose()?.unwrap_or(0);
        // Head: final norm, lm_head, loss.
        let hidden = Var::from_tensor(&hidden)?;
        let (rows, targets) = target_rows(batch.iter().map(|e| e.labels.as_slice()), embeds.dim(1)?)?;
        let loss = (head_loss(&self.decoder, hidden.as_tensor(), &rows, &targets, ctx)? / divisor)?;
        let mut acc = HashMap::new();
        let grads = loss.backward()?;
        accumulate(params, &grads, &mut acc)?;
        let g = grads.get(hidden.as_tensor()).ok_or_else(|| Error::Input("the loss passed no gradient to the decoder".into()))?.clone();
        drop(grads);
        // Backward: decoder layers, embeddings/projector, vision layers, stem.
        let g = backward_chain(dec_saved, g, ctx, params, &mut acc, |i, x, c| {
            forwards += 1;
            dec.layer(i, x, &shared, c)
        })?;
        let grads = backward_into(&x0, &g, params, &mut acc)?;
        if let (Some((out, saved)), Some(stem)) = (vis, &stem) {
            let g = grads
                .as_ref()
                .and_then(|s| s.get(out.as_tensor()))
                .ok_or_else(|| Error::Input("the embeddings passed no gradient to the vision tower".into()))?
                .clone();
            drop(grads);
            let g = backward_chain(saved, g, ctx, params, &mut acc, |i, x, c| {
                forwards += 1;
                vision.layer(i, x, c)
            })?;
            backward_into(stem, &g, params, &mut acc)?;
        }
        Ok(Checkpointed { loss: loss.to_scalar::<f32>()? as f64, grads: acc, layer_forwards: forwards, saved_inputs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    use crate::linear::dropout;

    /// A toy chain `x -> tanh(dropout(x) W_i)` with trainable `W_i`: checkpointed gradients of
    /// every `W_i` and of the input equal plain autograd's, with dropout, and each layer runs
    /// forward once in the forward pass and once in the backward, in reverse order.
    #[test]
    fn chain_equals_plain_autograd_and_recomputes_each_layer_once() {
        let dev = Device::Cpu;
        let mut r = Rng::new(5);
        let mut randn = |shape: (usize, usize)| {
            let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| r.normal() as f32).collect();
            Tensor::from_vec(v, shape, &dev).unwrap()
        };
        let mut params = Params::default();
        for i in 0..4 {
            params.vars.insert(format!("w{i}"), Var::from_tensor(&(randn((6, 6)) * 0.5).unwrap()).unwrap());
        }
        let x = randn((3, 6));
        let ws: Vec<Tensor> = params.vars.values().map(|v| v.as_tensor().clone()).collect();
        let layer = |i: usize, x: &Tensor, c: &mut Ctx| -> Result<Tensor> { Ok(dropout(x, 0.3, &mut c.rng)?.matmul(&ws[i])?.tanh()?) };
        let weights = randn((3, 6));

        let xv = Var::from_tensor(&x).unwrap();
        let mut ctx = Ctx { train: true, rng: Rng::new(11) };
        let mut y = xv.as_tensor().clone();
        for i in 0..4 {
            y = layer(i, &y, &mut ctx).unwrap();
        }
        let plain = (y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let plain_rng = ctx.rng;

        let mut log = Vec::new();
        let mut ctx = Ctx { train: true, rng: Rng::new(11) };
        let (out, saved) = forward_chain(4, &x, &mut ctx, |i, x, c| {
            log.push(i as i64);
            layer(i, x, c)
        })
        .unwrap();
        assert!(!out.track_op() && saved.iter().all(|s| !s.input.track_op()), "the forward kept a graph");
        let mut acc = HashMap::new();
        let gx = backward_chain(saved, weights.clone(), &mut ctx, &params, &mut acc, |i, x, c| {
            log.push(-(i as i64) - 1);
            layer(i, x, c)
        })
        .unwrap();
        assert_eq!(log, vec![0, 1, 2, 3, -4, -3, -2, -1]);
        assert_eq!(ctx.rng, plain_rng, "the RNG must end where the plain path leaves it");
        let close = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(close(&gx, plain.get(xv.as_tensor()).unwrap()) <= 1e-6);
        for (name, var) in &params.vars {
            let e = close(&acc[name], plain.get(var.as_tensor()).unwrap());
            assert!(e <= 1e-6, "{name}: {e}");
        }
    }
}

//! Gradient checkpointing: on the tiny fixtures, the checkpointed path gives the plain path's
//! loss and every trainable gradient (1e-6) for stage 1 (vision + projector LoRA) and stage 2
//! (LM LoRA with lm_head), with dropout 0 and 0.1 under the same seed; several AdamW steps give
//! the same weights; each checkpointed layer runs exactly twice and keeps no graph on its input.

use std::collections::HashMap;

use crate::common::*;
use lavic_model::prompt::{distillation_prompt, recommendation_prompt};
use lavic_model::{PromptCandidate, Tensor};
use lavic_train::linear::Ctx;
use lavic_train::model::{Encoded, Example, TrainModel, TrainOptions};
use lavic_train::optim::{AdamWConfig, Schedule};
use lavic_train::rng::Rng;
use lavic_train::spec::LoraSpec;
use lavic_train::trainer::{gradients, TrainConfig, Trainer};

const TOL: f32 = 1e-6;

/// Plain and checkpointed models with the same trainable values: every trainable tensor set to
/// seeded random values (PEFT's zero B would leave the A gradients zero and untested).
fn models(opts: &TrainOptions) -> (TrainModel, TrainModel) {
    let plain = TrainModel::load(opts).unwrap();
    let mut o = opts.clone();
    o.grad_checkpoint = true;
    let ckpt = TrainModel::load(&o).unwrap();
    assert!(ckpt.grad_checkpoint() && !plain.grad_checkpoint());
    let mut rng = Rng::new(1234);
    let values: HashMap<String, Tensor> = plain
        .params()
        .vars
        .iter()
        .map(|(k, v)| {
            let n = v.elem_count();
            let data: Vec<f32> = (0..n).map(|_| (rng.normal() * 0.05) as f32).collect();
            (k.clone(), Tensor::from_vec(data, v.dims(), v.device()).unwrap())
        })
        .collect();
    plain.params().set_all(&values).unwrap();
    ckpt.params().set_all(&values).unwrap();
    (plain, ckpt)
}

fn stage1_options(kind: &str, dropout: f64) -> TrainOptions {
    let mut o = options(kind);
    o.vision = Some(LoraSpec { r: 4, dropout, ..LoraSpec::stage1() });
    o
}

fn stage2_options(kind: &str, dropout: f64) -> TrainOptions {
    let mut o = options(kind);
    o.lm = Some(LoraSpec { r: 4, dropout, ..LoraSpec::stage2(true) });
    o
}

/// Two distillation examples of different lengths (the batch is right-padded).
fn stage1_batch(m: &TrainModel, kind: &str) -> Vec<Encoded> {
    [("Canvas Tote Bag", "wide2", "A beige canvas tote with two handles."), ("Travel Mug", "square", "A steel mug.")]
        .iter()
        .map(|(title, img, target)| {
            let ex = Example { prompt: distillation_prompt(title), target: (*target).into(), images: vec![pixels(kind, img)] };
            m.encode(&ex).unwrap()
        })
        .collect()
}

/// Recommendation examples with two candidate images each (vision frozen).
fn stage2_batch(m: &TrainModel, kind: &str) -> Vec<Encoded> {
    let cands = [
        PromptCandidate { id: "B0012GVT7O", title: "Canvas Tote Bag" },
        PromptCandidate { id: "B07XKQ5M9Z", title: "Travel Mug" },
    ];
    [("<submission>Need a bag for the beach.</submission>\n", "B0012GVT7O"), ("<submission>Gift for a commuter?</submission>\n<comment>A mug.</comment>\n", "B07XKQ5M9Z")]
        .iter()
        .map(|(c, t)| {
            let images = vec![pixels(kind, "wide2"), pixels(kind, "square")];
            m.encode(&Example { prompt: recommendation_prompt(c, &cands), target: (*t).into(), images }).unwrap()
        })
        .collect()
}

/// Loss, every gradient and the RNG state after one forward + backward, plain vs checkpointed.
fn check_gradients(opts: &TrainOptions, batch: impl Fn(&TrainModel) -> Vec<Encoded>) {
    let (plain, ckpt) = models(opts);
    let data = batch(&plain);
    let mut ctx_p = Ctx { train: true, rng: Rng::new(77) };
    let mut ctx_c = ctx_p.clone();
    let (lp, gp) = gradients(&plain, &data, &mut ctx_p).unwrap();
    let (lc, gc) = gradients(&ckpt, &data, &mut ctx_c).unwrap();
    assert!((lp - lc).abs() <= TOL as f64, "loss {lp} vs {lc}");
    assert_eq!(ctx_p.rng, ctx_c.rng, "the checkpointed path must leave the RNG where the plain one does");
    assert_eq!(gp.len(), plain.params().vars.len());
    assert_eq!(gp.len(), gc.len());
    let mut nonzero = 0;
    for (name, g) in &gp {
        let e = max_abs(g, &gc[name]);
        assert!(e <= TOL, "{name}: max |plain - checkpointed| = {e}");
        nonzero += usize::from(g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    }
    assert_eq!(nonzero, gp.len(), "every gradient must be nonzero for the comparison to mean something");
}

#[test]
fn stage1_vision_gradients_equal_plain() {
    for dropout in [0.0, 0.1] {
        check_gradients(&stage1_options("mistral", dropout), |m| stage1_batch(m, "mistral"));
    }
}

#[test]
fn stage2_lm_gradients_equal_plain() {
    for kind in ["mistral", "llama"] {
        for dropout in [0.0, 0.1] {
            let opts = stage2_options(kind, dropout);
            assert!(TrainModel::load(&opts).unwrap().params().vars.keys().any(|k| k.contains("lm_head")));
            check_gradients(&opts, |m| stage2_batch(m, kind));
        }
    }
}

/// Each vision and decoder layer runs its forward exactly twice (forward, recompute), and the
/// forward keeps only the detached layer inputs, none of which holds a graph.
#[test]
fn each_layer_runs_twice_and_keeps_no_graph() {
    let (_, ckpt) = models(&stage1_options("llama", 0.1));
    let data = stage1_batch(&ckpt, "llama");
    let (dec, vis) = (ckpt.config().text.num_hidden_layers, ckpt.config().vision.num_hidden_layers);
    assert!(dec >= 2 && vis >= 2, "the fixture needs several layers");
    let tokens: usize = data.iter().map(Encoded::target_tokens).sum();
    let c = ckpt.checkpointed_grads(&data, tokens as f64, &mut Ctx { train: true, rng: Rng::new(3) }).unwrap();
    assert_eq!(c.layer_forwards, 2 * (dec + vis));
    assert_eq!(c.saved_inputs, dec + vis);
    // Stage 2 with the vision side frozen: the tower runs once, only decoder layers twice.
    let (_, ckpt) = models(&stage2_options("llama", 0.1));
    let data = stage2_batch(&ckpt, "llama");
    let tokens: usize = data.iter().map(Encoded::target_tokens).sum();
    let c = ckpt.checkpointed_grads(&data, tokens as f64, &mut Ctx { train: true, rng: Rng::new(3) }).unwrap();
    assert_eq!(c.layer_forwards, 2 * dec + vis);
    assert_eq!(c.saved_inputs, dec);
}

/// Several AdamW steps with dropout, batches of 2 and accumulation 2: the same weights.
#[test]
fn adamw_steps_give_the_same_weights() {
    for (opts, stage1) in [(stage1_options("mistral", 0.1), true), (stage2_options("llama", 0.1), false)] {
        let (plain, ckpt) = models(&opts);
        let data = if stage1 { stage1_batch(&plain, "mistral") } else { stage2_batch(&plain, "llama") };
        let cfg = TrainConfig {
            optim: AdamWConfig { lr: 1e-2, ..Default::default() },
            schedule: Schedule::Cosine { warmup: 1, total: 4 },
            batch_size: 2,
            accumulation: 2,
            seed: 5,
            shuffle: true,
            ..Default::default()
        };
        let mut tp = Trainer::new(&plain, cfg.clone()).unwrap();
        let mut tc = Trainer::new(&ckpt, cfg).unwrap();
        for _ in 0..4 {
            let (rp, rc) = (tp.step(&data).unwrap(), tc.step(&data).unwrap());
            assert!((rp.loss - rc.loss).abs() <= 1e-6 && (rp.grad_norm - rc.grad_norm).abs() <= 1e-5, "{rp:?} vs {rc:?}");
        }
        let (wp, wc) = (plain.params().tensors(), ckpt.params().tensors());
        for (name, w) in &wp {
            let e = max_abs(w, &wc[name]);
            assert!(e <= TOL, "{name}: weights differ by {e} after 4 steps");
        }
    }
}

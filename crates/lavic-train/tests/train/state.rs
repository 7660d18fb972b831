//! Saving and resuming: PEFT adapters written by the trainer load in lavic-model (the server's
//! loader) and give the training model's logits; a run stopped after 3 steps and resumed from
//! its saved state ends bit-identical to an uninterrupted 6-step run; PEFT's initialisation.

use crate::common::*;
use lavic_model::prompt::{distillation_prompt, recommendation_prompt};
use lavic_model::{LavicModel, LoadOptions, PromptCandidate, Tensor};
use lavic_train::linear::Ctx;
use lavic_train::model::{Encoded, Example, TrainModel};
use lavic_train::optim::{AdamWConfig, Schedule};
use lavic_train::peft::{save_adapter, Layout};
use lavic_train::spec::LoraSpec;
use lavic_train::trainer::{gradients, TrainConfig, Trainer};

fn rec_examples(model: &TrainModel, kind: &str) -> Vec<Encoded> {
    let cands = [
        PromptCandidate { id: "B0012GVT7O", title: "Canvas Tote Bag" },
        PromptCandidate { id: "B07XKQ5M9Z", title: "Travel Mug" },
    ];
    let ctxs = [
        "<submission>Need a bag for the beach.</submission>\n",
        "<submission>My coffee gets cold on the train, any ideas?</submission>\n<comment>Get a steel one.</comment>\n",
        "<submission>Gift for a commuter?</submission>\n",
    ];
    ctxs.iter()
        .zip(["B0012GVT7O", "B07XKQ5M9Z", "B07XKQ5M9Z"])
        .map(|(c, t)| {
            let images = vec![pixels(kind, "wide2"), pixels(kind, "square")];
            model.encode(&Example { prompt: recommendation_prompt(c, &cands), target: t.into(), images }).unwrap()
        })
        .collect()
}

fn config() -> TrainConfig {
    TrainConfig {
        optim: AdamWConfig { lr: 1e-3, ..Default::default() },
        schedule: Schedule::Cosine { warmup: 2, total: 6 },
        max_grad_norm: Some(1.0),
        batch_size: 1,
        accumulation: 2,
        seed: 9,
        shuffle: true,
    }
}

fn stage2_options(kind: &str) -> lavic_train::model::TrainOptions {
    let mut o = options(kind);
    let mut spec = LoraSpec::stage2(true);
    spec.r = 4;
    spec.modules_to_save = vec!["language_model.model.norm".into()];
    o.lm = Some(spec); // dropout 0.1: the resumed run must continue the same dropout masks
    o
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let straight = TrainModel::load(&stage2_options("llama")).unwrap();
    let data = rec_examples(&straight, "llama");
    let mut t = Trainer::new(&straight, config()).unwrap();
    let mut losses = Vec::new();
    for _ in 0..6 {
        losses.push(t.step(&data).unwrap().loss);
    }
    let resumed = TrainModel::load(&stage2_options("llama")).unwrap();
    {
        let mut t = Trainer::new(&resumed, config()).unwrap();
        for _ in 0..3 {
            t.step(&data).unwrap();
        }
        t.save_state(dir.path()).unwrap();
    } // the first run stops here
    let again = TrainModel::load(&stage2_options("llama")).unwrap();
    let mut t = Trainer::resume(&again, dir.path()).unwrap();
    assert_eq!(t.step_count(), 3);
    assert_eq!(t.position, 6);
    let mut tail = Vec::new();
    for _ in 0..3 {
        tail.push(t.step(&data).unwrap().loss);
    }
    assert_eq!(tail, losses[3..], "losses after resuming");
    let moved = max_abs(
        straight.params().vars["language_model.model.layers.0.self_attn.q_proj.lora_B.weight"].as_tensor(),
        &Tensor::zeros((16, 4), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    assert!(moved > 1e-4, "training did not move lora_B ({moved})");
    for (name, var) in &straight.params().vars {
        let a = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = again.params().vars[name].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b, "{name} differs between the straight and the resumed run");
    }
    // a corrupt state is refused with a message naming the file
    std::fs::write(dir.path().join("state.json"), "{").unwrap();
    let err = Trainer::resume(&again, dir.path()).err().unwrap().to_string();
    assert!(err.contains("state.json"), "{err}");
}

#[test]
fn fresh_lora_is_initialised_as_peft() {
    let model = TrainModel::load(&stage2_options("mistral")).unwrap();
    let data = rec_examples(&model, "mistral");
    for (name, var) in &model.params().vars {
        let v = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if name.ends_with("lora_B.weight") {
            assert!(v.iter().all(|x| *x == 0.0), "{name} is not zero");
        } else if name.ends_with("lora_A.weight") {
            let fan_in = var.dims()[1] as f32;
            let bound = 1.0 / fan_in.sqrt();
            assert!(v.iter().all(|x| x.abs() <= bound), "{name} outside U(-1/sqrt(in), 1/sqrt(in))");
            let mean_sq = v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32;
            assert!((mean_sq - bound * bound / 3.0).abs() < 0.5 * bound * bound / 3.0, "{name}: variance off");
        }
    }
    // with B = 0 every lora_A gradient is zero and every lora_B gradient is not (spec 12)
    let (_, grads) = gradients(&model, &data[..1], &mut Ctx::eval()).unwrap();
    for (name, g) in grads {
        let s = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        if name.ends_with("lora_A.weight") {
            assert_eq!(s, 0.0, "{name}");
        } else {
            assert!(s > 0.0, "{name} has no gradient");
        }
    }
}

fn inference_logits(kind: &str, vision: Option<&std::path::Path>, lm: Option<&std::path::Path>, e: &Encoded, text: &str) -> Tensor {
    let mut o = LoadOptions::new(fixtures().join(format!("tiny-{kind}")));
    o.tokenizer = Some(tokenizer());
    o.vision_adapter = vision.map(|p| p.to_path_buf());
    o.lm_adapter = lm.map(|p| p.to_path_buf());
    o.dtype = Some(candle_core::DType::F32);
    o.share_prefix = false;
    let m = LavicModel::load(&o).unwrap();
    let tp = m.tokenizer.tokenize_prompt(text).unwrap();
    assert_eq!(tp.ids, e.ids);
    let toks: Vec<Tensor> = e
        .images
        .iter()
        .map(|v| m.encoder.project(&m.encoder.cls_from_pixels(v).unwrap()).unwrap().squeeze(0).unwrap())
        .collect();
    let embeds = m.prompt_embeds(&tp, &toks).unwrap();
    m.prompt_logits(&embeds, &(0..e.ids.len()).collect::<Vec<_>>()).unwrap()
}

/// Train a few steps (both stages at once), save both adapters in each layout, load them with
/// lavic-model (merged at load, as the server does): same logits as the training model.
#[test]
fn saved_adapters_load_in_lavic_model_with_the_same_logits() {
    for (kind, layout) in [("mistral", Layout::Legacy), ("llama", Layout::Modern)] {
        let mut o = stage2_options(kind);
        let mut vs = LoraSpec::stage1();
        vs.use_rslora = true;
        o.vision = Some(vs.clone());
        let model = TrainModel::load(&o).unwrap();
        let title = "Canvas Tote Bag";
        let prompt = distillation_prompt(title);
        let target = "A beige tote.";
        let e = model.encode(&Example { prompt: prompt.clone(), target: target.into(), images: vec![pixels(kind, "wide2")] }).unwrap();
        let mut data = rec_examples(&model, kind);
        data.push(e.clone());
        let mut cfg = config();
        cfg.schedule = Schedule::Constant { warmup: 0 };
        cfg.optim.lr = 1e-2;
        cfg.batch_size = 4;
        cfg.accumulation = 1;
        let mut t = Trainer::new(&model, cfg).unwrap();
        for _ in 0..2 {
            t.step(&data).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let (vdir, ldir) = (dir.path().join("vision"), dir.path().join("lm"));
        save_adapter(&vdir, model.params(), &vs, &["vision_tower.", "multi_modal_projector."], layout, kind).unwrap();
        save_adapter(&ldir, model.params(), o.lm.as_ref().unwrap(), &["language_model."], layout, kind).unwrap();
        let keys = candle_core::safetensors::load(ldir.join("adapter_model.safetensors"), &candle_core::Device::Cpu).unwrap();
        let modern = keys.keys().any(|k| k.starts_with("base_model.model.model.language_model."));
        assert_eq!(modern, layout == Layout::Modern, "{kind}: key layout");
        assert!(keys.contains_key(if layout == Layout::Modern { "base_model.model.lm_head.lora_B.weight" } else { "base_model.model.language_model.lm_head.lora_B.weight" }));
        let ours = model.logits(&e, &mut Ctx::eval()).unwrap();
        let served = inference_logits(kind, Some(&vdir), Some(&ldir), &e, &format!("{prompt}{target}"));
        let err = max_abs(&ours, &served);
        eprintln!("{kind} {layout:?}: max abs(trained model - lavic-model with saved adapters) = {err:e}");
        assert!(err <= 1e-5, "{kind}: logits differ by {err}");
        let base = inference_logits(kind, None, None, &e, &format!("{prompt}{target}"));
        assert!(max_abs(&base, &served) > 1e-3, "{kind}: the trained adapters change nothing");
        // the saved spec reads back
        let back = LoraSpec::from_adapter_config(&ldir.join("adapter_config.json")).unwrap();
        assert_eq!(back.r, 4);
        assert!(back.targets("language_model.lm_head").unwrap());
        assert!(back.saves("language_model.model.norm"));
    }
}

//! Bad inputs give errors that name what is wrong, never panics; bf16 frozen weights keep f32
//! LoRA weights and gradients.

use crate::common::*;
use lavic_model::prompt::distillation_prompt;
use lavic_train::linear::Ctx;
use lavic_train::model::{Example, TrainModel};
use lavic_train::spec::{LoraSpec, Targets};
use lavic_train::trainer::{gradients, TrainConfig, Trainer};

fn err<T>(r: lavic_train::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_examples_are_refused_with_clear_errors() {
    let mut o = options("mistral");
    o.lm = Some(LoraSpec::stage2(false));
    let m = TrainModel::load(&o).unwrap();
    let prompt = distillation_prompt("Mug");
    let img = pixels("mistral", "square");
    let e = err(m.encode(&Example { prompt: prompt.clone(), target: "A mug.".into(), images: vec![] }));
    assert!(e.contains("1 image blocks but 0 images"), "{e}");
    let e = err(m.encode(&Example { prompt: prompt.clone(), target: "".into(), images: vec![img.clone()] }));
    assert!(e.contains("adds no token"), "{e}");
    let small = img.narrow(0, 0, 3).unwrap();
    let e = err(m.encode(&Example { prompt: prompt.clone(), target: "A mug.".into(), images: vec![small] }));
    assert!(e.contains("image views have shape [3, 3, 32, 32]"), "{e}");
    let e = err(m.loss(&[], &mut Ctx::eval()));
    assert!(e.contains("empty batch"), "{e}");
    let e = err(Trainer::new(&m, TrainConfig { batch_size: 0, ..Default::default() }));
    assert!(e.contains("batch_size"), "{e}");
    let mut t = Trainer::new(&m, TrainConfig::default()).unwrap();
    assert!(err(t.step(&[])).contains("no training examples"));
}

#[test]
fn bad_specs_and_init_adapters_are_refused() {
    let mut o = options("mistral");
    o.lm = Some(LoraSpec { target_modules: Targets::Regex("nothing\\.matches".into()), ..LoraSpec::stage2(false) });
    assert!(err(TrainModel::load(&o)).contains("match no module"));
    o.lm = Some(LoraSpec { target_modules: Targets::Regex("(".into()), ..LoraSpec::stage2(false) });
    assert!(err(TrainModel::load(&o)).contains("target_modules pattern"));
    // an init adapter whose rank does not fit the spec
    let mut o = options("mistral");
    o.lm = Some(LoraSpec::stage2(true));
    o.lm_init = Some(fixtures().join("train/mistral-s2-init"));
    let e = err(TrainModel::load(&o));
    assert!(e.contains("language_model.lm_head.lora_A.weight has shape [1, 32], expected [8, 32]"), "{e}");
    // an init adapter with tensors the spec does not train
    let mut o = options("mistral");
    o.lm = Some(LoraSpec { target_modules: Targets::Names(vec!["q_proj".into()]), ..LoraSpec::stage2(false) });
    o.lm_init = Some(fixtures().join("train/mistral-s2-init"));
    let e = err(TrainModel::load(&o));
    assert!(e.contains("matches no trainable tensor"), "{e}");
}

/// bf16 frozen weights (what CUDA training uses), run on CPU: LoRA weights and their gradients
/// stay f32, and the loss stays close to the f32 loss.
#[test]
fn bf16_frozen_weights_keep_f32_lora() {
    let init = fixtures().join("train/llama-s2-init");
    let spec = LoraSpec::from_adapter_config(&init.join("adapter_config.json")).unwrap();
    let load = |dtype| {
        let mut o = options("llama");
        o.dtype = dtype;
        o.lm = Some(spec.clone());
        o.lm_init = Some(init.clone());
        TrainModel::load(&o).unwrap()
    };
    let (m32, m16) = (load(candle_core::DType::F32), load(candle_core::DType::BF16));
    let ex = Example { prompt: distillation_prompt("Mug"), target: "A steel mug.".into(), images: vec![pixels("llama", "square")] };
    let (e32, e16) = (m32.encode(&ex).unwrap(), m16.encode(&ex).unwrap());
    let (l32, _) = gradients(&m32, &[e32], &mut Ctx::eval()).unwrap();
    let (l16, g16) = gradients(&m16, &[e16], &mut Ctx::eval()).unwrap();
    assert!((l16 - l32).abs() / l32 < 0.02, "bf16 loss {l16} vs f32 {l32}");
    for (name, var) in &m16.params().vars {
        assert_eq!(var.dtype(), candle_core::DType::F32, "{name}");
        assert_eq!(g16[name].dtype(), candle_core::DType::F32, "{name} gradient");
    }
}

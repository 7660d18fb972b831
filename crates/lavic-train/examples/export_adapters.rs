//! Trains both LoRA stages a few steps on the tiny Mistral fixture, saves the adapters in both
//! key layouts, and writes what `tests/fixtures/check_train_adapters.py` needs to check them with
//! peft: the token ids, image views and this engine's logits.
//!
//! ```sh
//! cargo run -p lavic-train --example export_adapters -- /tmp/lavic-train-export
//! /work/pyenv/bin/python tests/fixtures/check_train_adapters.py /tmp/lavic-train-export
//! ```

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
use lavic_model::prompt::{distillation_prompt, recommendation_prompt};
use lavic_model::PromptCandidate;
use lavic_train::linear::Ctx;
use lavic_train::model::{Example, TrainModel, TrainOptions};
use lavic_train::optim::{AdamWConfig, Schedule};
use lavic_train::peft::{save_adapter, Layout};
use lavic_train::spec::LoraSpec;
use lavic_train::trainer::{TrainConfig, Trainer};

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: export_adapters OUT_DIR"))?);
    let fix = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let mut o = TrainOptions::new(fix.join("tiny-mistral"));
    o.tokenizer = Some(fix.join("tokenizer/tokenizer.json"));
    let mut lm = LoraSpec::stage2(true);
    lm.rank_pattern.insert("language_model.lm_head".into(), 2);
    lm.modules_to_save = vec!["language_model.model.norm".into()];
    let vision = LoraSpec { use_rslora: true, ..LoraSpec::stage1() };
    o.lm = Some(lm.clone());
    o.vision = Some(vision.clone());
    let model = TrainModel::load(&o)?;
    let reference = candle_core::safetensors::load(fix.join("reference/mistral.safetensors"), &candle_core::Device::Cpu)?;
    let px = |n: &str| reference[&format!("pixel.{n}")].clone();
    let cands = [PromptCandidate { id: "B0012GVT7O", title: "Canvas Tote Bag" }, PromptCandidate { id: "B07XKQ5M9Z", title: "Travel Mug" }];
    let rec = Example {
        prompt: recommendation_prompt("<submission>Need a bag for the beach.</submission>\n", &cands),
        target: "B0012GVT7O".into(),
        images: vec![px("wide2"), px("square")],
    };
    let distill = Example { prompt: distillation_prompt("Travel Mug"), target: "A steel mug.".into(), images: vec![px("square")] };
    let data = vec![model.encode(&rec)?, model.encode(&distill)?];
    let cfg = TrainConfig {
        optim: AdamWConfig { lr: 1e-2, ..Default::default() },
        schedule: Schedule::Constant { warmup: 0 },
        batch_size: 2,
        ..Default::default()
    };
    let mut t = Trainer::new(&model, cfg)?;
    for _ in 0..3 {
        let r = t.step(&data)?;
        println!("step loss {:.5} grad norm {:.4}", r.loss, r.grad_norm);
    }
    for (layout, name) in [(Layout::Legacy, "legacy"), (Layout::Modern, "modern")] {
        save_adapter(&out.join(name).join("vision"), model.params(), &vision, &["vision_tower.", "multi_modal_projector."], layout, "tiny-mistral")?;
        save_adapter(&out.join(name).join("lm"), model.params(), &lm, &["language_model."], layout, "tiny-mistral")?;
    }
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut meta = Vec::new();
    for (i, e) in data.iter().enumerate() {
        tensors.insert(format!("{i}.ids"), Tensor::new(e.ids.iter().map(|&x| x as i64).collect::<Vec<_>>().as_slice(), &candle_core::Device::Cpu)?);
        tensors.insert(format!("{i}.pixels"), Tensor::cat(&e.images, 0)?);
        tensors.insert(format!("{i}.logits"), model.logits(e, &mut Ctx::eval())?.to_dtype(DType::F32)?);
        meta.push(serde_json::json!({"slots": e.slots}));
    }
    candle_core::safetensors::save(&tensors, out.join("inputs.safetensors"))?;
    std::fs::write(out.join("inputs.json"), serde_json::to_string_pretty(&meta)?)?;
    println!("wrote {}", out.display());
    Ok(())
}

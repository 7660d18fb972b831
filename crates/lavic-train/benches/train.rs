//! Training throughput on the tiny Mistral fixture (f32, CPU): one optimizer step (forward,
//! backward, clip, AdamW) of stage 2 (recommendation prompt with 10 candidates and their image
//! tokens, id target, LoRA r 8 on every LM Linear + lm_head, batch 1) and of stage 1
//! (distillation prompt, description target, LoRA r 8 on every vision Linear + projector, batch
//! 4, right-padded). Throughput counts every input token of the step (prompt + target, before
//! padding) as criterion "elements", so the report reads as training tokens per second.
//! Each is measured twice: plain, and with gradient checkpointing (`... grad checkpoint`: every
//! decoder / vision layer re-run in the backward), to measure what checkpointing costs.
//!
//! Run: `cargo bench -p lavic-train --bench train`. Numbers go to docs/TRAINING.md.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lavic_model::prompt::{distillation_prompt, recommendation_prompt};
use lavic_model::PromptCandidate;
use lavic_train::model::{Encoded, Example, TrainModel, TrainOptions};
use lavic_train::spec::LoraSpec;
use lavic_train::trainer::{TrainConfig, Trainer};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn model(vision: Option<LoraSpec>, lm: Option<LoraSpec>, grad_checkpoint: bool) -> TrainModel {
    let mut o = TrainOptions::new(fixtures().join("tiny-mistral"));
    o.tokenizer = Some(fixtures().join("tokenizer/tokenizer.json"));
    o.vision = vision;
    o.lm = lm;
    o.grad_checkpoint = grad_checkpoint;
    TrainModel::load(&o).expect("fixture model")
}

fn pixels(name: &str) -> candle_core::Tensor {
    let t = candle_core::safetensors::load(fixtures().join("reference/mistral.safetensors"), &candle_core::Device::Cpu).unwrap();
    t[&format!("pixel.{name}")].clone()
}

const IDS: [&str; 10] = [
    "B0012GVT7O", "B07XJ8C8F5", "B08LYS9WYD", "B07XKQ5M9Z", "B01N5IB20Q", "B00004OCNS", "B09G9FPHY6",
    "B07PGL2ZSL", "B0BSHF7WHW", "B00KXBCN8K",
];
const IMAGES: [&str; 5] = ["square", "wide2", "wide3", "tall", "small"];

fn stage2_data(m: &TrainModel) -> Vec<Encoded> {
    let titles: Vec<String> = (0..10).map(|i| format!("Stainless steel product number {i} with a lid")).collect();
    let cands: Vec<PromptCandidate> = IDS.iter().zip(&titles).map(|(id, t)| PromptCandidate { id, title: t }).collect();
    let context = "<submission>Travel mug that actually keeps coffee hot? My commute is 90 minutes and my current one is lukewarm by the time I get to work. Needs to fit a car cup holder.</submission>\n<comment>Anything double-walled stainless will do it, avoid the plastic lids that don't seal.</comment>\n";
    let images = (0..10).map(|i| pixels(IMAGES[i % 5])).collect();
    vec![m.encode(&Example { prompt: recommendation_prompt(context, &cands), target: IDS[3].into(), images }).unwrap()]
}

fn stage1_data(m: &TrainModel) -> Vec<Encoded> {
    let desc = "A brushed stainless steel travel mug with a black flip lid, a textured grip band around the middle and a tapered base that fits car cup holders.";
    (0..4)
        .map(|i| {
            let ex = Example {
                prompt: distillation_prompt(&format!("Insulated Travel Mug, {} oz", 12 + 4 * i)),
                target: desc[..desc.len() - 10 * i].into(),
                images: vec![pixels(IMAGES[i])],
            };
            m.encode(&ex).unwrap()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("train_step");
    g.sample_size(20);
    for ckpt in [false, true] {
        let tag = if ckpt { ", grad checkpoint" } else { "" };
        let m2 = model(None, Some(LoraSpec::stage2(true)), ckpt);
        let d2 = stage2_data(&m2);
        let mut t2 = Trainer::new(&m2, TrainConfig { batch_size: 1, ..Default::default() }).unwrap();
        g.throughput(Throughput::Elements(d2.iter().map(|e| e.ids.len() as u64).sum()));
        g.bench_function(format!("stage2 10 candidates, batch 1{tag}"), |b| b.iter(|| t2.step(&d2).unwrap()));
        let m1 = model(Some(LoraSpec::stage1()), None, ckpt);
        let d1 = stage1_data(&m1);
        let mut t1 = Trainer::new(&m1, TrainConfig { batch_size: 4, ..Default::default() }).unwrap();
        g.throughput(Throughput::Elements(d1.iter().map(|e| e.ids.len() as u64).sum()));
        g.bench_function(format!("stage1 distillation, batch 4{tag}"), |b| b.iter(|| t1.step(&d1).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

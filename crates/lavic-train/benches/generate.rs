//! Greedy generation of the stage-0 model (the demo-size base: 4 + 4 layers, width 128 / 256,
//! 64 px tiles, 320 patch tokens per image; untrained, so no answer ends early and every one runs
//! the whole budget, the worst case) on the describe question: one at a time
//! (`FullModel::generate`: the tower and the whole prompt again per token) and in one batch
//! (`FullModel::generate_batch`: patch features once, prompts once, then one token per row and
//! step over a KV cache), both on 2 items x 4 tokens (one at a time is too slow for more), and
//! batched on 16 items x 16 tokens. Throughput counts generated tokens.
//!
//! Run: `cargo bench --profile dev -p lavic-train --bench generate`. Numbers go to
//! docs/TRAINING.md.

use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lavic_demo::base::{write_base, BaseConfig};
use lavic_demo::{generate, write, CatalogConfig, WorldConfig};
use lavic_train::full::{stage0_prompt, FullModel};
use lavic_train::generate::Question;
use lavic_train::stage0::{read_lines, Stage0Filter};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = WorldConfig::new(15);
    cfg.catalog = CatalogConfig { lines_per_kind: 3, valid_lines: 1, test_lines: 1, tile: 64 };
    cfg.conversations = [8, 4, 4];
    let world = generate(&cfg).unwrap();
    let (w, b) = (dir.path().join("world"), dir.path().join("base"));
    write(&world, &w).unwrap();
    let extra = vec![lavic_model::prompt::distillation_prompt(""), lavic_model::prompt::recommendation_head().to_string()];
    write_base(&world, &BaseConfig::demo(15), &extra, &b).unwrap();
    let model = FullModel::load(&b, None, &Device::Cpu).unwrap();
    let f = Stage0Filter { tasks: vec!["describe".into()], limit: Some(16), ..Stage0Filter::default() };
    let questions: Vec<Question> = read_lines(&w, &f)
        .unwrap()
        .iter()
        .map(|l| Question {
            prompt: stage0_prompt(&l.question),
            images: vec![lavic_train::stage0::item_views(&w, &l.id, &model.anyres).unwrap()],
        })
        .collect();
    let mut g = c.benchmark_group("stage0 describe");
    g.sample_size(10);
    let small = &questions[..2];
    g.throughput(Throughput::Elements(2 * 4));
    g.bench_function("one at a time, 2 items x 4 tokens", |bch| {
        bch.iter(|| small.iter().map(|q| model.generate(&q.prompt, &q.images, 4).unwrap()).collect::<Vec<_>>())
    });
    g.bench_function("batched, 2 items x 4 tokens", |bch| bch.iter(|| model.generate_batch(small, 4).unwrap()));
    g.throughput(Throughput::Elements(16 * 16));
    g.bench_function("batched, 16 items x 16 tokens", |bch| bch.iter(|| model.generate_batch(&questions, 16).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Catalog benchmarks (criterion): images encoded per second on the tiny fixture model (one
//! vision pass over 16 images, and the whole build pipeline), and for a synthetic catalog of
//! 1,000,000 items at the tiny width: open time, lookup latency and `tokens()` for 10 candidates
//! in both stored forms, plus the per-request projector cost at real LLaVA-NeXT-7B sizes (what
//! the CLS form pays instead of 4x the storage).
//!
//! Run: `cargo bench -p lavic-catalog --bench catalog -- --warm-up-time 1 --measurement-time 3`.
//! Set `LAVIC_BENCH_ITEMS` to change the synthetic catalog size.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lavic_catalog::{build, synthetic_id, write_synthetic, BuildOptions, Catalog, ProgressMode, StoreForm};
use lavic_model::{ImageEncoder, LoadOptions};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn encoder() -> ImageEncoder {
    let f = fixtures();
    let mut o = LoadOptions::new(f.join("tiny-mistral"));
    o.vision_adapter = Some(f.join("adapters/mistral-vision"));
    o.dtype = Some(DType::F32);
    ImageEncoder::load(&o).expect("tiny fixture model")
}

const FIXTURE_IMAGES: [&str; 5] = ["square.jpg", "wide2.png", "wide3.jpg", "tall.png", "small.png"];

fn encode(c: &mut Criterion) {
    let enc = encoder();
    let images: Vec<_> = (0..16)
        .map(|i| enc.decode(&std::fs::read(fixtures().join("images").join(FIXTURE_IMAGES[i % 5])).unwrap()).unwrap())
        .collect();
    let mut g = c.benchmark_group("encode_tiny");
    g.throughput(Throughput::Elements(16));
    g.bench_function("vision_pass_16_images", |b| b.iter(|| enc.encode_cls(&images).unwrap()));

    // The build pipeline end to end: read, hash, decode, preprocess, encode, write, commit.
    // Every image has distinct bytes (a trailing counter), so nothing is deduplicated.
    let src = tempfile::tempdir().unwrap();
    let n = 64;
    let mut lines = String::new();
    for i in 0..n {
        let name = FIXTURE_IMAGES[i % 5];
        let mut bytes = std::fs::read(fixtures().join("images").join(name)).unwrap();
        bytes.extend_from_slice(format!("{i:08}").as_bytes());
        let file = format!("{i}-{name}");
        std::fs::write(src.path().join(&file), bytes).unwrap();
        lines.push_str(&format!("{{\"id\":\"item{i}\",\"title\":\"t\",\"image\":\"{file}\"}}\n"));
    }
    std::fs::write(src.path().join("items.jsonl"), lines).unwrap();
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("build_64_items", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |out| {
                let mut o = BuildOptions::new(src.path().join("items.jsonl"), src.path(), out.path().join("cat"));
                o.progress = ProgressMode::Off;
                let r = build(&o, &enc).unwrap();
                assert_eq!(r.encoded, n);
                out
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn synthetic(c: &mut Criterion) {
    let n: usize = std::env::var("LAVIC_BENCH_ITEMS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let enc = encoder();
    let root = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group(format!("catalog_{n}"));
    for form in [StoreForm::Cls, StoreForm::Projected] {
        let dir = root.path().join(form.to_string());
        let t = Instant::now();
        // Tiny widths: vision 32 (cls) and text hidden 32 (projected); the encoder's fingerprint
        // so that `tokens()` accepts it.
        let cat = write_synthetic(&dir, n, 32, form, enc.fingerprint()).unwrap();
        let bytes: u64 = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum();
        eprintln!("{form}: wrote {n} items ({bytes} bytes on disk) in {:.2} s", t.elapsed().as_secs_f64());
        drop(cat);
        if form == StoreForm::Cls {
            g.bench_function("open", |b| b.iter(|| Catalog::open(&dir).unwrap()));
        }
        let cat = Catalog::open(&dir).unwrap();
        let mut state = 0x2545_F491u64;
        let mut next_id = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            synthetic_id((state >> 33) as usize % n)
        };
        if form == StoreForm::Cls {
            let ids: Vec<String> = (0..4096).map(|_| next_id()).collect();
            let mut k = 0;
            g.bench_function("get", |b| {
                b.iter(|| {
                    k = (k + 1) % ids.len();
                    cat.get(&ids[k]).unwrap().unwrap()
                })
            });
            g.bench_function("stored_features", |b| {
                b.iter(|| {
                    k = (k + 1) % ids.len();
                    cat.stored_features(&ids[k]).unwrap().unwrap()
                })
            });
            g.bench_function("get_unknown_id", |b| b.iter(|| cat.get("B999999999x").unwrap()));
        }
        let batches: Vec<Vec<String>> = (0..512).map(|_| (0..10).map(|_| next_id()).collect()).collect();
        let mut k = 0;
        g.bench_function(format!("tokens_10_items_{form}"), |b| {
            b.iter(|| {
                k = (k + 1) % batches.len();
                let ids: Vec<&str> = batches[k].iter().map(String::as_str).collect();
                cat.tokens(&ids, &enc).unwrap()
            })
        });
    }
    g.finish();
}

/// What the CLS form costs per request at real sizes: the LLaVA-NeXT-7B projector
/// (1024 -> 4096, GELU, 4096 -> 4096) on 10 candidates x 5 views, f32 on CPU.
fn projector_real_size(c: &mut Criterion) {
    let dev = Device::Cpu;
    let w1 = Tensor::randn(0f32, 0.02, (4096, 1024), &dev).unwrap();
    let w2 = Tensor::randn(0f32, 0.02, (4096, 4096), &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (50, 1024), &dev).unwrap();
    let mut g = c.benchmark_group("projector_llava_next_7b");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("10_items_f32_cpu", |b| {
        b.iter(|| x.matmul(&w1.t().unwrap()).unwrap().gelu_erf().unwrap().matmul(&w2.t().unwrap()).unwrap())
    });
    g.finish();
}

criterion_group!(benches, encode, synthetic, projector_real_size);
criterion_main!(benches);

//! Model benchmarks on the tiny fixture (f32, CPU): AnyRes preprocessing of one image, the
//! vision tower over 5 views, one forward over a 10-candidate prompt, and a recommendation in
//! default (one pass) vs FREE (greedy, up to 10 passes) mode for 10 and 20 candidates, on two
//! models: the random fixture (its greedy answer is never a candidate, so default mode scores
//! every candidate to pick one) and an arranged copy whose greedy answer is candidate #3 (what a
//! trained model does: VR is ~99% in the paper; default mode then runs the output head along the
//! greedy path only). `default + scores` is default mode asked for every candidate's score
//! (`include_scores`). `no shared prefix` is default mode with the instruction head's keys and
//! values recomputed in every pass (`LoadOptions::share_prefix = false`) instead of taken from
//! the cache computed at load.
//!
//! Run: `cargo bench -p lavic-model --bench model`. Numbers go to docs/PERFORMANCE.md.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use lavic_model::recommend::{Candidate, Mode, RecommendInput, RecommendOptions};
use lavic_model::{DType, LavicModel, LoadOptions};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load() -> LavicModel {
    let f = root().join("tests/fixtures");
    let mut o = LoadOptions::new(f.join("tiny-mistral"));
    o.tokenizer = Some(f.join("tokenizer/tokenizer.json"));
    o.vision_adapter = Some(f.join("adapters/mistral-vision"));
    o.lm_adapter = Some(f.join("adapters/mistral-lm"));
    o.dtype = Some(DType::F32);
    LavicModel::load(&o).expect("fixture model")
}

/// A real dialogue of median length from the Reddit-Amazon Home validation split.
fn median_context() -> String {
    let path = std::env::var_os("LAVIC_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data"))
        .join("reddit-amazon/amazon_home/valid.jsonl");
    let text = std::fs::read_to_string(path).expect("shared data");
    let mut ctx: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["context"].as_str().unwrap().to_string())
        .collect();
    ctx.sort_by_key(String::len);
    ctx[ctx.len() / 2].clone()
}

/// Real-looking Amazon ids; #3 is the arranged model's answer (its tokens are all distinct).
const IDS: [&str; 20] = [
    "B0012GVT7O", "B07XJ8C8F5", "B08LYS9WYD", "B07XKQ5M9Z", "B01N5IB20Q", "B00004OCNS", "B09G9FPHY6",
    "B07PGL2ZSL", "B0BSHF7WHW", "B00KXBCN8K", "B095CBQJG5", "B095R937NQ", "B07NRD1BPJ", "B01M0GB8CC",
    "B06XCM9LJ4", "B0C1H26C46", "B00Y8X5V8Y", "B074PGBPLS", "B08N5WRWNW", "B0B7CPSN2K",
];

/// A copy of the fixture whose greedy answer is `IDS[3]` (lavic_model::testing).
fn arranged(dir: &std::path::Path, share_prefix: bool) -> LavicModel {
    let f = root().join("tests/fixtures");
    let tok = f.join("tokenizer/tokenizer.json");
    lavic_model::testing::write_arranged_checkpoint(&f.join("tiny-mistral"), &tok, dir, IDS[3]).expect("arranged checkpoint");
    let mut o = LoadOptions::new(dir);
    o.tokenizer = Some(tok);
    o.vision_adapter = Some(f.join("adapters/mistral-vision"));
    o.dtype = Some(DType::F32);
    o.share_prefix = share_prefix;
    LavicModel::load(&o).expect("arranged model")
}

fn input(model: &LavicModel, n: usize, mode: Mode, scores: bool) -> RecommendInput {
    let img = model.encoder.decode(&std::fs::read(root().join("tests/fixtures/images/square.jpg")).unwrap()).unwrap();
    let tokens = model.encoder.project(&model.encoder.encode_cls(&[img]).unwrap()).unwrap().get(0).unwrap();
    RecommendInput {
        context: median_context(),
        candidates: (0..n)
            .map(|i| Candidate { id: IDS[i].to_string(), title: format!("Product {i} with a realistic title"), tokens: tokens.clone() })
            .collect(),
        options: RecommendOptions { mode, scores, ..Default::default() },
    }
}

fn benches(c: &mut Criterion) {
    let model = load();
    let bytes = std::fs::read(root().join("tests/fixtures/images/square.jpg")).unwrap();
    c.bench_function("preprocess one image (decode + AnyRes, 5 views)", |b| {
        b.iter(|| {
            let img = model.encoder.decode(&bytes).unwrap();
            lavic_model::anyres::preprocess(&img, model.encoder.anyres())
        })
    });
    let img = model.encoder.decode(&bytes).unwrap();
    let pixels = model.encoder.pixels(std::slice::from_ref(&img)).unwrap();
    c.bench_function("vision tower: CLS of 5 views", |b| b.iter(|| model.encoder.cls_from_pixels(&pixels).unwrap()));
    let inp = input(&model, 10, Mode::Default, false);
    let pc: Vec<lavic_model::PromptCandidate> =
        inp.candidates.iter().map(|c| lavic_model::PromptCandidate { id: &c.id, title: &c.title }).collect();
    let prompt = model.build_prompt(&inp.context, &pc, None).unwrap();
    let images: Vec<_> = inp.candidates.iter().map(|c| c.tokens.clone()).collect();
    let embeds = model.prompt_embeds(&prompt.tokens, &images).unwrap();
    let last = prompt.tokens.ids.len() - 1;
    c.bench_function("LM forward, 10-candidate prompt", |b| b.iter(|| model.prompt_logits(&embeds, &[last]).unwrap()));
    let dir = tempfile::tempdir().unwrap();
    let trained = arranged(dir.path(), true);
    for (which, m) in [("fixture", &model), ("arranged", &trained)] {
        for n in [10, 20] {
            let modes = [("default", Mode::Default, false), ("default + scores", Mode::Default, true), ("free", Mode::Free, false)];
            for (name, mode, scores) in modes {
                let inp = input(m, n, mode, scores);
                let r = m.recommend(&inp).unwrap();
                assert_eq!(r.valid, which == "arranged", "{which}: {:?}", r.raw_answer);
                c.bench_function(&format!("recommend {n} candidates, {name} mode, {which} model"), |b| b.iter(|| m.recommend(&inp).unwrap()));
            }
        }
    }
    // The instruction head's keys/values shared from load (the default, above) vs recomputed in
    // every pass.
    let dir2 = tempfile::tempdir().unwrap();
    let unshared = arranged(dir2.path(), false);
    for n in [10, 20] {
        let inp = input(&unshared, n, Mode::Default, false);
        assert_eq!(unshared.recommend(&inp).unwrap(), trained.recommend(&inp).unwrap());
        c.bench_function(&format!("recommend {n} candidates, default mode, arranged model, no shared prefix"), |b| {
            b.iter(|| unshared.recommend(&inp).unwrap())
        });
    }
}

criterion_group! {
    name = model;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(4));
    targets = benches
}
criterion_main!(model);

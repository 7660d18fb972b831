//! One-pass candidate scoring (default mode) against the reference's FREE mode.
//!
//! Two models: the tiny fixture with both adapters (random weights: its greedy answers are never
//! candidates, so the invalid branch runs) and a copy whose weights are arranged so that greedy
//! decoding spells one fixed id (embeddings scaled so the residual stream is the current token,
//! lm_head rows pointing each token of that id at the next one): prompts that list that id give
//! valid answers, prompts that do not (or list only ids sharing its first tokens) give invalid
//! ones. Tolerance for logits: 1e-4 (same inputs, f32; only summation order differs).

mod common;

use std::path::Path;

use common::*;
use lavic_model::recommend::{Candidate, Mode, RecommendInput, RecommendOptions};
use lavic_model::{DType, LavicModel, LoadOptions, Tensor};

const IDS: [&str; 20] = [
    "B0012GVT7O", "B07XJ8C8F5", "B08LYS9WYD", "B0776Y43KM", "B01N5IB20Q", "B00004OCNS", "B09G9FPHY6",
    "B07PGL2ZSL", "B0BSHF7WHW", "B00KXBCN8K", "B095CBQJG5", "B095R937NQ", "B07NRD1BPJ", "B01M0GB8CC",
    "B06XCM9LJ4", "B0C1H26C46", "B00Y8X5V8Y", "B074PGBPLS", "B08N5WRWNW", "B0B7CPSN2K",
];

fn images(model: &LavicModel) -> Vec<Tensor> {
    let names = ["square.jpg", "wide2.png", "wide3.jpg", "tall.png", "small.png"];
    let rgb: Vec<_> = names
        .iter()
        .map(|n| model.encoder.decode(&std::fs::read(fixtures().join("images").join(n)).unwrap()).unwrap())
        .collect();
    let cls = model.encoder.encode_cls(&rgb).unwrap();
    let proj = model.encoder.project(&cls).unwrap();
    (0..names.len()).map(|i| proj.get(i).unwrap()).collect()
}

fn input(model: &LavicModel, context: &str, ids: &[&str], mode: Mode) -> RecommendInput {
    let imgs = images(model);
    RecommendInput {
        context: context.to_string(),
        candidates: ids
            .iter()
            .enumerate()
            .map(|(i, id)| Candidate { id: id.to_string(), title: format!("Product number {i}"), tokens: imgs[i % imgs.len()].clone() })
            .collect(),
        options: RecommendOptions { mode, scores: true, ..Default::default() },
    }
}

fn contexts() -> Vec<String> {
    let text = std::fs::read_to_string(shared_data().join("reddit-amazon/amazon_home/valid.jsonl")).unwrap();
    let mut ctx: Vec<String> =
        text.lines().take(40).map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["context"].as_str().unwrap().to_string()).collect();
    ctx.sort_by_key(|c| c.len());
    ctx.truncate(3);
    ctx
}

#[test]
fn tree_pass_equals_one_pass_per_candidate() {
    let model = LavicModel::load(&options("mistral")).unwrap();
    for n in [10, 20] {
        let inp = input(&model, &contexts()[0], &IDS[..n], Mode::Default);
        let tree = model.candidate_logits(&inp).unwrap();
        let separate = model.candidate_logits_separately(&inp).unwrap();
        assert_eq!(tree.len(), n);
        for (c, (a, b)) in tree.iter().zip(&separate).enumerate() {
            let e = max_abs(a, b);
            assert!(e < 1e-4, "{n} candidates, #{c}: tree vs separate logits differ by {e}");
        }
    }
}

#[test]
fn default_mode_uses_one_forward_pass_and_batches() {
    let model = LavicModel::load(&options("mistral")).unwrap();
    let ctx = contexts();
    let inputs: Vec<RecommendInput> = ctx.iter().map(|c| input(&model, c, &IDS[..10], Mode::Default)).collect();
    let mut single = Vec::new();
    for inp in &inputs {
        let before = model.forward_passes();
        single.push(model.recommend(inp).unwrap());
        assert_eq!(model.forward_passes() - before, 1, "default mode must run exactly one forward pass");
    }
    let before = model.forward_passes();
    let batch = model.recommend_batch(&inputs);
    assert!(batch.shared_pass_error.is_none(), "{:?}", batch.shared_pass_error);
    let batched: Vec<_> = batch.results.into_iter().map(Result::unwrap).collect();
    assert_eq!(model.forward_passes() - before, 1, "a batch of default-mode requests shares one pass");
    for (a, b) in single.iter().zip(&batched) {
        assert_eq!(a.pick, b.pick);
        assert_eq!(a.valid, b.valid);
        for (x, y) in a.scores.iter().zip(&b.scores) {
            assert_eq!(x.id, y.id);
            assert!((x.logprob - y.logprob).abs() < 1e-3, "{} vs {}", x.logprob, y.logprob);
        }
    }
    // FREE mode: one prefill + one pass per further token.
    let before = model.forward_passes();
    let free = model.recommend(&input(&model, &ctx[0], &IDS[..10], Mode::Free)).unwrap();
    assert_eq!(model.forward_passes() - before, 10);
    assert!(!free.valid, "random fixture answers no candidate: {:?}", free.raw_answer);
    assert!(!single[0].valid);
    assert!(IDS[..10].contains(&single[0].pick.as_deref().unwrap()), "default mode always names a candidate");
    assert_eq!(single[0].scores.len(), 10);
    assert!(single[0].scores.windows(2).all(|w| w[0].logprob >= w[1].logprob), "ranked best first");
    assert_eq!(single[0].pick.as_deref(), Some(single[0].scores[0].id.as_str()), "invalid: best-scoring candidate");
}

/// A copy of tiny-mistral whose greedy decode after `Assistant:` spells `answer`.
fn arranged_model(dir: &Path, answer: &str) -> LavicModel {
    let tok = fixtures().join("tokenizer/tokenizer.json");
    lavic_model::testing::write_arranged_checkpoint(&fixtures().join("tiny-mistral"), &tok, dir, answer).unwrap();
    let mut o = LoadOptions::new(dir);
    o.tokenizer = Some(tok);
    o.vision_adapter = Some(fixtures().join("adapters/mistral-vision"));
    o.dtype = Some(DType::F32);
    LavicModel::load(&o).unwrap()
}

#[test]
fn default_mode_agrees_with_free_mode_on_both_branches() {
    let tmp = tempfile::tempdir().unwrap();
    let answer = "B7XKQ";
    let model = arranged_model(tmp.path(), answer);
    let with_answer: Vec<&str> = vec!["B0012GVT7O", "B7XKQ", "B08LYS9WYD", "B7XKZ"];
    let prefix_only: Vec<&str> = vec!["B0012GVT7O", "B7XKZ", "B7X"];
    let unrelated: Vec<&str> = IDS[..10].to_vec();
    let mut valid_seen = 0;
    let mut invalid_seen = 0;
    for ctx in contexts() {
        for ids in [&with_answer, &prefix_only, &unrelated] {
            let free = model.recommend(&input(&model, &ctx, ids, Mode::Free)).unwrap();
            let before = model.forward_passes();
            let fast = model.recommend(&input(&model, &ctx, ids, Mode::Default)).unwrap();
            assert_eq!(model.forward_passes() - before, 1);
            // Without scores asked for, the output head runs only along the greedy path: same
            // answer, flag and text; scores only when the answer is invalid (the pick needs them).
            let mut lean_input = input(&model, &ctx, ids, Mode::Default);
            lean_input.options.scores = false;
            let lean = model.recommend(&lean_input).unwrap();
            assert_eq!((&lean.pick, lean.valid, &lean.raw_answer), (&fast.pick, fast.valid, &fast.raw_answer));
            assert_eq!(lean.scores.is_empty(), fast.valid, "{ids:?}");
            if !fast.valid {
                assert_eq!(lean.scores, fast.scores);
            }
            assert_eq!(fast.valid, free.valid, "{ids:?}: FREE said {:?}, default said {:?}", free.raw_answer, fast.raw_answer);
            if free.valid {
                valid_seen += 1;
                assert_eq!(fast.pick, free.pick, "same candidate as FREE mode");
                assert_eq!(fast.pick.as_deref(), Some(answer));
                assert_eq!(fast.raw_answer, answer);
            } else {
                invalid_seen += 1;
                assert!(free.raw_answer.starts_with(&fast.raw_answer), "{:?} vs {:?}", free.raw_answer, fast.raw_answer);
                assert!(ids.contains(&fast.pick.as_deref().unwrap()));
                assert_eq!(fast.pick.as_deref(), Some(fast.scores[0].id.as_str()));
            }
        }
    }
    assert_eq!(valid_seen, 3, "the arranged answer is valid when listed");
    assert_eq!(invalid_seen, 6);
}

#[test]
fn fast_continuations_equal_whole_prompt_tokenization() {
    let model = LavicModel::load(&options("mistral")).unwrap();
    let text = std::fs::read_to_string(shared_data().join("reddit-amazon/all_beauty/valid.jsonl")).unwrap();
    for line in text.lines().take(60) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let ids: Vec<&str> = v["candidates_st"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
        let mut all = ids.clone();
        all.extend(["sku-12", "B0", "x y", ":colon", "é-unicode"]);
        let pc: Vec<lavic_model::PromptCandidate> =
            ids.iter().map(|id| lavic_model::PromptCandidate { id, title: "A title" }).collect();
        let prompt = model.build_prompt(v["context"].as_str().unwrap(), &pc, None).unwrap();
        let fast = model.candidate_continuations(&prompt, &all).unwrap();
        for (id, cont) in all.iter().zip(&fast) {
            let joint = model.tokenizer.encode(&format!("{}{id}", prompt.text)).unwrap();
            let n = prompt.tokens.ids.len();
            if joint[..n] == prompt.tokens.ids[..] {
                assert_eq!(&joint[n..], &cont[..], "{id}");
            } else {
                // ":colon" merges with the prompt's final ':'; the documented fallback applies.
                assert_eq!(*id, ":colon");
                assert_eq!(cont, &model.tokenizer.encode_plain(id).unwrap());
            }
        }
    }
}

/// Default mode with the instruction head's keys/values computed once at load (the default)
/// against the full pass from token 0: same logits within 1e-4, same picks, flags, answers and
/// scores, single requests and a batch, on both text models, a sliding-window copy (window
/// shorter than the prompt, so the prefix leaves the window of later rows) and the arranged model
/// (valid answers).
#[test]
fn shared_instruction_prefix_gives_the_same_answers_as_the_full_pass() {
    let tmp = tempfile::tempdir().unwrap();
    // tiny-mistral with a 64-token sliding window (weights linked, config edited).
    let windowed = tmp.path().join("windowed");
    std::fs::create_dir(&windowed).unwrap();
    for entry in std::fs::read_dir(fixtures().join("tiny-mistral")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_owned();
        if name == "config.json" {
            let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            cfg["text_config"]["sliding_window"] = 64.into();
            std::fs::write(windowed.join(name), cfg.to_string()).unwrap();
        } else {
            std::fs::copy(&p, windowed.join(name)).unwrap();
        }
    }
    let arranged_dir = tmp.path().join("arranged");
    let answer = "B7XKQ";
    lavic_model::testing::write_arranged_checkpoint(&fixtures().join("tiny-mistral"), &fixtures().join("tokenizer/tokenizer.json"), &arranged_dir, answer).unwrap();
    let mut windowed_opts = options("mistral");
    windowed_opts.model_dir = windowed;
    let mut arranged_opts = options("mistral");
    arranged_opts.model_dir = arranged_dir;
    arranged_opts.lm_adapter = None;

    let with_answer = ["B0012GVT7O", "B7XKQ", "B08LYS9WYD", "B7XKZ", "B0776Y43KM"];
    let cases: Vec<(&str, LoadOptions, Vec<&[&str]>)> = vec![
        ("mistral", options("mistral"), vec![&IDS[..10], &IDS[..20]]),
        ("llama", options("llama"), vec![&IDS[..10]]),
        ("mistral, window 64", windowed_opts, vec![&IDS[..10]]),
        ("arranged", arranged_opts, vec![&with_answer[..], &IDS[..10]]),
    ];
    let mut valid_seen = 0;
    for (name, opts, id_sets) in cases {
        let shared = LavicModel::load(&opts).unwrap();
        let mut full_opts = opts.clone();
        full_opts.share_prefix = false;
        let full = LavicModel::load(&full_opts).unwrap();
        assert!(shared.shared_prefix_tokens() > 100, "{name}: the instruction head is ~110 tokens");
        assert_eq!(full.shared_prefix_tokens(), 0);
        if name.contains("window") {
            assert_eq!(shared.decoder().sliding_window(), Some(64));
        }
        for ids in id_sets {
            let inputs: Vec<RecommendInput> = contexts().iter().map(|c| input(&shared, c, ids, Mode::Default)).collect();
            for inp in &inputs {
                for (a, b) in shared.candidate_logits(inp).unwrap().iter().zip(full.candidate_logits(inp).unwrap()) {
                    let e = max_abs(a, &b);
                    assert!(e < 1e-4, "{name}, {} candidates: logits differ by {e}", ids.len());
                }
                let before = shared.forward_passes();
                let a = shared.recommend(inp).unwrap();
                assert_eq!(shared.forward_passes() - before, 1, "{name}: still one pass per request");
                let b = full.recommend(inp).unwrap();
                assert_same(name, &a, &b);
                valid_seen += a.valid as usize;
            }
            let batched = shared.recommend_batch(&inputs);
            for (a, inp) in batched.results.into_iter().zip(&inputs) {
                assert_same(name, &a.unwrap(), &full.recommend(inp).unwrap());
            }
        }
    }
    assert_eq!(valid_seen, 3, "the arranged model answers a listed candidate");
}

fn assert_same(name: &str, a: &lavic_model::Recommendation, b: &lavic_model::Recommendation) {
    assert_eq!((&a.pick, a.valid, &a.raw_answer, a.prompt_tokens), (&b.pick, b.valid, &b.raw_answer, b.prompt_tokens), "{name}");
    assert_eq!(a.scores.len(), b.scores.len(), "{name}");
    for (x, y) in a.scores.iter().zip(&b.scores) {
        assert_eq!(x.id, y.id, "{name}: ranking");
        assert!((x.logprob - y.logprob).abs() < 1e-4, "{name}: {} vs {}", x.logprob, y.logprob);
    }
}

//! The training forward computes what the inference path computes: with non-zero LoRA B (the
//! committed fixture adapters, both stages, both key layouts, rsLoRA, rank/alpha patterns,
//! modules_to_save and a saved lm_head base layer), the training model's logits (adapters
//! unmerged, trainable) equal lavic-model's logits (adapters merged at load) within 1e-5.
//! Tolerance: both sides are f32 on the same inputs; merging W + sBA first versus adding
//! s(xA^T)B^T later changes summation order only (observed differences are ~1e-6).

use crate::common::*;
use lavic_model::prompt::{recommendation_prompt, distillation_prompt};
use lavic_model::{LavicModel, LoadOptions, PromptCandidate, Tensor};
use lavic_train::linear::Ctx;
use lavic_train::model::{Example, TrainModel};

fn inference(model: &str) -> LavicModel {
    let f = fixtures();
    let mut o = LoadOptions::new(f.join(format!("tiny-{model}")));
    o.tokenizer = Some(tokenizer());
    o.vision_adapter = Some(f.join(format!("adapters/{model}-vision")));
    o.lm_adapter = Some(f.join(format!("adapters/{model}-lm")));
    o.dtype = Some(candle_core::DType::F32);
    o.share_prefix = false;
    LavicModel::load(&o).unwrap()
}

fn check(model: &str, prompt: &str, target: &str, images: &[&str]) {
    let inf = inference(model);
    let train = TrainModel::load(&options_from_adapters(model)).unwrap();
    assert!(train.params().numel() > 0);
    let views: Vec<Tensor> = images.iter().map(|n| pixels(model, n)).collect();
    let enc = train.encode(&Example { prompt: prompt.into(), target: target.into(), images: views.clone() }).unwrap();
    let tp = inf.tokenizer.tokenize_prompt(&format!("{prompt}{target}")).unwrap();
    assert_eq!(tp.ids, enc.ids);
    let toks: Vec<Tensor> = views
        .iter()
        .map(|v| inf.encoder.project(&inf.encoder.cls_from_pixels(v).unwrap()).unwrap().squeeze(0).unwrap())
        .collect();
    let embeds = inf.prompt_embeds(&tp, &toks).unwrap();
    let positions: Vec<usize> = (0..tp.ids.len()).collect();
    let want = inf.prompt_logits(&embeds, &positions).unwrap();
    let got = train.logits(&enc, &mut Ctx::eval()).unwrap();
    let e = max_abs(&got, &want);
    eprintln!("{model}: max abs(training - inference logits) = {e:e}");
    assert!(e <= 1e-5, "{model}: training logits differ from inference by {e}");
    // and the LoRA changes the logits at all (the comparison would be vacuous otherwise)
    let plain = TrainModel::load(&options(model)).unwrap();
    let base = plain.logits(&enc, &mut Ctx::eval()).unwrap();
    assert!(max_abs(&base, &want) > 1e-2, "{model}: adapters do not change the logits");
}

fn rec_prompt() -> String {
    let cands = [
        PromptCandidate { id: "B0012GVT7O", title: "Soft cotton throw blanket" },
        PromptCandidate { id: "B07XJ8C8F5", title: "" },
        PromptCandidate { id: "B08N5WRWNW", title: "Ceramic table lamp" },
    ];
    recommendation_prompt("<submission>Looking for something cozy for my living room.</submission>\n", &cands)
}

#[test]
fn mistral_stage2_prompt_logits_equal_inference() {
    check("mistral", &rec_prompt(), "B07XJ8C8F5", &["square", "wide2", "white"]);
}

#[test]
fn llama_stage2_prompt_logits_equal_inference() {
    check("llama", &rec_prompt(), "B08N5WRWNW", &["tall", "small", "wide3"]);
}

#[test]
fn mistral_stage1_prompt_logits_equal_inference() {
    check("mistral", &distillation_prompt("Soft cotton throw blanket"), "A soft grey blanket with tassels.", &["wide3"]);
}

#[test]
fn llama_stage1_prompt_logits_equal_inference() {
    check("llama", &distillation_prompt("Ceramic table lamp"), "A white ceramic lamp.", &["square"]);
}

/// Stage 2 on top of a trained stage-1 adapter: the vision adapter merged into the frozen
/// weights at load, the LM adapter trainable: still the inference logits.
#[test]
fn frozen_stage1_adapter_with_trainable_stage2_equals_inference() {
    for model in ["mistral", "llama"] {
        let inf = inference(model);
        let mut o = options_from_adapters(model);
        o.frozen_adapters = vec![o.vision_init.take().unwrap()];
        o.vision = None;
        let train = TrainModel::load(&o).unwrap();
        assert!(train.params().vars.keys().all(|k| k.starts_with("language_model.")));
        let views: Vec<Tensor> = ["square", "tall", "white"].iter().map(|n| pixels(model, n)).collect();
        let prompt = rec_prompt();
        let enc = train.encode(&Example { prompt: prompt.clone(), target: "B0012GVT7O".into(), images: views.clone() }).unwrap();
        let tp = inf.tokenizer.tokenize_prompt(&format!("{prompt}B0012GVT7O")).unwrap();
        let toks: Vec<Tensor> = views
            .iter()
            .map(|v| inf.encoder.project(&inf.encoder.cls_from_pixels(v).unwrap()).unwrap().squeeze(0).unwrap())
            .collect();
        let want = inf.prompt_logits(&inf.prompt_embeds(&tp, &toks).unwrap(), &(0..tp.ids.len()).collect::<Vec<_>>()).unwrap();
        let e = max_abs(&train.logits(&enc, &mut Ctx::eval()).unwrap(), &want);
        assert!(e <= 1e-5, "{model}: {e}");
        // a frozen adapter that does not fit is refused, naming it
        let mut bad = options(model);
        let other = if model == "mistral" { "llama" } else { "mistral" };
        bad.frozen_adapters = vec![fixtures().join(format!("adapters/{other}-lm"))];
        assert!(TrainModel::load(&bad).is_err());
    }
}

/// Stage 2 on precomputed image tokens (what `lavic train recommend` takes from a catalog) gives
/// the loss and the LM-side gradients of the same sample given as pixel views run through the
/// frozen vision side (stage-1 adapter merged), within 1e-6 (same f32 numbers, same order).
#[test]
fn precomputed_image_tokens_equal_pixel_views() {
    let f = fixtures();
    let mut o = options("mistral");
    o.frozen_adapters = vec![f.join("adapters/mistral-vision")];
    let lm = f.join("adapters/mistral-lm");
    o.lm = Some(lavic_train::spec::LoraSpec::from_adapter_config(&lm.join("adapter_config.json")).unwrap());
    o.lm_init = Some(lm);
    let train = TrainModel::load(&o).unwrap();
    let inf = inference("mistral");
    let views: Vec<Tensor> = ["wide2", "square", "white"].iter().map(|n| pixels("mistral", n)).collect();
    let tokens: Vec<Tensor> = views
        .iter()
        .map(|v| inf.encoder.project(&inf.encoder.cls_from_pixels(v).unwrap()).unwrap().squeeze(0).unwrap())
        .collect();
    let ex = |images: Vec<Tensor>| train.encode(&Example { prompt: rec_prompt(), target: "B08N5WRWNW".into(), images }).unwrap();
    let (a, b) = (ex(views), ex(tokens.clone()));
    let (la, ga) = lavic_train::trainer::gradients(&train, &[a], &mut Ctx::eval()).unwrap();
    let (lb, gb) = lavic_train::trainer::gradients(&train, &[b], &mut Ctx::eval()).unwrap();
    assert!((la - lb).abs() <= 1e-6, "loss {la} vs {lb}");
    assert!(!ga.is_empty());
    for (name, g) in &ga {
        let e = max_abs(g, &gb[name]);
        assert!(e <= 1e-6, "{name}: gradient differs by {e}");
    }
    // A mixed list (views and tokens) is accepted too; a token tensor of the wrong width is not.
    let bad = Tensor::zeros((5, 7), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let e = train.encode(&Example { prompt: rec_prompt(), target: "B0".into(), images: vec![tokens[0].clone(), bad, tokens[2].clone()] });
    assert!(e.unwrap_err().to_string().contains("projected tokens [5, 32]"));
}

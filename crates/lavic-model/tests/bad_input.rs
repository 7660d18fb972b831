//! Bad input gives an error naming what was wrong, never a panic.

mod common;

use std::path::Path;

use common::*;
use lavic_model::{DecodeLimits, Error, ImageEncoder, LavicModel, Tensor};

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

fn tiny_copy() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    copy_dir(&fixtures().join("tiny-mistral"), &dir);
    (tmp, dir)
}

fn load_err(dir: &Path) -> String {
    let mut o = options("mistral");
    o.model_dir = dir.to_path_buf();
    match LavicModel::load(&o) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_shard_is_named() {
    let (_t, dir) = tiny_copy();
    std::fs::remove_file(dir.join("model-00002-of-00003.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model-00002-of-00003.safetensors") && e.contains("missing"), "{e}");
}

#[test]
fn truncated_safetensors_is_an_error() {
    let (_t, dir) = tiny_copy();
    let f = dir.join("model-00001-of-00003.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model-00001-of-00003.safetensors"), "{e}");
}

#[test]
fn unknown_model_types_are_refused() {
    let (_t, dir) = tiny_copy();
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), cfg.replace("\"llava_next\"", "\"qwen2_vl\"")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("qwen2_vl"), "{e}");
    std::fs::write(dir.join("config.json"), cfg.replace("\"mistral\"", "\"gpt2\"")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("gpt2"), "{e}");
    std::fs::write(dir.join("config.json"), "{not json").unwrap();
    let e = load_err(&dir);
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn adapter_for_another_model_is_refused() {
    let mut o = options("mistral");
    o.lm_adapter = Some(fixtures().join("adapters/llama-lm"));
    let e = LavicModel::load(&o).err().expect("llama adapter on mistral").to_string();
    assert!(e.contains("llama-lm"), "{e}");
    // A stage-2 adapter passed as the stage-1 adapter touches no vision module.
    let mut o = options("mistral");
    o.vision_adapter = Some(fixtures().join("adapters/mistral-lm"));
    let e = ImageEncoder::load(&o).err().expect("LM adapter as vision adapter").to_string();
    assert!(e.contains("mistral-lm") && e.contains(".lora_") && e.contains("not a Linear"), "{e}");
}

fn adapter_copy(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    copy_dir(&fixtures().join("adapters").join(name), &dir);
    (tmp, dir)
}

#[test]
fn dora_unknown_fields_and_unused_tensors_are_refused() {
    let (_t, dir) = adapter_copy("mistral-vision");
    let cfg_path = dir.join("adapter_config.json");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let with = |k: &str, v: serde_json::Value| {
        let mut c = cfg.clone();
        c[k] = v;
        std::fs::write(&cfg_path, c.to_string()).unwrap();
        let mut o = options("mistral");
        o.vision_adapter = Some(dir.clone());
        ImageEncoder::load(&o).err().map(|e| e.to_string())
    };
    let e = with("use_dora", true.into()).expect("DoRA refused");
    assert!(e.contains("DoRA"), "{e}");
    let e = with("shiny_new_option", 3.into()).expect("unknown field refused");
    assert!(e.contains("shiny_new_option"), "{e}");
    assert!(with("use_dora", false.into()).is_none(), "the adapter itself loads");

    // An extra tensor for a module that is not a Linear layer (the patch convolution).
    let file = dir.join("adapter_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &lavic_model::Device::Cpu).unwrap();
    let key = "base_model.model.vision_tower.vision_model.embeddings.patch_embedding.lora_A.weight";
    tensors.insert(key.into(), Tensor::zeros((4, 192), lavic_model::DType::F32, &lavic_model::Device::Cpu).unwrap());
    tensors.insert(key.replace("lora_A", "lora_B"), Tensor::zeros((32, 4), lavic_model::DType::F32, &lavic_model::Device::Cpu).unwrap());
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let mut o = options("mistral");
    o.vision_adapter = Some(dir.clone());
    let e = ImageEncoder::load(&o).err().expect("unused tensor refused").to_string();
    assert!(e.contains("patch_embedding"), "{e}");
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG whose header claims `w x h` pixels (no real pixel data).
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&w.to_be_bytes());
    chunk.extend_from_slice(&h.to_be_bytes());
    chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&crc32(&chunk).to_be_bytes());
    // One IDAT with an empty zlib stream: decoders read the header up to the first IDAT.
    let idat = b"IDAT\x78\x9c\x03\x00\x00\x00\x00\x01";
    out.extend_from_slice(&8u32.to_be_bytes());
    out.extend_from_slice(idat);
    out.extend_from_slice(&crc32(idat).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(b"IEND");
    out.extend_from_slice(&crc32(b"IEND").to_be_bytes());
    out
}

#[test]
fn bad_images_are_errors() {
    let limits = DecodeLimits::default();
    let decode = |b: &[u8]| lavic_model::anyres::decode_rgb(b, &limits);
    let e = decode(&png_header(30_000, 30_000)).unwrap_err().to_string();
    assert!(e.contains("30000x30000") && e.contains("limit"), "{e}");
    assert!(matches!(decode(b"GIF89a garbage"), Err(Error::Image(_))));
    let jpeg = std::fs::read(fixtures().join("images/square.jpg")).unwrap();
    assert!(decode(&jpeg[..jpeg.len() / 3]).is_err(), "truncated JPEG");
    assert!(decode(&png_header(40, 30)).is_err(), "PNG without pixel data");
    assert!(decode(&jpeg).is_ok());
}

#[test]
fn requests_the_model_cannot_answer_are_typed_refusals() {
    use lavic_model::{Candidate, DType, Device, Mode, Overlong, RecommendInput, RecommendOptions, RequestError};
    let model = LavicModel::load(&options("mistral")).unwrap();
    let tokens = Tensor::zeros((5, model.decoder().hidden_size()), DType::F32, &Device::Cpu).unwrap();
    let cand = |id: &str, title: &str| Candidate { id: id.into(), title: title.into(), tokens: tokens.clone() };
    let refusal = |context: &str, candidates: Vec<Candidate>, options: RecommendOptions| {
        match model.recommend(&RecommendInput { context: context.into(), candidates, options }) {
            Err(Error::Request(r)) => r,
            other => panic!("expected a typed refusal, got {other:?}"),
        }
    };
    let ctx = "<submission>A mug that keeps coffee warm?</submission>\n";
    let two = || vec![cand("B000000001", "Mug"), cand("B000000002", "Lamp")];

    assert_eq!(refusal(ctx, vec![], RecommendOptions::default()), RequestError::NoCandidates);
    let r = refusal(ctx, vec![cand("B000000001", "Mug"), cand("B000000002", "see <ItemImageEmb2>")], RecommendOptions::default());
    assert!(matches!(r, RequestError::ReservedToken { candidate: 1, part: "title", token: "<ItemImageEmb2>", .. }), "{r:?}");
    let r = refusal("<submission><ItemImageEmb5></submission>\n", two(), RecommendOptions::default());
    assert_eq!(r, RequestError::ReservedTokenInDialogue { token: "<ItemImageEmb5>" });

    // Over the budget: refused with `Reject`, shortened from the front with `Shorten`, in both modes.
    let long = format!("<submission>{}</submission>\n", "my old mug lost its handle and I need another one ".repeat(40));
    for mode in [Mode::Default, Mode::Free] {
        let reject = RecommendOptions { mode, max_prompt_tokens: Some(300), overlong: Overlong::Reject, ..Default::default() };
        match refusal(&long, two(), reject) {
            RequestError::DialogueOverBudget { budget: 300, excess } => assert!(excess > 0),
            other => panic!("{mode:?}: {other:?}"),
        }
        let shorten = RecommendOptions { overlong: Overlong::Shorten, ..reject };
        let r = model.recommend(&RecommendInput { context: long.clone(), candidates: two(), options: shorten }).unwrap();
        assert!(r.shortened_tokens > 0 && r.prompt_tokens <= 300, "{mode:?}: {r:?}");
        // The candidate block alone over the budget: refused whatever the policy.
        let title = "A very long product title with many words ".repeat(4);
        let many: Vec<Candidate> = (0..8).map(|i| cand(&format!("LONG{i}"), &title)).collect();
        match refusal(ctx, many, shorten) {
            RequestError::CandidatesOverBudget { tokens, budget: 300 } => assert!(tokens > 300),
            other => panic!("{mode:?}: {other:?}"),
        }
    }
}

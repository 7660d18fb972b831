//! Shared helpers of the lavic-train integration tests: fixture paths, options, comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use lavic_train::model::TrainOptions;
use lavic_train::spec::LoraSpec;

/// `tests/fixtures` at the workspace root.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The tokenizer of the fixtures.
pub fn tokenizer() -> PathBuf {
    fixtures().join("tokenizer/tokenizer.json")
}

/// Pixel views `[5, 3, 32, 32]` of a fixture image as the reference preprocessed them.
pub fn pixels(model: &str, name: &str) -> Tensor {
    let t = candle_core::safetensors::load(fixtures().join(format!("reference/{model}.safetensors")), &Device::Cpu).unwrap();
    t.get(&format!("pixel.{name}")).unwrap_or_else(|| panic!("pixel.{name}")).clone()
}

/// Training options for a fixture model, f32 on CPU, nothing trained.
pub fn options(model: &str) -> TrainOptions {
    let mut o = TrainOptions::new(fixtures().join(format!("tiny-{model}")));
    o.tokenizer = Some(tokenizer());
    o
}

/// Options that train both stages starting from the committed inference adapters.
pub fn options_from_adapters(model: &str) -> TrainOptions {
    let mut o = options(model);
    let a = fixtures().join("adapters");
    let v = a.join(format!("{model}-vision"));
    let l = a.join(format!("{model}-lm"));
    o.vision = Some(LoraSpec::from_adapter_config(&v.join("adapter_config.json")).unwrap());
    o.lm = Some(LoraSpec::from_adapter_config(&l.join("adapter_config.json")).unwrap());
    o.vision_init = Some(v);
    o.lm_init = Some(l);
    o
}

/// Largest absolute difference.
pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Worst `|a - b| / (abs + rel * |b|)` over all elements (<= 1 means within tolerance).
pub fn tol_ratio(a: &Tensor, b: &Tensor, rel: f64, abs: f64) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    a.iter().zip(&b).map(|(x, y)| (x - y).abs() / (abs + rel * y.abs())).fold(0.0, f64::max)
}

/// Loads a safetensors file of the training fixtures.
pub fn train_tensors(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(format!("train/{name}")), &Device::Cpu)
        .unwrap_or_else(|e| panic!("tests/fixtures/train/{name} (run tests/fixtures/generate_train.py): {e}"))
}

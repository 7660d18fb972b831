//! Shared helpers of the golden tests: fixture paths and tensor comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use lavic_model::{DType, Device, LoadOptions, Tensor};

/// `tests/fixtures` at the workspace root.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The Reddit-Amazon validation data: `$LAVIC_SHARED_DATA` or `../shared/data` beside the repo.
pub fn shared_data() -> PathBuf {
    match std::env::var_os("LAVIC_SHARED_DATA") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
    }
}

/// Reference tensors and JSON recorded by `tests/fixtures/generate.py` for `model`.
pub struct Reference {
    pub tensors: HashMap<String, Tensor>,
    pub json: serde_json::Value,
}

impl Reference {
    pub fn load(model: &str) -> Self {
        let dir = fixtures().join("reference");
        let tensors = candle_core::safetensors::load(dir.join(format!("{model}.safetensors")), &Device::Cpu)
            .expect("reference tensors (run tests/fixtures/generate.py)");
        let json = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{model}.json"))).unwrap()).unwrap();
        Self { tensors, json }
    }
    pub fn t(&self, name: &str) -> &Tensor {
        self.tensors.get(name).unwrap_or_else(|| panic!("reference tensor {name} missing"))
    }
    pub fn ids(&self, name: &str) -> Vec<u32> {
        self.t(name).to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap().into_iter().map(|v| v as u32).collect()
    }
}

/// Load options for a fixture model with both of its adapters, in f32 on CPU.
pub fn options(model: &str) -> LoadOptions {
    let f = fixtures();
    let mut o = LoadOptions::new(f.join(format!("tiny-{model}")));
    o.tokenizer = Some(f.join("tokenizer/tokenizer.json"));
    o.vision_adapter = Some(f.join(format!("adapters/{model}-vision")));
    o.lm_adapter = Some(f.join(format!("adapters/{model}-lm")));
    o.dtype = Some(DType::F32);
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

/// Cosine similarity of each row of two `[N, D]` tensors; returns the smallest.
pub fn min_row_cosine(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let nx: f32 = x.iter().map(|p| p * p).sum::<f32>().sqrt();
            let ny: f32 = y.iter().map(|p| p * p).sum::<f32>().sqrt();
            dot / (nx * ny)
        })
        .fold(f32::INFINITY, f32::min)
}

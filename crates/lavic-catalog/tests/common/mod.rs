//! Shared helpers of the integration tests: the tiny fixture encoder, item folders, comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use lavic_catalog::{build, BuildOptions, BuildReport, Catalog, ProgressMode};
use lavic_model::{DType, ImageEncoder, LoadOptions, Tensor};

/// `tests/fixtures` at the workspace root.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The five fixture images.
pub const IMAGES: [&str; 5] = ["square.jpg", "wide2.png", "wide3.jpg", "tall.png", "small.png"];

/// Bytes of a fixture image.
pub fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(name)).unwrap()
}

/// Load options of the tiny Mistral model with a vision adapter (`None`: no adapter), f32 CPU.
pub fn options(adapter: Option<&str>) -> LoadOptions {
    let f = fixtures();
    let mut o = LoadOptions::new(f.join("tiny-mistral"));
    o.vision_adapter = adapter.map(|a| f.join("adapters").join(a));
    o.dtype = Some(DType::F32);
    o
}

/// The tiny encoder with the stage-1 adapter, f32 CPU.
pub fn encoder() -> ImageEncoder {
    ImageEncoder::load(&options(Some("mistral-vision"))).unwrap()
}

/// One item of a test input.
pub struct Item {
    pub id: String,
    pub title: String,
    /// Image file name in the images folder (written from `bytes` unless `None`).
    pub image: Option<String>,
    pub bytes: Option<Vec<u8>>,
    pub extra: serde_json::Value,
}

impl Item {
    /// Item `id` using fixture image `fixture`, made distinct by `salt` trailing bytes (0 = none).
    pub fn fixture(id: &str, fixture: &str, salt: usize) -> Self {
        let mut bytes = image_bytes(fixture);
        if salt > 0 {
            bytes.extend_from_slice(format!("salt{salt:08}").as_bytes());
        }
        Item { id: id.into(), title: format!("Title of {id}"), image: Some(format!("{id}-{fixture}")), bytes: Some(bytes), extra: serde_json::json!({"rank": id.len()}) }
    }
}

/// Writes `items.jsonl` and the images into `dir`; returns the items file.
pub fn write_input(dir: &Path, items: &[Item]) -> PathBuf {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let mut lines = String::new();
    for it in items {
        if let (Some(name), Some(bytes)) = (&it.image, &it.bytes) {
            std::fs::write(dir.join("images").join(name), bytes).unwrap();
        }
        let mut obj = serde_json::json!({"id": it.id, "title": it.title, "image": it.image});
        if let serde_json::Value::Object(extra) = &it.extra {
            obj.as_object_mut().unwrap().extend(extra.clone());
        }
        lines.push_str(&obj.to_string());
        lines.push('\n');
    }
    let p = dir.join("items.jsonl");
    std::fs::write(&p, lines).unwrap();
    p
}

/// Five items, one per fixture image.
pub fn five_items() -> Vec<Item> {
    IMAGES.iter().enumerate().map(|(i, name)| Item::fixture(&format!("B00000000{i}"), name, 0)).collect()
}

/// Build options for `input` (from [`write_input`]) into `out`, quiet.
pub fn opts(input: &Path, out: &Path) -> BuildOptions {
    let mut o = BuildOptions::new(input, input.parent().unwrap().join("images"), out);
    o.progress = ProgressMode::Off;
    o
}

/// Builds and returns the report.
pub fn build_quiet(input: &Path, out: &Path, enc: &ImageEncoder) -> BuildReport {
    build(&opts(input, out), enc).unwrap()
}

/// Largest absolute difference of two tensors (as f32).
pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Largest absolute value.
pub fn max_abs_value(a: &Tensor) -> f32 {
    a.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// One item as stored: id, title, image sha, missing, metadata, bits of the stored features.
pub type Stored = (String, String, String, bool, String, Vec<u16>);

/// Every live item of `ids` in a catalog.
pub fn snapshot(cat: &Catalog, ids: &[String]) -> Vec<Stored> {
    ids.iter()
        .filter_map(|id| {
            let info = cat.get(id).unwrap()?;
            let f = cat.stored_features(id).unwrap().unwrap();
            let bits = f.flatten_all().unwrap().to_vec1::<half::f16>().unwrap().iter().map(|v| v.to_bits()).collect();
            Some((info.id, info.title, info.image_sha256, info.image_missing, info.metadata, bits))
        })
        .collect()
}

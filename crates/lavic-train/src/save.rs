//! Saving a [`FullModel`] as a llava-hf checkpoint folder that lavic-model's loader (and so
//! `lavic serve`) reads unchanged: `model.safetensors` with every tensor of the source checkpoint
//! under its pre-4.52 name (trained values where trained, the loaded ones elsewhere), the
//! source's JSON files (config, preprocessor, tokenizer config) and the tokenizer copied.
//!
//! The embeddings and lm_head train `len(tokenizer)` rows; the checkpoint's extra rows (llava-hf
//! rounds the vocabulary up) are kept as loaded, so the saved shapes are the source's. The folder
//! is written to a temporary sibling and renamed into place; a non-empty output is refused.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::full::FullModel;

/// What [`save_full`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Tensors in `model.safetensors`.
    pub tensors: usize,
    /// Of those, how many hold trained values.
    pub trained: usize,
    /// Size of `model.safetensors` in bytes.
    pub bytes: u64,
}

/// The saved value of checkpoint tensor `name`: the trained rows over the stored tensor.
fn merged(model: &FullModel, name: &str) -> Result<(Tensor, bool)> {
    let stored = model.ckpt.load(name, &Device::Cpu)?.to_dtype(DType::F32)?;
    let Some(var) = model.params().vars.get(name) else { return Ok((stored, false)) };
    let v = var.as_tensor().to_device(&Device::Cpu)?;
    if v.dims() == stored.dims() {
        return Ok((v, true));
    }
    let (vd, sd) = (v.dims(), stored.dims());
    if vd.len() != sd.len() || vd[1..] != sd[1..] || vd[0] > sd[0] {
        return Err(Error::Spec(format!("trained {name} has shape {vd:?}, the checkpoint {sd:?}")));
    }
    let rest = stored.narrow(0, vd[0], sd[0] - vd[0])?;
    Ok((Tensor::cat(&[&v, &rest], 0)?, true))
}

/// Writes `model` as a llava-hf folder at `out` with tensors in `dtype` (F32, F16 or BF16).
pub fn save_full(model: &FullModel, out: &Path, dtype: DType) -> Result<Saved> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::Spec(format!("cannot save a checkpoint in {dtype:?} (f32, f16 or bf16)")));
    }
    if out.exists() && std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_some() {
        return Err(Error::Spec(format!("{}: exists and is not empty", out.display())));
    }
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "checkpoint".into());
    let tmp = out.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = write_into(model, &tmp, dtype);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        return result;
    }
    if out.exists() {
        std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    result
}

fn write_into(model: &FullModel, dir: &Path, dtype: DType) -> Result<Saved> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut trained = 0usize;
    for name in model.ckpt.names() {
        let (t, was_trained) = merged(model, &name)?;
        trained += was_trained as usize;
        tensors.insert(name, t.to_dtype(dtype)?);
    }
    if let Some(missing) = model.params().vars.keys().find(|k| !tensors.contains_key(*k)) {
        return Err(Error::Spec(format!("trained tensor {missing} has no place in the checkpoint")));
    }
    let file = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &file)?;
    let src = &model.model_dir;
    for entry in std::fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let entry = entry.map_err(|e| Error::io(src, e))?;
        let n = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map_err(|e| Error::io(entry.path(), e))?.is_file();
        if is_file && n.ends_with(".json") && n != "model.safetensors.index.json" {
            std::fs::copy(entry.path(), dir.join(&n)).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    let tok = dir.join("tokenizer.json");
    std::fs::copy(&model.tokenizer_path, &tok).map_err(|e| Error::io(&model.tokenizer_path, e))?;
    let bytes = std::fs::metadata(&file).map_err(|e| Error::io(&file, e))?.len();
    Ok(Saved { tensors: tensors.len(), trained, bytes })
}

//! Saving trained tensors as a PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`)
//! in either key layout: transformers < 4.52 (`base_model.model.language_model.model.layers...`)
//! or >= 4.52 (`base_model.model.model.language_model.layers...`). lavic-model's loader (and so
//! the server) and peft both read it.
//!
//! `target_modules` is written as the explicit list of adapted module names in the chosen
//! layout (peft matches a list entry by equality or `.`-suffix), and `rank_pattern` /
//! `alpha_pattern` name every module whose rank or alpha differs from the defaults, so the file
//! means the same thing whatever patterns the spec used.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::linear::Params;
use crate::spec::{modern_name, LoraSpec};

/// Key layout of a saved adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// transformers < 4.52 (what the reference's scripts saved with transformers 4.51).
    Legacy,
    /// transformers >= 4.52.
    Modern,
}

impl Layout {
    fn name(self, canonical: &str) -> String {
        match self {
            Layout::Legacy => canonical.to_string(),
            Layout::Modern => modern_name(canonical),
        }
    }
}

/// Writes the trainable tensors of `params` whose names start with one of `prefixes` (e.g.
/// `["language_model."]` for a stage-2 adapter) into `dir` as a PEFT adapter. Files are written
/// under temporary names and renamed into place.
pub fn save_adapter(
    dir: &Path,
    params: &Params,
    spec: &LoraSpec,
    prefixes: &[&str],
    layout: Layout,
    base_model: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut modules: Vec<String> = Vec::new();
    let mut saved_modules: Vec<String> = Vec::new();
    let mut rank_pattern = serde_json::Map::new();
    let mut alpha_pattern = serde_json::Map::new();
    for (name, var) in &params.vars {
        if !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let t = var.as_tensor().to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let lora = [".lora_A.weight", ".lora_B.weight"].iter().find_map(|k| name.strip_suffix(k).map(|m| (m, *k)));
        match lora {
            Some((module, kind)) => {
                if kind == ".lora_A.weight" {
                    let (r, scale) = spec.rank_and_scale(module)?;
                    let alpha = if spec.use_rslora { scale * (r as f64).sqrt() } else { scale * r as f64 };
                    let m = layout.name(module);
                    if r != spec.r {
                        rank_pattern.insert(m.clone(), r.into());
                    }
                    if (alpha - spec.alpha).abs() > 1e-12 {
                        alpha_pattern.insert(m.clone(), alpha.into());
                    }
                    modules.push(m);
                }
                tensors.insert(format!("base_model.model.{}{kind}", layout.name(module)), t);
            }
            None => {
                let module = name.rsplit_once('.').map(|(m, _)| m).unwrap_or(name);
                let m = layout.name(module);
                if !saved_modules.contains(&m) {
                    saved_modules.push(m);
                }
                tensors.insert(format!("base_model.model.{}", layout.name(name)), t);
            }
        }
    }
    if tensors.is_empty() {
        return Err(Error::Spec(format!("no trainable tensor starts with {prefixes:?}")));
    }
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": null,
        "base_model_name_or_path": base_model,
        "r": spec.r,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "use_rslora": spec.use_rslora,
        "target_modules": modules,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "modules_to_save": if saved_modules.is_empty() { serde_json::Value::Null } else { saved_modules.into() },
        "bias": "none",
        "fan_in_fan_out": false,
        "use_dora": false,
        "lora_bias": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "layers_to_transform": null,
        "layers_pattern": null,
    });
    let st = dir.join("adapter_model.safetensors");
    let tmp = dir.join("adapter_model.safetensors.tmp");
    let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, &tmp)?;
    std::fs::rename(&tmp, &st).map_err(|e| Error::io(&st, e))?;
    let cfg = dir.join("adapter_config.json");
    let tmp = dir.join("adapter_config.json.tmp");
    let text = serde_json::to_string_pretty(&config).map_err(|e| Error::Spec(e.to_string()))?;
    std::fs::write(&tmp, text + "\n").map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &cfg).map_err(|e| Error::io(&cfg, e))?;
    Ok(())
}

//! PEFT LoRA adapters: `adapter_config.json` + `adapter_model.safetensors`, as written by
//! `peft` for LLaVA-NeXT, and the [`Linear`] layer they attach to.
//!
//! Matches PEFT's LoRA math: `W' = W + scale * B A` with `scale = alpha / r` (or
//! `alpha / sqrt(r)` with `use_rslora`), `r` and `alpha` taken per module from `rank_pattern` /
//! `alpha_pattern` (a pattern matches a module name as `^(.*\.)?(pattern)$`, like PEFT's
//! `get_pattern_key`). `modules_to_save` tensors replace the base tensors. Both key layouts are
//! accepted: transformers < 4.52 (`language_model.model.layers...`) and >= 4.52
//! (`model.language_model.layers...`); see [`canonical_name`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Module, Tensor};
use serde::Deserialize;

use crate::error::{read_json, Error, Result};

/// Maps a tensor or module name of either key layout to the canonical (transformers < 4.52)
/// layout used inside this crate.
pub fn canonical_name(name: &str) -> String {
    const MAP: [(&str, &str); 5] = [
        ("model.language_model.", "language_model.model."),
        ("model.vision_tower.", "vision_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.image_newline", "image_newline"),
        ("lm_head.", "language_model.lm_head."),
    ];
    for (modern, legacy) in MAP {
        if let Some(rest) = name.strip_prefix(modern) {
            return format!("{legacy}{rest}");
        }
    }
    if name == "lm_head" {
        return "language_model.lm_head".into();
    }
    name.to_string()
}

/// The fields of PEFT's `LoraConfig` that this crate reads.
///
/// Fields that would change the computation in ways we do not implement (DoRA, LoRA bias,
/// `fan_in_fan_out`, ...) are refused; fields we do not know at all are refused too, so a new
/// PEFT feature cannot silently change the answers.
#[derive(Debug, Clone, Deserialize)]
pub struct LoraConfig {
    /// Default rank.
    pub r: usize,
    /// Default alpha.
    #[serde(rename = "lora_alpha")]
    pub alpha: f64,
    /// Scale by `alpha / sqrt(r)` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Per-module rank overrides.
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Modules stored whole in the adapter.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Target modules as recorded (informational; the tensors decide what is adapted).
    #[serde(default)]
    pub target_modules: Option<serde_json::Value>,
    /// Must be `LORA`.
    #[serde(default)]
    pub peft_type: Option<String>,
}

/// Fields with no effect on inference.
const INERT_FIELDS: &[&str] = &[
    "base_model_name_or_path", "revision", "task_type", "inference_mode", "lora_dropout",
    "init_lora_weights", "auto_mapping", "target_modules", "exclude_modules",
    "layers_to_transform", "layers_pattern", "megatron_config", "megatron_core", "loftq_config",
    "eva_config", "corda_config", "runtime_config", "peft_version", "ensure_weight_tying",
    "r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "modules_to_save",
    "peft_type",
];

/// Fields we accept only at their neutral value (false / null / "none" / empty).
const NEUTRAL_FIELDS: &[&str] = &[
    "use_dora", "lora_bias", "fan_in_fan_out", "layer_replication", "trainable_token_indices",
    "use_qalora", "qalora_group_size", "alora_invocation_tokens", "target_parameters", "bias",
    "arrow_config",
];

fn is_neutral(key: &str, v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::Bool(b) => !b,
        serde_json::Value::String(s) => key == "bias" && s == "none",
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
        // qalora_group_size has a non-zero default but only matters with use_qalora.
        serde_json::Value::Number(_) => key == "qalora_group_size",
    }
}

impl LoraConfig {
    /// Reads and validates `adapter_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: serde_json::Map<String, serde_json::Value> = read_json(path)?;
        let bad = |reason: String| Error::Adapter { path: path.to_path_buf(), reason };
        for (key, value) in &raw {
            if NEUTRAL_FIELDS.contains(&key.as_str()) {
                if !is_neutral(key, value) {
                    let what = if key == "use_dora" { "DoRA adapters are not supported" } else { "not supported" };
                    return Err(bad(format!("{key} = {value}: {what}")));
                }
            } else if !INERT_FIELDS.contains(&key.as_str()) {
                return Err(bad(format!("unknown field {key:?} in adapter_config.json")));
            }
        }
        let cfg: LoraConfig = serde_json::from_value(serde_json::Value::Object(raw))
            .map_err(|e| bad(format!("adapter_config.json: {e}")))?;
        if let Some(t) = &cfg.peft_type {
            if t != "LORA" {
                return Err(bad(format!("peft_type {t:?} is not LORA")));
            }
        }
        if cfg.r == 0 {
            return Err(bad("r = 0".into()));
        }
        Ok(cfg)
    }

    fn pattern_value<T: Copy>(patterns: &BTreeMap<String, T>, module: &str) -> Result<Option<T>> {
        for (pattern, value) in patterns {
            let re = regex::Regex::new(&format!(r"^(.*\.)?({pattern})$"))
                .map_err(|e| Error::Unsupported(format!("pattern {pattern:?}: {e}")))?;
            if re.is_match(module) {
                return Ok(Some(*value));
            }
        }
        Ok(None)
    }

    /// Rank and scale of one module, named as in the adapter file (without `base_model.model.`).
    pub fn rank_and_scale(&self, module: &str) -> Result<(usize, f64)> {
        let r = Self::pattern_value(&self.rank_pattern, module)?.unwrap_or(self.r);
        let alpha = Self::pattern_value(&self.alpha_pattern, module)?.unwrap_or(self.alpha);
        let scale = if self.use_rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
        Ok((r, scale))
    }
}

/// One low-rank update `scale * B A` (A: r x in, B: out x r), kept in f32.
#[derive(Debug, Clone)]
pub struct LoraDelta {
    /// Down projection, r x in.
    pub a: Tensor,
    /// Up projection, out x r.
    pub b: Tensor,
    /// `alpha / r` (or rsLoRA's `alpha / sqrt(r)`).
    pub scale: f64,
}

impl LoraDelta {
    /// `scale * B A` in f32.
    pub fn delta_weight(&self) -> candle_core::Result<Tensor> {
        self.b.matmul(&self.a)? * self.scale
    }
}

/// A linear layer `x W^T + b` that can carry unmerged LoRA updates.
///
/// Inference merges adapters into `W` at load time ([`Linear::merge`]); a training feature can
/// keep them unmerged (and trainable) on the same module, where `forward` adds
/// `scale * (x A^T) B^T` for each.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
    adapters: Vec<LoraDelta>,
}

impl Linear {
    /// A plain linear layer.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { inner: candle_nn::Linear::new(weight, bias), adapters: Vec::new() }
    }

    /// Attaches an unmerged LoRA update.
    pub fn attach(&mut self, delta: LoraDelta) {
        self.adapters.push(delta);
    }

    /// Unmerged updates currently attached.
    pub fn adapters(&self) -> &[LoraDelta] {
        &self.adapters
    }

    /// The base weight (out x in).
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }

    /// Folds every attached update into the weight (computed in f32, stored in the weight's dtype).
    pub fn merge(&mut self) -> candle_core::Result<()> {
        if self.adapters.is_empty() {
            return Ok(());
        }
        let w = self.inner.weight();
        let dtype = w.dtype();
        let mut merged = w.to_dtype(DType::F32)?;
        for d in self.adapters.drain(..) {
            merged = (merged + d.delta_weight()?.to_device(w.device())?)?;
        }
        let bias = self.inner.bias().cloned();
        self.inner = candle_nn::Linear::new(merged.to_dtype(dtype)?, bias);
        Ok(())
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut out = self.inner.forward(xs)?;
        for d in &self.adapters {
            let dtype = xs.dtype();
            let x32 = xs.to_dtype(DType::F32)?;
            let low = candle_nn::Linear::new(d.a.clone(), None).forward(&x32)?;
            let up = candle_nn::Linear::new(d.b.clone(), None).forward(&low)?;
            out = (out + (up * d.scale)?.to_dtype(dtype)?)?;
        }
        Ok(out)
    }
}

/// A loaded PEFT adapter, keyed by canonical module / tensor names.
#[derive(Debug)]
pub struct Adapter {
    /// The adapter folder.
    pub path: PathBuf,
    /// Its configuration.
    pub config: LoraConfig,
    /// Low-rank updates by canonical module name (e.g. `language_model.model.layers.0.mlp.up_proj`).
    deltas: HashMap<String, LoraDelta>,
    /// Whole tensors (`modules_to_save`) by canonical tensor name.
    saved: HashMap<String, Tensor>,
    /// Canonical keys handed out so far; everything must be used exactly once.
    used: Mutex<HashSet<String>>,
    /// Original file key of every canonical key, for error messages.
    file_keys: HashMap<String, String>,
}

const PREFIX: &str = "base_model.model.";

impl Adapter {
    /// Loads an adapter folder onto `device`, checking ranks against the config.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = LoraConfig::from_file(&dir.join("adapter_config.json"))?;
        let bad = |reason: String| Error::Adapter { path: dir.to_path_buf(), reason };
        let file = dir.join("adapter_model.safetensors");
        if !file.exists() {
            let reason = if dir.join("adapter_model.bin").exists() {
                "adapter_model.bin (pickle) is not supported; save with safe_serialization".into()
            } else {
                "adapter_model.safetensors not found".into()
            };
            return Err(bad(reason));
        }
        let tensors = candle_core::safetensors::load(&file, device)
            .map_err(|e| bad(format!("adapter_model.safetensors: {e}")))?;
        let mut pairs: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        let mut saved = HashMap::new();
        let mut file_keys = HashMap::new();
        for (key, t) in tensors {
            let Some(name) = key.strip_prefix(PREFIX) else {
                return Err(bad(format!("tensor {key} does not start with {PREFIX}")));
            };
            let (module, which) = if let Some(m) = name.strip_suffix(".lora_A.weight") {
                (m, Some(true))
            } else if let Some(m) = name.strip_suffix(".lora_B.weight") {
                (m, Some(false))
            } else if let Some(m) = name.strip_suffix(".base_layer.weight") {
                // peft saves the whole (resized) base weight of a targeted lm_head / embedding
                // (`save_embedding_layers="auto"`); it replaces the checkpoint's tensor.
                let canon = format!("{}.weight", canonical_name(m));
                file_keys.insert(canon.clone(), key.clone());
                // Kept in its stored dtype (the model's, bf16 for a 7B: 262 MB for a resized
                // lm_head, not 524 MB in f32); `Weights` casts it to the compute dtype.
                saved.insert(canon, t);
                continue;
            } else if name.contains("lora_") {
                return Err(bad(format!(
                    "tensor {key}: unsupported LoRA tensor kind (only Linear lora_A/lora_B are supported)"
                )));
            } else {
                (name, None)
            };
            match which {
                Some(is_a) => {
                    let t = t.to_dtype(DType::F32)?;
                    let entry = pairs.entry(module.to_string()).or_default();
                    if is_a { entry.0 = Some(t) } else { entry.1 = Some(t) }
                    file_keys.insert(canonical_name(module), key.clone());
                }
                None => {
                    let canon = canonical_name(name);
                    file_keys.insert(canon.clone(), key.clone());
                    saved.insert(canon, t);
                }
            }
        }
        let mut deltas = HashMap::new();
        for (module, (a, b)) in pairs {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(bad(format!("module {module} has only one of lora_A / lora_B")));
            };
            let (r, scale) = config.rank_and_scale(&module)?;
            let (ar, _) = a.dims2().map_err(|_| bad(format!("{module}.lora_A.weight is not 2-D")))?;
            let (_, br) = b.dims2().map_err(|_| bad(format!("{module}.lora_B.weight is not 2-D")))?;
            if ar != r || br != r {
                return Err(bad(format!(
                    "{module}: lora_A has rank {ar}, lora_B rank {br}, config says r = {r}"
                )));
            }
            deltas.insert(canonical_name(&module), LoraDelta { a, b, scale });
        }
        Ok(Self { path: dir.to_path_buf(), config, deltas, saved, used: Mutex::default(), file_keys })
    }

    /// Takes the update for a canonical module name, if this adapter has one.
    pub(crate) fn take_delta(&self, module: &str) -> Option<LoraDelta> {
        let d = self.deltas.get(module)?;
        self.mark_used(module);
        Some(d.clone())
    }

    /// Takes a whole replacement tensor for a canonical tensor name, if saved.
    pub(crate) fn take_saved(&self, tensor: &str) -> Option<Tensor> {
        let t = self.saved.get(tensor)?;
        self.mark_used(tensor);
        Some(t.clone())
    }

    fn mark_used(&self, key: &str) {
        // The set only records which keys were consumed; poisoning cannot corrupt it.
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.insert(key.to_string());
    }

    /// Fails naming the first adapter tensor the model never asked for.
    pub(crate) fn check_all_used(&self) -> Result<()> {
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let mut unused: Vec<&String> = self
            .deltas
            .keys()
            .chain(self.saved.keys())
            .filter(|k| !used.contains(*k))
            .collect();
        unused.sort();
        if let Some(first) = unused.first() {
            let key = self.file_keys.get(*first).map(String::as_str).unwrap_or(first);
            return Err(Error::Adapter {
                path: self.path.clone(),
                reason: format!(
                    "tensor {key} targets {first}, which is not a Linear layer (or tensor) of this model \
                     ({} unused tensor(s) in all); is this adapter for another model?",
                    unused.len()
                ),
            });
        }
        Ok(())
    }

    /// Number of low-rank modules.
    pub fn num_modules(&self) -> usize {
        self.deltas.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names_of_both_layouts_agree() {
        assert_eq!(
            canonical_name("model.language_model.layers.3.self_attn.q_proj"),
            "language_model.model.layers.3.self_attn.q_proj"
        );
        assert_eq!(canonical_name("lm_head"), "language_model.lm_head");
        assert_eq!(canonical_name("lm_head.weight"), "language_model.lm_head.weight");
        assert_eq!(
            canonical_name("model.vision_tower.vision_model.encoder.layers.0.mlp.fc1"),
            "vision_tower.vision_model.encoder.layers.0.mlp.fc1"
        );
        assert_eq!(canonical_name("language_model.lm_head"), "language_model.lm_head");
    }

    #[test]
    fn patterns_match_like_peft() {
        let cfg: LoraConfig = serde_json::from_value(serde_json::json!({
            "r": 8, "lora_alpha": 32,
            "rank_pattern": {"layers.1.mlp.down_proj": 2},
            "alpha_pattern": {"lm_head": 8}
        }))
        .unwrap();
        assert_eq!(cfg.rank_and_scale("language_model.model.layers.1.mlp.down_proj").unwrap(), (2, 16.0));
        assert_eq!(cfg.rank_and_scale("language_model.model.layers.11.mlp.down_proj").unwrap(), (8, 4.0));
        assert_eq!(cfg.rank_and_scale("lm_head").unwrap(), (8, 1.0));
        let rs: LoraConfig =
            serde_json::from_value(serde_json::json!({"r": 4, "lora_alpha": 16, "use_rslora": true})).unwrap();
        assert_eq!(rs.rank_and_scale("x").unwrap(), (4, 8.0));
    }

    #[test]
    fn unmerged_equals_merged() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (6, 5), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 6, &dev)?;
        let a = Tensor::randn(0f32, 1.0, (2, 5), &dev)?;
        let bb = Tensor::randn(0f32, 1.0, (6, 2), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (3, 4, 5), &dev)?;
        let mut lin = Linear::new(w, Some(b));
        lin.attach(LoraDelta { a, b: bb, scale: 4.0 });
        let unmerged = lin.forward(&x)?;
        lin.merge()?;
        assert!(lin.adapters().is_empty());
        let merged = lin.forward(&x)?;
        let diff = (unmerged - merged)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "{diff}");
        Ok(())
    }
}

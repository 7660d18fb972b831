//! What a training stage adapts: PEFT's `LoraConfig` fields that change the computation (`r`,
//! `lora_alpha`, `use_rslora`, `lora_dropout`, `target_modules`, `rank_pattern`,
//! `alpha_pattern`, `modules_to_save`) with PEFT's matching rules, and LaViC's two presets.
//!
//! Module names are canonical (transformers < 4.52, e.g. `language_model.model.layers.0.mlp.up_proj`);
//! patterns written for the >= 4.52 layout (`model.language_model...`) match too, so an
//! `adapter_config.json` of either layout can be read back.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// PEFT's `target_modules`: a regex that must match the whole module name, or a list of names
/// that a module name must equal or end with (after a `.`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Targets {
    /// `re.fullmatch(pattern, name)`.
    Regex(String),
    /// `name == t or name.endswith("." + t)` for some `t`.
    Names(Vec<String>),
}

/// LoRA settings of one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    /// Default rank.
    pub r: usize,
    /// Default alpha.
    #[serde(rename = "lora_alpha")]
    pub alpha: f64,
    /// Scale by `alpha / sqrt(r)` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Dropout probability on the LoRA input (training mode only).
    #[serde(rename = "lora_dropout", default)]
    pub dropout: f64,
    /// Which Linear layers get LoRA.
    pub target_modules: Targets,
    /// Per-module rank overrides (PEFT pattern keys).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides (PEFT pattern keys).
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Modules trained whole (every tensor of the module), PEFT's `modules_to_save`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub modules_to_save: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// The vision tower's and projector's Linear layers (stage 1), canonical names.
pub const STAGE1_TARGETS: &str = r"vision_tower\.vision_model\.encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))|multi_modal_projector\.linear_[12]";
/// Every Linear layer of the language model's decoder layers (stage 2), canonical names.
pub const STAGE2_TARGETS: &str =
    r"language_model\.model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))";

/// The >= 4.52 name of a canonical module name (inverse of `lavic_model::lora::canonical_name`).
pub fn modern_name(canonical: &str) -> String {
    const MAP: [(&str, &str); 4] = [
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head", "lm_head"),
        ("vision_tower.", "model.vision_tower."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
    ];
    for (legacy, modern) in MAP {
        if let Some(rest) = canonical.strip_prefix(legacy) {
            return format!("{modern}{rest}");
        }
    }
    canonical.to_string()
}

/// A module name in both layouts: canonical first, then >= 4.52.
fn both_layouts(module: &str) -> [String; 2] {
    let c = lavic_model::lora::canonical_name(module);
    let m = modern_name(&c);
    [c, m]
}

fn full_match(pattern: &str, name: &str) -> Result<bool> {
    let re = regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| Error::Spec(format!("target_modules pattern {pattern:?}: {e}")))?;
    Ok(re.is_match(name))
}

impl LoraSpec {
    /// Stage 1 as the reference: r 8, alpha 32, dropout 0.1 on every vision-tower Linear
    /// (q/k/v/out_proj, fc1, fc2) and both projector Linears.
    pub fn stage1() -> Self {
        Self {
            r: 8,
            alpha: 32.0,
            use_rslora: false,
            dropout: 0.1,
            target_modules: Targets::Regex(STAGE1_TARGETS.into()),
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            modules_to_save: Vec::new(),
        }
    }

    /// Stage 2 as the reference: r 8, alpha 32, dropout 0.1 on every decoder-layer Linear, plus
    /// `lm_head` when asked (the reference adapts it under transformers < 4.52).
    pub fn stage2(lm_head: bool) -> Self {
        let mut pattern = STAGE2_TARGETS.to_string();
        if lm_head {
            pattern.push_str(r"|language_model\.lm_head");
        }
        Self { target_modules: Targets::Regex(pattern), ..Self::stage1() }
    }

    /// Reads the LoRA fields of a PEFT `adapter_config.json` (either key layout).
    pub fn from_adapter_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let spec: Self =
            serde_json::from_str(&text).map_err(|e| Error::Spec(format!("{}: {e}", path.display())))?;
        spec.validate().map_err(|e| Error::Spec(format!("{}: {e}", path.display())))?;
        Ok(spec)
    }

    /// Checks the numbers make sense.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::Spec("LoRA r must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Spec(format!("lora_dropout {} is outside [0, 1)", self.dropout)));
        }
        if let Some((k, _)) = self.rank_pattern.iter().find(|(_, r)| **r == 0) {
            return Err(Error::Spec(format!("rank_pattern {k:?} sets r = 0")));
        }
        if let Targets::Regex(p) = &self.target_modules {
            full_match(p, "")?;
        }
        Ok(())
    }

    /// Whether the Linear layer `module` (canonical name) gets LoRA.
    pub fn targets(&self, module: &str) -> Result<bool> {
        let names = both_layouts(module);
        match &self.target_modules {
            Targets::Regex(p) => {
                for n in &names {
                    if full_match(p, n)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Targets::Names(list) => Ok(names
                .iter()
                .any(|n| list.iter().any(|t| n == t || n.ends_with(&format!(".{t}"))))),
        }
    }

    /// Whether `module` (canonical name) is trained whole (`modules_to_save`).
    pub fn saves(&self, module: &str) -> bool {
        let names = both_layouts(module);
        names.iter().any(|n| self.modules_to_save.iter().any(|t| n == t || n.ends_with(&format!(".{t}"))))
    }

    fn pattern_value<T: Copy>(patterns: &BTreeMap<String, T>, module: &str) -> Result<Option<T>> {
        let names = both_layouts(module);
        for (pattern, value) in patterns {
            let re = regex::Regex::new(&format!(r"^(.*\.)?({pattern})$"))
                .map_err(|e| Error::Spec(format!("pattern {pattern:?}: {e}")))?;
            if names.iter().any(|n| re.is_match(n)) {
                return Ok(Some(*value));
            }
        }
        Ok(None)
    }

    /// Rank and scale of `module` (canonical name), as PEFT: patterns first, then the defaults.
    pub fn rank_and_scale(&self, module: &str) -> Result<(usize, f64)> {
        let r = Self::pattern_value(&self.rank_pattern, module)?.unwrap_or(self.r);
        let alpha = Self::pattern_value(&self.alpha_pattern, module)?.unwrap_or(self.alpha);
        let scale = if self.use_rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
        Ok((r, scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_target_what_the_reference_targets() {
        let s1 = LoraSpec::stage1();
        for m in [
            "vision_tower.vision_model.encoder.layers.23.self_attn.out_proj",
            "vision_tower.vision_model.encoder.layers.0.mlp.fc2",
            "multi_modal_projector.linear_1",
            "model.multi_modal_projector.linear_2",
        ] {
            assert!(s1.targets(m).unwrap(), "{m}");
        }
        for m in ["language_model.model.layers.0.self_attn.q_proj", "vision_tower.vision_model.post_layernorm"] {
            assert!(!s1.targets(m).unwrap(), "{m}");
        }
        let s2 = LoraSpec::stage2(false);
        assert!(s2.targets("language_model.model.layers.31.mlp.down_proj").unwrap());
        assert!(!s2.targets("language_model.lm_head").unwrap());
        assert!(!s2.targets("vision_tower.vision_model.encoder.layers.0.self_attn.q_proj").unwrap());
        assert!(LoraSpec::stage2(true).targets("language_model.lm_head").unwrap());
        assert_eq!(s2.rank_and_scale("language_model.model.layers.0.mlp.up_proj").unwrap(), (8, 4.0));
    }

    #[test]
    fn patterns_and_layouts_match_like_peft() {
        let mut s = LoraSpec::stage2(true);
        s.r = 4;
        s.alpha = 16.0;
        s.rank_pattern.insert("model.language_model.layers.1.mlp.down_proj".into(), 2);
        s.alpha_pattern.insert("lm_head".into(), 8.0);
        assert_eq!(s.rank_and_scale("language_model.model.layers.1.mlp.down_proj").unwrap(), (2, 8.0));
        assert_eq!(s.rank_and_scale("language_model.model.layers.11.mlp.down_proj").unwrap(), (4, 4.0));
        assert_eq!(s.rank_and_scale("language_model.lm_head").unwrap(), (4, 2.0));
        s.use_rslora = true;
        assert_eq!(s.rank_and_scale("language_model.model.layers.0.mlp.up_proj").unwrap(), (4, 8.0));
        s.target_modules = Targets::Names(vec!["q_proj".into(), "lm_head".into()]);
        assert!(s.targets("language_model.model.layers.0.self_attn.q_proj").unwrap());
        assert!(s.targets("language_model.lm_head").unwrap());
        assert!(!s.targets("language_model.model.layers.0.self_attn.k_proj").unwrap());
        s.modules_to_save = vec!["language_model.model.norm".into()];
        assert!(s.saves("language_model.model.norm"));
        assert!(!s.saves("language_model.model.layers.0.input_layernorm"));
    }

    #[test]
    fn reads_fixture_adapter_configs_and_rejects_bad_values() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/adapters");
        let s = LoraSpec::from_adapter_config(&dir.join("mistral-lm/adapter_config.json")).unwrap();
        assert_eq!((s.r, s.alpha, s.dropout), (4, 16.0, 0.1));
        assert!(s.targets("language_model.model.layers.0.self_attn.q_proj").unwrap());
        assert!(s.targets("language_model.lm_head").unwrap());
        assert_eq!(s.rank_and_scale("language_model.model.layers.1.mlp.down_proj").unwrap(), (2, 8.0));
        let s = LoraSpec::from_adapter_config(&dir.join("llama-lm/adapter_config.json")).unwrap();
        assert!(s.saves("language_model.model.norm"));
        let mut bad = LoraSpec::stage1();
        bad.dropout = 1.0;
        assert!(bad.validate().unwrap_err().to_string().contains("lora_dropout"));
        bad.dropout = 0.0;
        bad.r = 0;
        assert!(bad.validate().unwrap_err().to_string().contains("r must"));
    }
}

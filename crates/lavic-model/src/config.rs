//! Configuration of a llava-hf LLaVA-NeXT checkpoint (`config.json`, `preprocessor_config.json`).
//!
//! Mirrors the upstream transformers config classes: a field absent from the file takes the
//! default of the upstream class for that model type (`LlavaNextConfig`, `CLIPVisionConfig`,
//! `MistralConfig`, `LlamaConfig`), because the real llava-hf configs leave many sizes out.

use std::path::Path;

use serde::Deserialize;

use crate::error::{read_json, Error, Result};

/// Text model family of the language model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextModelType {
    /// Mistral (llava-v1.6-mistral-7b-hf).
    Mistral,
    /// Llama (llava-v1.6-vicuna-7b-hf).
    Llama,
}

/// Activation functions that appear in supported configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// `x * sigmoid(x)` (Mistral / Llama MLP).
    #[serde(rename = "silu")]
    Silu,
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact GELU, erf form (`nn.GELU()`, the LLaVA projector).
    #[serde(rename = "gelu")]
    Gelu,
    /// GELU, tanh approximation.
    #[serde(rename = "gelu_pytorch_tanh", alias = "gelu_new")]
    GeluTanh,
}

impl Activation {
    /// Applies the activation.
    pub fn apply(self, xs: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Activation::Silu => candle_nn::ops::silu(xs),
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
        }
    }
}

/// CLIP vision tower configuration (`vision_config`).
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    /// Width of the tower (1024 for ViT-L).
    #[serde(default = "d::vision_hidden")]
    pub hidden_size: usize,
    /// MLP width.
    #[serde(default = "d::vision_intermediate")]
    pub intermediate_size: usize,
    /// Number of encoder layers.
    #[serde(default = "d::vision_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "d::vision_heads")]
    pub num_attention_heads: usize,
    /// Side of a view in pixels (336 for the real model).
    #[serde(default = "d::vision_image")]
    pub image_size: usize,
    /// Side of a patch in pixels.
    #[serde(default = "d::vision_patch")]
    pub patch_size: usize,
    /// Input channels.
    #[serde(default = "d::three")]
    pub num_channels: usize,
    /// MLP activation.
    #[serde(default = "d::quick_gelu")]
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    #[serde(default = "d::eps5")]
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// Patches per side of a view.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// Raw `text_config`: every field optional, defaults depend on the model type.
#[derive(Debug, Clone, Deserialize)]
struct RawTextConfig {
    #[serde(default)]
    model_type: Option<TextModelType>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<Activation>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    /// Outer None: key absent; Some(None): explicit null.
    #[serde(default, deserialize_with = "d::present")]
    sliding_window: Option<Option<usize>>,
    rope_scaling: Option<serde_json::Value>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
}

/// Language model configuration with every default resolved.
#[derive(Debug, Clone)]
pub struct TextConfig {
    /// Mistral or Llama.
    pub model_type: TextModelType,
    /// Rows of the checkpoint's embedding matrix (32064 for llava-hf).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Longest position the rotary tables cover.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// Sliding attention window, if any.
    pub sliding_window: Option<usize>,
    /// Bias on q/k/v/o.
    pub attention_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
}

/// How the projector input is chosen (only `default`, CLS dropped for LLaVA's patch path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureSelectStrategy {
    /// Drop the CLS token (LLaVA's own patch features).
    Default,
    /// Keep every token.
    Full,
}

/// Top-level `config.json` of a llava-hf LLaVA-NeXT checkpoint.
#[derive(Debug, Clone)]
pub struct LlavaConfig {
    /// Vision tower.
    pub vision: VisionConfig,
    /// Language model.
    pub text: TextConfig,
    /// AnyRes grid pinpoints as (height, width).
    pub image_grid_pinpoints: Vec<(usize, usize)>,
    /// Id of `<image>` (unused by LaViC, kept for information).
    pub image_token_index: u32,
    /// Projector activation.
    pub projector_hidden_act: Activation,
    /// Bias on the projector linears.
    pub projector_bias: bool,
    /// Whether lm_head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// LLaVA's own feature layer (LaViC uses the final layer instead; kept for information).
    pub vision_feature_layer: i64,
    /// Checkpoint dtype as recorded by transformers, if any.
    pub torch_dtype: Option<String>,
}

#[derive(Deserialize)]
struct RawLlavaConfig {
    model_type: Option<String>,
    #[serde(default)]
    vision_config: Option<serde_json::Value>,
    #[serde(default)]
    text_config: Option<serde_json::Value>,
    #[serde(default = "d::pinpoints")]
    image_grid_pinpoints: Vec<[usize; 2]>,
    #[serde(default = "d::image_token")]
    image_token_index: u32,
    #[serde(default = "d::gelu")]
    projector_hidden_act: Activation,
    #[serde(default = "d::yes")]
    multimodal_projector_bias: bool,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "d::feature_layer")]
    vision_feature_layer: serde_json::Value,
    #[serde(default = "d::strategy")]
    vision_feature_select_strategy: FeatureSelectStrategy,
    torch_dtype: Option<String>,
}

impl LlavaConfig {
    /// Reads `config.json` from a checkpoint folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: RawLlavaConfig = read_json(path)?;
        let bad = |m: String| Error::Checkpoint(format!("{}: {m}", path.display()));
        match raw.model_type.as_deref() {
            Some("llava_next") => {}
            Some(other) => {
                return Err(bad(format!(
                    "model_type {other:?} is not supported (expected \"llava_next\")"
                )))
            }
            None => return Err(bad("config has no model_type".into())),
        }
        let vision: VisionConfig = serde_json::from_value(
            raw.vision_config.unwrap_or_else(|| serde_json::json!({})),
        )
        .map_err(|e| bad(format!("vision_config: {e}")))?;
        if !vision.image_size.is_multiple_of(vision.patch_size) {
            return Err(bad(format!(
                "vision_config: image_size {} is not a multiple of patch_size {}",
                vision.image_size, vision.patch_size
            )));
        }
        if !vision.hidden_size.is_multiple_of(vision.num_attention_heads) {
            return Err(bad("vision_config: hidden_size not divisible by heads".into()));
        }
        let text_value = raw.text_config.unwrap_or_else(|| serde_json::json!({"model_type": "llama"}));
        if let Some(t) = text_value.get("model_type").and_then(|v| v.as_str()) {
            if t != "mistral" && t != "llama" {
                return Err(bad(format!(
                    "text_config.model_type {t:?} is not supported (expected \"mistral\" or \"llama\")"
                )));
            }
        }
        let raw_text: RawTextConfig =
            serde_json::from_value(text_value).map_err(|e| bad(format!("text_config: {e}")))?;
        let text = TextConfig::resolve(raw_text).map_err(bad)?;
        let vision_feature_layer = match &raw.vision_feature_layer {
            serde_json::Value::Number(n) => n.as_i64().unwrap_or(-2),
            serde_json::Value::Array(a) => a.last().and_then(|v| v.as_i64()).unwrap_or(-2),
            _ => -2,
        };
        let _ = raw.vision_feature_select_strategy;
        Ok(LlavaConfig {
            vision,
            text,
            image_grid_pinpoints: raw.image_grid_pinpoints.iter().map(|p| (p[0], p[1])).collect(),
            image_token_index: raw.image_token_index,
            projector_hidden_act: raw.projector_hidden_act,
            projector_bias: raw.multimodal_projector_bias,
            tie_word_embeddings: raw.tie_word_embeddings,
            vision_feature_layer,
            torch_dtype: raw.torch_dtype,
        })
    }
}

impl TextConfig {
    fn resolve(r: RawTextConfig) -> std::result::Result<Self, String> {
        let ty = r.model_type.unwrap_or(TextModelType::Llama);
        let mistral = ty == TextModelType::Mistral;
        let hidden_size = r.hidden_size.unwrap_or(4096);
        let heads = r.num_attention_heads.unwrap_or(32);
        let kv = r.num_key_value_heads.unwrap_or(if mistral { 8 } else { heads });
        if heads == 0 || kv == 0 || !heads.is_multiple_of(kv) {
            return Err(format!(
                "text_config: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}"
            ));
        }
        let head_dim = r.head_dim.unwrap_or(hidden_size / heads);
        if !head_dim.is_multiple_of(2) {
            return Err(format!("text_config: head_dim {head_dim} must be even for rotary embeddings"));
        }
        if let Some(scaling) = &r.rope_scaling {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(|v| v.as_str());
            if !scaling.is_null() && kind != Some("default") {
                return Err(format!("text_config.rope_scaling {scaling} is not supported"));
            }
        }
        if r.tie_word_embeddings == Some(true) {
            return Err("text_config.tie_word_embeddings=true is not supported".into());
        }
        let hidden_act = r.hidden_act.unwrap_or(Activation::Silu);
        if hidden_act != Activation::Silu {
            return Err(format!("text_config.hidden_act {hidden_act:?} is not supported (silu only)"));
        }
        Ok(TextConfig {
            model_type: ty,
            vocab_size: r.vocab_size.unwrap_or(32000),
            hidden_size,
            intermediate_size: r.intermediate_size.unwrap_or(if mistral { 14336 } else { 11008 }),
            num_hidden_layers: r.num_hidden_layers.unwrap_or(32),
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            hidden_act,
            max_position_embeddings: r
                .max_position_embeddings
                .unwrap_or(if mistral { 4096 * 32 } else { 2048 }),
            rms_norm_eps: r.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: r.rope_theta.unwrap_or(10000.0),
            // MistralConfig defaults to a 4096 window when the key is absent; null means none.
            sliding_window: match r.sliding_window {
                None if mistral => Some(4096),
                None => None,
                Some(w) => w,
            },
            attention_bias: r.attention_bias.unwrap_or(false),
            mlp_bias: r.mlp_bias.unwrap_or(false),
        })
    }
}

/// `preprocessor_config.json` of a `LlavaNextImageProcessor`.
#[derive(Debug, Clone, Deserialize)]
pub struct PreprocessorConfig {
    /// Per-channel mean.
    #[serde(default = "d::clip_mean")]
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation.
    #[serde(default = "d::clip_std")]
    pub image_std: [f32; 3],
    /// Rescale factor applied before normalisation.
    #[serde(default = "d::rescale")]
    pub rescale_factor: f64,
    /// Grid pinpoints (height, width); falls back to the model config's.
    #[serde(default)]
    pub image_grid_pinpoints: Option<Vec<[usize; 2]>>,
    /// Crop (= tile) size.
    #[serde(default)]
    pub crop_size: Option<SizeSpec>,
    /// Resize target of each view.
    #[serde(default)]
    pub size: Option<SizeSpec>,
    /// PIL resampling filter (3 = bicubic, the only one supported).
    #[serde(default = "d::bicubic")]
    pub resample: u32,
}

/// A `size` / `crop_size` entry: either `{shortest_edge}` or `{height, width}`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct SizeSpec {
    /// Shortest-edge target.
    pub shortest_edge: Option<usize>,
    /// Height.
    pub height: Option<usize>,
    /// Width.
    pub width: Option<usize>,
}

impl PreprocessorConfig {
    /// Reads the file if present, otherwise the CLIP defaults.
    pub fn from_dir_or_default(dir: &Path) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        if path.exists() {
            let cfg: Self = read_json(&path)?;
            if cfg.resample != 3 {
                return Err(Error::Unsupported(format!(
                    "{}: resample {} (only 3 = bicubic is supported)",
                    path.display(),
                    cfg.resample
                )));
            }
            Ok(cfg)
        } else {
            Ok(serde_json::from_str("{}").map_err(|e| Error::json(&path, e))?)
        }
    }
}

/// serde defaults, named after the upstream class defaults they mirror.
mod d {
    use super::{Activation, FeatureSelectStrategy};
    pub fn vision_hidden() -> usize { 768 }
    pub fn vision_intermediate() -> usize { 3072 }
    pub fn vision_layers() -> usize { 12 }
    pub fn vision_heads() -> usize { 12 }
    pub fn vision_image() -> usize { 224 }
    pub fn vision_patch() -> usize { 32 }
    pub fn three() -> usize { 3 }
    pub fn quick_gelu() -> Activation { Activation::QuickGelu }
    pub fn gelu() -> Activation { Activation::Gelu }
    pub fn eps5() -> f64 { 1e-5 }
    pub fn yes() -> bool { true }
    pub fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<usize>>, D::Error> {
        use serde::Deserialize;
        Option::<usize>::deserialize(d).map(Some)
    }
    pub fn image_token() -> u32 { 32000 }
    pub fn feature_layer() -> serde_json::Value { serde_json::json!(-2) }
    pub fn strategy() -> FeatureSelectStrategy { FeatureSelectStrategy::Default }
    pub fn pinpoints() -> Vec<[usize; 2]> {
        vec![[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    }
    pub fn clip_mean() -> [f32; 3] { [0.481_454_66, 0.457_827_5, 0.408_210_73] }
    pub fn clip_std() -> [f32; 3] { [0.268_629_54, 0.261_302_6, 0.275_777_1] }
    pub fn rescale() -> f64 { 1.0 / 255.0 }
    pub fn bicubic() -> u32 { 3 }
}

//! Sizes of the checkpoints [`super`] writes: which published model ([`Variant`]) and at which
//! size ([`Size`]: the published one, or the mid-size benchmark model), resolved to [`Dims`].

use std::str::FromStr;

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// Which published checkpoint to mimic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `llava-hf/llava-v1.6-mistral-7b-hf` (Mistral-7B-Instruct-v0.2 text model).
    Mistral,
    /// `llava-hf/llava-v1.6-vicuna-7b-hf` (Vicuna-7B v1.5, a Llama text model).
    Vicuna,
}

impl FromStr for Variant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mistral" => Ok(Self::Mistral),
            "vicuna" => Ok(Self::Vicuna),
            other => Err(Error::Input(format!(
                "variant {other:?} (expected mistral or vicuna)"
            ))),
        }
    }
}

impl Variant {
    /// The Hugging Face repository this variant copies.
    pub fn repo(self) -> &'static str {
        match self {
            Self::Mistral => "llava-hf/llava-v1.6-mistral-7b-hf",
            Self::Vicuna => "llava-hf/llava-v1.6-vicuna-7b-hf",
        }
    }
}

/// How big a checkpoint to write: the published sizes, or a mid-size model of the same
/// architecture for side-by-side CPU benchmarks against transformers (`benches/compare-torch.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Size {
    /// The published sizes: CLIP ViT-L/14 at 336 px and a 7B decoder (7.57G parameters).
    #[default]
    Full,
    /// CLIP 6 layers x 384 (6 heads, MLP 1,536) at 224 px, decoder 12 layers x 768 (12 heads,
    /// MLP 2,048; Mistral: 4 KV heads, vicuna: 12), the same vocabulary: 136.6M parameters
    /// (Mistral).
    Mid,
}

impl FromStr for Size {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(Self::Full),
            "mid" => Ok(Self::Mid),
            other => Err(Error::Input(format!(
                "size {other:?} (expected full or mid)"
            ))),
        }
    }
}

/// Sizes of the vision tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisionDims {
    /// Width.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Side of a view in pixels.
    pub image: usize,
    /// Side of a patch in pixels.
    pub patch: usize,
}

/// Sizes of the language model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextDims {
    /// Width.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
}

/// Every size a checkpoint's tensors follow from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Vision tower.
    pub vision: VisionDims,
    /// Language model.
    pub text: TextDims,
}

impl Dims {
    /// The sizes of `variant` at `size`.
    pub fn of(variant: Variant, size: Size) -> Self {
        let vision = match size {
            // CLIP ViT-L/14-336 (both variants).
            Size::Full => VisionDims {
                hidden: 1024,
                intermediate: 4096,
                layers: 24,
                heads: 16,
                image: 336,
                patch: 14,
            },
            Size::Mid => VisionDims {
                hidden: 384,
                intermediate: 1536,
                layers: 6,
                heads: 6,
                image: 224,
                patch: 14,
            },
        };
        let text = match (variant, size) {
            (Variant::Mistral, Size::Full) => TextDims {
                hidden: 4096,
                intermediate: 14336,
                layers: 32,
                heads: 32,
                kv_heads: 8,
            },
            (Variant::Vicuna, Size::Full) => TextDims {
                hidden: 4096,
                intermediate: 11008,
                layers: 32,
                heads: 32,
                kv_heads: 32,
            },
            (Variant::Mistral, Size::Mid) => TextDims {
                hidden: 768,
                intermediate: 2048,
                layers: 12,
                heads: 12,
                kv_heads: 4,
            },
            (Variant::Vicuna, Size::Mid) => TextDims {
                hidden: 768,
                intermediate: 2048,
                layers: 12,
                heads: 12,
                kv_heads: 12,
            },
        };
        Self { vision, text }
    }

    /// The AnyRes grid pinpoints for this tower's view size (the published ones at 336 px).
    pub fn pinpoints(&self) -> Value {
        let t = self.vision.image;
        json!([
            [t, 2 * t],
            [2 * t, t],
            [2 * t, 2 * t],
            [3 * t, t],
            [t, 3 * t]
        ])
    }
}

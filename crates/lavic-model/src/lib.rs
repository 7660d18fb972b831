//! lavic-model: LLaVA-NeXT (CLIP ViT + projector + Mistral/Llama) with PEFT LoRA and LaViC's
//! 5-token image encoder, on candle. Numerically equal to the transformers + peft reference
//! (see `tests/fixtures/generate.py` and the golden tests).
//!
//! Read top-down: [`config`] -> [`weights`] / [`lora`] -> [`clip`], [`projector`], [`decoder`]
//! -> [`resample`] / [`anyres`] -> [`prompt`] -> [`model`] -> [`request_prompt`] / `tree` (default
//! mode's one-pass scoring) -> [`recommend`].

pub mod anyres;
pub mod clip;
pub mod config;
pub mod decoder;
mod error;
pub mod lora;
pub mod model;
pub mod projector;
pub mod prompt;
pub mod recommend;
pub mod request_prompt;
pub mod resample;
#[doc(hidden)]
pub mod testing;
mod tree;
pub mod weights;

pub use anyres::{AnyResConfig, DecodeLimits, NUM_VIEWS};
pub use candle_core::{DType, Device, Tensor};
pub use decoder::KvCache;
pub use error::{Error, RequestError, Result};
pub use model::{argmax, default_dtype, explain_fingerprint, parse_device, parse_dtype, ImageEncoder, LavicModel, LoadOptions};
pub use prompt::{LavicTokenizer, PromptCandidate, TokenizedPrompt};
pub use recommend::{BatchResults, Candidate, CandidateScore, Mode, Overlong, RecommendInput, RecommendOptions, Recommendation};
pub use request_prompt::BuiltPrompt;
pub use resample::Rgb8;

//! lavic-train: the training engine for LaViC's two LoRA stages, on top of lavic-model.
//!
//! A separate crate so the inference crate stays lean: inference merges adapters at load and
//! never pays for trainable state; everything that only training needs (differentiable ops,
//! unmerged trainable LoRA, loss, AdamW, schedules, PEFT saving, resumable state) lives here.
//!
//! Read top-down: [`ops`] (differentiable replacements of candle's fused ops) -> [`rng`] ->
//! [`spec`] (what is trained) -> [`linear`] (LoRA Linear) -> [`vision`] / [`decoder`] (training
//! forward) -> [`model`] (prompts, images, loss) -> [`checkpoint`] (gradient checkpointing) ->
//! [`optim`] -> [`trainer`] -> [`peft`]. Stage 0 (every parameter trained, images as full patch
//! features): [`full`] -> [`stage0`] (the demo world's data) -> [`save`] (llava-hf folder), and
//! [`generate`] (batched greedy answers with a KV cache, e.g. the stage-1 teacher texts).

mod error;
pub mod attributes;
pub mod checkpoint;
pub mod decoder;
pub mod full;
pub mod generate;
pub mod linear;
pub mod model;
pub mod ops;
pub mod optim;
pub mod peft;
pub mod rng;
pub mod save;
pub mod spec;
pub mod stage0;
pub mod trainer;
pub mod vision;

pub use error::{Error, Result};

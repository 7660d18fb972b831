//! The one error type of lavic-train. Every failure names what was wrong (file, tensor, field).

use std::path::PathBuf;

/// Errors raised while building, running or saving a training run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model side (checkpoint, config, tokenizer, images) failed.
    #[error(transparent)]
    Model(#[from] lavic_model::Error),
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A LoRA specification, adapter or training state does not fit the model.
    #[error("{0}")]
    Spec(String),
    /// Inputs that do not fit (empty batch, no target tokens, wrong image count, ...).
    #[error("invalid training input: {0}")]
    Input(String),
    /// A saved training state cannot be resumed.
    #[error("training state {path}: {reason}")]
    State {
        /// The state folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

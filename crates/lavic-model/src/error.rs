//! The one error type of lavic-model. Every failure names what was wrong (file, tensor, field).

use std::path::PathBuf;

/// Errors raised while loading or running the model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file (config, index, adapter config) is malformed.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// The checkpoint or its configuration is not something this crate can load.
    #[error("invalid checkpoint: {0}")]
    Checkpoint(String),
    /// A configuration field has a value we do not support.
    #[error("unsupported configuration: {0}")]
    Unsupported(String),
    /// A LoRA adapter does not fit the model.
    #[error("invalid LoRA adapter {path}: {reason}")]
    Adapter {
        /// The adapter folder.
        path: PathBuf,
        /// What is wrong, naming the tensor or field.
        reason: String,
    },
    /// An image could not be decoded or exceeds the decoding limits.
    #[error("invalid image: {0}")]
    Image(String),
    /// The tokenizer could not be loaded or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A caller passed inputs that do not fit (shapes, counts, ids).
    #[error("invalid input: {0}")]
    Input(String),
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub(crate) fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        Error::Json { path: path.into(), source }
    }
}

/// Reads and parses a JSON file, naming the file in any error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::json(path, e))
}

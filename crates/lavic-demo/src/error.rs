//! The one error type of lavic-demo: every failure names the file, the item or the setting.

use std::path::PathBuf;

/// Errors raised while generating or writing a demo world.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An item's image could not be encoded.
    #[error("cannot encode the image of item {id}: {source}")]
    Image {
        /// The item id.
        id: String,
        /// The encoder's error.
        source: image::ImageError,
    },
    /// A JSON line could not be serialised.
    #[error("cannot serialise {what}: {source}")]
    Json {
        /// What was being written.
        what: String,
        /// The serialiser's error.
        source: serde_json::Error,
    },
    /// The settings cannot give a valid world.
    #[error("invalid demo-world settings: {0}")]
    InvalidConfig(String),
    /// The output folder exists and holds files.
    #[error("{0} exists and is not empty; remove it or choose another output folder")]
    OutputExists(PathBuf),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// lavic-demo's result type.
pub type Result<T> = std::result::Result<T, Error>;

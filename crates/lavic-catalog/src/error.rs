//! The one error type of lavic-catalog. Every failure names what was wrong: the file, the input
//! line, the item id or both fingerprints.

use std::path::{Path, PathBuf};

/// Errors raised while building, opening, reading or updating a catalog.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An input file (items JSONL, reference metadata) is malformed.
    #[error("{path}{}: {reason}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Input {
        /// The input file.
        path: PathBuf,
        /// 1-based line number, when the problem is on one line.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// A folder is not a catalog (or not one this version can read).
    #[error("{path} is not a lavic catalog: {reason}")]
    NotACatalog {
        /// The folder.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A checksum or structural check failed: the bytes on disk are not what was written.
    /// Such data is never served.
    #[error("catalog {path} is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What failed, naming the item id when one entry is concerned.
        detail: String,
    },
    /// The catalog was computed by other numbers than the loaded model produces.
    #[error(
        "catalog fingerprint {catalog} does not match the loaded image encoder's fingerprint {encoder} \
         (vision weights, vision adapter, projector, preprocessing or dtype differ); refusing to use it: \
         rebuild the catalog with `lavic catalog build` against this model"
    )]
    FingerprintMismatch {
        /// The catalog's fingerprint.
        catalog: String,
        /// The encoder's fingerprint.
        encoder: String,
    },
    /// Catalogs that cannot be combined (merge of shards built differently).
    #[error("incompatible catalogs: {0}")]
    Incompatible(String),
    /// The same item id occurs twice where ids must be unique.
    #[error("duplicate item id {id:?} (in {first} and {second})")]
    DuplicateId {
        /// The id.
        id: String,
        /// Where it was seen first.
        first: String,
        /// Where it was seen again.
        second: String,
    },
    /// Another process is writing this catalog.
    #[error("catalog {0} is locked by another writer (a build, merge or server); try again when it is done")]
    Busy(PathBuf),
    /// The catalog changed on disk since this process opened it (another build or merge).
    #[error("catalog {0} was changed on disk by another process since it was opened; reopen it before writing")]
    Stale(PathBuf),
    /// A catalog file changed on disk under this process: a mapped file was cut short in place
    /// (reading it would crash the process), or `catalog.json` now names another generation (a
    /// build, merge or compaction by another process). Nothing more is read from what changed;
    /// reopen the catalog.
    #[error("catalog {path} changed on disk under this process: {detail}")]
    ChangedOnDisk {
        /// The file or folder.
        path: PathBuf,
        /// What changed.
        detail: String,
    },
    /// The catalog store (Redis) cannot serve now: unreachable, connection lost, timed out,
    /// loading, a read-only replica, out of memory, or fewer replicas acknowledged a write than
    /// `WAIT` asked for. Retrying later may work; nothing was served from unverified data.
    #[error("catalog store {store} is unavailable: {reason}")]
    StoreUnavailable {
        /// The store (URL without credentials).
        store: String,
        /// What failed.
        reason: String,
    },
    /// The catalog store refused the request for a reason retrying does not fix: credentials,
    /// permissions, an unsupported server, a namespace laid out for other features.
    #[error("catalog store {store} refused the request: {reason}")]
    StoreRejected {
        /// The store (URL without credentials).
        store: String,
        /// What it said.
        reason: String,
    },
    /// A value read from the catalog store failed its checks (checksum, layout, id or
    /// fingerprint): it is never served.
    #[error("catalog store {store}: key {key} is corrupt: {detail}")]
    StoreCorrupt {
        /// The store (URL without credentials).
        store: String,
        /// The key.
        key: String,
        /// What failed, naming the item id.
        detail: String,
    },
    /// A caller passed an argument that does not make sense.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The image encoder failed (loading, shapes, devices).
    #[error(transparent)]
    Model(#[from] lavic_model::Error),
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    pub(crate) fn corrupt(path: impl AsRef<Path>, detail: impl Into<String>) -> Self {
        Error::Corrupt { path: path.as_ref().to_path_buf(), detail: detail.into() }
    }
    pub(crate) fn input(path: impl AsRef<Path>, line: Option<usize>, reason: impl Into<String>) -> Self {
        Error::Input { path: path.as_ref().to_path_buf(), line, reason: reason.into() }
    }
    pub(crate) fn not_catalog(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Error::NotACatalog { path: path.as_ref().to_path_buf(), reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_is_wrong() {
        let e = Error::input("items.jsonl", Some(7), "expected an object");
        assert_eq!(e.to_string(), "items.jsonl line 7: expected an object");
        let e = Error::StoreUnavailable { store: "redis://10.0.0.5:6379/0".into(), reason: "connection refused".into() };
        assert_eq!(e.to_string(), "catalog store redis://10.0.0.5:6379/0 is unavailable: connection refused");
        let e = Error::FingerprintMismatch { catalog: "aaa".into(), encoder: "bbb".into() };
        let s = e.to_string();
        assert!(s.contains("aaa") && s.contains("bbb") && s.contains("rebuild"), "{s}");
    }
}

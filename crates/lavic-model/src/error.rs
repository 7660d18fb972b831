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
    /// A recommendation request the model cannot answer as given; the request's own fault
    /// (a caller's status, not ours), typed so that callers decide by variant, never by message.
    #[error("invalid request: {0}")]
    Request(#[from] RequestError),
    /// A caller passed inputs that do not fit (shapes, counts, ids): a programming error of the
    /// caller's code, not of its user's data.
    #[error("invalid input: {0}")]
    Input(String),
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Why one recommendation request cannot be answered as given (see [`Error::Request`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request has no candidates.
    #[error("no candidates")]
    NoCandidates,
    /// A candidate's id (or title) holds one of the reserved `<ItemImageEmb*>` tokens, which
    /// would break the prompt's image slots.
    #[error("candidate #{candidate} ({id}) holds the reserved token {token} in its {part}")]
    ReservedToken {
        /// Position of the candidate in prompt order.
        candidate: usize,
        /// Its id.
        id: String,
        /// `id` or `title`.
        part: &'static str,
        /// The token found.
        token: &'static str,
    },
    /// The dialogue holds a reserved `<ItemImageEmb*>` token.
    #[error("the dialogue holds the reserved token {token}")]
    ReservedTokenInDialogue {
        /// The token found.
        token: &'static str,
    },
    /// A candidate's id has no tokens of its own after the prompt.
    #[error("candidate #{candidate} has an empty id")]
    EmptyId {
        /// Position of the candidate in prompt order.
        candidate: usize,
    },
    /// Two candidates' ids tokenise to the same tokens, so no answer could tell them apart.
    #[error("candidates #{first} and #{second} have the same id tokens")]
    SameIdTokens {
        /// The earlier candidate.
        first: usize,
        /// The later one.
        second: usize,
    },
    /// The instruction, candidate block and answer cue alone exceed the prompt budget (no
    /// shortening of the dialogue can help).
    #[error("the instruction and candidate block alone take {tokens} tokens, over the budget of {budget}")]
    CandidatesOverBudget {
        /// Tokens of the prompt without any dialogue.
        tokens: usize,
        /// The budget.
        budget: usize,
    },
    /// The prompt exceeds the budget and the request's policy is [`crate::Overlong::Reject`].
    #[error(
        "the prompt is over the budget of {budget} tokens ({excess} dialogue tokens too many); \
         shorten the dialogue or send fewer candidates"
    )]
    DialogueOverBudget {
        /// The budget.
        budget: usize,
        /// Dialogue tokens that would have to go.
        excess: usize,
    },
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

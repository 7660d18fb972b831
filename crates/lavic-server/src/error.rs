//! The one error type of lavic-server and its single mapping to gRPC status codes. The same
//! [`Error::kind`] labels the `lavic_requests_total` metric.

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed (the field is named).
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field, e.g. `candidate_ids[3]` or `inline_items[0].image`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// Candidate or catalog ids that are not in the catalog.
    #[error("unknown {what}: {}", ids.join(", "))]
    NotFound {
        /// What kind of id (`candidate ids`, `item`).
        what: &'static str,
        /// The unknown ids.
        ids: Vec<String>,
    },
    /// The admission limit is reached (queue full).
    #[error("server overloaded: {0} requests already admitted; retry with backoff")]
    Overloaded(usize),
    /// The model and catalog are still loading (or warming up).
    #[error("the model is still loading")]
    NotReady,
    /// The server is shutting down and takes no new calls.
    #[error("the server is shutting down")]
    Draining,
    /// The call's deadline passed before it was answered.
    #[error("deadline exceeded after {0:?}")]
    DeadlineExceeded(std::time::Duration),
    /// A mutating Catalog call without (or with a wrong) bearer token.
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    /// Mutating Catalog calls are disabled (no token configured).
    #[error("{0}")]
    PermissionDenied(String),
    /// The model failed on a request (not the caller's fault).
    #[error("model: {0}")]
    Model(#[from] lavic_model::Error),
    /// The catalog failed.
    #[error("catalog: {0}")]
    Catalog(String),
    /// A configuration value is invalid (the setting is named).
    #[error("configuration: {0}")]
    Config(String),
    /// The server could not start (model, catalog, listener, TLS files).
    #[error("startup: {0}")]
    Startup(String),
    /// A model worker panicked or stopped; the request was not answered.
    #[error("internal: {0}")]
    Internal(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument { field: field.into(), message: message.into() }
    }

    /// Metric label of the outcome (`invalid_argument`, `not_found`...).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::NotFound { .. } => "not_found",
            Error::Overloaded(_) => "resource_exhausted",
            Error::NotReady | Error::Draining => "unavailable",
            Error::DeadlineExceeded(_) => "deadline_exceeded",
            Error::Unauthenticated => "unauthenticated",
            Error::PermissionDenied(_) => "permission_denied",
            Error::Model(_) | Error::Catalog(_) | Error::Config(_) | Error::Startup(_) | Error::Internal(_) => "internal",
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::InvalidArgument { .. } => tonic::Status::invalid_argument(msg),
            Error::NotFound { .. } => tonic::Status::not_found(msg),
            Error::Overloaded(_) => tonic::Status::resource_exhausted(msg),
            Error::NotReady | Error::Draining => tonic::Status::unavailable(msg),
            Error::DeadlineExceeded(_) => tonic::Status::deadline_exceeded(msg),
            Error::Unauthenticated => tonic::Status::unauthenticated(msg),
            Error::PermissionDenied(_) => tonic::Status::permission_denied(msg),
            // Never a client's doing (start-up only, or our failure).
            Error::Model(_) | Error::Catalog(_) | Error::Config(_) | Error::Startup(_) | Error::Internal(_) => {
                tonic::Status::internal(msg)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_labels_agree() {
        let cases = [
            (Error::invalid("context", "empty"), tonic::Code::InvalidArgument, "context: empty"),
            (Error::NotFound { what: "candidate ids", ids: vec!["A".into(), "B".into()] }, tonic::Code::NotFound, "unknown candidate ids: A, B"),
            (Error::Overloaded(4), tonic::Code::ResourceExhausted, "server overloaded"),
            (Error::Draining, tonic::Code::Unavailable, "shutting down"),
        ];
        for (e, code, text) in cases {
            let kind = e.kind();
            let s = tonic::Status::from(e);
            assert_eq!(s.code(), code);
            assert!(s.message().contains(text), "{}", s.message());
            assert!(!kind.is_empty());
        }
    }
}

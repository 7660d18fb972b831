//! The one error type of lavic-server and its single mapping to gRPC status codes:
//! [`Error::code`] is the one exhaustive match (no catch-all arm) that decides a client's status,
//! `From<Error> for tonic::Status` uses it, and [`Error::kind`], the label of
//! `lavic_requests_total`, is that code's name, so a status and its metric cannot disagree.
//! Errors from the model cross the crate boundary typed ([`lavic_model::RequestError`]), never
//! recognised by their wording.

use lavic_model::RequestError;

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
    /// A request that passed validation but that the model cannot answer as given (the prompt
    /// is over the token budget, two ids tokenise the same...): still the caller's request.
    #[error("{field}: {reason}")]
    Refused {
        /// The field the reason is about (see [`refused_field`]).
        field: &'static str,
        /// What the model found.
        reason: RequestError,
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
    /// The decoded-pixel budget of admitted requests (`max_inflight_pixels`) is taken.
    #[error("server overloaded: admitted requests hold {held} of the {budget} decoded image pixels allowed (max_inflight_pixels), this one needs {wanted}; retry with backoff")]
    OverPixelBudget {
        /// Pixels held by admitted requests when this one came.
        held: u64,
        /// Pixels this request needs.
        wanted: u64,
        /// The budget.
        budget: u64,
    },
    /// The model and catalog are still loading (or warming up).
    #[error("the model is still loading")]
    NotReady,
    /// The server is shutting down and takes no new calls.
    #[error("the server is shutting down")]
    Draining,
    /// The call's deadline passed before it was answered.
    #[error("deadline exceeded after {0:?}")]
    DeadlineExceeded(std::time::Duration),
    /// The caller went away before its work ran (it never reads this answer).
    #[error("cancelled by the caller")]
    Cancelled,
    /// A mutating Catalog call without (or with a wrong) bearer token.
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    /// Mutating Catalog calls are disabled (no token configured).
    #[error("{0}")]
    PermissionDenied(String),
    /// The model failed on a request (not the caller's fault), or while loading.
    #[error("model: {0}")]
    Model(#[from] lavic_model::Error),
    /// The catalog failed (a store that is unreachable is UNAVAILABLE, one that refuses us
    /// FAILED_PRECONDITION, a value that fails its checks DATA_LOSS; the rest is ours).
    #[error("catalog: {0}")]
    Catalog(lavic_catalog::Error),
    /// A Catalog write that could not be made durable (e.g. a read-only catalog folder) and that
    /// the server therefore refuses to acknowledge.
    #[error("catalog write refused: {0}")]
    NotDurable(String),
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

    /// A model error on one request whose dialogue came in `dialogue_field`: the request's own
    /// problem ([`Error::Refused`], naming the field) or ours ([`Error::Model`]).
    pub fn from_model(e: lavic_model::Error, dialogue_field: &'static str) -> Self {
        match e {
            lavic_model::Error::Request(reason) => Error::Refused { field: refused_field(&reason, dialogue_field), reason },
            other => Error::Model(other),
        }
    }

    /// The gRPC status code of this error: the one place that decides it.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::InvalidArgument { .. } | Error::Refused { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::Overloaded(_) | Error::OverPixelBudget { .. } => Code::ResourceExhausted,
            Error::NotReady | Error::Draining => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Cancelled => Code::Cancelled,
            Error::Unauthenticated => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Catalog(e) => catalog_code(e),
            Error::NotDurable(_) => Code::FailedPrecondition,
            // Never a client's doing (start-up only, or our failure).
            Error::Model(_) | Error::Config(_) | Error::Startup(_) | Error::Internal(_) => Code::Internal,
        }
    }

    /// Metric label of the outcome: the status code's name (`invalid_argument`, `not_found`...).
    pub fn kind(&self) -> &'static str {
        code_label(self.code())
    }
}

/// The status of a catalog failure, as gRPC's status guide reads: INTERNAL only for what is
/// our bug; a full disk is RESOURCE_EXHAUSTED, a catalog changed or locked by another process
/// FAILED_PRECONDITION / UNAVAILABLE, corrupt data DATA_LOSS.
fn catalog_code(e: &lavic_catalog::Error) -> tonic::Code {
    use lavic_catalog::Error as C;
    use tonic::Code;
    match e {
        C::Io { source, .. } => io_code(source),
        // Another process changed the catalog on disk: retrying the same call cannot help until
        // the server reopens it.
        C::Stale(_) | C::FingerprintMismatch { .. } | C::NotACatalog { .. } | C::Incompatible(_) | C::StoreRejected { .. } => {
            Code::FailedPrecondition
        }
        // A build or merge holds the writer lock; an unreachable store; a catalog file changed
        // under the server (it reopens the catalog, or is NOT_SERVING meanwhile): later, or
        // another replica, may work.
        C::Busy(_) | C::StoreUnavailable { .. } | C::ChangedOnDisk { .. } => Code::Unavailable,
        C::Corrupt { .. } | C::StoreCorrupt { .. } => Code::DataLoss,
        C::InvalidArgument(_) | C::Input { .. } | C::DuplicateId { .. } => Code::InvalidArgument,
        C::Model(_) | C::Candle(_) => Code::Internal,
    }
}

/// The status of an I/O failure: no space or quota left is RESOURCE_EXHAUSTED, a read-only or
/// forbidden file FAILED_PRECONDITION, the rest INTERNAL.
pub fn io_code(e: &std::io::Error) -> tonic::Code {
    use std::io::ErrorKind;
    use tonic::Code;
    // ENOSPC 28, EDQUOT 122 (Linux).
    match (e.kind(), e.raw_os_error()) {
        (ErrorKind::StorageFull | ErrorKind::QuotaExceeded, _) | (_, Some(28 | 122)) => Code::ResourceExhausted,
        (ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied, _) | (_, Some(30)) => Code::FailedPrecondition,
        _ => Code::Internal,
    }
}

/// The request field a model refusal is about; `dialogue_field` is `context` or `turns`.
pub fn refused_field(reason: &RequestError, dialogue_field: &'static str) -> &'static str {
    match reason {
        RequestError::ReservedTokenInDialogue { .. } | RequestError::DialogueOverBudget { .. } => dialogue_field,
        RequestError::NoCandidates
        | RequestError::ReservedToken { .. }
        | RequestError::EmptyId { .. }
        | RequestError::SameIdTokens { .. }
        | RequestError::CandidatesOverBudget { .. } => "candidate_ids",
    }
}

/// Snake-case name of a status code (the `status` label of the call metrics).
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    /// One of each variant, with the status code, label and message it must give.
    fn every_variant() -> Vec<(Error, Code, &'static str, &'static str)> {
        let over = RequestError::DialogueOverBudget { budget: 300, excess: 12 };
        vec![
            (Error::invalid("context", "empty"), Code::InvalidArgument, "invalid_argument", "context: empty"),
            (
                Error::Refused { field: "turns", reason: over },
                Code::InvalidArgument,
                "invalid_argument",
                "turns: the prompt is over the budget of 300 tokens (12 dialogue tokens too many)",
            ),
            (Error::NotFound { what: "candidate ids", ids: vec!["A".into(), "B".into()] }, Code::NotFound, "not_found", "unknown candidate ids: A, B"),
            (Error::Overloaded(4), Code::ResourceExhausted, "resource_exhausted", "server overloaded: 4 requests already admitted"),
            (
                Error::OverPixelBudget { held: 10, wanted: 5, budget: 12 },
                Code::ResourceExhausted,
                "resource_exhausted",
                "hold 10 of the 12 decoded image pixels allowed (max_inflight_pixels), this one needs 5",
            ),
            (Error::NotReady, Code::Unavailable, "unavailable", "still loading"),
            (Error::Draining, Code::Unavailable, "unavailable", "shutting down"),
            (Error::DeadlineExceeded(std::time::Duration::from_millis(5)), Code::DeadlineExceeded, "deadline_exceeded", "deadline exceeded after 5ms"),
            (Error::Cancelled, Code::Cancelled, "cancelled", "cancelled by the caller"),
            (Error::Unauthenticated, Code::Unauthenticated, "unauthenticated", "bearer token"),
            (Error::PermissionDenied("disabled".into()), Code::PermissionDenied, "permission_denied", "disabled"),
            (Error::Model(lavic_model::Error::Input("bad shape".into())), Code::Internal, "internal", "model: invalid input: bad shape"),
            (Error::Catalog(lavic_catalog::Error::Busy("/cat".into())), Code::Unavailable, "unavailable", "catalog: catalog /cat is locked"),
            (
                Error::NotDurable("the catalog folder /c is not writable".into()),
                Code::FailedPrecondition,
                "failed_precondition",
                "catalog write refused: the catalog folder /c is not writable",
            ),
            (Error::Config("max_batch".into()), Code::Internal, "internal", "configuration: max_batch"),
            (Error::Startup("no model".into()), Code::Internal, "internal", "startup: no model"),
            (Error::Internal("worker gone".into()), Code::Internal, "internal", "internal: worker gone"),
        ]
    }

    /// Fails to compile when a variant is added, until [`every_variant`] lists it too.
    fn listed(e: &Error) -> usize {
        match e {
            Error::InvalidArgument { .. } => 0,
            Error::Refused { .. } => 1,
            Error::NotFound { .. } => 2,
            Error::Overloaded(_) => 3,
            Error::OverPixelBudget { .. } => 4,
            Error::NotReady => 5,
            Error::Draining => 6,
            Error::DeadlineExceeded(_) => 7,
            Error::Cancelled => 8,
            Error::Unauthenticated => 9,
            Error::PermissionDenied(_) => 10,
            Error::Model(_) => 11,
            Error::Catalog(_) => 12,
            Error::NotDurable(_) => 13,
            Error::Config(_) => 14,
            Error::Startup(_) => 15,
            Error::Internal(_) => 16,
        }
    }

    #[test]
    fn every_variant_has_its_exact_status_and_label() {
        let cases = every_variant();
        let order: Vec<usize> = cases.iter().map(|(e, ..)| listed(e)).collect();
        assert_eq!(order, (0..cases.len()).collect::<Vec<_>>(), "every variant once, in order");
        for (e, code, label, text) in cases {
            assert_eq!(e.kind(), label, "{e:?}");
            let status = tonic::Status::from(e);
            assert_eq!(status.code(), code, "{}", status.message());
            assert_eq!(code_label(status.code()), label);
            assert!(status.message().starts_with(text) || status.message().contains(text), "{:?} lacks {text:?}", status.message());
        }
    }

    #[test]
    fn catalog_store_errors_say_whether_retrying_helps() {
        let store = "redis://10.0.0.5:6379/0".to_string();
        let cases = [
            (lavic_catalog::Error::StoreUnavailable { store: store.clone(), reason: "connection refused".into() }, Code::Unavailable, "unavailable"),
            (lavic_catalog::Error::StoreRejected { store: store.clone(), reason: "WRONGPASS".into() }, Code::FailedPrecondition, "failed_precondition"),
            (
                lavic_catalog::Error::StoreCorrupt { store: store.clone(), key: "k".into(), detail: "checksum".into() },
                Code::DataLoss,
                "data_loss",
            ),
        ];
        for (e, code, label) in cases {
            let e = Error::Catalog(e);
            assert_eq!((e.code(), e.kind()), (code, label), "{e}");
            let status = tonic::Status::from(e);
            assert!(status.message().contains(&store), "the message names the store: {}", status.message());
        }
    }

    #[test]
    fn catalog_failures_that_retrying_cannot_fix_are_not_internal() {
        let io = |e: std::io::Error| Error::Catalog(lavic_catalog::Error::Io { path: "/cat/delta.log".into(), source: e });
        let full = io(std::io::Error::from_raw_os_error(28));
        assert_eq!((full.code(), full.kind()), (Code::ResourceExhausted, "resource_exhausted"));
        assert!(full.to_string().contains("/cat/delta.log"), "{full}");
        assert_eq!(io(std::io::Error::from_raw_os_error(122)).code(), Code::ResourceExhausted, "quota");
        assert_eq!(io(std::io::Error::from_raw_os_error(30)).code(), Code::FailedPrecondition, "read-only file system");
        assert_eq!(io(std::io::Error::from_raw_os_error(5)).code(), Code::Internal, "EIO stays ours");
        let stale = Error::Catalog(lavic_catalog::Error::Stale("/cat".into()));
        assert_eq!(stale.code(), Code::FailedPrecondition);
        let corrupt = Error::Catalog(lavic_catalog::Error::Corrupt { path: "/cat/x".into(), detail: "crc".into() });
        assert_eq!(corrupt.code(), Code::DataLoss);
    }

    #[test]
    fn model_refusals_name_their_field_and_other_model_errors_are_ours() {
        let cases = [
            (RequestError::NoCandidates, "candidate_ids"),
            (RequestError::ReservedToken { candidate: 1, id: "X".into(), part: "title", token: "<ItemImageEmb1>" }, "candidate_ids"),
            (RequestError::ReservedTokenInDialogue { token: "<ItemImageEmb2>" }, "turns"),
            (RequestError::EmptyId { candidate: 0 }, "candidate_ids"),
            (RequestError::SameIdTokens { first: 0, second: 3 }, "candidate_ids"),
            (RequestError::CandidatesOverBudget { tokens: 500, budget: 300 }, "candidate_ids"),
            (RequestError::DialogueOverBudget { budget: 300, excess: 1 }, "turns"),
        ];
        for (reason, field) in cases {
            let message = reason.to_string();
            let e = Error::from_model(lavic_model::Error::Request(reason), "turns");
            assert!(matches!(&e, Error::Refused { field: f, .. } if *f == field), "{e:?}");
            let status = tonic::Status::from(e);
            assert_eq!(status.code(), Code::InvalidArgument);
            assert_eq!(status.message(), format!("{field}: {message}"));
        }
        // A model failure that is not about the request is INTERNAL, whatever its words say.
        let e = Error::from_model(lavic_model::Error::Input("candidates #0 and #1 have the same id tokens".into()), "context");
        assert_eq!((e.code(), e.kind()), (Code::Internal, "internal"));
        let e = Error::from_model(lavic_model::Error::Image("invalid image".into()), "context");
        assert_eq!(e.code(), Code::Internal);
    }
}

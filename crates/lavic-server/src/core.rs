//! What the handlers call: readiness and draining state, admission, the trip of a request
//! through the queue to a worker and back under its deadline, and the per-call plumbing every
//! handler shares ([`Core::handle`]: request id, deadline, tracing span, metrics, one log line
//! per call, the status mapping).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use tracing::Instrument;

use crate::config::Config;
use crate::decode::decode_images;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::log_limit::LogLimiter;
use crate::metrics::Metrics;
use crate::proto;
use crate::queue::{Outcome, Queue, RecommendJob, UpsertJob, Work};
use crate::validation::{Decoded, Limits, Source, Validated};

/// How much earlier than the client's deadline the server gives up (at most; a tenth of short
/// deadlines): the answer must reach the client before its own timer fires, and tonic's server
/// timer (which answers CANCELLED, not DEADLINE_EXCEEDED) starts a little before ours.
const DEADLINE_MARGIN: Duration = Duration::from_millis(25);

/// Arrival time of a call, stamped by the first layer of the tower stack.
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub Instant);

/// One call's identity and deadline.
#[derive(Debug, Clone)]
pub struct Call {
    /// Request id (from the message, the `x-request-id` header, or made up).
    pub request_id: String,
    /// When the call arrived.
    pub arrival: Instant,
    /// When the server stops working on it.
    pub deadline: Instant,
}

/// A request message that may carry the caller's own request id (used in logs and answers).
pub trait RequestId {
    /// The id, or `""` when the message has none.
    fn request_id(&self) -> &str {
        ""
    }
}

impl RequestId for proto::RecommendRequest {
    fn request_id(&self) -> &str {
        &self.request_id
    }
}
impl RequestId for proto::ModelInfoRequest {}
impl RequestId for proto::UpsertItemsRequest {}
impl RequestId for proto::GetItemRequest {}
impl RequestId for proto::DeleteItemsRequest {}

/// Longest request id kept, in characters (after escaping).
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// A caller's request id made safe to log and echo: control characters (newlines, ANSI
/// escapes), line and paragraph separators and bidirectional/invisible formatting characters
/// are escaped (`\n`, `\u{1b}`), and the result is cut to [`MAX_REQUEST_ID_CHARS`]: a request
/// id can never start a forged log line or recolour a terminal.
pub fn clean_request_id(id: &str) -> String {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
    };
    let mut out = String::new();
    for c in id.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.chars().count() >= MAX_REQUEST_ID_CHARS {
            break;
        }
    }
    out.chars().take(MAX_REQUEST_ID_CHARS).collect()
}

/// Parses a `grpc-timeout` header value (`<digits><H|M|S|m|u|n>`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if !v.is_ascii() {
        return None;
    }
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Shared state of the running server.
pub struct Core {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Request limits derived from it.
    pub limits: Limits,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    queue: Queue,
    /// Set once, when the model and catalog are loaded.
    engine: OnceLock<Arc<Engine>>,
    /// True once the warm-up passed (calls are accepted).
    ready: AtomicBool,
    /// True from the shutdown signal on (new calls are refused).
    draining: AtomicBool,
    next_id: AtomicU64,
    id_prefix: String,
    /// Test hook: holds every image decoding before it starts (None in production).
    pub decode_gate: Option<crate::queue::Gate>,
    /// Which error lines are written (repeated ones are counted, not all written).
    log_limit: LogLimiter,
}

impl Core {
    /// A core with no engine yet (calls answer UNAVAILABLE until [`Core::set_engine`]).
    pub fn new(config: Arc<Config>, queue: Queue, metrics: Arc<Metrics>) -> Self {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        Self {
            limits: Limits::from(config.as_ref()),
            config,
            metrics,
            queue,
            engine: OnceLock::new(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            id_prefix: format!("{:x}-{:x}", std::process::id(), t),
            decode_gate: None,
            log_limit: LogLimiter::default(),
        }
    }

    /// Installs the loaded engine.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    /// Accepts calls from now on (`lavic_ready` 1).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
        self.metrics.ready.set(self.accepting() as i64);
    }

    /// Refuses new calls from now on (`lavic_ready` 0).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.metrics.ready.set(self.accepting() as i64);
    }

    /// Whether calls are accepted: ready and not draining.
    pub fn accepting(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }

    /// Requests admitted and not yet answered.
    pub fn admitted(&self) -> usize {
        self.queue.admitted()
    }

    /// Waits until no request is admitted, at most until `deadline`; true when none is left.
    pub async fn drained(&self, deadline: Instant) -> bool {
        self.queue.drained(deadline).await
    }

    /// Closes the queue (the workers exit once it is empty).
    pub fn close_queue(&self) {
        self.queue.close();
    }

    /// The engine once loaded, whatever the state.
    pub fn loaded_engine(&self) -> Option<&Arc<Engine>> {
        self.engine.get()
    }

    /// The engine, if calls are accepted now.
    pub fn engine(&self) -> Result<&Arc<Engine>> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(Error::Draining);
        }
        match self.engine.get() {
            Some(e) if self.ready.load(Ordering::SeqCst) => Ok(e),
            _ => Err(Error::NotReady),
        }
    }

    /// Runs one handler's `body` as a call: identity and deadline from the metadata, a tracing
    /// span (method, request id) around it, then the call's metric and log line, and the status
    /// mapping of its error. Every gRPC handler goes through here.
    pub async fn handle<T, R, F, Fut>(&self, method: &'static str, request: tonic::Request<T>, body: F) -> std::result::Result<tonic::Response<R>, tonic::Status>
    where
        T: RequestId,
        F: FnOnce(Call, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<R>>,
    {
        let call = self.call(&request, request.get_ref().request_id());
        let span = tracing::info_span!("call", method, request_id = %call.request_id);
        let result = body(call.clone(), request).instrument(span).await;
        // The call's one log line names method and request id itself (outside the span).
        self.finish(method, &call, &result);
        result.map(tonic::Response::new).map_err(tonic::Status::from)
    }

    /// Identity and deadline of a call from its metadata and extensions.
    fn call<T>(&self, request: &tonic::Request<T>, request_id: &str) -> Call {
        let arrival = request.extensions().get::<Arrival>().map_or_else(Instant::now, |a| a.0);
        let server_max = Duration::from_secs(self.config.request_timeout_secs);
        let client = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|d| d.saturating_sub(DEADLINE_MARGIN.min(d / 10)));
        let deadline = arrival + client.map_or(server_max, |c| c.min(server_max));
        let request_id = if !request_id.is_empty() {
            clean_request_id(request_id)
        } else if let Some(h) = request.metadata().get("x-request-id").and_then(|v| v.to_str().ok()).filter(|h| !h.is_empty()) {
            clean_request_id(h)
        } else {
            format!("{}-{}", self.id_prefix, self.next_id.fetch_add(1, Ordering::Relaxed))
        };
        Call { request_id, arrival, deadline }
    }

    /// Counts and logs a finished call. Error lines are rate limited per method and status
    /// ([`LogLimiter`]): a written one carries how many like it were left out before it.
    fn finish<T>(&self, method: &'static str, call: &Call, result: &Result<T>) {
        let elapsed = call.arrival.elapsed();
        let status = result.as_ref().map_or_else(Error::kind, |_| "ok");
        self.metrics.observe_call(method, status, elapsed);
        let ms = elapsed.as_millis() as u64;
        let e = match result {
            Ok(_) => return tracing::info!(method, request_id = %call.request_id, ms, "ok"),
            Err(e) => e,
        };
        let Some(suppressed) = self.log_limit.admit(method, status, Instant::now()) else { return };
        if e.code() == tonic::Code::Internal {
            tracing::error!(method, request_id = %call.request_id, ms, error = %e, suppressed, "failed")
        } else {
            tracing::info!(method, request_id = %call.request_id, ms, status, error = %e, suppressed, "refused")
        }
    }

    /// Runs one recommendation: admission, image decoding (blocking pool), the queue, a worker.
    pub async fn recommend(&self, call: &Call, request: Validated) -> Result<Outcome> {
        let engine = self.engine()?.clone();
        // Unknown ids are refused before taking a queue slot when the catalog knows that without a
        // round trip (a folder; the worker checks again, since the catalog may change in between).
        if request.unknown_ids == crate::config::UnknownIds::Reject {
            let unknown: Vec<String> = request
                .candidates
                .iter()
                .filter(|c| matches!(c.source, Source::Catalog) && engine.store.contains(&c.id) == Some(false))
                .map(|c| c.id.clone())
                .collect();
            if !unknown.is_empty() {
                return Err(Error::NotFound { what: "candidate ids", ids: unknown });
            }
        }
        self.recommend_with(&engine, call, request).await
    }

    /// The warm-up: one recommendation through the whole path, before calls are accepted.
    pub async fn warm_up(&self, engine: &Arc<Engine>) -> Result<Outcome> {
        let limits = Limits { unknown_ids: crate::config::UnknownIds::Fallback, ..self.limits };
        let request = crate::validation::recommend(
            crate::proto::RecommendRequest {
                request_id: "warm-up".into(),
                dialogue: Some(crate::proto::recommend_request::Dialogue::Context(
                    "<submission>Warm-up: which of these would you pick?</submission>\n".into(),
                )),
                candidate_ids: vec!["WARMUP0001".into(), "WARMUP0002".into()],
                ..Default::default()
            },
            &limits,
        )?;
        let now = Instant::now();
        let call = Call { request_id: "warm-up".into(), arrival: now, deadline: now + Duration::from_secs(24 * 3600) };
        let span = tracing::info_span!("call", method = "warm-up", request_id = %call.request_id);
        self.recommend_with(engine, &call, request).instrument(span).await
    }

    async fn recommend_with(&self, engine: &Arc<Engine>, call: &Call, request: Validated) -> Result<Outcome> {
        let admission = self.queue.admit(request.image_pixels)?;
        let (request, admission): (Decoded, _) = if request.has_images() {
            let e = engine.clone();
            let gate = self.decode_gate.clone();
            // The slot goes into the decoding task and comes back with its result: a caller
            // whose deadline passes stops waiting, but the slot (and its pixel budget) stays
            // taken until the decoding has really stopped.
            let decode = tokio::task::spawn_blocking(move || {
                if let Some(g) = gate {
                    g.pass();
                }
                (decode_images(request, &e.model.encoder), admission)
            });
            match tokio::time::timeout_at(call.deadline.into(), decode).await {
                Err(_) => return Err(Error::DeadlineExceeded(call.arrival.elapsed())),
                Ok(Err(join)) => return Err(Error::Internal(format!("image decoding task failed: {join}"))),
                Ok(Ok((r, admission))) => (r?, admission),
            }
        } else {
            (decode_images(request, &engine.model.encoder)?, admission)
        };
        let (reply, answer) = oneshot::channel();
        let job = RecommendJob {
            span: tracing::Span::current(),
            request,
            deadline: call.deadline,
            enqueued: Instant::now(),
            reply,
            admission,
        };
        self.queue.submit(Work::Recommend(job))?;
        await_answer(call, answer).await
    }

    /// Encodes and stores catalog items on a model worker.
    pub async fn upsert(&self, call: &Call, items: Vec<lavic_catalog::NewItem>) -> Result<lavic_catalog::UpsertReport> {
        self.engine()?;
        let pixels = items.iter().filter_map(|it| it.image.as_deref()).map(crate::validation::image_pixels).sum();
        let admission = self.queue.admit(pixels)?;
        let (reply, answer) = oneshot::channel();
        let job = UpsertJob { span: tracing::Span::current(), items, deadline: call.deadline, reply, admission };
        self.queue.submit(Work::Upsert(job))?;
        await_answer(call, answer).await
    }
}

async fn await_answer<T>(call: &Call, answer: oneshot::Receiver<Result<T>>) -> Result<T> {
    match tokio::time::timeout_at(call.deadline.into(), answer).await {
        Err(_) => Err(Error::DeadlineExceeded(call.arrival.elapsed())),
        Ok(Err(_)) => Err(Error::Internal("the model worker dropped the request".into())),
        Ok(Ok(Err(Error::DeadlineExceeded(_)))) => Err(Error::DeadlineExceeded(call.arrival.elapsed())),
        Ok(Ok(result)) => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_escaped_and_bounded() {
        assert_eq!(clean_request_id("abc-123_X.y"), "abc-123_X.y");
        assert_eq!(clean_request_id("x\n2099 ERROR"), "x\\n2099 ERROR");
        assert_eq!(clean_request_id("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(clean_request_id("a\u{202e}b\rc"), "a\\u{202e}b\\rc");
        assert_eq!(clean_request_id("äöü"), "äöü");
        assert_eq!(clean_request_id(&"x".repeat(500)).chars().count(), MAX_REQUEST_ID_CHARS);
        assert_eq!(clean_request_id(&"\n".repeat(500)).chars().count(), MAX_REQUEST_ID_CHARS);
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}

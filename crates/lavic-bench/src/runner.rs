//! The load: `concurrency` workers share `connections` HTTP/2 connections (worker i uses
//! connection i mod connections, as ghz does) and take request numbers from one counter until
//! `total` is reached or the duration ends; with `--rps` request k is not sent before
//! start + k / rps. Each call carries the per-call timeout as its gRPC deadline and is also cut
//! off locally when it passes (DeadlineExceeded, as grpc-go reports it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lavic_server::proto::recommender_client::RecommenderClient;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::Channel;

use crate::calldata::{metadata, CallContext, CallData, Message};
use crate::report::{code_name, CallResult};

/// What happens to calls in flight when the duration (`-z`, `-x`) ends (ghz's `--duration-stop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum DurationStop {
    /// Cancel them and count them as `Canceled` errors (ghz's default).
    #[default]
    Close,
    /// Cancel them and leave them out of the report.
    Ignore,
    /// Let them finish and count them.
    Wait,
}

/// How much load to send.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Most requests to send.
    pub total: u64,
    /// Workers, each with one call in flight at a time.
    pub concurrency: usize,
    /// Stop sending after this long (`-z`, or `-x`).
    pub duration: Option<Duration>,
    /// What happens to calls in flight then.
    pub duration_stop: DurationStop,
    /// Requests per second over all workers.
    pub rps: Option<u32>,
    /// Per-call deadline (None: none).
    pub timeout: Option<Duration>,
    /// Request metadata (`-m`), a JSON object of strings.
    pub metadata: Option<serde_json::Value>,
}

/// The results of a run.
#[derive(Debug)]
pub struct Outcome {
    /// Finished calls in completion order.
    pub results: Vec<CallResult>,
    /// Wall time from the first request to the last answer.
    pub wall: Duration,
    /// `normal`, `timeout` or `cancel`.
    pub end_reason: &'static str,
}

/// Shared by the workers of one run.
struct Shared {
    data: CallData,
    plan: Plan,
    start: Instant,
    /// Next request number (every worker takes from it; the number also picks the data element).
    next: AtomicU64,
    /// Finished calls in completion order: one short lock per finished call.
    results: Mutex<Vec<CallResult>>,
}

async fn call(ch: Channel, msg: Message, md: Vec<(String, String)>, timeout: Option<Duration>) -> Result<(), tonic::Status> {
    let mut client = RecommenderClient::new(ch);
    macro_rules! send {
        ($m:expr, $method:ident) => {{
            let mut req = tonic::Request::new($m);
            for (k, v) in &md {
                let key = MetadataKey::from_bytes(k.as_bytes()).map_err(|e| tonic::Status::internal(format!("metadata key {k:?}: {e}")))?;
                let val = MetadataValue::try_from(v.as_str()).map_err(|e| tonic::Status::internal(format!("metadata value {v:?}: {e}")))?;
                req.metadata_mut().insert(key, val);
            }
            if let Some(t) = timeout {
                req.set_timeout(t);
            }
            client.$method(req).await.map(|_| ())
        }};
    }
    let fut = async {
        match msg {
            Message::Recommend(m) => send!(m, recommend),
            Message::ModelInfo(m) => send!(m, model_info),
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, fut).await.unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("context deadline exceeded"))),
        None => fut.await,
    }
}

fn record(shared: &Shared, timestamp: SystemTime, latency: Duration, r: Result<(), tonic::Status>) {
    let (status, error) = match r {
        Ok(()) => ("OK", String::new()),
        Err(s) => {
            let name = code_name(s.code());
            (name, format!("rpc error: code = {name} desc = {}", s.message()))
        }
    };
    let mut results = shared.results.lock().unwrap_or_else(|e| e.into_inner());
    results.push(CallResult { timestamp, latency, status, error });
}

async fn worker(shared: Arc<Shared>, id: usize, ch: Channel, mut stop: tokio::sync::watch::Receiver<bool>) {
    let plan = &shared.plan;
    loop {
        if *stop.borrow() {
            return;
        }
        let k = shared.next.fetch_add(1, Ordering::Relaxed);
        if k >= plan.total {
            return;
        }
        if let Some(rps) = plan.rps {
            let due = shared.start + Duration::from_secs_f64(k as f64 / f64::from(rps));
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let now = SystemTime::now();
        let ctx = CallContext { request_number: k, worker_id: id, now };
        let msg = shared.data.message(&ctx);
        let md = match &plan.metadata {
            Some(m) => metadata(m, shared.data.method(), &ctx),
            None => Ok(Vec::new()),
        };
        let t0 = Instant::now();
        let (msg, md) = match (msg, md) {
            (Ok(m), Ok(md)) => (m, md),
            (Err(e), _) | (_, Err(e)) => {
                record(&shared, now, t0.elapsed(), Err(tonic::Status::internal(e)));
                continue;
            }
        };
        let fut = call(ch.clone(), msg, md, plan.timeout);
        let r = if plan.duration_stop == DurationStop::Wait {
            Some(fut.await)
        } else {
            tokio::select! {
                r = fut => Some(r),
                _ = stop.wait_for(|s| *s) => None,
            }
        };
        match r {
            Some(r) => record(&shared, now, t0.elapsed(), r),
            None => {
                if plan.duration_stop == DurationStop::Close {
                    record(&shared, now, t0.elapsed(), Err(tonic::Status::cancelled("context canceled")));
                }
                return;
            }
        }
    }
}

/// Sends the load over `channels` and collects every call's result.
pub async fn run(channels: &[Channel], data: CallData, plan: Plan) -> Outcome {
    let duration = plan.duration;
    let shared = Arc::new(Shared {
        data,
        start: Instant::now(),
        next: AtomicU64::new(0),
        results: Mutex::new(Vec::with_capacity(plan.total.min(1 << 20) as usize)),
        plan,
    });
    // Tells the workers to stop sending (duration over, or interrupted).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..shared.plan.concurrency {
        workers.spawn(worker(shared.clone(), i, channels[i % channels.len()].clone(), stop_rx.clone()));
    }
    let all_done = async {
        while workers.join_next().await.is_some() {}
    };
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep_until((shared.start + d).into()).await,
            None => std::future::pending().await,
        }
    };
    let end_reason = tokio::select! {
        _ = all_done => "normal",
        _ = deadline => "timeout",
        _ = tokio::signal::ctrl_c() => "cancel",
    };
    let _ = stop_tx.send(true);
    while workers.join_next().await.is_some() {}
    let wall = shared.start.elapsed();
    let results = std::mem::take(&mut *shared.results.lock().unwrap_or_else(|e| e.into_inner()));
    Outcome { results, wall, end_reason }
}

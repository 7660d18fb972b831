//! Model worker threads (as TGI's batcher / mistral.rs's engine thread): each takes up to
//! `max_batch` jobs from the shared bounded queue, drops those whose caller is gone or whose
//! deadline passed, runs the rest as one batch and answers each job on its own channel. A panic
//! in model code fails only that batch's requests; the worker keeps serving.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{Answer, Engine};
use crate::error::Error;
use crate::queue::{Gate, Outcome, RecommendJob, SharedReceiver, UpsertJob, Work};

/// How a worker forms batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Most jobs per batch.
    pub max_batch: usize,
    /// How long to wait for more jobs once one is in hand.
    pub window: Duration,
}

/// Starts `n` worker threads. They exit when every sender of the queue is dropped.
pub fn spawn(
    n: usize,
    engine: Arc<Engine>,
    rx: SharedReceiver,
    policy: BatchPolicy,
    gate: Option<Gate>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    (0..n)
        .map(|i| {
            let (engine, rx, gate) = (engine.clone(), rx.clone(), gate.clone());
            std::thread::Builder::new()
                .name(format!("lavic-worker-{i}"))
                .spawn(move || run(&engine, &rx, policy, gate.as_ref()))
        })
        .collect()
}

/// Takes the next batch: blocks for the first job, then gathers more (up to the window).
/// None when the queue is closed.
fn next_batch(rx: &SharedReceiver, policy: BatchPolicy) -> Option<Vec<Work>> {
    // Held while gathering so that one worker forms one batch at a time.
    let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
    let first = rx.recv().ok()?;
    let mut batch = vec![first];
    let until = Instant::now() + policy.window;
    while batch.len() < policy.max_batch {
        let next = match until.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => rx.recv_timeout(left),
            _ => rx.try_recv().map_err(|_| RecvTimeoutError::Timeout),
        };
        match next {
            Ok(w) => batch.push(w),
            Err(_) => break,
        }
    }
    Some(batch)
}

fn run(engine: &Engine, rx: &SharedReceiver, policy: BatchPolicy, gate: Option<&Gate>) {
    let metrics = engine.metrics();
    while let Some(batch) = next_batch(rx, policy) {
        metrics.queue_depth.dec_by(batch.len() as i64);
        let now = Instant::now();
        let mut recs = Vec::new();
        let mut upserts = Vec::new();
        for work in batch {
            if let Some(reason) = work.abandoned(now) {
                metrics.observe_drop(reason);
                drop_work(work, reason);
                continue;
            }
            match work {
                Work::Recommend(j) => recs.push(j),
                Work::Upsert(j) => upserts.push(j),
            }
        }
        if recs.is_empty() && upserts.is_empty() {
            continue;
        }
        if let Some(g) = gate {
            g.pass();
        }
        if !recs.is_empty() {
            run_recommend(engine, recs);
        }
        for job in upserts {
            run_upsert(engine, job);
        }
    }
    tracing::debug!("model worker stopped: queue closed");
}

fn drop_work(work: Work, reason: &str) {
    let err = || match reason {
        "deadline" => Error::DeadlineExceeded(Duration::ZERO),
        _ => Error::Internal("cancelled".into()),
    };
    match work {
        Work::Recommend(j) => {
            tracing::info!(request_id = %j.request_id, reason, "dropped from the queue before running");
            drop(j.admission);
            let _ = j.reply.send(Err(err()));
        }
        Work::Upsert(j) => {
            drop(j.admission);
            let _ = j.reply.send(Err(err()));
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn run_recommend(engine: &Engine, jobs: Vec<RecommendJob>) {
    let metrics = engine.metrics();
    let started = Instant::now();
    let queue_times: Vec<Duration> = jobs.iter().map(|j| started.saturating_duration_since(j.enqueued)).collect();
    for q in &queue_times {
        metrics.queue_time.observe(q.as_secs_f64());
    }
    let requests: Vec<_> = jobs.iter().map(|j| &j.request).collect();
    let results = catch_unwind(AssertUnwindSafe(|| engine.recommend(&requests))).unwrap_or_else(|p| {
        let msg = panic_message(p.as_ref());
        tracing::error!(panic = %msg, batch = requests.len(), "model code panicked; failing this batch");
        requests.iter().map(|_| Err(Error::Internal(format!("model panicked: {msg}")))).collect()
    });
    let inference_time = started.elapsed();
    metrics.inference_time.observe(inference_time.as_secs_f64());
    let batch_size = jobs.len();
    for ((job, result), queue_time) in jobs.into_iter().zip(results).zip(queue_times) {
        let outcome = result.map(|Answer { recommendation, fallback_ids }| {
            metrics.prompt_tokens.observe(recommendation.prompt_tokens as f64);
            metrics.shortened_tokens.inc_by(recommendation.shortened_tokens as u64);
            Outcome { recommendation, fallback_ids, batch_size, queue_time, inference_time }
        });
        if let Err(e) = &outcome {
            tracing::debug!(request_id = %job.request_id, error = %e, "request failed in the worker");
        }
        // Free the slot first, so that a caller who got its answer sees the slot free.
        let RecommendJob { reply, admission, .. } = job;
        drop(admission);
        // The caller may have gone in the meantime; then nobody needs the answer.
        let _ = reply.send(outcome);
    }
}

fn run_upsert(engine: &Engine, job: UpsertJob) {
    let result = catch_unwind(AssertUnwindSafe(|| engine.store.upsert(&job.items, &engine.model.encoder)))
        .unwrap_or_else(|p| Err(Error::Internal(format!("catalog upsert panicked: {}", panic_message(p.as_ref())))));
    engine.metrics().catalog_items.set(engine.store.len() as i64);
    drop(job.admission);
    let _ = job.reply.send(result);
}

//! Model worker threads (as TGI's batcher / mistral.rs's engine thread): each takes up to
//! `max_batch` jobs from the shared bounded queue ([`BatchPolicy::take`]), drops those whose
//! caller is gone or whose deadline passed ([`Batch::form`]), runs the rest as one batch and
//! answers each job on its own channel, inside the job's own tracing span. A panic in model code
//! fails only that batch's requests; the worker keeps serving.
//!
//! UpsertItems' catalog encoding runs in its own lane: one `lavic-catalog` thread that the model
//! workers hand upserts to, so that a large upsert (seconds of vision-tower work) never holds the
//! recommendations queued behind it (issue 11, item 10). Upserts keep their admission slot until
//! they are done, so the lane's backlog is bounded by admission like everything else.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{Answer, Engine};
use crate::error::Error;
use crate::queue::{Abandoned, Gate, Jobs, Outcome, RecommendJob, UpsertJob, Work};

/// How a worker forms batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Most jobs per batch.
    pub max_batch: usize,
    /// How long to wait for more jobs once one is in hand.
    pub window: Duration,
}

impl BatchPolicy {
    /// Takes the next jobs: blocks for the first, then gathers more until `max_batch` are in
    /// hand or `window` has passed since the first came. None once the queue is closed.
    pub fn take(&self, jobs: &Jobs) -> Option<Vec<Work>> {
        // Held while gathering so that one worker forms one batch at a time.
        let queue = jobs.lock();
        let first = queue.recv()?;
        let mut taken = vec![first];
        let until = Instant::now() + self.window;
        while taken.len() < self.max_batch {
            match queue.recv_within(until.saturating_duration_since(Instant::now())) {
                Some(w) => taken.push(w),
                None => break,
            }
        }
        Some(taken)
    }
}

/// One batch as a worker forms it: the recommendations (run as one model call, default-mode
/// ones in one forward pass) and the upserts (handed to the catalog lane).
#[derive(Default)]
pub struct Batch {
    /// Recommendations, in queue order.
    pub recommend: Vec<RecommendJob>,
    /// Catalog upserts, in queue order.
    pub upserts: Vec<UpsertJob>,
}

impl Batch {
    /// Sorts taken work at `now`: what nobody waits for any more comes back apart, with the
    /// reason, to be answered without running.
    pub fn form(taken: Vec<Work>, now: Instant) -> (Batch, Vec<(Work, Abandoned)>) {
        let mut batch = Batch::default();
        let mut dropped = Vec::new();
        for work in taken {
            match (work.abandoned(now), work) {
                (Some(reason), work) => dropped.push((work, reason)),
                (None, Work::Recommend(j)) => batch.recommend.push(j),
                (None, Work::Upsert(j)) => batch.upserts.push(j),
            }
        }
        (batch, dropped)
    }

    /// Whether there is nothing to run.
    pub fn is_empty(&self) -> bool {
        self.recommend.is_empty() && self.upserts.is_empty()
    }
}

/// Starts `n` model worker threads and the catalog lane. The workers exit when every sender of
/// the queue is dropped, the lane once the workers are gone and its last upsert is done.
/// `gate` holds every recommendation batch, `catalog_gate` every upsert (test hooks).
pub fn spawn(
    n: usize,
    engine: Arc<Engine>,
    jobs: Jobs,
    policy: BatchPolicy,
    gate: Option<Gate>,
    catalog_gate: Option<Gate>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let (lane, upserts) = mpsc::channel::<UpsertJob>();
    let e = engine.clone();
    let mut threads = vec![std::thread::Builder::new().name("lavic-catalog".into()).spawn(move || {
        for job in upserts {
            if let Some(g) = &catalog_gate {
                g.pass();
            }
            run_upsert(&e, job);
        }
    })?];
    for i in 0..n {
        let (engine, jobs, gate, lane) = (engine.clone(), jobs.clone(), gate.clone(), lane.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("lavic-worker-{i}"))
                .spawn(move || run(&engine, &jobs, policy, gate.as_ref(), &lane))?,
        );
    }
    Ok(threads)
}

fn run(engine: &Engine, jobs: &Jobs, policy: BatchPolicy, gate: Option<&Gate>, lane: &mpsc::Sender<UpsertJob>) {
    let metrics = engine.metrics();
    while let Some(taken) = policy.take(jobs) {
        let (batch, dropped) = Batch::form(taken, Instant::now());
        for (work, reason) in dropped {
            metrics.observe_drop(reason.label());
            work.span().in_scope(|| tracing::info!(reason = reason.label(), "dropped from the queue before running"));
            work.drop_unrun(reason);
        }
        // Upserts go to the catalog lane (run here only if the lane is gone).
        for job in batch.upserts {
            if let Err(mpsc::SendError(job)) = lane.send(job) {
                run_upsert(engine, job);
            }
        }
        if batch.recommend.is_empty() {
            continue;
        }
        if let Some(g) = gate {
            g.pass();
        }
        run_recommend(engine, batch.recommend);
    }
    tracing::debug!("model worker stopped: queue closed");
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn run_recommend(engine: &Engine, jobs: Vec<RecommendJob>) {
    let metrics = engine.metrics();
    let span = tracing::info_span!("batch", size = jobs.len());
    for j in &jobs {
        span.follows_from(j.span.id());
    }
    let _in_batch = span.enter();
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
            job.span.in_scope(|| tracing::debug!(error = %e, "request failed in the worker"));
        }
        // Free the slot first, so that a caller who got its answer sees the slot free.
        let RecommendJob { reply, admission, .. } = job;
        drop(admission);
        // The caller may have gone in the meantime; then nobody needs the answer.
        let _ = reply.send(outcome);
    }
}

fn run_upsert(engine: &Engine, job: UpsertJob) {
    let UpsertJob { span, items, reply, admission, .. } = job;
    let result = span.in_scope(|| {
        catch_unwind(AssertUnwindSafe(|| engine.store.upsert(&items, &engine.model.encoder)))
            .unwrap_or_else(|p| Err(Error::Internal(format!("catalog upsert panicked: {}", panic_message(p.as_ref())))))
    });
    drop(admission);
    let _ = reply.send(result);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::queue::Queue;
    use crate::validation::{self, Decoded, Limits};
    use tokio::sync::oneshot;

    /// A queue of `capacity` and its metrics.
    fn queue(capacity: usize) -> (Queue, Jobs, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let (q, jobs) = Queue::new(capacity, metrics.clone());
        (q, jobs, metrics)
    }

    fn request(ids: &[&str]) -> Decoded {
        let limits = Limits { max_candidates: 20, max_context_bytes: 1000, max_image_bytes: 10, unknown_ids: Default::default(), max_image_pixels: 1 << 24, max_request_pixels: 1 << 25 };
        let msg = crate::proto::RecommendRequest {
            dialogue: Some(crate::proto::recommend_request::Dialogue::Context("<submission>hi</submission>\n".into())),
            candidate_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        validation::recommend(msg, &limits).unwrap().map_images(|_, _| Err(Error::Internal("no images here".into()))).unwrap()
    }

    /// Submits a recommendation with `deadline`; returns the receiving end of its answer.
    fn submit(q: &Queue, first_id: &str, deadline: Instant) -> oneshot::Receiver<crate::Result<Outcome>> {
        let (reply, answer) = oneshot::channel();
        let job = RecommendJob {
            span: tracing::Span::none(),
            request: request(&[first_id, "OTHER"]),
            deadline,
            enqueued: Instant::now(),
            reply,
            admission: q.admit(0).unwrap(),
        };
        q.submit(Work::Recommend(job)).unwrap();
        answer
    }

    fn first_ids(works: &[Work]) -> Vec<String> {
        works
            .iter()
            .map(|w| match w {
                Work::Recommend(j) => j.request.candidates[0].id.clone(),
                Work::Upsert(j) => j.items[0].id.clone(),
            })
            .collect()
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn batches_take_at_most_max_batch_in_queue_order() {
        let (q, jobs, metrics) = queue(8);
        let _answers: Vec<_> = ["A", "B", "C", "D", "E"].iter().map(|id| submit(&q, id, later())).collect();
        assert_eq!(metrics.queue_depth.get(), 5);
        let policy = BatchPolicy { max_batch: 4, window: Duration::ZERO };
        assert_eq!(first_ids(&policy.take(&jobs).unwrap()), ["A", "B", "C", "D"]);
        assert_eq!(metrics.queue_depth.get(), 1, "taken work leaves the queue depth");
        assert_eq!(first_ids(&policy.take(&jobs).unwrap()), ["E"], "no waiting with a zero window");
        assert_eq!(metrics.queue_depth.get(), 0);
        q.close();
        assert!(policy.take(&jobs).is_none(), "a closed, empty queue ends the worker");
    }

    #[test]
    fn the_window_waits_for_more_work_and_then_runs_what_it_has() {
        let (q, jobs, _metrics) = queue(8);
        let q = Arc::new(q);
        let _a = submit(&q, "A", later());
        let sender = {
            let q = q.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                submit(&q, "B", later())
            })
        };
        // B comes after A, within the window: same batch, taken as soon as the batch is full.
        let wide = BatchPolicy { max_batch: 2, window: Duration::from_secs(60) };
        assert_eq!(first_ids(&wide.take(&jobs).unwrap()), ["A", "B"]);
        let _b = sender.join().unwrap();
        // With room left, the window ends the batch: C runs without waiting for D.
        let _c = submit(&q, "C", later());
        let short = BatchPolicy { max_batch: 4, window: Duration::from_millis(30) };
        assert_eq!(first_ids(&short.take(&jobs).unwrap()), ["C"]);
        let _d = submit(&q, "D", later());
        assert_eq!(first_ids(&short.take(&jobs).unwrap()), ["D"]);
    }

    #[test]
    fn abandoned_work_is_dropped_with_its_reason_and_the_rest_sorted() {
        let (q, jobs, metrics) = queue(8);
        let expired = submit(&q, "EXPIRED", Instant::now());
        let gone = submit(&q, "GONE", later());
        drop(gone);
        let mut live = submit(&q, "LIVE", later());
        let (reply, _upsert_answer) = oneshot::channel();
        let item = lavic_catalog::NewItem { id: "UP".into(), title: String::new(), image: None, metadata: "{}".into() };
        let upsert = UpsertJob { span: tracing::Span::none(), items: vec![item], deadline: later(), reply, admission: q.admit(0).unwrap() };
        q.submit(Work::Upsert(upsert)).unwrap();
        assert_eq!(q.admitted(), 4);

        let taken = BatchPolicy { max_batch: 8, window: Duration::ZERO }.take(&jobs).unwrap();
        let (batch, dropped) = Batch::form(taken, Instant::now());
        assert_eq!(batch.recommend.iter().map(|j| j.request.candidates[0].id.as_str()).collect::<Vec<_>>(), ["LIVE"]);
        assert_eq!(batch.upserts.len(), 1);
        let reasons: Vec<(String, Abandoned)> = dropped.iter().map(|(w, r)| (first_ids(std::slice::from_ref(w))[0].clone(), *r)).collect();
        assert_eq!(reasons, [("EXPIRED".to_string(), Abandoned::Deadline), ("GONE".to_string(), Abandoned::Cancelled)]);

        // Dropping answers the waiting caller and frees the slots at once.
        for (work, reason) in dropped {
            work.drop_unrun(reason);
        }
        assert_eq!(q.admitted(), 2);
        assert_eq!(metrics.inflight.get(), 2);
        let mut expired = expired;
        assert!(matches!(expired.try_recv(), Ok(Err(Error::DeadlineExceeded(_)))));
        assert!(live.try_recv().is_err(), "the live job is not answered by forming the batch");
        assert!(!batch.is_empty());
        assert!(Batch::form(Vec::new(), Instant::now()).0.is_empty());
    }
}

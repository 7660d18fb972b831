//! Admission and the bounded queue between the gRPC handlers (async) and the model workers
//! (plain threads), as TGI's `Infer` + `queue.rs`: a semaphore `try_acquire` admits a request or
//! sheds it with RESOURCE_EXHAUSTED; each admitted job carries its own reply channel, deadline
//! and the call's tracing span, so a worker can skip work whose caller is gone and log in the
//! call's name. The drain at shutdown waits on the same semaphore.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::validation::Decoded;
use lavic_model::Recommendation;

/// A recommendation waiting for a worker.
pub struct RecommendJob {
    /// The call's span (method, request id): the worker enters it for what it does for this job.
    pub span: tracing::Span,
    /// The validated request, images decoded.
    pub request: Decoded,
    /// When the caller stops waiting.
    pub deadline: Instant,
    /// When the job entered the queue.
    pub enqueued: Instant,
    /// Where the answer goes (the handler awaits the other end).
    pub reply: oneshot::Sender<Result<Outcome>>,
    /// Keeps the admission slot until the job is answered or dropped.
    pub admission: Admission,
}

/// What a worker answers for one recommendation.
#[derive(Debug)]
pub struct Outcome {
    /// The model's result.
    pub recommendation: Recommendation,
    /// Candidates that used the reference fallback.
    pub fallback_ids: Vec<String>,
    /// Requests in the same forward pass.
    pub batch_size: usize,
    /// Time spent in the queue.
    pub queue_time: Duration,
    /// Worker time of the whole batch.
    pub inference_time: Duration,
}

/// A catalog upsert (image encoding is model work, so it runs on a worker too).
pub struct UpsertJob {
    /// The call's span.
    pub span: tracing::Span,
    /// Items to store.
    pub items: Vec<lavic_catalog::NewItem>,
    /// When the caller stops waiting.
    pub deadline: Instant,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<lavic_catalog::UpsertReport>>,
    /// Keeps the admission slot.
    pub admission: Admission,
}

/// Work for a model worker.
pub enum Work {
    /// A recommendation (batched with others).
    Recommend(RecommendJob),
    /// A catalog upsert (run alone).
    Upsert(UpsertJob),
}

/// Why queued work is dropped without running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandoned {
    /// Its deadline passed in the queue.
    Deadline,
    /// The caller went away.
    Cancelled,
}

impl Abandoned {
    /// The `reason` label of `lavic_dropped_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            Abandoned::Deadline => "deadline",
            Abandoned::Cancelled => "cancelled",
        }
    }

    /// The answer the dropped work gets (if anyone still listens).
    pub fn error(self) -> Error {
        match self {
            Abandoned::Deadline => Error::DeadlineExceeded(Duration::ZERO),
            Abandoned::Cancelled => Error::Cancelled,
        }
    }
}

impl Work {
    /// Whether nobody waits for this work any more (deadline passed or caller gone).
    pub fn abandoned(&self, now: Instant) -> Option<Abandoned> {
        let (deadline, closed) = match self {
            Work::Recommend(j) => (j.deadline, j.reply.is_closed()),
            Work::Upsert(j) => (j.deadline, j.reply.is_closed()),
        };
        if now >= deadline {
            Some(Abandoned::Deadline)
        } else if closed {
            Some(Abandoned::Cancelled)
        } else {
            None
        }
    }

    /// The span of the call this work belongs to.
    pub fn span(&self) -> &tracing::Span {
        match self {
            Work::Recommend(j) => &j.span,
            Work::Upsert(j) => &j.span,
        }
    }

    /// Answers the work with `reason`'s error without running it; frees its slot first.
    pub fn drop_unrun(self, reason: Abandoned) {
        match self {
            Work::Recommend(j) => {
                drop(j.admission);
                let _ = j.reply.send(Err(reason.error()));
            }
            Work::Upsert(j) => {
                drop(j.admission);
                let _ = j.reply.send(Err(reason.error()));
            }
        }
    }
}

/// An admitted request's slot: counted in `lavic_inflight_requests` until dropped. It travels
/// with the work itself (into the image decoding task, then the queued job), so it is given
/// back only once the work has really stopped, never when a caller merely stops waiting.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    /// The decoded pixels this request may hold (in [`PIXEL_UNIT`]s), if it has images.
    _pixels: Option<OwnedSemaphorePermit>,
    metrics: Arc<Metrics>,
}

/// Pixels per permit of the pixel budget (a semaphore counts in u32 steps).
pub const PIXEL_UNIT: u64 = 1024;

impl Drop for Admission {
    fn drop(&mut self) {
        self.metrics.inflight.dec();
    }
}

/// The sending side: admission control plus the bounded channel to the workers. This module
/// is the only writer of `lavic_inflight_requests` (admissions) and `lavic_queue_depth` (up on
/// submit, down when a worker takes the work off, see [`Jobs`]).
pub struct Queue {
    /// Bounded so that memory stays bounded even if admission were bypassed. Taken (dropped)
    /// by [`Queue::close`] so that the workers stop once the queue is empty.
    tx: Mutex<Option<SyncSender<Work>>>,
    /// One permit per admitted request (queued or running); `try_acquire` sheds the excess.
    permits: Arc<Semaphore>,
    capacity: usize,
    /// The decoded-pixel budget of all admitted requests, in [`PIXEL_UNIT`]s.
    pixels: Arc<Semaphore>,
    pixel_budget: u64,
    metrics: Arc<Metrics>,
}

/// The receiving side, shared by the workers.
#[derive(Clone)]
pub struct Jobs {
    /// Locked by one worker while it forms a batch, so that batches are formed one at a time.
    rx: Arc<Mutex<Receiver<Work>>>,
    metrics: Arc<Metrics>,
}

/// One worker's hold on the queue while it forms a batch ([`Jobs::lock`]).
pub struct Taking<'a> {
    rx: MutexGuard<'a, Receiver<Work>>,
    metrics: &'a Metrics,
}

impl Jobs {
    /// Holds the queue for this worker until the returned guard is dropped.
    pub fn lock(&self) -> Taking<'_> {
        Taking { rx: self.rx.lock().unwrap_or_else(|e| e.into_inner()), metrics: &self.metrics }
    }
}

impl Taking<'_> {
    /// The next work, waiting for it; None once the queue is closed and empty.
    pub fn recv(&self) -> Option<Work> {
        self.took(self.rx.recv().ok())
    }

    /// The next work if it comes within `wait` (at once when `wait` is zero).
    pub fn recv_within(&self, wait: Duration) -> Option<Work> {
        let next = if wait.is_zero() { self.rx.try_recv().map_err(|_| RecvTimeoutError::Timeout) } else { self.rx.recv_timeout(wait) };
        self.took(next.ok())
    }

    fn took(&self, work: Option<Work>) -> Option<Work> {
        if work.is_some() {
            self.metrics.queue_depth.dec();
        }
        work
    }
}

impl Queue {
    /// A queue admitting at most `capacity` requests at once.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> (Self, Jobs) {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let jobs = Jobs { rx: Arc::new(Mutex::new(rx)), metrics: metrics.clone() };
        let pixel_budget = u64::from(u32::MAX) * PIXEL_UNIT;
        let q = Self {
            tx: Mutex::new(Some(tx)),
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            pixels: Arc::new(Semaphore::new(u32::MAX as usize)),
            pixel_budget,
            metrics,
        };
        (q, jobs)
    }

    /// The same queue with a budget of `pixels` decoded pixels for all admitted work together.
    pub fn with_pixel_budget(mut self, pixels: u64) -> Self {
        let units = pixels.div_ceil(PIXEL_UNIT).clamp(1, u64::from(u32::MAX));
        self.pixels = Arc::new(Semaphore::new(units as usize));
        self.pixel_budget = units * PIXEL_UNIT;
        self
    }

    /// Admits one request that will hold `pixels` decoded pixels (0: no images), or refuses
    /// with RESOURCE_EXHAUSTED when `capacity` requests, or the pixel budget, are taken.
    pub fn admit(&self, pixels: u64) -> Result<Admission> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| Error::Overloaded(self.capacity))?;
        let pixels = match pixels {
            0 => None,
            px => {
                let units = u32::try_from(px.div_ceil(PIXEL_UNIT)).unwrap_or(u32::MAX);
                let held = self.pixel_budget - self.pixels.available_permits() as u64 * PIXEL_UNIT;
                Some(self.pixels.clone().try_acquire_many_owned(units).map_err(|_| Error::OverPixelBudget {
                    held,
                    wanted: px,
                    budget: self.pixel_budget,
                })?)
            }
        };
        self.metrics.inflight.inc();
        Ok(Admission { _permit: permit, _pixels: pixels, metrics: self.metrics.clone() })
    }

    /// Hands admitted work to the workers.
    pub fn submit(&self, work: Work) -> Result<()> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = tx.as_ref() else { return Err(Error::Draining) };
        // Counted before it can be taken off, so the gauge never goes below zero.
        self.metrics.queue_depth.inc();
        match tx.try_send(work) {
            Ok(()) => Ok(()),
            // Cannot happen while every job holds a permit (channel size = permits), but a full
            // channel must shed load, never block the runtime.
            Err(e) => {
                self.metrics.queue_depth.dec();
                match e {
                    TrySendError::Full(_) => Err(Error::Overloaded(self.capacity)),
                    TrySendError::Disconnected(_) => Err(Error::Internal("the model workers have stopped".into())),
                }
            }
        }
    }

    /// Requests admitted and not yet answered (queued, decoding or running).
    pub fn admitted(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    /// Waits until every admitted request has given its slot back (or `deadline` passes):
    /// true when none is left. Takes every permit while it waits, so nothing new is admitted.
    pub async fn drained(&self, deadline: Instant) -> bool {
        let all = async {
            let mut held = Vec::new();
            let mut left = self.capacity;
            while left > 0 {
                let n = u32::try_from(left).unwrap_or(u32::MAX);
                held.push(self.permits.acquire_many(n).await?);
                left -= n as usize;
            }
            Ok::<_, tokio::sync::AcquireError>(held)
        };
        matches!(tokio::time::timeout_at(deadline.into(), all).await, Ok(Ok(_)))
    }

    /// Closes the queue: later submits fail, and the workers exit once it is empty.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// A test hook that holds every batch before it runs, so tests can make the worker "slow"
/// deterministically (overload, deadline and drain tests). Open by default.
#[derive(Clone, Default)]
pub struct Gate {
    inner: Arc<GateInner>,
}

#[derive(Default)]
struct GateInner {
    /// Whether batches may pass; guarded by the mutex so waiters see changes with the condvar.
    closed: Mutex<bool>,
    changed: Condvar,
    waiting: AtomicUsize,
    passed: AtomicUsize,
}

impl Gate {
    /// A closed gate: batches wait at it until [`Gate::open`].
    pub fn closed() -> Self {
        let g = Self::default();
        g.close();
        g
    }

    /// Holds batches from now on.
    pub fn close(&self) {
        *self.inner.closed.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }

    /// Lets every waiting and future batch through.
    pub fn open(&self) {
        *self.inner.closed.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.inner.changed.notify_all();
    }

    /// Batches currently waiting at the gate.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::SeqCst)
    }

    /// Batches that went through.
    pub fn passed(&self) -> usize {
        self.inner.passed.load(Ordering::SeqCst)
    }

    /// Waits (async) until `n` batches wait at the gate; panics after 30 s (tests only).
    pub async fn wait_for_waiting(&self, n: usize) {
        let start = Instant::now();
        while self.waiting() < n {
            assert!(start.elapsed() < Duration::from_secs(30), "gate: {} batches waiting, expected {n}", self.waiting());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Called by a worker before running a batch: blocks while the gate is closed.
    pub(crate) fn pass(&self) {
        let mut closed = self.inner.closed.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.waiting.fetch_add(1, Ordering::SeqCst);
        while *closed {
            closed = self.inner.changed.wait(closed).unwrap_or_else(|e| e.into_inner());
        }
        self.inner.waiting.fetch_sub(1, Ordering::SeqCst);
        self.inner.passed.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_sheds_beyond_capacity_and_frees_on_drop() {
        let metrics = Arc::new(Metrics::new());
        let (q, _rx) = Queue::new(2, metrics.clone());
        let a = q.admit(0).unwrap();
        let _b = q.admit(0).unwrap();
        assert!(matches!(q.admit(0), Err(Error::Overloaded(2))));
        assert_eq!(metrics.inflight.get(), 2);
        drop(a);
        assert!(q.admit(0).is_ok());
    }

    #[test]
    fn the_pixel_budget_sheds_beside_the_request_count() {
        let metrics = Arc::new(Metrics::new());
        let (q, _rx) = Queue::new(8, metrics.clone());
        let q = q.with_pixel_budget(10 * PIXEL_UNIT);
        let a = q.admit(6 * PIXEL_UNIT).unwrap();
        let err = q.admit(5 * PIXEL_UNIT).err().expect("over the pixel budget");
        assert!(matches!(err, Error::OverPixelBudget { held, budget, .. } if held == 6 * PIXEL_UNIT && budget == 10 * PIXEL_UNIT), "{err:?}");
        assert_eq!(metrics.inflight.get(), 1, "a refused request is not counted");
        assert_eq!(q.admitted(), 1, "a refused request gives its slot back");
        let _b = q.admit(4 * PIXEL_UNIT).unwrap();
        let _c = q.admit(0).unwrap();
        drop(a);
        assert!(q.admit(6 * PIXEL_UNIT).is_ok());
    }

    #[tokio::test]
    async fn the_drain_waits_for_the_last_slot_and_gives_up_at_its_deadline() {
        let (q, _jobs) = Queue::new(3, Arc::new(Metrics::new()));
        assert!(q.drained(Instant::now()).await, "nothing admitted: drained at once");
        let held = q.admit(0).unwrap();
        let t = Instant::now();
        assert!(!q.drained(t + Duration::from_millis(50)).await, "a held slot keeps the drain waiting");
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert!(q.admit(0).is_ok(), "a drain that gave up takes no slot");
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(held);
        });
        assert!(q.drained(Instant::now() + Duration::from_secs(30)).await, "woken by the last slot, not by polling");
        release.await.unwrap();
        assert_eq!(q.admitted(), 0);
    }

    #[test]
    fn a_closed_gate_holds_a_batch_until_opened() {
        let gate = Gate::closed();
        let g = gate.clone();
        let t = std::thread::spawn(move || g.pass());
        while gate.waiting() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(gate.passed(), 0);
        gate.open();
        t.join().unwrap();
        assert_eq!(gate.passed(), 1);
    }
}

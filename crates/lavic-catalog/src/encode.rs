//! Image -> stored features: hashing, decoding and AnyRes preprocessing on all cores (scoped
//! threads), one batched vision pass per batch (candle parallelises it on CPU; the GPU when the
//! encoder lives there), optional projection, f16 conversion; and build progress reporting
//! (a bar on a terminal, periodic log lines otherwise).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use half::f16;
use lavic_model::{anyres, ImageEncoder};
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::format::StoreForm;

/// sha256 of image bytes.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The image key of an item whose image is missing (all its features are the white image's).
pub(crate) const MISSING_SHA: [u8; 32] = [0; 32];

/// An image made ready for the vision tower, or why it is not needed / not usable.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// Normalised views (`[5, 3, S, S]` flattened) of the image with this sha256.
    Views { sha: [u8; 32], views: Vec<f32> },
    /// Features for this sha256 already exist; the image was not decoded.
    Known { sha: [u8; 32] },
    /// No image file: the white image stands in.
    Missing,
    /// Unreadable, undecodable or over the decoding limits.
    Failed(String),
}

/// Hashes `bytes`; decodes and preprocesses them unless `known(sha)` says the features exist.
pub(crate) fn prepare_bytes(encoder: &ImageEncoder, bytes: &[u8], known: &(dyn Fn(&[u8; 32]) -> bool + Sync)) -> Prepared {
    let sha = sha256(bytes);
    if known(&sha) {
        return Prepared::Known { sha };
    }
    match encoder.decode(bytes) {
        Ok(img) => Prepared::Views { sha, views: anyres::preprocess(&img, encoder.anyres()).0 },
        Err(lavic_model::Error::Image(reason)) => Prepared::Failed(reason),
        Err(e) => Prepared::Failed(e.to_string()),
    }
}

/// Normalised views of the reference's white fallback image.
pub(crate) fn white_views(encoder: &ImageEncoder) -> Vec<f32> {
    anyres::preprocess(&encoder.white_image(), encoder.anyres()).0
}

/// Values per view stored for `form`: the vision width, or the projector's output size.
pub(crate) fn stored_width(encoder: &ImageEncoder, form: StoreForm) -> Result<usize> {
    match form {
        StoreForm::Cls => Ok(encoder.vision_width()),
        StoreForm::Projected => {
            let probe = Tensor::zeros((1, encoder.vision_width()), encoder.dtype(), encoder.device())?;
            Ok(encoder.project(&probe)?.dim(1)?)
        }
    }
}

/// Runs the vision tower (and the projector for `Projected`) on a batch of prepared views in one
/// pass; returns each image's f16 features, or why they are unusable (non-finite values).
pub(crate) fn encode_views(encoder: &ImageEncoder, views: &[Vec<f32>], form: StoreForm) -> Result<Vec<std::result::Result<Vec<u8>, String>>> {
    let pixels = anyres::stack_views(views, encoder.anyres(), encoder.device())?;
    let cls = encoder.cls_from_pixels(&pixels)?;
    let stored = match form {
        StoreForm::Cls => cls,
        StoreForm::Projected => encoder.project(&cls)?,
    };
    to_f16_items(&stored)
}

/// Splits `[N, 5, w]` into N little-endian f16 byte vectors, refusing non-finite values.
pub(crate) fn to_f16_items(t: &Tensor) -> Result<Vec<std::result::Result<Vec<u8>, String>>> {
    let n = t.dim(0)?;
    let values = t.to_dtype(DType::F16)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f16>()?;
    let per = values.len() / n.max(1);
    Ok(values
        .chunks(per.max(1))
        .take(n)
        .map(|c| {
            if c.iter().all(|v| v.is_finite()) {
                Ok(c.iter().flat_map(|v| v.to_le_bytes()).collect())
            } else {
                Err("the vision tower produced non-finite features (NaN, or beyond the f16 range)".to_string())
            }
        })
        .collect())
}

/// Applies `f` to every item on `threads` scoped threads; results keep the input order.
pub(crate) fn parallel_map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut out: Vec<(usize, R)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= items.len() {
                            break mine;
                        }
                        mine.push((i, f(&items[i])));
                    }
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("worker thread panicked")).collect()
    });
    out.sort_unstable_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// Worker threads for image preparation.
pub(crate) fn cpu_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// How a build reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, log lines otherwise.
    #[default]
    Auto,
    /// Always a bar (on stderr).
    Bar,
    /// A `tracing` info line every 10 seconds.
    Log,
    /// Nothing.
    Off,
}

/// Items processed so far, with rate and ETA.
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    log: bool,
    total: u64,
    done: u64,
    start: Instant,
    last_log: Instant,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    pub fn new(total: u64, mode: ProgressMode) -> Self {
        let bar_mode = match mode {
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Bar => true,
            ProgressMode::Log | ProgressMode::Off => false,
        };
        let bar = bar_mode.then(|| {
            let b = indicatif::ProgressBar::new(total);
            let style = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} items  {per_sec}  elapsed {elapsed_precise}  ETA {eta_precise}",
            )
            .expect("valid template");
            b.set_style(style);
            b
        });
        let log = !bar_mode && mode != ProgressMode::Off;
        let now = Instant::now();
        Self { bar, log, total, done: 0, start: now, last_log: now }
    }

    pub fn inc(&mut self, n: u64) {
        self.done += n;
        if let Some(b) = &self.bar {
            b.inc(n);
        } else if self.log && self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            self.log_line();
        }
    }

    fn log_line(&self) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = self.done as f64 / secs;
        let eta = if rate > 0.0 { (self.total.saturating_sub(self.done)) as f64 / rate } else { f64::NAN };
        tracing::info!(done = self.done, total = self.total, items_per_sec = format!("{rate:.1}"), eta_secs = format!("{eta:.0}"), "catalog build progress");
    }

    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish();
        } else if self.log {
            self.log_line();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_map_keeps_order() {
        let xs: Vec<u32> = (0..100).collect();
        assert_eq!(parallel_map(&xs, 4, |x| x * 2), xs.iter().map(|x| x * 2).collect::<Vec<_>>());
        assert!(parallel_map(&Vec::<u32>::new(), 4, |x| *x).is_empty());
    }

    #[test]
    fn f16_roundtrip_and_non_finite_refused() {
        let t = Tensor::from_vec(vec![0.5f32, -2.0, 1e6, 3.0], (2, 1, 2), &Device::Cpu).unwrap();
        let items = to_f16_items(&t).unwrap();
        assert!(items[0].is_ok());
        assert!(items[1].is_err(), "1e6 overflows f16");
    }
}

//! Progress of a long CLI run on stderr: a bar redrawn in place on a terminal, a log line every
//! 10 seconds otherwise (CI logs, `nohup`), or nothing.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::ValueEnum;

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ProgressArg {
    /// A bar on a terminal, a line every 10 s otherwise.
    #[default]
    Auto,
    /// Always a bar.
    Bar,
    /// A line every 10 s.
    Log,
    /// Nothing.
    Off,
}

/// Done / total with rate and ETA.
pub struct Progress {
    label: &'static str,
    total: usize,
    done: usize,
    start: Instant,
    last: Option<Instant>,
    bar: bool,
    log: bool,
}

const BAR_EVERY: Duration = Duration::from_millis(200);
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    /// Starts counting `total` units of `label` (e.g. "conversations").
    pub fn new(label: &'static str, total: usize, mode: ProgressArg) -> Self {
        let bar = match mode {
            ProgressArg::Auto => std::io::stderr().is_terminal(),
            ProgressArg::Bar => true,
            ProgressArg::Log | ProgressArg::Off => false,
        };
        let log = !bar && mode != ProgressArg::Off;
        let start = Instant::now();
        // The bar draws at once; log lines start after the first interval.
        Self { label, total, done: 0, start, last: (!bar).then_some(start), bar, log }
    }

    /// Counts `n` more units done.
    pub fn inc(&mut self, n: usize) {
        self.done += n;
        let every = if self.bar { BAR_EVERY } else { LOG_EVERY };
        if (self.bar || self.log) && self.last.is_none_or(|t| t.elapsed() >= every) {
            self.last = Some(Instant::now());
            self.draw(false);
        }
    }

    /// Draws the final state (and ends the bar's line).
    pub fn finish(&mut self) {
        if self.bar || self.log {
            self.draw(true);
        }
    }

    fn draw(&self, last: bool) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = self.done as f64 / secs;
        let left = self.total.saturating_sub(self.done) as f64;
        let eta = if rate > 0.0 { format!("{:.0}s", left / rate) } else { "?".into() };
        let mut err = std::io::stderr().lock();
        if self.bar {
            const WIDTH: usize = 30;
            let filled = (self.done * WIDTH).checked_div(self.total).unwrap_or(WIDTH).min(WIDTH);
            let _ = write!(
                err,
                "\r[{}{}] {}/{} {}  {rate:.1}/s  ETA {eta}   ",
                "#".repeat(filled),
                ".".repeat(WIDTH - filled),
                self.done,
                self.total,
                self.label
            );
            if last {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "progress: {}/{} {}, {rate:.1}/s, ETA {eta}", self.done, self.total, self.label);
        }
        let _ = err.flush();
    }
}

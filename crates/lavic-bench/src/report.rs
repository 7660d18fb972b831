//! The run report in ghz's schema (`runner.Report` of ghz: `count`, `total`, `average`, `fastest`,
//! `slowest` in nanoseconds, `rps`, `errorDistribution`, `statusCodeDistribution`,
//! `latencyDistribution` (p10..p99), `histogram` (11 marks in seconds), `details`, `options`, `date`,
//! `endReason`), computed as ghz does, and its printers: ghz's summary text, CSV, JSON and pretty
//! JSON. Dashboards and scripts built on ghz read it unchanged.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// One finished call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallResult {
    /// When it was sent.
    pub timestamp: SystemTime,
    /// How long it took.
    pub latency: Duration,
    /// gRPC status code name as grpc-go spells it (`OK`, `NotFound`, `Canceled`, ...).
    pub status: &'static str,
    /// ghz's error text (`rpc error: code = X desc = ...`), empty for OK.
    pub error: String,
}

/// grpc-go's name of a status code (the keys of ghz's `statusCodeDistribution`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The run settings echoed in the report (ghz's `options`; durations in nanoseconds).
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// Target.
    pub host: String,
    /// Method.
    pub call: String,
    /// Plaintext.
    pub insecure: bool,
    /// `-n` (0 when the run was bounded by `-z`).
    #[serde(skip_serializing_if = "is_zero")]
    pub total: u64,
    /// `-c`.
    pub concurrency: u64,
    /// `--connections`.
    pub connections: u64,
    /// `--rps` (0: none).
    #[serde(skip_serializing_if = "is_zero")]
    pub rps: u64,
    /// `-z` in ns.
    #[serde(skip_serializing_if = "is_zero")]
    pub duration: u64,
    /// `-x` in ns.
    #[serde(rename = "max-duration", skip_serializing_if = "is_zero")]
    pub max_duration: u64,
    /// `-t` in ns (0: none).
    #[serde(skip_serializing_if = "is_zero")]
    pub timeout: u64,
    /// `--connect-timeout` in ns.
    #[serde(rename = "dial-timeout")]
    pub dial_timeout: u64,
    /// `--skipFirst`.
    #[serde(rename = "skipFirst", skip_serializing_if = "is_zero")]
    pub skip_first: u64,
    /// `--count-errors`.
    #[serde(rename = "count-errors")]
    pub count_errors: bool,
    /// The call data as given.
    pub data: serde_json::Value,
    /// Request metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Always false (no binary data).
    pub binary: bool,
    /// Cores of this machine.
    #[serde(rename = "CPUs")]
    pub cpus: usize,
    /// `--name`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

/// One percentile of ghz's `latencyDistribution`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyDistribution {
    /// 10, 25, 50, 75, 90, 95 or 99.
    pub percentage: u32,
    /// Nanoseconds.
    pub latency: u64,
}

/// One bucket of ghz's `histogram`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bucket {
    /// Upper mark in seconds.
    pub mark: f64,
    /// Latencies at or under the mark (and over the previous one).
    pub count: u64,
    /// `count` over the latencies counted.
    pub frequency: f64,
}

/// One call in ghz's `details`.
#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    /// RFC 3339 with nanoseconds.
    pub timestamp: String,
    /// Nanoseconds.
    pub latency: u64,
    /// Error text, empty for OK.
    pub error: String,
    /// Status code name.
    pub status: String,
}

/// ghz's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `--name`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `normal`, `timeout` (-z or -x reached) or `cancel` (interrupted).
    #[serde(rename = "endReason")]
    pub end_reason: String,
    /// The settings.
    pub options: Options,
    /// When the report was made, RFC 3339.
    pub date: String,
    /// Calls counted (successes and errors; after --skipFirst).
    pub count: u64,
    /// Wall time of the run in ns.
    pub total: u64,
    /// Mean latency over every counted call, ns.
    pub average: u64,
    /// Fastest OK call (every call with --count-errors), ns.
    pub fastest: u64,
    /// Slowest OK call (every call with --count-errors), ns.
    pub slowest: u64,
    /// `count / total`.
    pub rps: f64,
    /// Error text -> calls.
    #[serde(rename = "errorDistribution")]
    pub error_distribution: BTreeMap<String, u64>,
    /// Status code name -> calls.
    #[serde(rename = "statusCodeDistribution")]
    pub status_code_distribution: BTreeMap<String, u64>,
    /// p10, p25, p50, p75, p90, p95, p99 of the OK calls (every call with --count-errors).
    #[serde(rename = "latencyDistribution")]
    pub latency_distribution: Vec<LatencyDistribution>,
    /// 11 buckets between the fastest and the slowest.
    pub histogram: Vec<Bucket>,
    /// Every counted call in completion order.
    pub details: Vec<Detail>,
    /// `--tags`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// ghz's percentile rule on sorted seconds: rank `p% * n`, one lower when that is whole.
fn percentiles(sorted: &[f64]) -> Vec<LatencyDistribution> {
    let n = sorted.len() as f64;
    [10u32, 25, 50, 75, 90, 95, 99]
        .iter()
        .map(|&p| {
            let ip = f64::from(p) / 100.0 * n;
            let mut di = ip as usize;
            if ip == di as f64 {
                di = di.saturating_sub(1);
            }
            LatencyDistribution { percentage: p, latency: secs_to_ns(sorted[di.min(sorted.len() - 1)]) }
        })
        .collect()
}

/// ghz's histogram: 10 equal steps from the fastest plus the slowest as the last mark.
fn histogram(sorted: &[f64]) -> Vec<Bucket> {
    const STEPS: usize = 10;
    let (fastest, slowest) = (sorted[0], sorted[sorted.len() - 1]);
    let step = (slowest - fastest) / STEPS as f64;
    let mut marks: Vec<f64> = (0..STEPS).map(|i| fastest + step * i as f64).collect();
    marks.push(slowest);
    let mut counts = vec![0u64; marks.len()];
    let mut b = 0;
    for &x in sorted {
        while x > marks[b] && b < marks.len() - 1 {
            b += 1;
        }
        counts[b] += 1;
    }
    let total = sorted.len() as f64;
    marks.into_iter().zip(counts).map(|(mark, count)| Bucket { mark, count, frequency: count as f64 / total }).collect()
}

fn secs_to_ns(s: f64) -> u64 {
    (s * 1e9).round() as u64
}

/// Builds the report from the results in completion order.
pub fn build(results: &[CallResult], skip_first: usize, count_errors: bool, wall: Duration, options: Options) -> Report {
    let counted = &results[skip_first.min(results.len())..];
    let mut errors = BTreeMap::new();
    let mut statuses = BTreeMap::new();
    for r in counted {
        *statuses.entry(r.status.to_string()).or_insert(0) += 1;
        if !r.error.is_empty() {
            *errors.entry(r.error.clone()).or_insert(0) += 1;
        }
    }
    let count = counted.len() as u64;
    let mut lats: Vec<f64> =
        counted.iter().filter(|r| count_errors || r.error.is_empty()).map(|r| r.latency.as_secs_f64()).collect();
    lats.sort_by(f64::total_cmp);
    let sum: f64 = counted.iter().map(|r| r.latency.as_secs_f64()).sum();
    let (latency_distribution, histogram, fastest, slowest) = if lats.is_empty() {
        (Vec::new(), Vec::new(), 0, 0)
    } else {
        (percentiles(&lats), histogram(&lats), secs_to_ns(lats[0]), secs_to_ns(lats[lats.len() - 1]))
    };
    Report {
        name: options.name.clone(),
        end_reason: String::new(),
        date: rfc3339(SystemTime::now(), false),
        count,
        total: wall.as_nanos() as u64,
        average: if count == 0 { 0 } else { secs_to_ns(sum / count as f64) },
        fastest,
        slowest,
        rps: if wall.is_zero() { 0.0 } else { count as f64 / wall.as_secs_f64() },
        error_distribution: errors,
        status_code_distribution: statuses,
        latency_distribution,
        histogram,
        details: counted
            .iter()
            .map(|r| Detail {
                timestamp: rfc3339(r.timestamp, true),
                latency: r.latency.as_nanos() as u64,
                error: r.error.clone(),
                status: r.status.to_string(),
            })
            .collect(),
        tags: BTreeMap::new(),
        options,
    }
}

/// RFC 3339 in UTC (`2025-11-26T00:43:12Z`), with nanoseconds (trailing zeros trimmed, as Go's
/// RFC3339Nano) when `nanos`.
pub fn rfc3339(t: SystemTime, nanos: bool) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut s = format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    if nanos && d.subsec_nanos() > 0 {
        let frac = format!("{:09}", d.subsec_nanos());
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// ghz's duration display (`1.09 s`, `317.28 ms`, `40.13 μs`, `950 ns`).
pub fn format_ns(ns: u64) -> String {
    let v = ns as f64;
    if ns >= 1_000_000_000 {
        format!("{:.2} s", v / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.2} ms", v / 1e6)
    } else if ns >= 1_000 {
        format!("{:.2} μs", v / 1e3)
    } else {
        format!("{ns} ns")
    }
}

impl Report {
    /// ghz's default text summary.
    pub fn summary(&self) -> String {
        let mut s = String::from("\nSummary:\n");
        if !self.name.is_empty() {
            let _ = writeln!(s, "  Name:\t\t{}", self.name);
        }
        let _ = writeln!(s, "  Count:\t{}", self.count);
        let _ = writeln!(s, "  Total:\t{}", format_ns(self.total));
        let _ = writeln!(s, "  Slowest:\t{}", format_ns(self.slowest));
        let _ = writeln!(s, "  Fastest:\t{}", format_ns(self.fastest));
        let _ = writeln!(s, "  Average:\t{}", format_ns(self.average));
        let _ = writeln!(s, "  Requests/sec:\t{:.2}", self.rps);
        s.push_str("\nResponse time histogram:\n");
        let max = self.histogram.iter().map(|b| b.count).max().unwrap_or(0);
        for b in &self.histogram {
            let bar = (b.count * 40 + max / 2).checked_div(max).unwrap_or(0) as usize;
            let _ = writeln!(s, "  {:.3} [{}]\t|{}", b.mark * 1e3, b.count, "∎".repeat(bar));
        }
        s.push_str("\nLatency distribution:");
        for l in &self.latency_distribution {
            let _ = write!(s, "\n  {} % in {} ", l.percentage, format_ns(l.latency));
        }
        s.push_str("\n\n");
        if !self.status_code_distribution.is_empty() {
            s.push_str("Status code distribution:\n");
            for (code, n) in &self.status_code_distribution {
                let _ = writeln!(s, "  [{code}]\t{n} responses");
            }
        }
        if !self.error_distribution.is_empty() {
            s.push_str("\nError distribution:\n");
            for (e, n) in &self.error_distribution {
                let _ = writeln!(s, "  [{n}]\t{e}");
            }
        }
        s
    }

    /// ghz's CSV: one line per call (`duration (ms),status,error`).
    pub fn csv(&self) -> String {
        let mut s = String::from("duration (ms),status,error\n");
        for d in &self.details {
            let e = if d.error.contains([',', '"', '\n']) { format!("\"{}\"", d.error.replace('"', "\"\"")) } else { d.error.clone() };
            let _ = writeln!(s, "{:.2},{},{e}", d.latency as f64 / 1e6, d.status);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ms: u64, status: &'static str) -> CallResult {
        let error = if status == "OK" { String::new() } else { format!("rpc error: code = {status} desc = x") };
        CallResult { timestamp: UNIX_EPOCH, latency: Duration::from_millis(ms), status, error }
    }

    fn options() -> Options {
        Options {
            host: "h".into(),
            call: "c".into(),
            insecure: true,
            total: 0,
            concurrency: 1,
            connections: 1,
            rps: 0,
            duration: 0,
            max_duration: 0,
            timeout: 0,
            dial_timeout: 0,
            skip_first: 0,
            count_errors: false,
            data: serde_json::json!({}),
            metadata: None,
            binary: false,
            cpus: 1,
            name: String::new(),
        }
    }

    #[test]
    fn statistics_follow_ghz() {
        let mut rs: Vec<CallResult> = (1..=10).map(|i| result(i * 10, "OK")).collect();
        rs.push(result(1000, "NotFound"));
        let r = build(&rs, 0, false, Duration::from_secs(2), options());
        assert_eq!(r.count, 11);
        assert_eq!(r.status_code_distribution["OK"] + r.status_code_distribution["NotFound"], 11);
        assert_eq!(r.error_distribution.values().sum::<u64>(), 1);
        assert_eq!((r.fastest, r.slowest), (10_000_000, 100_000_000), "errors are left out unless --count-errors");
        assert_eq!(r.average, 140_909_091, "the average counts every call: 1550 ms / 11");
        let p: Vec<(u32, u64)> = r.latency_distribution.iter().map(|l| (l.percentage, l.latency / 1_000_000)).collect();
        assert_eq!(p, [(10, 10), (25, 30), (50, 50), (75, 80), (90, 90), (95, 100), (99, 100)]);
        assert_eq!(r.histogram.len(), 11);
        assert_eq!(r.histogram.iter().map(|b| b.count).sum::<u64>(), 10);
        assert!((r.rps - 5.5).abs() < 1e-9);
        let r = build(&rs, 1, true, Duration::from_secs(1), options());
        assert_eq!((r.count, r.slowest), (10, 1_000_000_000));
        assert!(r.csv().starts_with("duration (ms),status,error\n20.00,OK,\n"));
        assert!(r.summary().contains("[NotFound]\t1 responses"));
    }

    #[test]
    fn dates_and_durations_print_like_go() {
        let t = UNIX_EPOCH + Duration::new(1_764_117_792, 120_000_000);
        assert_eq!(rfc3339(t, false), "2025-11-26T00:43:12Z");
        assert_eq!(rfc3339(t, true), "2025-11-26T00:43:12.12Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400), false), "2000-02-29T00:00:00Z");
        assert_eq!((format_ns(950), format_ns(40_130), format_ns(317_280_000)), ("950 ns".into(), "40.13 μs".into(), "317.28 ms".into()));
    }
}

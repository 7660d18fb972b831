//! `lavic-bench`: a ghz-compatible gRPC load generator for lavic (an async tonic client with the
//! lavic protos compiled in). ghz's flags where they apply (`--call`, `-d`/`-D`, `-m`, `-n`, `-c`,
//! `--connections`, `-z`, `-x`, `--rps`, `-t`, `--skipFirst`, `--count-errors`, `-O`, `-o`,
//! `--name`, `--tags`, `--config` with ghz's JSON config keys) and ghz's report schema, so a
//! dashboard built on ghz reads its `-O json` output. Loopback only unless `--allow-remote`;
//! requests and duration are capped.

mod calldata;
mod report;
mod runner;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use serde_json::Value;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use calldata::{CallData, Method};
use runner::{DurationStop, Plan};

/// Most requests one run may send.
const MAX_TOTAL: u64 = 100_000;
/// Longest run (`-z`, `-x`).
const MAX_DURATION: Duration = Duration::from_secs(600);
/// Most workers.
const MAX_CONCURRENCY: u64 = 1_000;
/// Most connections.
const MAX_CONNECTIONS: u64 = 100;

/// Report formats (`-O`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// ghz's text summary.
    Summary,
    /// One line per call: `duration (ms),status,error`.
    Csv,
    /// The report as JSON (ghz's schema).
    Json,
    /// The report as indented JSON.
    Pretty,
}

/// ghz-compatible load generator for the lavic gRPC service.
#[derive(Debug, Parser)]
#[command(name = "lavic-bench", version, about, after_help = "Durations as in ghz/Go: 500ms, 20s, 1m30s. Targets must be loopback (127.0.0.1, ::1, localhost) unless --allow-remote.")]
struct Cli {
    /// Server address, host:port (ghz's positional host; `dns:///` is accepted).
    host: Option<String>,
    /// ghz JSON config file; flags override its keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Method: lavic.v1.Recommender.Recommend (default) or lavic.v1.Recommender.ModelInfo.
    #[arg(long)]
    call: Option<String>,
    /// Call data as JSON: an object, or an array used round-robin; `@` reads stdin.
    #[arg(short = 'd', long)]
    data: Option<String>,
    /// Call data JSON file.
    #[arg(short = 'D', long = "data-file")]
    data_file: Option<PathBuf>,
    /// Request metadata as a JSON object of strings.
    #[arg(short = 'm', long)]
    metadata: Option<String>,
    /// Requests to send [default: 200].
    #[arg(short = 'n', long)]
    total: Option<u64>,
    /// Workers sending concurrently [default: 50].
    #[arg(short = 'c', long)]
    concurrency: Option<u64>,
    /// HTTP/2 connections the workers share [default: 1].
    #[arg(long)]
    connections: Option<u64>,
    /// Send for this long instead of -n requests (e.g. 30s).
    #[arg(short = 'z', long)]
    duration: Option<String>,
    /// Stop after this long even if -n requests were not all sent.
    #[arg(short = 'x', long = "max-duration")]
    max_duration: Option<String>,
    /// Calls in flight when the duration ends: close (cancel, count as Canceled), ignore, wait.
    #[arg(long = "duration-stop", value_enum)]
    duration_stop: Option<DurationStop>,
    /// Requests per second over all workers [default: no limit].
    #[arg(short = 'r', long, visible_alias = "qps")]
    rps: Option<u64>,
    /// Per-call timeout; 0 for none [default: 20s].
    #[arg(short = 't', long)]
    timeout: Option<String>,
    /// Connection timeout [default: 10s].
    #[arg(long = "connect-timeout")]
    connect_timeout: Option<String>,
    /// Plaintext (the default; accepted for ghz compatibility).
    #[arg(long)]
    insecure: bool,
    /// TLS: trust this CA certificate (PEM).
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// TLS: server name to verify.
    #[arg(long)]
    cname: Option<String>,
    /// Leave the first N results out of the statistics.
    #[arg(long = "skipFirst", visible_alias = "skip-first")]
    skip_first: Option<u64>,
    /// Count non-OK calls in the latency statistics too.
    #[arg(long = "count-errors")]
    count_errors: bool,
    /// Report format.
    #[arg(short = 'O', long = "format", value_enum)]
    format: Option<Format>,
    /// Write the report here instead of stdout.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    /// Name of the run (in the report).
    #[arg(long)]
    name: Option<String>,
    /// Tags as a JSON object of strings (in the report).
    #[arg(long)]
    tags: Option<String>,
    /// ghz's proto source flags: accepted and ignored (the lavic protos are compiled in).
    #[arg(long, hide = true)]
    proto: Option<String>,
    /// Accepted and ignored (see --proto).
    #[arg(short = 'i', long = "import-paths", hide = true)]
    import_paths: Option<String>,
    /// Allow a target that is not loopback. Only load-test services you own.
    #[arg(long)]
    allow_remote: bool,
}

/// Go's `time.ParseDuration` for what ghz users write: `1h2m3.5s`, `500ms`, `20us`, `0`.
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        bail!("empty duration");
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let n: f64 = rest[..num_len].parse().with_context(|| format!("duration {s:?}: expected a number"))?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => bail!("duration {s:?}: unknown unit {u:?} (ns, us, ms, s, m, h)"),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// The settings of a run: flags over the config file over ghz's defaults.
struct Settings {
    host: String,
    method: Method,
    data: Value,
    metadata: Option<Value>,
    plan: Plan,
    connections: u64,
    connect_timeout: Duration,
    cacert: Option<PathBuf>,
    cname: Option<String>,
    skip_first: u64,
    count_errors: bool,
    format: Format,
    output: Option<PathBuf>,
    name: String,
    tags: BTreeMap<String, String>,
    total_flag: u64,
    duration_flag: Duration,
    max_duration_flag: Duration,
}

fn json_arg(what: &str, s: &str) -> anyhow::Result<Value> {
    serde_json::from_str(s).with_context(|| format!("{what} is not valid JSON"))
}

fn resolve(cli: Cli) -> anyhow::Result<Settings> {
    let cfg: serde_json::Map<String, Value> = match &cli.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            match serde_json::from_str(&text).with_context(|| format!("{} is not a JSON ghz config", p.display()))? {
                Value::Object(o) => o,
                _ => bail!("{}: expected a JSON object", p.display()),
            }
        }
        None => Default::default(),
    };
    let cs = |k: &str| cfg.get(k).and_then(Value::as_str).map(str::to_string);
    let cu = |k: &str| cfg.get(k).and_then(Value::as_u64);
    let cb = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
    let dur = |flag: Option<String>, key: &str| -> anyhow::Result<Option<Duration>> {
        flag.or_else(|| cs(key)).map(|s| parse_duration(&s).with_context(|| format!("--{key}"))).transpose()
    };

    let host = cli.host.or_else(|| cs("host")).context("give the server address (host:port), e.g. 127.0.0.1:50051")?;
    let method = Method::parse(&cli.call.or_else(|| cs("call")).unwrap_or_else(|| Method::Recommend.full_name().into())).map_err(anyhow::Error::msg)?;
    let data = match (cli.data, cli.data_file, cfg.get("data"), cs("data-file")) {
        (Some(d), _, _, _) if d == "@" => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            json_arg("the data on stdin", &s)?
        }
        (Some(d), _, _, _) => json_arg("-d", &d)?,
        (None, Some(p), _, _) => json_arg(&p.display().to_string(), &std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?)?,
        (None, None, Some(v), _) => v.clone(),
        (None, None, None, Some(p)) => json_arg(&p, &std::fs::read_to_string(&p).with_context(|| format!("cannot read {p}"))?)?,
        (None, None, None, None) if method == Method::ModelInfo => Value::Object(Default::default()),
        _ => bail!("give the call data with -d JSON or -D FILE"),
    };
    let metadata = match (cli.metadata, cfg.get("metadata")) {
        (Some(m), _) => Some(json_arg("-m", &m)?),
        (None, Some(v)) => Some(v.clone()),
        _ => None,
    };
    let tags: BTreeMap<String, String> = match (cli.tags, cfg.get("tags")) {
        (Some(t), _) => serde_json::from_value(json_arg("--tags", &t)?).context("--tags must be an object of strings")?,
        (None, Some(v)) => serde_json::from_value(v.clone()).context("tags must be an object of strings")?,
        _ => BTreeMap::new(),
    };
    let duration = dur(cli.duration, "duration")?.filter(|d| !d.is_zero());
    let max_duration = dur(cli.max_duration, "max-duration")?.filter(|d| !d.is_zero());
    let timeout = dur(cli.timeout, "timeout")?.unwrap_or(Duration::from_secs(20));
    let connect_timeout = dur(cli.connect_timeout, "connect-timeout")?.unwrap_or(Duration::from_secs(10));
    let total_flag = cli.total.or_else(|| cu("total")).unwrap_or(if duration.is_some() { 0 } else { 200 });
    let concurrency = cli.concurrency.or_else(|| cu("concurrency")).unwrap_or(50);
    let connections = cli.connections.or_else(|| cu("connections")).unwrap_or(1);
    let rps = cli.rps.or_else(|| cu("rps")).or_else(|| cu("qps")).filter(|r| *r > 0);
    let duration_stop = match (cli.duration_stop, cs("duration-stop")) {
        (Some(d), _) => d,
        (None, Some(s)) => DurationStop::from_str(&s, true).map_err(|e| anyhow::anyhow!("duration-stop: {e}"))?,
        _ => DurationStop::Close,
    };
    let format = match (cli.format, cs("format")) {
        (Some(f), _) => f,
        (None, Some(s)) => Format::from_str(&s, true).map_err(|_| anyhow::anyhow!("format {s:?}: lavic-bench writes summary, csv, json or pretty"))?,
        _ => Format::Summary,
    };

    // Bounds: a run always ends, and never floods anything.
    if total_flag > MAX_TOTAL {
        bail!("-n {total_flag} is over the cap of {MAX_TOTAL} requests");
    }
    for (flag, d) in [("-z", duration), ("-x", max_duration)] {
        if d.is_some_and(|d| d > MAX_DURATION) {
            bail!("{flag} is over the cap of {} s", MAX_DURATION.as_secs());
        }
    }
    if concurrency == 0 || concurrency > MAX_CONCURRENCY {
        bail!("-c must be 1..={MAX_CONCURRENCY}");
    }
    if connections == 0 || connections > MAX_CONNECTIONS || connections > concurrency {
        bail!("--connections must be 1..={MAX_CONNECTIONS} and at most -c");
    }
    if duration.is_none() && total_flag < concurrency {
        bail!("-n ({total_flag}) cannot be smaller than -c ({concurrency})");
    }
    if rps.is_some_and(|r| r > 100_000) {
        bail!("--rps is over the cap of 100000");
    }
    // -z: as many requests as the duration allows (ghz ignores -n then; the cap still holds);
    // -x: -n requests, cut off when the duration ends.
    let total = if duration.is_some() { MAX_TOTAL } else { total_flag };
    let plan = Plan {
        total,
        concurrency: concurrency as usize,
        duration: duration.or(max_duration),
        duration_stop,
        rps: rps.map(|r| r as u32),
        timeout: (!timeout.is_zero()).then_some(timeout),
        metadata: metadata.clone(),
    };
    let _ = (cli.insecure || cb("insecure"), cli.proto, cli.import_paths);
    Ok(Settings {
        host,
        method,
        data,
        metadata,
        plan,
        connections,
        connect_timeout,
        cacert: cli.cacert.or_else(|| cs("cacert").map(PathBuf::from)),
        cname: cli.cname.or_else(|| cs("cname")),
        skip_first: cli.skip_first.or_else(|| cu("skipFirst")).unwrap_or(0),
        count_errors: cli.count_errors || cb("count-errors"),
        format,
        output: cli.output.or_else(|| cs("output").map(PathBuf::from)),
        name: cli.name.or_else(|| cs("name")).unwrap_or_default(),
        tags,
        total_flag,
        duration_flag: duration.unwrap_or_default(),
        max_duration_flag: max_duration.unwrap_or_default(),
    })
}

/// `host:port` without a scheme or `dns:///`, and its host part.
fn split_target(target: &str) -> (String, String) {
    let t = target.trim_start_matches("dns:///").trim_start_matches("dns:").trim_start_matches("http://").trim_start_matches("https://");
    let t = t.trim_end_matches('/').to_string();
    let host = if let Some(rest) = t.strip_prefix('[') {
        rest.split(']').next().unwrap_or("").to_string()
    } else {
        t.rsplit_once(':').map_or(t.as_str(), |(h, _)| h).to_string()
    };
    (t, host)
}

/// Refuses targets that are not loopback (every address the name resolves to must be).
async fn check_loopback(target: &str) -> anyhow::Result<()> {
    let (hostport, host) = split_target(target);
    if let Ok(ip) = host.parse::<IpAddr>() {
        if ip.is_loopback() {
            return Ok(());
        }
        bail!("{target} is not a loopback address; lavic-bench only loads loopback targets unless --allow-remote (only load-test services you own)");
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(());
    }
    let addrs: Vec<_> = tokio::net::lookup_host(&hostport).await.map(|a| a.collect()).unwrap_or_default();
    if !addrs.is_empty() && addrs.iter().all(|a: &std::net::SocketAddr| a.ip().is_loopback()) {
        return Ok(());
    }
    bail!("{target} does not resolve to loopback only; use --allow-remote to load another machine (only load-test services you own)")
}

async fn connect(s: &Settings) -> anyhow::Result<Vec<Channel>> {
    let (hostport, _) = split_target(&s.host);
    let scheme = if s.cacert.is_some() { "https" } else { "http" };
    let mut e = Endpoint::from_shared(format!("{scheme}://{hostport}"))?.connect_timeout(s.connect_timeout).tcp_nodelay(true);
    if let Some(ca) = &s.cacert {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        if let Some(n) = &s.cname {
            tls = tls.domain_name(n.clone());
        }
        e = e.tls_config(tls)?;
    }
    let mut channels = Vec::with_capacity(s.connections as usize);
    for _ in 0..s.connections {
        // Each connect() opens its own HTTP/2 connection.
        channels.push(e.connect().await.with_context(|| format!("cannot connect to {}", s.host))?);
    }
    Ok(channels)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let allow_remote = cli.allow_remote;
    let s = resolve(cli)?;
    if !allow_remote {
        check_loopback(&s.host).await?;
    }
    let data = CallData::new(s.method, &s.data).map_err(anyhow::Error::msg)?;
    if let Some(m) = &s.metadata {
        let ctx = calldata::CallContext { request_number: 0, worker_id: 0, now: std::time::SystemTime::now() };
        calldata::metadata(m, s.method, &ctx).map_err(anyhow::Error::msg)?;
    }
    let channels = connect(&s).await?;
    let outcome = runner::run(&channels, data, s.plan.clone()).await;
    let options = report::Options {
        host: s.host.clone(),
        call: s.method.full_name().into(),
        insecure: s.cacert.is_none(),
        total: if s.duration_flag.is_zero() { s.total_flag } else { 0 },
        concurrency: s.plan.concurrency as u64,
        connections: s.connections,
        rps: s.plan.rps.map_or(0, u64::from),
        duration: s.duration_flag.as_nanos() as u64,
        max_duration: s.max_duration_flag.as_nanos() as u64,
        timeout: s.plan.timeout.map_or(0, |t| t.as_nanos() as u64),
        dial_timeout: s.connect_timeout.as_nanos() as u64,
        skip_first: s.skip_first,
        count_errors: s.count_errors,
        data: s.data.clone(),
        metadata: s.metadata.clone(),
        binary: false,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        name: s.name.clone(),
    };
    let mut r = report::build(&outcome.results, s.skip_first as usize, s.count_errors, outcome.wall, options);
    r.end_reason = outcome.end_reason.into();
    r.tags = s.tags.clone();
    let text = match s.format {
        Format::Summary => r.summary(),
        Format::Csv => r.csv(),
        Format::Json => serde_json::to_string(&r)? + "\n",
        Format::Pretty => serde_json::to_string_pretty(&r)? + "\n",
    };
    match &s.output {
        Some(p) => std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lavic-bench: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lavic-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("20").is_err());
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn targets_split_and_only_loopback_passes() {
        assert_eq!(split_target("dns:///lavic.svc:50051"), ("lavic.svc:50051".into(), "lavic.svc".into()));
        assert_eq!(split_target("[::1]:50051").1, "::1");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        assert!(rt.block_on(check_loopback("127.0.0.1:50051")).is_ok());
        assert!(rt.block_on(check_loopback("[::1]:1")).is_ok());
        assert!(rt.block_on(check_loopback("localhost:1")).is_ok());
        assert!(rt.block_on(check_loopback("10.1.2.3:50051")).is_err());
        assert!(rt.block_on(check_loopback("192.0.2.1:50051")).is_err());
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("lavic-bench").chain(args.iter().copied()))
    }

    #[test]
    fn caps_and_ghz_rules_are_enforced() {
        let d = r#"{"context": "x", "candidate_ids": ["A", "B"]}"#;
        assert!(resolve(cli(&["-d", d, "127.0.0.1:1"])).is_ok());
        for bad in [
            vec!["-d", d, "-n", "1000000", "127.0.0.1:1"],
            vec!["-d", d, "-z", "2h", "127.0.0.1:1"],
            vec!["-d", d, "-n", "10", "-c", "20", "127.0.0.1:1"],
            vec!["-d", d, "-c", "2", "-n", "4", "--connections", "3", "127.0.0.1:1"],
            vec!["-d", d, "-t", "5x", "127.0.0.1:1"],
            vec!["127.0.0.1:1"],
        ] {
            assert!(resolve(cli(&bad)).is_err(), "{bad:?}");
        }
        let s = resolve(cli(&["-d", d, "-z", "2s", "-c", "4", "127.0.0.1:1"])).unwrap();
        assert_eq!((s.plan.total, s.plan.duration), (MAX_TOTAL, Some(Duration::from_secs(2))));
    }

    #[test]
    fn a_ghz_config_file_is_read_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("lavic-bench-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.json");
        std::fs::write(
            &p,
            r#"{"host": "127.0.0.1:9", "call": "lavic.v1.Recommender.Recommend", "total": 40, "concurrency": 4,
               "connections": 2, "timeout": "30s", "skipFirst": 3, "count-errors": true, "insecure": true,
               "data": {"context": "x", "candidate_ids": ["A", "B"]}, "tags": {"k": "v"}, "name": "n"}"#,
        )
        .unwrap();
        let s = resolve(cli(&["--config", p.to_str().unwrap(), "-c", "8"])).unwrap();
        assert_eq!((s.plan.total, s.plan.concurrency, s.connections, s.skip_first), (40, 8, 2, 3));
        assert_eq!(s.plan.timeout, Some(Duration::from_secs(30)));
        assert!(s.count_errors);
        assert_eq!((s.host.as_str(), s.name.as_str(), s.tags["k"].as_str()), ("127.0.0.1:9", "n", "v"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! The `lavic` binary end to end: `lavic serve` with no model configured and `LAVIC_DEMO=fixture`
//! starts the fixture demo (the default world demo: `demo_serve`); `lavic healthcheck` exits 0 only once SERVING; `lavic recommend` gets an answer; an
//! unknown LAVIC_* variable is warned about; SIGTERM makes it drain and exit 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LAVIC: &str = env!("CARGO_BIN_EXE_lavic");

fn run(args: &[&str]) -> std::process::Output {
    Command::new(LAVIC).args(args).env_remove("LAVIC_GRPC_ADDR").output().unwrap()
}

#[test]
fn serve_healthcheck_recommend_and_sigterm() {
    let mut child = Command::new(LAVIC)
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--log-format", "json"])
        .env("LAVIC_NOT_A_SETTING", "1")
        .env("LAVIC_DEMO", "fixture")
        .env_remove("LAVIC_MODEL_DIR")
        .env_remove("LAVIC_CATALOG_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the JSON log lines on a thread; report the gRPC address and keep every line.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let mut addr = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while addr.is_none() {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("no 'gRPC listening' log line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        if v["message"] == "gRPC listening" {
            addr = v["addr"].as_str().map(str::to_string);
        }
        lines.push(line);
    }
    let addr = addr.unwrap();

    // healthcheck fails until the warm-up passed, then succeeds.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run(&["healthcheck", "--addr", &addr]);
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("SERVING"));
            break;
        }
        assert!(Instant::now() < deadline, "never SERVING: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(run(&["healthcheck", "--addr", &addr, "--service", ""]).status.success());
    assert!(!run(&["healthcheck", "--addr", &addr, "--service", "no.such.Service"]).status.success());

    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("context.txt");
    std::fs::write(&ctx, "<submission>I need a bag with a red strap for work.</submission>\n").unwrap();
    let out = run(&["recommend", "--addr", &addr, "--context-file", ctx.to_str().unwrap(), "--candidates", "DEMO000001,DEMO000002,DEMO000003", "--scores"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "recommend failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("item_id:") && stdout.contains("DEMO00000"), "{stdout}");

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(25);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "lavic did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
    lines.extend(rx.try_iter());
    let all = lines.join("\n");
    assert!(all.contains("LAVIC_NOT_A_SETTING"), "no warning about the unknown variable:\n{all}");
    assert!(all.contains("draining"), "{all}");
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    let out = run(&["healthcheck", "--addr", &addr, "--timeout-ms", "1000"]);
    assert!(!out.status.success());
}

#[test]
fn bad_configuration_is_refused_at_start() {
    let out = Command::new(LAVIC).args(["serve", "--max-candidates", "1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_candidates"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn flags_beat_environment_beat_toml_beat_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("lavic.toml");
    std::fs::write(&toml, "max_batch = 8\nqueue_capacity = 7\nmax_candidates = 12\nlog_format = \"json\"\n").unwrap();
    let out = Command::new(LAVIC)
        .args(["serve", "--config", toml.to_str().unwrap(), "--max-batch", "2", "--print-config"])
        .env("LAVIC_MAX_BATCH", "5")
        .env("LAVIC_QUEUE_CAPACITY", "9")
        .env("LAVIC_CATALOG_TOKEN", "hunter2")
        .env("LAVIC_DEMO", "world")
        .env_remove("LAVIC_DEMO_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(printed["max_batch"].as_integer(), Some(2), "flag beats env and file");
    assert_eq!(printed["queue_capacity"].as_integer(), Some(9), "env beats file");
    assert_eq!(printed["max_candidates"].as_integer(), Some(12), "file beats default");
    assert_eq!(printed["log_format"].as_str(), Some("json"));
    assert_eq!(printed["shutdown_grace_secs"].as_integer(), Some(20), "default");
    assert_eq!(printed["catalog_token"].as_str(), Some("***"), "the token is never printed");
    assert_eq!(printed["demo"].as_str(), Some("world"), "LAVIC_DEMO");
    let out = Command::new(LAVIC).args(["serve", "--print-config"]).env_remove("LAVIC_DEMO").env_remove("LAVIC_CONFIG").output().unwrap();
    let printed: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(printed["demo"].as_str(), Some("fixture"), "the fixture demo is the default until demo/ ships a trained model");

    let out = Command::new(LAVIC).args(["serve", "--print-config"]).env("LAVIC_DTYPE", "fp8").output().unwrap();
    assert!(!out.status.success(), "an invalid LAVIC_DTYPE must be refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("fp8"));
}

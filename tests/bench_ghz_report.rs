//! `lavic-bench -O json` against the real server on loopback: the report has ghz's fields with
//! ghz's types, and its counts add up (successes + errors = requests sent, per status and in the
//! details). The data is an array used round-robin: a valid request and one naming an unknown
//! candidate (NOT_FOUND), so exactly half the calls fail. Also: CSV and summary output, and the
//! refusal of a non-loopback target.

#[path = "server/common.rs"]
mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_lavic-bench");

fn call_data() -> String {
    serde_json::json!([
        {"request_id": "ok-{{.RequestNumber}}", "context": DIALOGUE, "candidate_ids": ["DEMO000001", "DEMO000002", "DEMO000003"]},
        {"requestId": "bad-{{.RequestNumber}}", "context": DIALOGUE, "candidateIds": ["DEMO000001", "NOPE-1"], "mode": "MODE_FREE"}
    ])
    .to_string()
}

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(BENCH).args(args).output().unwrap()
}

fn is_uint(v: &Value) -> bool {
    v.as_u64().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_report_has_ghz_schema_and_counts_add_up() {
    let server = start_serving(config()).await;
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    let (data, o) = (call_data(), out.clone());
    let run = tokio::task::spawn_blocking(move || {
        bench(&[
            "--call", "lavic.v1.Recommender.Recommend", "-d", &data, "-n", "12", "-c", "3", "--connections", "2",
            "-t", "30s", "--insecure", "-O", "json", "-o", o.to_str().unwrap(), "--name", "schema-check",
            "--tags", r#"{"suite": "tests"}"#, &addr,
        ])
    })
    .await
    .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();

    // ghz's top-level fields and their types (durations are integer nanoseconds).
    for key in ["count", "total", "average", "fastest", "slowest"] {
        assert!(is_uint(&r[key]), "{key}: {}", r[key]);
    }
    assert!(r["rps"].is_f64() && r["rps"].as_f64().unwrap() > 0.0);
    assert!(r["date"].is_string() && r["endReason"] == "normal" && r["name"] == "schema-check");
    assert_eq!(r["tags"]["suite"], "tests");
    assert_eq!(r["options"]["call"], "lavic.v1.Recommender.Recommend");
    assert_eq!((r["options"]["total"].as_u64(), r["options"]["concurrency"].as_u64()), (Some(12), Some(3)));
    assert!(r["options"]["timeout"] == 30_000_000_000u64 && r["options"]["insecure"] == true);
    let pct: Vec<u64> = r["latencyDistribution"].as_array().unwrap().iter().map(|l| l["percentage"].as_u64().unwrap()).collect();
    assert_eq!(pct, [10, 25, 50, 75, 90, 95, 99]);
    assert!(r["latencyDistribution"].as_array().unwrap().iter().all(|l| is_uint(&l["latency"]) && l["latency"].as_u64() > Some(0)));
    let hist = r["histogram"].as_array().unwrap();
    assert_eq!(hist.len(), 11);
    assert!(hist.iter().all(|b| b["mark"].is_f64() && is_uint(&b["count"]) && b["frequency"].is_number()));

    // Counts: 12 sent = 6 OK + 6 NOT_FOUND, everywhere.
    let count = r["count"].as_u64().unwrap();
    assert_eq!(count, 12);
    let statuses = r["statusCodeDistribution"].as_object().unwrap();
    assert_eq!(statuses.values().map(|v| v.as_u64().unwrap()).sum::<u64>(), count);
    assert_eq!((statuses["OK"].as_u64(), statuses["NotFound"].as_u64()), (Some(6), Some(6)));
    let errors = r["errorDistribution"].as_object().unwrap();
    assert_eq!(errors.values().map(|v| v.as_u64().unwrap()).sum::<u64>(), 6);
    assert!(errors.keys().all(|e| e.starts_with("rpc error: code = NotFound desc = ") && e.contains("NOPE-1")), "{errors:?}");
    assert_eq!(hist.iter().map(|b| b["count"].as_u64().unwrap()).sum::<u64>(), 6, "the histogram holds the OK calls");
    let details = r["details"].as_array().unwrap();
    assert_eq!(details.len() as u64, count);
    for d in details {
        assert!(d["timestamp"].as_str().unwrap().ends_with('Z') && is_uint(&d["latency"]));
        assert_eq!(d["status"] == "OK", d["error"] == "", "{d}");
    }
    let (fastest, slowest, average) = (r["fastest"].as_u64().unwrap(), r["slowest"].as_u64().unwrap(), r["average"].as_u64().unwrap());
    assert!(fastest > 0 && fastest <= slowest && average > 0);
    assert!(r["total"].as_u64().unwrap() >= slowest);

    // The server counted the same calls.
    assert_eq!(server.metric("lavic_requests_total{method=\"Recommend\",status=\"ok\"}").await, 6.0);

    // CSV and the text summary of the same kind of run.
    let addr = server.addr.to_string();
    let data = call_data();
    let (csv, summary) = tokio::task::spawn_blocking(move || {
        let csv = bench(&["-d", &data, "-n", "4", "-c", "2", "-O", "csv", &addr]);
        let summary = bench(&["-d", &data, "-n", "2", "-c", "1", &addr]);
        (csv, summary)
    })
    .await
    .unwrap();
    let csv = String::from_utf8(csv.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "duration (ms),status,error");
    assert_eq!(lines.len(), 5, "{csv}");
    assert_eq!(lines.iter().filter(|l| l.contains(",OK,")).count(), 2);
    let summary = String::from_utf8(summary.stdout).unwrap();
    for part in ["Summary:", "Count:\t2", "Latency distribution:", "[OK]\t1 responses", "[NotFound]\t1 responses", "Error distribution:"] {
        assert!(summary.contains(part), "{part:?} missing in\n{summary}");
    }
    server.stop().await;
}

#[test]
fn non_loopback_targets_and_oversized_runs_are_refused() {
    let d = r#"{"context": "x", "candidate_ids": ["A", "B"]}"#;
    let o = bench(&["-d", d, "-n", "1", "-c", "1", "192.0.2.10:50051"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--allow-remote"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = bench(&["-d", d, "-n", "5000000", "127.0.0.1:1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cap"));
}

//! A build killed at any moment (SIGKILL of the child process) leaves the previous catalog intact:
//! it opens, verifies, and holds exactly the previous items; the next build completes normally.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use lavic_catalog::{verify, Catalog};

const NEW_ITEMS: usize = 600;

fn spawn_build(input: &Path, out: &Path) -> Child {
    let f = fixtures();
    Command::new(env!("CARGO_BIN_EXE_lavic-catalog"))
        .arg("build")
        .args(["--items", input.to_str().unwrap(), "--images", input.parent().unwrap().join("images").to_str().unwrap()])
        .args(["--model", f.join("tiny-mistral").to_str().unwrap(), "--vision-adapter", f.join("adapters/mistral-vision").to_str().unwrap()])
        .args(["--dtype", "f32", "--device", "cpu", "--progress", "off", "--out", out.to_str().unwrap()])
        .env("LAVIC_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The catalog must open, verify, and be either the previous version or the complete new one.
fn check_intact(out: &Path, v1: &[Stored], v1_ids: &[String]) -> bool {
    let r = verify(out).unwrap();
    assert!(r.is_ok(), "{:?}", r.problems);
    let cat = Catalog::open(out).unwrap();
    if cat.len() == NEW_ITEMS {
        return true;
    }
    assert_eq!(cat.len(), v1.len());
    assert_eq!(snapshot(&cat, v1_ids), v1);
    false
}

fn tmp_segment(out: &Path) -> Option<u64> {
    std::fs::read_dir(out).ok()?.flatten().find(|e| e.file_name().to_string_lossy().ends_with(".seg.tmp")).and_then(|e| e.metadata().ok()).map(|m| m.len())
}

#[test]
fn a_build_killed_at_any_moment_leaves_the_previous_catalog_usable() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("cat");
    let v1_input = write_input(&d.path().join("v1"), &five_items());
    build_quiet(&v1_input, &out, &enc);
    let v1_ids: Vec<String> = five_items().iter().map(|i| i.id.clone()).collect();
    let v1 = snapshot(&Catalog::open(&out).unwrap(), &v1_ids);

    // Version 2: NEW_ITEMS items with distinct image bytes (every one needs the vision tower).
    let items: Vec<Item> = (0..NEW_ITEMS).map(|i| Item::fixture(&format!("N{i:05}"), IMAGES[i % 5], i + 1)).collect();
    let v2_input = write_input(&d.path().join("v2"), &items);

    // 1. Killed while encoding and writing the new segment (its .tmp file exists from the first
    //    batch until the rename).
    let mut child = spawn_build(&v2_input, &out);
    let deadline = Instant::now() + Duration::from_secs(120);
    while tmp_segment(&out).is_none() {
        assert!(Instant::now() < deadline, "the build never started writing");
        if child.try_wait().unwrap().is_some() {
            panic!("the build finished before it could be killed; raise NEW_ITEMS");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(tmp_segment(&out).is_some(), "killed mid-write");
    assert!(!check_intact(&out, &v1, &v1_ids), "the previous catalog is what opens");

    // 2. Killed after growing delays (start-up, encoding, writing, committing), until a run
    //    completes before it is killed.
    let mut delay = Duration::from_millis(5);
    let mut kills = 0;
    loop {
        let mut child = spawn_build(&v2_input, &out);
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            child.kill().unwrap();
            kills += 1;
        }
        let status = child.wait().unwrap();
        let is_new = check_intact(&out, &v1, &v1_ids);
        if finished {
            assert!(status.success());
            assert!(is_new, "a completed build is the new catalog");
            break;
        }
        delay = delay.mul_f64(1.6);
        assert!(delay < Duration::from_secs(300), "the build never completes");
    }
    assert!(kills >= 3, "only {kills} kills");

    // The leftovers of the killed runs are gone after the completed one.
    let names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    assert_eq!(names.iter().filter(|n| n.starts_with("base-")).count(), 1, "{names:?}");
}

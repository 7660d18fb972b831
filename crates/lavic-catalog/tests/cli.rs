//! The `catalog` commands through the stand-alone binary: build, info (text and JSON), verify,
//! and clear failures for bad arguments.

mod common;

use std::process::{Command, Output};

use common::*;

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lavic-catalog"))
        .args(args)
        .env("LAVIC_LOG", "error")
        .env_remove("LAVIC_DTYPE")
        .env_remove("LAVIC_DEVICE")
        .env_remove("LAVIC_MODEL_DIR")
        .env_remove("LAVIC_VISION_ADAPTER")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
fn build_info_verify() {
    let d = tempfile::tempdir().unwrap();
    let mut items = five_items();
    items[4].bytes = None;
    let input = write_input(&d.path().join("in"), &items);
    let out = d.path().join("cat");
    let f = fixtures();
    let (input_s, images_s, out_s) = (input.to_str().unwrap(), d.path().join("in/images"), out.to_str().unwrap());
    let model = f.join("tiny-mistral");
    let adapter = f.join("adapters/mistral-vision");
    let args = [
        "build", "--items", input_s, "--images", images_s.to_str().unwrap(), "--model", model.to_str().unwrap(),
        "--vision-adapter", adapter.to_str().unwrap(), "--dtype", "f32", "--out", out_s, "--json",
    ];
    let o = cli(&args);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((report["items"].as_u64(), report["encoded"].as_u64()), (Some(5), Some(5)));

    // LAVIC_DTYPE is read like the server reads it: another dtype is another fingerprint.
    let no_dtype: Vec<&str> = args.iter().copied().filter(|a| *a != "--dtype" && *a != "f32" && *a != "--json").collect();
    let o = Command::new(env!("CARGO_BIN_EXE_lavic-catalog")).args(&no_dtype).env("LAVIC_DTYPE", "bf16").env("LAVIC_LOG", "error").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("encoded 5"), "{}", text(&o));

    let o = cli(&["info", out_s, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let i: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(i["items"], 5);
    assert_eq!(i["bytes_per_item"], 320);
    assert_eq!(i["missing_images"], 1);
    assert_eq!(i["fingerprint"].as_str().unwrap().len(), 64);

    let o = cli(&["info", out_s]);
    let t = text(&o);
    assert!(o.status.success() && t.contains("bytes/item   320") && t.contains("missing      1 image(s) (e.g. B000000004)"), "{t}");

    let o = cli(&["verify", out_s]);
    assert!(o.status.success() && text(&o).contains("ok: 5 items"), "{}", text(&o));
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let d = tempfile::tempdir().unwrap();
    let o = cli(&["verify", d.path().join("nothing").to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("not a lavic catalog"), "{}", text(&o));
    let o = cli(&["verify", d.path().to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("no catalog.json"), "{}", text(&o));
    let o = cli(&["build", "--items", "x", "--images", "y", "--model", "m", "--out", "o", "--shard", "3/3"]);
    assert!(!o.status.success() && text(&o).contains("expected I/N"), "{}", text(&o));
    let o = cli(&["build", "--items", "x", "--images", "y", "--model", d.path().join("no-model").to_str().unwrap(), "--out", "o"]);
    assert!(!o.status.success() && text(&o).contains("no-model"), "{}", text(&o));
}

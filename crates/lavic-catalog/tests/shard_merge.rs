//! Sharded builds (`--shard I/N`, as the Kubernetes Indexed Job runs them) merged into one
//! catalog equal a single-machine build; merge refuses mismatched shards and foreign folders and
//! is safe to re-run.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use lavic_catalog::{build, info, merge, verify, Catalog, Error, Shard};
use lavic_model::ImageEncoder;

fn input_items() -> Vec<Item> {
    let mut items: Vec<Item> = (0..14).map(|i| Item::fixture(&format!("B0SHARD{i:03}"), IMAGES[i % 5], i / 5)).collect();
    items[6].bytes = None; // missing file -> white image
    items[9].bytes = Some(b"garbage".to_vec()); // fails
    items
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lavic-catalog")).args(args).env("LAVIC_LOG", "error").env_remove("LAVIC_DTYPE").env_remove("LAVIC_VISION_ADAPTER").output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn three_shards_merged_equal_a_single_build() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let items = input_items();
    let input = write_input(&d.path().join("in"), &items);
    let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();

    let single = d.path().join("single");
    let mut o = opts(&input, &single);
    o.batch_size = 4;
    build(&o, &enc).unwrap();

    // Shards through the CLI, exactly as the Job runs them.
    let f = fixtures();
    let mut shard_dirs = Vec::new();
    for i in 0..3 {
        let out = d.path().join(format!("builds/v1/shards/{i}"));
        let shard = format!("{i}/3");
        let o = cli(&[
            "build", "--shard", &shard, "--items", s(&input), "--images", s(&d.path().join("in/images")),
            "--model", s(&f.join("tiny-mistral")), "--vision-adapter", s(&f.join("adapters/mistral-vision")),
            "--dtype", "f32", "--device", "cpu", "--batch-size", "4", "--out", s(&out),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let cat = Catalog::open(&out).unwrap();
        let sh = Shard { index: i, count: 3 };
        let expected = (0..items.len()).filter(|p| sh.selects(*p) && *p != 9).count();
        assert_eq!(cat.len(), expected, "shard {i}");
        shard_dirs.push(out);
    }
    let merged = d.path().join("releases/v1");
    let o = cli(&[&["merge", "--out", s(&merged)][..], &shard_dirs.iter().map(|p| s(p)).collect::<Vec<_>>()].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(cli(&["verify", s(&merged)]).status.success());

    let a = Catalog::open(&single).unwrap();
    let b = Catalog::open(&merged).unwrap();
    assert_eq!(a.len(), 13);
    assert_eq!(b.len(), a.len());
    assert_eq!(b.fingerprint(), a.fingerprint());
    assert_eq!(snapshot(&b, &ids), snapshot(&a, &ids), "same ids, same feature bytes, same metadata");
    let (ia, ib) = (info(&single).unwrap(), info(&merged).unwrap());
    assert_eq!((ib.missing_images, ib.failed_images.len()), (ia.missing_images, ia.failed_images.len()));
    assert_eq!(ib.failed_images[0].0, "B0SHARD009");

    // A retried merge Job is safe: same result.
    merge(&shard_dirs, &merged).unwrap();
    assert_eq!(snapshot(&Catalog::open(&merged).unwrap(), &ids), snapshot(&a, &ids));
    assert!(verify(&merged).unwrap().is_ok());
}

#[test]
fn merge_refuses_mismatched_shards_duplicates_and_foreign_folders() {
    let d = tempfile::tempdir().unwrap();
    let items = input_items();
    let input = write_input(&d.path().join("in"), &items);
    let enc = encoder();
    let mut o = opts(&input, &d.path().join("s0"));
    o.shard = Some(Shard { index: 0, count: 2 });
    build(&o, &enc).unwrap();
    let other = ImageEncoder::load(&options(None)).unwrap();
    let mut o = opts(&input, &d.path().join("s1"));
    o.shard = Some(Shard { index: 1, count: 2 });
    build(&o, &other).unwrap();
    let (s0, s1) = (d.path().join("s0"), d.path().join("s1"));

    let err = merge(&[s0.clone(), s1.clone()], &d.path().join("m1")).unwrap_err();
    assert!(matches!(err, Error::Incompatible(_)) && err.to_string().contains("fingerprint"), "{err}");
    assert!(!d.path().join("m1/catalog.json").exists());

    let err = merge(&[s0.clone(), s0.clone()], &d.path().join("m2")).unwrap_err();
    assert!(matches!(err, Error::DuplicateId { .. }), "{err}");
    assert!(!d.path().join("m2/catalog.json").exists());

    let foreign = d.path().join("m3");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("README"), "mine").unwrap();
    assert!(matches!(merge(std::slice::from_ref(&s0), &foreign), Err(Error::NotACatalog { .. })));

    let o = cli(&["merge", "--out", s(&d.path().join("m4")), s(&s0), s(&s1)]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("fingerprint"));
}

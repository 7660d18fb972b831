//! A flipped byte anywhere in a catalog is detected by a checksum (on open, or on reading the
//! entry), reported by `verify` (library and CLI exit code) and by the lookup, and never served.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use lavic_catalog::{verify, Catalog, Error, NewItem};

fn built(d: &Path) -> PathBuf {
    let enc = encoder();
    let input = write_input(&d.join("in"), &five_items());
    let out = d.join("good");
    build_quiet(&input, &out, &enc);
    out
}

fn copy_of(src: &Path, name: &str) -> PathBuf {
    let dst = src.parent().unwrap().join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice::<serde_json::Value>(&std::fs::read(dir.join("catalog.json")).unwrap()).unwrap()["manifest"].clone()
}

fn flip(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0x10;
    std::fs::write(path, b).unwrap();
}

fn base(dir: &Path) -> PathBuf {
    dir.join(manifest(dir)["base_file"].as_str().unwrap())
}

fn cli_verify(dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lavic-catalog")).arg("verify").arg(dir).env("LAVIC_LOG", "error").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

const IDS: [&str; 5] = ["B000000000", "B000000001", "B000000002", "B000000003", "B000000004"];

#[test]
fn a_flipped_feature_byte_is_reported_by_verify_and_by_the_lookup() {
    let d = tempfile::tempdir().unwrap();
    let good = built(d.path());
    assert!(verify(&good).unwrap().is_ok());
    assert!(cli_verify(&good).0);
    let enc = encoder();
    for (n, at) in [(0usize, 192 + 5), (1, 192 + 320 * 3 + 100)] {
        let dir = copy_of(&good, &format!("bad-features-{n}"));
        flip(&base(&dir), at);
        let r = verify(&dir).unwrap();
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        let bad_id = IDS.iter().find(|id| r.problems[0].contains(*id)).expect("the problem names the item");
        let (ok, text) = cli_verify(&dir);
        assert!(!ok && text.contains(bad_id), "{text}");

        let cat = Catalog::open(&dir).unwrap(); // entries are checked when read
        let err = cat.tokens(&IDS, &enc).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }) && err.to_string().contains(bad_id), "{err}");
        assert!(cat.get(bad_id).is_err());
        assert!(cat.stored_features(bad_id).is_err());
        for id in IDS.iter().filter(|id| *id != bad_id) {
            assert!(cat.tokens(&[id], &enc).unwrap()[0].is_some());
        }
        // An upsert replaces the damaged item (it is re-encoded, never copied).
        let item = NewItem { id: bad_id.to_string(), title: "t".into(), image: Some(image_bytes("small.png")), metadata: "{}".into() };
        assert_eq!(cat.upsert(&[item], &enc).unwrap().encoded, 1);
        assert!(cat.tokens(&[bad_id], &enc).unwrap()[0].is_some());
    }
}

#[test]
fn flipped_bytes_in_records_strings_header_manifest_and_delta_are_detected() {
    let d = tempfile::tempdir().unwrap();
    let good = built(d.path());
    let len = std::fs::metadata(base(&good)).unwrap().len() as usize;
    let records = 192 + 5 * 320;
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage)> = vec![
        ("record", Box::new(move |dir: &Path| flip(&base(dir), records + 72 * 2 + 20))),
        ("string", Box::new(move |dir: &Path| flip(&base(dir), len - 3))),
        ("header", Box::new(|dir: &Path| flip(&base(dir), 30))),
        ("manifest", Box::new(|dir: &Path| {
            let text = std::fs::read_to_string(dir.join("catalog.json")).unwrap();
            std::fs::write(dir.join("catalog.json"), text.replace("\"base_items\": 5", "\"base_items\": 4")).unwrap();
        })),
    ];
    for (name, damage) in cases {
        let dir = copy_of(&good, name);
        damage(&dir);
        let r = verify(&dir).unwrap();
        assert!(!r.is_ok(), "{name}: not detected");
        assert!(!cli_verify(&dir).0, "{name}: CLI verify passed");
        if let Ok(cat) = Catalog::open(&dir) {
            // Opened (damage inside an entry): reading every item must fail somewhere.
            let enc = encoder();
            assert!(IDS.iter().any(|id| cat.tokens(&[id], &enc).is_err()), "{name}: served");
        }
    }

    // Delta log: a live upsert, then one flipped byte in it.
    let dir = copy_of(&good, "delta");
    let enc = encoder();
    let cat = Catalog::open(&dir).unwrap();
    let item = NewItem { id: "NEW".into(), title: "t".into(), image: Some(image_bytes("small.png")), metadata: "{}".into() };
    cat.upsert(&[item], &enc).unwrap();
    drop(cat);
    let delta = dir.join(manifest(&dir)["delta_file"].as_str().unwrap());
    flip(&delta, 64 + 1);
    let err = Catalog::open(&dir).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(!verify(&dir).unwrap().is_ok());
    assert!(!cli_verify(&dir).0);
}

//! Live updates as the server makes them: upserts (only new or changed images encoded, counted),
//! deletes, persistence across reopen, readers running during writes, refusal to write over a
//! catalog another process changed, interrupted appends, and compaction.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use lavic_catalog::{compact, verify, Catalog, Error, NewItem, StoreForm};

fn new_item(id: &str, image: &str, title: &str) -> NewItem {
    NewItem { id: id.into(), title: title.into(), image: Some(image_bytes(image)), metadata: r#"{"src":"rpc"}"#.into() }
}

#[test]
fn catalog_is_send_sync_and_cheap_to_clone() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<Catalog>();
}

#[test]
fn upserts_encode_only_new_or_changed_images_and_persist() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("srv/cat");
    let cat = Catalog::create_empty(&dir, &enc, StoreForm::Cls).unwrap();
    assert!(cat.is_empty());
    assert!(Catalog::create_empty(&dir, &enc, StoreForm::Cls).is_err(), "never overwrites a catalog");

    let items = vec![new_item("a", "square.jpg", "A"), new_item("b", "wide2.png", "B"), new_item("c", "square.jpg", "C")];
    let before = enc.images_encoded();
    let r = cat.upsert(&items, &enc).unwrap();
    assert_eq!((r.encoded, r.reused, r.unchanged), (2, 1, 0), "c shares a's image bytes");
    assert_eq!(enc.images_encoded() - before, 2);
    assert_eq!(cat.len(), 3);

    // Visible to the next read; equal to the direct computation.
    let got = cat.tokens(&["a", "b", "zzz"], &enc).unwrap();
    let direct = enc.project(&enc.encode_cls(&[enc.decode(&image_bytes("wide2.png")).unwrap()]).unwrap()).unwrap().get(0).unwrap();
    assert!(max_abs(&got[1].as_ref().unwrap().tokens, &direct) <= 1e-2 * max_abs_value(&direct));
    assert!(got[2].is_none());

    let before = enc.images_encoded();
    let r = cat.upsert(&items, &enc).unwrap();
    assert_eq!((r.encoded, r.reused, r.unchanged), (0, 0, 3));
    let r = cat.upsert(&[new_item("a", "square.jpg", "A, renamed")], &enc).unwrap();
    assert_eq!((r.encoded, r.reused), (0, 1));
    assert_eq!(enc.images_encoded() - before, 0, "title changes cost no vision work");
    let r = cat.upsert(&[new_item("b", "tall.png", "B")], &enc).unwrap();
    assert_eq!(r.encoded, 1);
    // Items without an image share the white image's features: one vision pass per open catalog,
    // every further one counted as reused.
    let imageless = |id: &str| NewItem { id: id.into(), title: id.to_uppercase(), image: None, metadata: String::new() };
    let before = enc.images_encoded();
    let r = cat.upsert(&[imageless("w"), imageless("x")], &enc).unwrap();
    assert_eq!(r.missing_images, vec!["w".to_string(), "x".to_string()]);
    assert_eq!((r.encoded, r.reused), (1, 1), "{r:?}");
    assert_eq!(enc.images_encoded() - before, 1);
    let r = cat.upsert(&[imageless("y")], &enc).unwrap();
    assert_eq!((r.encoded, r.reused), (0, 1), "{r:?}");
    assert_eq!(enc.images_encoded() - before, 1);
    assert_eq!(cat.delete(&["x", "y"]).unwrap(), 2);

    assert_eq!(cat.delete(&["c", "nope", "c"]).unwrap(), 1);
    assert_eq!(cat.len(), 3);
    assert!(cat.get("c").unwrap().is_none());

    // Everything survives a reopen.
    let ids: Vec<String> = ["a", "b", "c", "w"].iter().map(|s| s.to_string()).collect();
    let live = snapshot(&cat, &ids);
    drop(cat);
    let cat = Catalog::open(&dir).unwrap();
    assert_eq!(cat.len(), 3);
    assert_eq!(snapshot(&cat, &ids), live);
    assert_eq!(cat.get("a").unwrap().unwrap().title, "A, renamed");
    assert!(cat.get("w").unwrap().unwrap().image_missing);
    assert!(verify(&dir).unwrap().is_ok());

    // Compaction folds the log into a new base with the same content.
    let gen = cat.generation();
    let r = compact(&dir).unwrap();
    assert_eq!(r.items, 3);
    let cat = Catalog::open(&dir).unwrap();
    assert_eq!(cat.generation(), gen + 1);
    assert_eq!(snapshot(&cat, &ids), live);
    assert!(verify(&dir).unwrap().is_ok());
}

#[test]
fn readers_run_while_a_writer_upserts() {
    let enc = Arc::new(encoder());
    let d = tempfile::tempdir().unwrap();
    let cat = Catalog::create_empty(&d.path().join("cat"), &enc, StoreForm::Cls).unwrap();
    cat.upsert(&[new_item("base", "square.jpg", "base")], &enc).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (cat, enc, stop) = (cat.clone(), enc.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let got = cat.tokens(&["base", "new-7"], &enc).unwrap();
                    assert!(got[0].is_some());
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for i in 0..10 {
        let mut it = new_item(&format!("new-{i}"), "small.png", "n");
        it.image.as_mut().unwrap().extend_from_slice(format!("{i}").as_bytes());
        cat.upsert(&[it], &enc).unwrap();
        // Visible to the very next request.
        assert!(cat.get(&format!("new-{i}")).unwrap().is_some());
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(cat.len(), 11);
}

#[test]
fn a_catalog_changed_by_another_process_is_not_written_over() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let input = write_input(&d.path().join("in"), &five_items());
    let dir = d.path().join("cat");
    build_quiet(&input, &dir, &enc);
    let server_a = Catalog::open(&dir).unwrap();
    let server_b = Catalog::open(&dir).unwrap();
    server_a.upsert(&[new_item("x", "small.png", "x")], &enc).unwrap();
    assert!(matches!(server_b.upsert(&[new_item("y", "small.png", "y")], &enc), Err(Error::Stale(_))));
    assert!(matches!(server_b.delete(&["B000000000"]), Err(Error::Stale(_))));
    // A rebuild in place also makes the open catalog stale; it still serves its snapshot.
    build_quiet(&input, &dir, &enc);
    assert!(matches!(server_a.delete(&["B000000000"]), Err(Error::Stale(_))));
    assert!(server_a.tokens(&["B000000000", "x"], &enc).unwrap().iter().all(|t| t.is_some()));
    // The rebuild dropped the upserted item (the items file is the source of truth).
    assert!(Catalog::open(&dir).unwrap().get("x").unwrap().is_none());
}

#[test]
fn an_interrupted_append_is_ignored_and_cut_off() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cat");
    let cat = Catalog::create_empty(&dir, &enc, StoreForm::Cls).unwrap();
    cat.upsert(&[new_item("a", "square.jpg", "A")], &enc).unwrap();
    drop(cat);
    // A crash after appending but before committing leaves bytes past the committed end.
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("catalog.json")).unwrap()).unwrap();
    let delta = dir.join(m["manifest"]["delta_file"].as_str().unwrap());
    let committed = std::fs::metadata(&delta).unwrap().len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&delta).unwrap();
    std::io::Write::write_all(&mut f, b"LVDR half a record").unwrap();
    drop(f);
    let r = verify(&dir).unwrap();
    assert!(r.is_ok() && r.uncommitted_delta_bytes == 18, "{r:?}");
    let cat = Catalog::open(&dir).unwrap();
    assert_eq!(cat.len(), 1);
    cat.upsert(&[new_item("b", "wide2.png", "B")], &enc).unwrap();
    let r = verify(&dir).unwrap();
    assert!(r.is_ok() && r.uncommitted_delta_bytes == 0 && r.delta_records == 2, "{r:?}");
    assert!(std::fs::metadata(&delta).unwrap().len() > committed);
    assert_eq!(Catalog::open(&dir).unwrap().len(), 2);
}

#[test]
fn a_read_only_open_keeps_updates_in_memory_and_never_writes() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let input = write_input(&d.path().join("in"), &five_items());
    let dir = d.path().join("cat");
    build_quiet(&input, &dir, &enc);
    let files = |dir: &std::path::Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()).map(|e| (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap())).collect();
        v.sort();
        v
    };
    let before = files(&dir);
    let cat = Catalog::open_read_only(&dir).unwrap();
    assert!(!cat.persists_updates());
    let r = cat.upsert(&[new_item("x", "small.png", "x"), new_item("B000000000", "tall.png", "changed")], &enc).unwrap();
    assert_eq!(r.encoded, 2);
    assert_eq!(cat.delete(&["B000000001"]).unwrap(), 1);
    assert_eq!(cat.len(), 5);
    assert_eq!(cat.get("B000000000").unwrap().unwrap().title, "changed");
    assert!(cat.tokens(&["x"], &enc).unwrap()[0].is_some());
    assert_eq!(files(&dir), before, "nothing written");
    let reopened = Catalog::open(&dir).unwrap();
    assert!(reopened.get("x").unwrap().is_none());
    assert!(reopened.get("B000000001").unwrap().is_some());
}

#[test]
fn an_empty_projected_catalog_serves_upserted_items() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let cat = Catalog::create_empty(&d.path().join("cat"), &enc, StoreForm::Projected).unwrap();
    assert_eq!((cat.form(), cat.width(), cat.bytes_per_item()), (StoreForm::Projected, 32, 320));
    cat.upsert(&[new_item("p", "wide3.jpg", "P")], &enc).unwrap();
    let got = cat.tokens(&["p"], &enc).unwrap().pop().unwrap().unwrap();
    let direct = enc.project(&enc.encode_cls(&[enc.decode(&image_bytes("wide3.jpg")).unwrap()]).unwrap()).unwrap().get(0).unwrap();
    // f16 storage of the projected tokens: relative rounding <= 2^-11.
    assert!(max_abs(&got.tokens, &direct) <= 1e-2 * max_abs_value(&direct));
    let reopened = Catalog::open(&d.path().join("cat")).unwrap();
    assert_eq!(reopened.form(), StoreForm::Projected);
    assert_eq!(max_abs(&reopened.tokens(&["p"], &enc).unwrap()[0].as_ref().unwrap().tokens, &got.tokens), 0.0);
}

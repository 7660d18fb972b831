//! Builds on the tiny fixture model: storage size, incremental rebuilds (counted encodes, never
//! timed), removal, missing images, the reference's metadata formats, and that the tokens read
//! back equal those computed directly.

mod common;

use common::*;
use lavic_catalog::{build, info, verify, Catalog, InputFormat, StoreForm};
use lavic_model::DType;

#[test]
fn bytes_per_item_match_the_formula() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let input = write_input(&d.path().join("in"), &five_items());
    let out = d.path().join("cat");
    build_quiet(&input, &out, &enc);
    let cat = Catalog::open(&out).unwrap();
    // 5 views x vision width (32) x 2 bytes (f16).
    assert_eq!(cat.bytes_per_item(), 5 * enc.vision_width() * 2);
    assert_eq!(cat.bytes_per_item(), 320);
    assert_eq!(info(&out).unwrap().bytes_per_item, 320);
    assert_eq!(cat.stored_features("B000000000").unwrap().unwrap().dims(), [5, 32]);
    // On disk: a 192-byte header, 320 bytes of features per distinct image, a 72-byte record
    // per item and the id/title/metadata strings.
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("catalog.json")).unwrap()).unwrap();
    let base = std::fs::metadata(out.join(m["manifest"]["base_file"].as_str().unwrap())).unwrap().len();
    let strings: usize = five_items().iter().map(|i| i.id.len() + i.title.len() + i.extra.to_string().len()).sum();
    assert_eq!(base as usize, 192 + 5 * 320 + 5 * 72 + strings);
}

#[test]
fn unchanged_rebuild_encodes_nothing_and_one_changed_image_encodes_one() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let mut items = five_items();
    let input = write_input(&d.path().join("in"), &items);
    let out = d.path().join("cat");

    let before = enc.images_encoded();
    let r1 = build_quiet(&input, &out, &enc);
    assert_eq!(enc.images_encoded() - before, 5);
    assert_eq!((r1.items, r1.encoded, r1.reused), (5, 5, 0));
    let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    let first = snapshot(&Catalog::open(&out).unwrap(), &ids);

    let before = enc.images_encoded();
    let r2 = build_quiet(&input, &out, &enc);
    assert_eq!(enc.images_encoded() - before, 0, "an unchanged catalog costs no vision-tower work");
    assert_eq!((r2.items, r2.encoded, r2.reused, r2.generation), (5, 0, 5, r1.generation + 1));
    assert_eq!(snapshot(&Catalog::open(&out).unwrap(), &ids), first);

    // Item 2 gets another image (same file name, new bytes).
    items[2].bytes = Some([image_bytes("tall.png"), b"v2".to_vec()].concat());
    write_input(&d.path().join("in"), &items);
    let before = enc.images_encoded();
    let r3 = build_quiet(&input, &out, &enc);
    assert_eq!(enc.images_encoded() - before, 1, "exactly the changed item is re-encoded");
    assert_eq!((r3.encoded, r3.reused), (1, 4));
    let third = snapshot(&Catalog::open(&out).unwrap(), &ids);
    for k in 0..5 {
        assert_eq!(third[k] == first[k], k != 2, "item {k}");
    }
    assert!(verify(&out).unwrap().is_ok());
}

#[test]
fn items_left_out_of_the_input_are_removed() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let mut items = five_items();
    let input = write_input(&d.path().join("in"), &items);
    let out = d.path().join("cat");
    build_quiet(&input, &out, &enc);
    items.remove(1);
    write_input(&d.path().join("in"), &items);
    let r = build_quiet(&input, &out, &enc);
    assert_eq!((r.items, r.removed, r.encoded), (4, 1, 0));
    let cat = Catalog::open(&out).unwrap();
    assert!(cat.get("B000000001").unwrap().is_none());
    assert!(cat.get("B000000002").unwrap().is_some());
    // Old generations are cleaned up: one base, one delta, manifest, report, lock.
    let names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.iter().filter(|n| n.starts_with("base-")).count(), 1, "{names:?}");
}

#[test]
fn tokens_read_back_equal_the_directly_computed_ones() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let items = five_items();
    let input = write_input(&d.path().join("in"), &items);
    for form in [StoreForm::Cls, StoreForm::Projected] {
        let out = d.path().join(form.to_string());
        let mut o = opts(&input, &out);
        o.form = form;
        build(&o, &enc).unwrap();
        let cat = Catalog::open(&out).unwrap();
        assert_eq!(cat.form(), form);
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).chain(["not-there"]).collect();
        let got = cat.tokens(&ids, &enc).unwrap();
        assert!(got[5].is_none());
        // Direct computation, batched like the build (one vision pass over the 5 images).
        let images: Vec<_> = items.iter().map(|it| enc.decode(it.bytes.as_ref().unwrap()).unwrap()).collect();
        let cls = enc.encode_cls(&images).unwrap();
        let direct = enc.project(&cls).unwrap();
        // The same computation with the cache's f16 rounding done by hand.
        let f16 = |t: &lavic_model::Tensor| t.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap();
        let expected = match form {
            StoreForm::Cls => enc.project(&f16(&cls)).unwrap(),
            StoreForm::Projected => f16(&direct),
        };
        for (k, it) in items.iter().enumerate() {
            let item = got[k].as_ref().unwrap();
            assert_eq!((item.id.as_str(), item.title.as_str(), item.image_missing), (it.id.as_str(), it.title.as_str(), false));
            assert_eq!(item.tokens.dims(), [5, 32]);
            assert_eq!(item.tokens.dtype(), DType::F32);
            let direct = direct.get(k).unwrap();
            // Tolerance: the cache stores f16 (11-bit significand, relative rounding <= 2^-11),
            // which the projector carries through; 1e-2 of the largest magnitude is ample.
            let tol = 1e-2 * max_abs_value(&direct);
            assert!(max_abs(&item.tokens, &direct) <= tol, "{form} {}: {} > {tol}", it.id, max_abs(&item.tokens, &direct));
            // Exact against the hand-rounded computation.
            assert_eq!(max_abs(&item.tokens, &expected.get(k).unwrap()), 0.0, "{form} {}", it.id);
        }
    }
}

#[test]
fn missing_image_files_use_the_white_image_and_are_reported() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let mut items = five_items();
    items[3].bytes = None; // listed, file absent
    items[4].image = None; // no image at all
    let input = write_input(&d.path().join("in"), &items);
    let out = d.path().join("cat");
    let r = build_quiet(&input, &out, &enc);
    assert_eq!(r.items, 5);
    assert_eq!(r.missing_images, vec!["B000000003".to_string(), "B000000004".to_string()]);
    assert_eq!(r.encoded, 4, "the white image is encoded once for both");
    let cat = Catalog::open(&out).unwrap();
    let got = cat.tokens(&["B000000003", "B000000004"], &enc).unwrap();
    let white = enc.project(&enc.encode_cls(&[enc.white_image()]).unwrap()).unwrap().get(0).unwrap();
    for g in got.iter().map(|g| g.as_ref().unwrap()) {
        assert!(g.image_missing);
        assert!(max_abs(&g.tokens, &white) <= 1e-2 * max_abs_value(&white));
    }
    let i = info(&out).unwrap();
    assert_eq!(i.missing_images, 2);
    let got = cat.get("B000000003").unwrap().unwrap();
    assert!(got.image_missing && got.image_sha256.is_empty());
    // A rebuild reuses the white features too.
    assert_eq!(build_quiet(&input, &out, &enc).encoded, 0);
}

#[test]
fn metadata_is_kept_and_the_image_hash_is_recorded() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let items = five_items();
    let input = write_input(&d.path().join("in"), &items);
    let out = d.path().join("cat");
    build_quiet(&input, &out, &enc);
    let cat = Catalog::open(&out).unwrap();
    let got = cat.get("B000000000").unwrap().unwrap();
    assert_eq!(got.metadata, r#"{"rank":10}"#);
    use sha2::Digest;
    assert_eq!(got.image_sha256, lavic_catalog::format::hex(&sha2::Sha256::digest(items[0].bytes.as_ref().unwrap())));
}

#[test]
fn reference_metadata_files_build_unchanged() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let images = d.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    // item2meta_train.json: dict keyed by id; images[i] saved as {id}_{i}.jpg.
    std::fs::write(images.join("B0TRAIN001_0.jpg"), image_bytes("square.jpg")).unwrap();
    std::fs::write(images.join("B0TRAIN001_1.jpg"), image_bytes("wide3.jpg")).unwrap();
    let train = d.path().join("item2meta_train.json");
    std::fs::write(
        &train,
        r#"{"B0TRAIN001": {"title": "Red bag", "images": [{"large": "https://x/1.jpg"}, {"large": "https://x/2.jpg"}], "description": ["d"]},
            "B0TRAIN002": {"title": "Lost image", "images": [{"large": "https://x/3.jpg"}]}}"#,
    )
    .unwrap();
    let out = d.path().join("train-cat");
    let mut o = opts(&train, &out);
    o.images = images.clone();
    let r = build(&o, &enc).unwrap();
    assert_eq!((r.items, r.missing_images.clone()), (2, vec!["B0TRAIN002".to_string()]));
    let cat = Catalog::open(&out).unwrap();
    let got = cat.get("B0TRAIN001").unwrap().unwrap();
    assert_eq!(got.title, "Red bag");
    assert_eq!(got.metadata, r#"{"images":[{"large": "https://x/1.jpg"}, {"large": "https://x/2.jpg"}],"description":["d"]}"#, "kept as written");
    let direct = enc.project(&enc.encode_cls(&[enc.decode(&image_bytes("square.jpg")).unwrap()]).unwrap()).unwrap().get(0).unwrap();
    let cached = cat.tokens(&["B0TRAIN001"], &enc).unwrap().pop().unwrap().unwrap().tokens;
    assert!(max_abs(&cached, &direct) <= 1e-2 * max_abs_value(&direct), "the first image is the one used");

    // item2meta_valid.jsonl: one line per image; the lowest image number is the item's.
    std::fs::write(images.join("B0VALID001_3.jpg"), image_bytes("tall.png")).unwrap();
    let valid = d.path().join("item2meta_valid.jsonl");
    std::fs::write(
        &valid,
        "{\"title\": \"Chair\", \"image_name\": \"B0VALID001_5.jpg\", \"image\": \"u5\", \"image_description_llava_cleaned\": \"x\"}\n\
         {\"title\": \"Chair\", \"image_name\": \"B0VALID001_3.jpg\", \"image\": \"u3\", \"image_description_llava_cleaned\": \"y\"}\n",
    )
    .unwrap();
    let out = d.path().join("valid-cat");
    let mut o = opts(&valid, &out);
    o.images = images;
    o.format = InputFormat::Valid;
    let r = build(&o, &enc).unwrap();
    assert_eq!((r.items, r.missing_images.len()), (1, 0));
    let got = Catalog::open(&out).unwrap().get("B0VALID001").unwrap().unwrap();
    assert_eq!(got.metadata, r#"{"image_name":"B0VALID001_3.jpg","image":"u3","image_description_llava_cleaned":"y"}"#);
}

#[test]
fn a_bad_jsonl_line_stops_the_build_naming_the_line() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let input = write_input(&d.path().join("in"), &five_items());
    let mut text = std::fs::read_to_string(&input).unwrap();
    text.push_str("{\"id\": \"x\", \"title\": \n");
    std::fs::write(&input, text).unwrap();
    let err = build(&opts(&input, &d.path().join("cat")), &enc).unwrap_err().to_string();
    assert!(err.contains("line 6"), "{err}");
    assert!(!d.path().join("cat").join("catalog.json").exists());
}

#[test]
fn a_folder_that_is_not_a_catalog_is_never_written_into() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let input = write_input(&d.path().join("in"), &five_items());
    let out = d.path().join("photos");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("holiday.jpg"), b"x").unwrap();
    let err = build(&opts(&input, &out), &enc).unwrap_err();
    assert!(matches!(err, lavic_catalog::Error::NotACatalog { .. }), "{err}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
}

#[test]
fn duplicate_images_share_one_encode() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let mut items = five_items();
    items.push(Item { id: "B000000009".into(), ..Item::fixture("B000000009", "square.jpg", 0) });
    let input = write_input(&d.path().join("in"), &items);
    let before = enc.images_encoded();
    let r = build_quiet(&input, &d.path().join("cat"), &enc);
    assert_eq!((r.items, r.encoded, r.shared), (6, 5, 1));
    assert_eq!(enc.images_encoded() - before, 5);
    let cat = Catalog::open(&d.path().join("cat")).unwrap();
    let a = cat.stored_features("B000000000").unwrap().unwrap();
    let b = cat.stored_features("B000000009").unwrap().unwrap();
    assert_eq!(max_abs(&a, &b), 0.0);
}

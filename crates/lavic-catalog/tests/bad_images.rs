//! Corrupt, truncated and oversized images (and paths leaving the images folder) are reported
//! per item, with id and reason, and the rest of the build goes on.

mod common;

use common::*;
use lavic_catalog::{info, Catalog};

/// A PNG whose header claims 20000 x 20000 pixels (a decompression bomb): refused from the header.
fn png_bomb() -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&20_000u32.to_be_bytes());
    ihdr.extend_from_slice(&20_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32fast::hash(&ihdr).to_be_bytes());
    for chunk in [&b"IDAT"[..], &b"IEND"[..]] {
        png.extend_from_slice(&0u32.to_be_bytes());
        png.extend_from_slice(chunk);
        png.extend_from_slice(&crc32fast::hash(chunk).to_be_bytes());
    }
    png
}

#[test]
fn bad_images_are_reported_per_item_and_the_build_goes_on() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let mut items = five_items();
    let square = image_bytes("square.jpg");
    let bad = [
        ("BADCORRUPT", b"this is not an image at all".to_vec()),
        ("BADTRUNCAT", square[..square.len() / 2].to_vec()),
        ("BADOVERSIZ", png_bomb()),
    ];
    for (id, bytes) in &bad {
        items.push(Item { image: Some(format!("{id}.jpg")), bytes: Some(bytes.clone()), ..Item::fixture(id, "square.jpg", 0) });
    }
    items.push(Item { image: Some("../outside.jpg".into()), bytes: None, ..Item::fixture("BADPATH001", "square.jpg", 0) });
    let input = write_input(&d.path().join("in"), &items);
    let out = d.path().join("cat");
    let r = build_quiet(&input, &out, &enc);
    assert_eq!(r.items, 5, "the good items are all there");
    assert_eq!(r.encoded, 5);
    let failed: std::collections::HashMap<_, _> = r.failed.iter().cloned().collect();
    assert_eq!(failed.len(), 4, "{failed:?}");
    assert!(failed["BADCORRUPT"].contains("format"), "{}", failed["BADCORRUPT"]);
    assert!(failed["BADTRUNCAT"].contains("truncated") || failed["BADTRUNCAT"].contains("end of file"), "{}", failed["BADTRUNCAT"]);
    assert!(failed["BADOVERSIZ"].contains("20000x20000") && failed["BADOVERSIZ"].contains("limit"), "{}", failed["BADOVERSIZ"]);
    assert!(failed["BADPATH001"].contains("leaves the images folder"), "{}", failed["BADPATH001"]);

    let cat = Catalog::open(&out).unwrap();
    assert_eq!(cat.len(), 5);
    assert!(cat.get("BADCORRUPT").unwrap().is_none());
    // `info` shows the failures of the last build.
    let i = info(&out).unwrap();
    assert_eq!(i.failed_images.len(), 4);
    // Fixing one image and rebuilding encodes just that one.
    items[5].bytes = Some([image_bytes("wide2.png"), b"fixed".to_vec()].concat());
    write_input(&d.path().join("in"), &items);
    let r = build_quiet(&input, &out, &enc);
    assert_eq!((r.items, r.encoded, r.failed.len()), (6, 1, 3));
}

#[test]
fn upserted_bad_images_are_reported_not_raised() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let cat = Catalog::create_empty(&d.path().join("cat"), &enc, Default::default()).unwrap();
    let items = vec![
        lavic_catalog::NewItem { id: "good".into(), title: "t".into(), image: Some(image_bytes("small.png")), metadata: serde_json::json!({}) },
        lavic_catalog::NewItem { id: "bomb".into(), title: "t".into(), image: Some(png_bomb()), metadata: serde_json::json!({}) },
        lavic_catalog::NewItem { id: "".into(), title: "t".into(), image: None, metadata: serde_json::json!({}) },
    ];
    let r = cat.upsert(&items, &enc).unwrap();
    assert_eq!(r.encoded, 1);
    assert_eq!(r.failed.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["", "bomb"]);
    assert_eq!(cat.len(), 1);
}

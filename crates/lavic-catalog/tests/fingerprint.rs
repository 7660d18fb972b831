//! The catalog fingerprint: changing the vision adapter (or the dtype) changes it, and a catalog
//! whose fingerprint does not match the loaded encoder is refused with a clear message, never used.

mod common;

use common::*;
use lavic_catalog::{Catalog, Error, NewItem};
use lavic_model::{DType, ImageEncoder};

/// A copy of the stage-1 adapter with another `lora_alpha` (other numbers, same shapes).
fn retrained_adapter(dir: &std::path::Path) -> std::path::PathBuf {
    let src = fixtures().join("adapters/mistral-vision");
    let dst = dir.join("mistral-vision-v2");
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(src.join("adapter_model.safetensors"), dst.join("adapter_model.safetensors")).unwrap();
    let cfg = std::fs::read_to_string(src.join("adapter_config.json")).unwrap().replace("\"lora_alpha\": 16", "\"lora_alpha\": 8");
    std::fs::write(dst.join("adapter_config.json"), cfg).unwrap();
    dst
}

#[test]
fn a_changed_adapter_changes_the_fingerprint_and_the_old_cache_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let enc = encoder();
    let input = write_input(&d.path().join("in"), &five_items());
    let out = d.path().join("cat");
    build_quiet(&input, &out, &enc);
    let cat = Catalog::open(&out).unwrap();
    assert_eq!(cat.fingerprint(), enc.fingerprint());
    cat.check_encoder(&enc).unwrap();

    let mut o = options(None);
    o.vision_adapter = Some(retrained_adapter(d.path()));
    let new_enc = ImageEncoder::load(&o).unwrap();
    assert_ne!(new_enc.fingerprint(), enc.fingerprint());
    let no_adapter = ImageEncoder::load(&options(None)).unwrap();
    let mut o = options(Some("mistral-vision"));
    o.dtype = Some(DType::BF16);
    let bf16 = ImageEncoder::load(&o).unwrap();
    let mut all = vec![enc.fingerprint(), new_enc.fingerprint(), no_adapter.fingerprint(), bf16.fingerprint()];
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4, "adapter, no adapter and dtype all give distinct fingerprints");

    // The server's checks: refused, with both fingerprints and what to do.
    let err = cat.check_encoder(&new_enc).unwrap_err();
    assert!(matches!(err, Error::FingerprintMismatch { .. }));
    let msg = err.to_string();
    assert!(msg.contains(enc.fingerprint()) && msg.contains(new_enc.fingerprint()) && msg.contains("rebuild"), "{msg}");
    assert!(matches!(cat.tokens(&["B000000000"], &new_enc), Err(Error::FingerprintMismatch { .. })));
    let item = NewItem { id: "x".into(), title: String::new(), image: None, metadata: String::new() };
    assert!(matches!(cat.upsert(&[item], &new_enc), Err(Error::FingerprintMismatch { .. })));

    // Rebuilding with the new adapter re-encodes everything; then the new encoder is accepted.
    let before = new_enc.images_encoded();
    let r = build_quiet(&input, &out, &new_enc);
    assert_eq!((r.encoded, r.reused), (5, 0));
    assert_eq!(new_enc.images_encoded() - before, 5);
    let cat = Catalog::open(&out).unwrap();
    cat.check_encoder(&new_enc).unwrap();
    assert!(cat.check_encoder(&enc).is_err());
}

//! Synthetic catalogs for benchmarks and tests: deterministic features, no vision tower needed.

use std::path::Path;

use half::f16;

use crate::catalog::{commit_generation, new_manifest, Catalog};
use crate::error::{Error, Result};
use crate::format::{StoreForm, VIEWS};
use crate::fsutil::{folder_state, DirLock, FolderState};
use crate::segment::{EntryFields, SegmentWriter};

/// The id of synthetic item `i` (ASIN-like: `B` + 9 digits).
pub fn synthetic_id(i: usize) -> String {
    format!("B{i:09}")
}

/// Writes a catalog of `n` items (`synthetic_id(0..n)`, titles `Item i`, distinct pseudo-random
/// f16 features of `width` values per view) to the empty folder `dir` and opens it.
/// `fingerprint` must be 64 hex characters; no real encoder matches it unless you pass its own.
pub fn write_synthetic(dir: &Path, n: usize, width: usize, form: StoreForm, fingerprint: &str) -> Result<Catalog> {
    if folder_state(dir)? != FolderState::Empty {
        return Err(Error::InvalidArgument(format!("{} is not empty", dir.display())));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let _lock = DirLock::acquire(dir)?;
    let mut w = SegmentWriter::create(dir, 1, form, width, fingerprint)?;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut features = vec![0u8; VIEWS * width * 2];
    for i in 0..n {
        for b in features.chunks_exact_mut(2) {
            // xorshift64*: fast, deterministic values in [-1, 1).
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let x = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
            b.copy_from_slice(&f16::from_f32(x).to_le_bytes());
        }
        let mut sha = [0u8; 32];
        sha[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        let slot = w.add_slot(sha, &features)?;
        let id = synthetic_id(i);
        let title = format!("Item {i}");
        w.push(EntryFields { id: &id, title: &title, meta: "{}", flags: 0, image_sha: sha }, slot, 0)?;
    }
    let written = w.finish(&[])?;
    commit_generation(dir, new_manifest(1, fingerprint, form, width, width, &written))?;
    Catalog::open(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_catalog_opens_and_reads() {
        let d = tempfile::tempdir().unwrap();
        let cat = write_synthetic(&d.path().join("c"), 100, 8, StoreForm::Cls, &"12".repeat(32)).unwrap();
        assert_eq!(cat.len(), 100);
        assert_eq!(cat.bytes_per_item(), 5 * 8 * 2);
        let t = cat.stored_features(&synthetic_id(42)).unwrap().unwrap();
        assert_eq!(t.dims(), [5, 8]);
        assert!(cat.stored_features("nope").unwrap().is_none());
        assert_eq!(cat.get(&synthetic_id(7)).unwrap().unwrap().title, "Item 7");
        assert!(crate::verify(cat.dir()).unwrap().is_ok());
    }
}

//! Read-only memory maps whose file length is checked before each read. A mapped file cut short
//! in place under a running process (an operator's restore, a sync tool rewriting it) makes the
//! next read of a lost page raise SIGBUS, which kills the process without a log line (issue 11,
//! item 6). Every read of a [`MappedFile`] first compares the file's current length with the
//! mapped length (one `fstat`) and answers [`Error::ChangedOnDisk`] when it shrank.
//!
//! What remains is the window between that check and the read (microseconds): a file cut short
//! exactly then still faults. Catalog files are written once and replaced by rename, never
//! rewritten in place by lavic itself, so only an outside writer can cause that.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};

use crate::error::{Error, Result};

/// A mapped file (or its first `len` bytes).
#[derive(Debug)]
pub(crate) struct MappedFile {
    path: PathBuf,
    file: File,
    map: Mmap,
}

impl MappedFile {
    /// Maps the first `len` bytes of `path` (the whole file when `None`); refuses a file shorter
    /// than `len`.
    pub fn open(path: &Path, len: Option<u64>) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let actual = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let len = len.unwrap_or(actual);
        if actual < len {
            return Err(Error::corrupt(path, format!("file is {actual} bytes, shorter than the {len} it should hold")));
        }
        let len = usize::try_from(len).map_err(|_| Error::corrupt(path, "file is too large to map"))?;
        // SAFETY: catalog files are never modified in place by lavic (new generations are new
        // files; delta logs only grow past their committed length). An outside writer cutting one
        // short is detected by `bytes` before each read instead of faulting.
        let map = unsafe { MmapOptions::new().len(len).map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(Self { path: path.to_path_buf(), file, map })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Checks the file still holds every mapped byte.
    pub fn check(&self) -> Result<()> {
        let now = self.file.metadata().map_err(|e| Error::io(&self.path, e))?.len();
        if now < self.map.len() as u64 {
            return Err(Error::ChangedOnDisk {
                path: self.path.clone(),
                detail: format!(
                    "the file was cut short to {now} bytes while {} bytes of it were in use (replaced in place?); \
                     nothing more is read from it until the catalog is reopened",
                    self.map.len()
                ),
            });
        }
        Ok(())
    }

    /// The mapped bytes, once [`MappedFile::check`] passed: read them right away.
    pub fn bytes(&self) -> Result<&[u8]> {
        self.check()?;
        Ok(&self.map)
    }

    /// Kernel read-ahead hint.
    pub fn advise(&self, advice: memmap2::Advice) {
        #[cfg(unix)]
        let _ = self.map.advise(advice);
        #[cfg(not(unix))]
        let _ = advice;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_cut_short_is_an_error_not_a_crash() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, vec![7u8; 3 * 4096]).unwrap();
        let m = MappedFile::open(&p, None).unwrap();
        assert_eq!(m.bytes().unwrap()[3 * 4096 - 1], 7);
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(100).unwrap();
        let e = m.bytes().unwrap_err();
        assert!(matches!(e, Error::ChangedOnDisk { .. }) && e.to_string().contains("cut short to 100 bytes"), "{e}");
        // Growing back is fine again (the bytes are the file's, whatever they now are).
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(3 * 4096).unwrap();
        assert!(m.bytes().is_ok());
        assert!(MappedFile::open(&p, Some(4 * 4096)).is_err());
    }
}

//! Crash-safe file primitives: write-to-temporary + fsync + rename, directory fsync, the writer
//! lock of a catalog folder (`flock` on `.lock`, released by the kernel if the process dies) and
//! removal of files no manifest refers to.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::format::{is_own_file, LOCK};

/// Makes a rename or file creation in `dir` durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir).and_then(|f| f.sync_all()).map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Replaces `dir/name` with `bytes` atomically: readers see the old or the new file, never a mix.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    let dst = dir.join(name);
    fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
    fsync_dir(dir)
}

/// What a folder holds, as far as a catalog write is concerned.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FolderState {
    /// Absent, empty, or only leftovers of an interrupted first build.
    Empty,
    /// Has a manifest.
    Catalog,
    /// Holds files this crate did not write (the first one is named).
    Foreign(String),
}

/// Classifies `dir` (which must exist or be absent).
pub(crate) fn folder_state(dir: &Path) -> Result<FolderState> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FolderState::Empty),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut catalog = false;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == crate::format::MANIFEST {
            catalog = true;
        } else if !is_own_file(&name) {
            return Ok(FolderState::Foreign(name));
        }
    }
    Ok(if catalog { FolderState::Catalog } else { FolderState::Empty })
}

/// Removes this crate's files in `dir` that are not in `keep` (old generations, temporaries of
/// interrupted writes). Only call while holding the [`DirLock`].
pub(crate) fn remove_unreferenced(dir: &Path, keep: &[&str]) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_own_file(&name) && !keep.contains(&name.as_str()) && name != LOCK && name != crate::format::MANIFEST {
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove an old catalog file");
            }
        }
    }
}

/// How long [`DirLock::acquire`] retries a held lock before it reports [`Error::Busy`].
pub(crate) const LOCK_WAIT: Duration = Duration::from_millis(500);

/// Exclusive writer lock of a catalog folder. Held by builds, merges and each upsert/delete;
/// readers never take it. The kernel drops it when the process exits, even when killed.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock, or fails with [`Error::Busy`] when it stays held for [`LOCK_WAIT`].
    ///
    /// The short wait is not for other writers (they hold it for a whole build or upsert) but
    /// for `flock`'s sharing: a child process forked by any thread of this process (a spawned
    /// `redis-server`, a hook) holds a copy of every open descriptor until it execs, so a lock
    /// this process has just dropped can stay taken for that moment. Seen once in CI under load
    /// as `Busy` on an upsert right after another (`tests/redis/backend.rs`).
    pub fn acquire(dir: &Path) -> Result<Self> {
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match Self::try_acquire(dir) {
                Err(Error::Busy(_)) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                other => return other,
            }
        }
    }

    /// Takes the lock or fails at once with [`Error::Busy`].
    fn try_acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock on a file descriptor we own for the lifetime of `file`.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                return Err(if err.kind() == std::io::ErrorKind::WouldBlock {
                    Error::Busy(dir.to_path_buf())
                } else {
                    Error::io(&path, err)
                });
            }
        }
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    #[allow(dead_code)]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(d.path(), "a.json", b"one").unwrap();
        write_atomic(d.path(), "a.json", b"two").unwrap();
        assert_eq!(fs::read(d.path().join("a.json")).unwrap(), b"two");
        assert!(!d.path().join("a.json.tmp").exists());
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let l = DirLock::acquire(d.path()).unwrap();
        assert!(matches!(DirLock::acquire(d.path()), Err(Error::Busy(_))));
        drop(l);
        DirLock::acquire(d.path()).unwrap();
    }

    #[test]
    fn a_lock_released_within_the_wait_is_taken_and_one_held_longer_is_busy() {
        let d = tempfile::tempdir().unwrap();
        // Held by a copy of the descriptor (as a forked child holds it until exec), released
        // after 100 ms: acquire waits for it.
        let l = DirLock::acquire(d.path()).unwrap();
        let copy = l._file.try_clone().unwrap();
        drop(l);
        assert!(matches!(DirLock::try_acquire(d.path()), Err(Error::Busy(_))), "the copy keeps the lock");
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(copy);
        });
        DirLock::acquire(d.path()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn folder_states() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(folder_state(&d.path().join("absent")).unwrap(), FolderState::Empty);
        fs::write(d.path().join("base-00000001.seg.tmp"), b"x").unwrap();
        fs::write(d.path().join(LOCK), b"").unwrap();
        assert_eq!(folder_state(d.path()).unwrap(), FolderState::Empty);
        fs::write(d.path().join("notes.txt"), b"x").unwrap();
        assert_eq!(folder_state(d.path()).unwrap(), FolderState::Foreign("notes.txt".into()));
        fs::remove_file(d.path().join("notes.txt")).unwrap();
        fs::write(d.path().join("catalog.json"), b"{}").unwrap();
        assert_eq!(folder_state(d.path()).unwrap(), FolderState::Catalog);
        remove_unreferenced(d.path(), &[]);
        assert!(!d.path().join("base-00000001.seg.tmp").exists());
        assert!(d.path().join("catalog.json").exists());
    }
}

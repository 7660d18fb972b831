//! The immutable base segment: a memory-mapped file of feature slots, fixed-size entry records
//! sorted by id (the id index: binary search, nothing is parsed at open) and a blob of
//! `id ++ title ++ metadata` strings. Written once by [`SegmentWriter`] (build, merge, compaction)
//! to a temporary file that is renamed into place; never modified afterwards.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{base_name, crc, feature_bytes, Manifest, Record, SegHeader, StoreForm, RECORD_LEN, SEG_HEADER_LEN};
use crate::fsutil::fsync_dir;
use crate::mapped::MappedFile;

/// One entry as stored, borrowed from a segment or a delta record. Only
/// [`EntryView::verify`] proves its bytes are intact.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryView<'a> {
    pub id: &'a str,
    pub title: &'a [u8],
    pub meta: &'a [u8],
    pub features: &'a [u8],
    pub flags: u32,
    pub image_sha: [u8; 32],
    pub data_crc: u32,
    /// Delta records' CRC also covers the id (base records protect it in the record CRC).
    pub crc_covers_id: bool,
}

impl EntryView<'_> {
    /// Checks the entry's data CRC; `path` names the file in the error.
    pub fn verify(&self, path: &Path) -> Result<()> {
        let c = if self.crc_covers_id {
            crc(&[self.id.as_bytes(), self.title, self.meta, self.features])
        } else {
            crc(&[self.title, self.meta, self.features])
        };
        if c != self.data_crc {
            return Err(Error::corrupt(path, format!("item {:?}: data checksum mismatch", self.id)));
        }
        Ok(())
    }

    /// Title and metadata as text (after [`EntryView::verify`]).
    pub fn strings(&self, path: &Path) -> Result<(&str, &str)> {
        let t = std::str::from_utf8(self.title).map_err(|_| Error::corrupt(path, format!("item {:?}: title is not UTF-8", self.id)))?;
        let m = std::str::from_utf8(self.meta).map_err(|_| Error::corrupt(path, format!("item {:?}: metadata is not UTF-8", self.id)))?;
        Ok((t, m))
    }
}

/// A mapped base segment. Every read checks first that the file was not cut short under us.
pub(crate) struct Segment {
    path: PathBuf,
    map: MappedFile,
    header: SegHeader,
}

impl Segment {
    /// Maps `dir/<manifest.base_file>` and checks its header against the manifest. Reads only
    /// the header: O(1) whatever the number of entries.
    pub fn open(dir: &Path, m: &Manifest) -> Result<Self> {
        let path = dir.join(&m.base_file);
        // Base segments are never written after they are renamed into place (writers create a
        // new generation instead); one cut short by an outside writer is caught by `bytes`.
        let map = MappedFile::open(&path, None)?;
        let len = map.len() as u64;
        if len != m.base_bytes {
            return Err(Error::corrupt(&path, format!("file is {len} bytes, the manifest says {}", m.base_bytes)));
        }
        let header = SegHeader::decode(map.bytes()?, &path)?;
        let agrees = header.form == m.form
            && header.width as usize == m.width
            && header.count == m.base_items
            && header.generation == m.generation
            && header.file_len == len
            && header.fingerprint == m.fingerprint;
        if !agrees {
            return Err(Error::corrupt(&path, "segment header does not agree with catalog.json"));
        }
        map.advise(memmap2::Advice::Random);
        Ok(Self { path, map, header })
    }

    /// Hints the kernel that the whole segment will be read in order (verify, merge), so it reads
    /// ahead; lookups keep the default random-access hint set at open.
    pub fn advise_sequential(&self) {
        self.map.advise(memmap2::Advice::Sequential);
    }

    /// The segment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header.
    pub fn header(&self) -> &SegHeader {
        &self.header
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.header.count
    }

    /// Checks the file was not cut short under us (see [`MappedFile::check`]).
    pub fn check(&self) -> Result<()> {
        self.map.check()
    }

    /// Record `i` of the checked bytes `map` and its id, record CRC checked.
    fn record<'m>(&self, map: &'m [u8], i: u64) -> Result<(Record, &'m [u8])> {
        let h = &self.header;
        let at = (h.records_off + i * RECORD_LEN as u64) as usize;
        let raw = &map[at..at + RECORD_LEN];
        let r = Record::decode(raw);
        let blob = &map[h.blob_off as usize..(h.blob_off + h.blob_len) as usize];
        let end = r.id_off as u128 + r.id_len as u128 + r.title_len as u128 + r.meta_len as u128;
        if end > blob.len() as u128 || r.slot >= h.slots {
            return Err(Error::corrupt(&self.path, format!("entry record {i} is out of bounds")));
        }
        let id = &blob[r.id_off as usize..(r.id_off + r.id_len as u64) as usize];
        if !Record::crc_ok(raw, id) {
            return Err(Error::corrupt(
                &self.path,
                format!("entry record {i} (id {:?}): record checksum mismatch", String::from_utf8_lossy(id)),
            ));
        }
        Ok((r, id))
    }

    /// Binary search for `id`. Every record visited has its CRC checked, so a damaged id table
    /// is reported rather than silently misdirecting the search.
    pub fn find(&self, id: &str) -> Result<Option<u64>> {
        let map = self.map.bytes()?;
        let (mut lo, mut hi) = (0u64, self.header.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (_, rid) = self.record(map, mid)?;
            match rid.cmp(id.as_bytes()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some(mid)),
            }
        }
        Ok(None)
    }

    /// Entry `i` (record CRC checked; call [`EntryView::verify`] for the data).
    pub fn entry(&self, i: u64) -> Result<EntryView<'_>> {
        let h = &self.header;
        let map = self.map.bytes()?;
        let (r, id) = self.record(map, i)?;
        let id = std::str::from_utf8(id).map_err(|_| Error::corrupt(&self.path, format!("entry record {i}: id is not UTF-8")))?;
        let blob = &map[h.blob_off as usize..(h.blob_off + h.blob_len) as usize];
        let t0 = (r.id_off + r.id_len as u64) as usize;
        let m0 = t0 + r.title_len as usize;
        let f0 = (h.features_off + r.slot * h.stride()) as usize;
        Ok(EntryView {
            id,
            title: &blob[t0..m0],
            meta: &blob[m0..m0 + r.meta_len as usize],
            features: &map[f0..f0 + h.stride() as usize],
            flags: r.flags,
            image_sha: r.image_sha,
            data_crc: r.data_crc,
            crc_covers_id: false,
        })
    }

    /// Feature slot index of entry `i` (for verification statistics).
    pub fn slot_of(&self, i: u64) -> Result<u64> {
        Ok(self.record(self.map.bytes()?, i)?.0.slot)
    }
}

/// One entry waiting to be written (sorted by id at the end).
struct Pending {
    id: String,
    title: String,
    meta: String,
    flags: u32,
    sha: [u8; 32],
    slot: u64,
    data_crc: u32,
    source: u32,
}

/// The item fields of an entry, borrowed for [`SegmentWriter::push`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryFields<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub meta: &'a str,
    pub flags: u32,
    pub image_sha: [u8; 32],
}

/// What [`SegmentWriter::finish`] wrote.
#[derive(Debug, Clone)]
pub(crate) struct WrittenSegment {
    pub file: String,
    pub bytes: u64,
    pub items: u64,
}

/// Streams feature slots to `base-G.seg.tmp`, then writes sorted records, the blob and the header,
/// fsyncs and renames the file into place. Entries with equal image bytes share one slot.
pub(crate) struct SegmentWriter {
    dir: PathBuf,
    tmp: PathBuf,
    name: String,
    file: BufWriter<File>,
    header: SegHeader,
    pending: Vec<Pending>,
    slot_crcs: Vec<crc32fast::Hasher>,
    by_sha: HashMap<[u8; 32], u64>,
}

impl SegmentWriter {
    /// Starts generation `generation` of a catalog in `dir`.
    pub fn create(dir: &Path, generation: u64, form: StoreForm, width: usize, fingerprint: &str) -> Result<Self> {
        let name = base_name(generation);
        let tmp = dir.join(format!("{name}.tmp"));
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        file.write_all(&[0u8; SEG_HEADER_LEN]).map_err(|e| Error::io(&tmp, e))?;
        let header = SegHeader {
            form,
            width: u32::try_from(width).map_err(|_| Error::InvalidArgument(format!("width {width}")))?,
            count: 0,
            slots: 0,
            features_off: SEG_HEADER_LEN as u64,
            records_off: 0,
            blob_off: 0,
            blob_len: 0,
            file_len: 0,
            generation,
            fingerprint: fingerprint.to_string(),
        };
        header.encode()?; // validates the fingerprint early
        Ok(Self { dir: dir.to_path_buf(), tmp, name, file, header, pending: Vec::new(), slot_crcs: Vec::new(), by_sha: HashMap::new() })
    }

    /// The slot already holding the features of image `sha`, if any.
    pub fn slot_for(&self, sha: &[u8; 32]) -> Option<u64> {
        self.by_sha.get(sha).copied()
    }

    /// Appends the features of image `sha` (f16 little-endian) as a new slot.
    pub fn add_slot(&mut self, sha: [u8; 32], features: &[u8]) -> Result<u64> {
        let stride = feature_bytes(self.header.width as usize);
        if features.len() != stride {
            return Err(Error::InvalidArgument(format!("features are {} bytes, expected {stride}", features.len())));
        }
        self.file.write_all(features).map_err(|e| Error::io(&self.tmp, e))?;
        let mut h = crc32fast::Hasher::new();
        h.update(features);
        self.slot_crcs.push(h);
        let slot = self.header.slots;
        self.header.slots += 1;
        self.by_sha.entry(sha).or_insert(slot);
        Ok(slot)
    }

    /// Adds an entry whose features are in `slot`; `source` indexes the names given to
    /// [`SegmentWriter::finish`] (for duplicate-id messages).
    pub fn push(&mut self, e: EntryFields<'_>, slot: u64, source: u32) -> Result<()> {
        let Some(feat_crc) = self.slot_crcs.get(slot as usize) else {
            return Err(Error::InvalidArgument(format!("feature slot {slot} does not exist")));
        };
        let mut h = crc32fast::Hasher::new();
        h.update(e.title.as_bytes());
        h.update(e.meta.as_bytes());
        h.combine(feat_crc);
        self.pending.push(Pending {
            id: e.id.to_string(),
            title: e.title.to_string(),
            meta: e.meta.to_string(),
            flags: e.flags,
            sha: e.image_sha,
            slot,
            data_crc: h.finalize(),
            source,
        });
        Ok(())
    }

    /// Sorts, writes records, blob and header, fsyncs and renames into place. Refuses duplicate
    /// ids, naming the sources they came from.
    pub fn finish(mut self, sources: &[String]) -> Result<WrittenSegment> {
        self.pending.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        if let Some(w) = self.pending.windows(2).find(|w| w[0].id == w[1].id) {
            let name = |s: u32| sources.get(s as usize).cloned().unwrap_or_else(|| format!("input {s}"));
            return Err(Error::DuplicateId { id: w[0].id.clone(), first: name(w[0].source), second: name(w[1].source) });
        }
        let tmp = self.tmp.clone();
        let io = |e| Error::io(&tmp, e);
        let h = &mut self.header;
        h.count = self.pending.len() as u64;
        h.records_off = h.features_off + h.slots * h.stride();
        h.blob_off = h.records_off + h.count * RECORD_LEN as u64;
        let mut off = 0u64;
        for p in &self.pending {
            let r = Record {
                id_off: off,
                slot: p.slot,
                id_len: p.id.len() as u32,
                title_len: len_u32(&p.title, &p.id, "title")?,
                meta_len: len_u32(&p.meta, &p.id, "metadata")?,
                flags: p.flags,
                image_sha: p.sha,
                data_crc: p.data_crc,
            };
            self.file.write_all(&r.encode(p.id.as_bytes())).map_err(io)?;
            off += (p.id.len() + p.title.len() + p.meta.len()) as u64;
        }
        for p in &self.pending {
            for s in [&p.id, &p.title, &p.meta] {
                self.file.write_all(s.as_bytes()).map_err(io)?;
            }
        }
        h.blob_len = off;
        h.file_len = h.blob_off + off;
        let mut file = self.file.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&self.header.encode()?).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        let dst = self.dir.join(&self.name);
        std::fs::rename(&self.tmp, &dst).map_err(|e| Error::io(&dst, e))?;
        fsync_dir(&self.dir)?;
        Ok(WrittenSegment { file: self.name, bytes: self.header.file_len, items: self.header.count })
    }
}

fn len_u32(s: &str, id: &str, what: &str) -> Result<u32> {
    u32::try_from(s.len()).map_err(|_| Error::InvalidArgument(format!("item {id:?}: {what} is over 4 GiB")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{FORMAT_NAME, FORMAT_VERSION, VIEWS};

    fn manifest(w: &WrittenSegment, width: usize) -> Manifest {
        Manifest {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            generation: 1,
            fingerprint: "0f".repeat(32),
            form: StoreForm::Cls,
            dtype: "f16".into(),
            views: VIEWS,
            width,
            vision_width: width,
            base_file: w.file.clone(),
            base_bytes: w.bytes,
            base_items: w.items,
            delta_file: "delta-00000001.log".into(),
            delta_bytes: 0,
            updated_unix: 0,
        }
    }

    #[test]
    fn write_then_find_every_entry() {
        let d = tempfile::tempdir().unwrap();
        let width = 4;
        let mut w = SegmentWriter::create(d.path(), 1, StoreForm::Cls, width, &"0f".repeat(32)).unwrap();
        let ids = ["b", "a", "c", "aa", "dup-image"];
        for (k, id) in ids.iter().enumerate() {
            let sha = [if *id == "dup-image" { 1 } else { k as u8 }; 32];
            let slot = match w.slot_for(&sha) {
                Some(s) => s,
                None => w.add_slot(sha, &vec![k as u8; feature_bytes(width)]).unwrap(),
            };
            let fields = EntryFields { id, title: "t", meta: "{}", flags: 0, image_sha: sha };
            w.push(fields, slot, 0).unwrap();
        }
        let written = w.finish(&["x".into()]).unwrap();
        assert_eq!(written.items, 5);
        let seg = Segment::open(d.path(), &manifest(&written, width)).unwrap();
        assert_eq!(seg.header().slots, 4, "equal image bytes share one slot");
        for id in ids {
            let i = seg.find(id).unwrap().unwrap();
            let e = seg.entry(i).unwrap();
            assert_eq!(e.id, id);
            e.verify(seg.path()).unwrap();
        }
        assert_eq!(seg.find("zz").unwrap(), None);
        assert_eq!(seg.entry(seg.find("dup-image").unwrap().unwrap()).unwrap().features, seg.entry(seg.find("a").unwrap().unwrap()).unwrap().features);
    }

    #[test]
    fn duplicate_ids_are_refused_with_their_sources() {
        let d = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::create(d.path(), 1, StoreForm::Cls, 1, &"0f".repeat(32)).unwrap();
        let slot = w.add_slot([0; 32], &[0; 10]).unwrap();
        let f = EntryFields { id: "x", title: "", meta: "{}", flags: 0, image_sha: [0; 32] };
        w.push(f, slot, 0).unwrap();
        w.push(f, slot, 1).unwrap();
        let err = w.finish(&["shard-a".into(), "shard-b".into()]).unwrap_err().to_string();
        assert!(err.contains("\"x\"") && err.contains("shard-a") && err.contains("shard-b"), "{err}");
    }
}

//! Byte layout of the catalog files (described for humans in `FORMAT.md`): the manifest
//! `catalog.json`, the fixed header and entry records of a base segment, and the record header of
//! the delta log. Everything is little-endian and protected by CRC-32 (IEEE, `crc32fast`).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Views (tokens) per item.
pub const VIEWS: usize = lavic_model::NUM_VIEWS;
/// Bytes per stored value (f16).
pub const VALUE_BYTES: usize = 2;
/// Longest accepted item id, in bytes.
pub const MAX_ID_BYTES: usize = 1024;

pub(crate) const MANIFEST: &str = "catalog.json";
pub(crate) const REPORT: &str = "build-report.json";
pub(crate) const LOCK: &str = ".lock";
pub(crate) const FORMAT_NAME: &str = "lavic-catalog";
pub(crate) const FORMAT_VERSION: u32 = 1;

pub(crate) const SEG_MAGIC: [u8; 8] = *b"LAVICSEG";
pub(crate) const SEG_HEADER_LEN: usize = 192;
pub(crate) const RECORD_LEN: usize = 72;
pub(crate) const DTYPE_F16: u8 = 1;

pub(crate) const DELTA_MAGIC: u32 = u32::from_le_bytes(*b"LVDR");
pub(crate) const DELTA_HEADER_LEN: usize = 64;
pub(crate) const KIND_UPSERT: u8 = 1;
pub(crate) const KIND_DELETE: u8 = 2;

/// Entry flag: the item's image file was missing and the white image was encoded instead.
pub(crate) const FLAG_IMAGE_MISSING: u32 = 1;

/// What a catalog stores per view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreForm {
    /// CLS features before the projector (vision width per view); projected at request time.
    #[default]
    Cls,
    /// Projected tokens (text hidden size per view); served as stored.
    Projected,
}

impl StoreForm {
    fn code(self) -> u8 {
        match self {
            StoreForm::Cls => 0,
            StoreForm::Projected => 1,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(StoreForm::Cls),
            1 => Some(StoreForm::Projected),
            _ => None,
        }
    }
}

impl fmt::Display for StoreForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreForm::Cls => "cls",
            StoreForm::Projected => "projected",
        })
    }
}

impl FromStr for StoreForm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cls" => Ok(StoreForm::Cls),
            "projected" => Ok(StoreForm::Projected),
            other => Err(Error::InvalidArgument(format!("store form {other:?} (expected cls or projected)"))),
        }
    }
}

/// Bytes of the stored features of one item: 5 views x `width` values x 2 bytes (f16).
pub fn feature_bytes(width: usize) -> usize {
    VIEWS * width * VALUE_BYTES
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub(crate) fn crc(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

pub(crate) fn base_name(generation: u64) -> String {
    format!("base-{generation:08}.seg")
}

pub(crate) fn delta_name(generation: u64) -> String {
    format!("delta-{generation:08}.log")
}

/// Whether a file name is one this crate writes (used to tell a leftover of an interrupted
/// build from a folder that belongs to someone else).
pub(crate) fn is_own_file(name: &str) -> bool {
    name == MANIFEST
        || name == REPORT
        || name == LOCK
        || name.ends_with(".tmp")
        || (name.starts_with("base-") && name.ends_with(".seg"))
        || (name.starts_with("delta-") && name.ends_with(".log"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The fixed header at offset 0 of a base segment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SegHeader {
    pub form: StoreForm,
    /// Values per view.
    pub width: u32,
    /// Entries (records).
    pub count: u64,
    /// Feature slots (entries with the same image bytes share one).
    pub slots: u64,
    pub features_off: u64,
    pub records_off: u64,
    pub blob_off: u64,
    pub blob_len: u64,
    pub file_len: u64,
    pub generation: u64,
    /// The encoder fingerprint, 64 hex characters.
    pub fingerprint: String,
}

impl SegHeader {
    pub fn encode(&self) -> Result<[u8; SEG_HEADER_LEN]> {
        if self.fingerprint.len() != 64 || !self.fingerprint.is_ascii() {
            return Err(Error::InvalidArgument(format!(
                "encoder fingerprint {:?} is not 64 hex characters",
                self.fingerprint
            )));
        }
        let mut b = [0u8; SEG_HEADER_LEN];
        b[0..8].copy_from_slice(&SEG_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12] = self.form.code();
        b[13] = DTYPE_F16;
        b[14] = VIEWS as u8;
        b[16..20].copy_from_slice(&self.width.to_le_bytes());
        for (at, v) in [
            (24, self.count),
            (32, self.features_off),
            (40, self.records_off),
            (48, self.blob_off),
            (56, self.blob_len),
            (64, self.file_len),
            (72, self.generation),
            (144, self.slots),
        ] {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        b[80..144].copy_from_slice(self.fingerprint.as_bytes());
        let c = crc(&[&b[..SEG_HEADER_LEN - 4]]);
        b[SEG_HEADER_LEN - 4..].copy_from_slice(&c.to_le_bytes());
        Ok(b)
    }

    /// Parses and checks a header (magic, version, checksum, section bounds).
    pub fn decode(b: &[u8], path: &Path) -> Result<Self> {
        if b.len() < SEG_HEADER_LEN || b[0..8] != SEG_MAGIC {
            return Err(Error::corrupt(path, "not a catalog segment (bad magic)"));
        }
        let stored = u32_at(b, SEG_HEADER_LEN - 4);
        if crc(&[&b[..SEG_HEADER_LEN - 4]]) != stored {
            return Err(Error::corrupt(path, "segment header checksum mismatch"));
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(Error::not_catalog(path, format!("segment version {version}, this build reads {FORMAT_VERSION}")));
        }
        let form = StoreForm::from_code(b[12]).ok_or_else(|| Error::corrupt(path, "unknown store form"))?;
        if b[13] != DTYPE_F16 || b[14] as usize != VIEWS {
            return Err(Error::corrupt(path, "unsupported value type or view count"));
        }
        let fingerprint = std::str::from_utf8(&b[80..144])
            .map_err(|_| Error::corrupt(path, "fingerprint is not text"))?
            .to_string();
        let h = SegHeader {
            form,
            width: u32_at(b, 16),
            count: u64_at(b, 24),
            features_off: u64_at(b, 32),
            records_off: u64_at(b, 40),
            blob_off: u64_at(b, 48),
            blob_len: u64_at(b, 56),
            file_len: u64_at(b, 64),
            generation: u64_at(b, 72),
            slots: u64_at(b, 144),
            fingerprint,
        };
        h.check_bounds(path)?;
        Ok(h)
    }

    /// Bytes of one feature slot.
    pub fn stride(&self) -> u64 {
        feature_bytes(self.width as usize) as u64
    }

    fn check_bounds(&self, path: &Path) -> Result<()> {
        let ok = (|| {
            let feats_end = self.features_off.checked_add(self.slots.checked_mul(self.stride())?)?;
            let recs_end = self.records_off.checked_add(self.count.checked_mul(RECORD_LEN as u64)?)?;
            let blob_end = self.blob_off.checked_add(self.blob_len)?;
            Some(
                self.width > 0
                    && self.features_off >= SEG_HEADER_LEN as u64
                    && feats_end <= self.records_off
                    && recs_end <= self.blob_off
                    && blob_end <= self.file_len
                    && self.slots <= self.count.max(1),
            )
        })();
        if ok != Some(true) {
            return Err(Error::corrupt(path, "segment header sections are out of bounds"));
        }
        Ok(())
    }
}

/// One fixed-size entry record of a base segment (records are sorted by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// Offset of `id ++ title ++ metadata` in the blob.
    pub id_off: u64,
    /// Feature slot.
    pub slot: u64,
    pub id_len: u32,
    pub title_len: u32,
    pub meta_len: u32,
    pub flags: u32,
    pub image_sha: [u8; 32],
    /// CRC of `title ++ metadata ++ features`.
    pub data_crc: u32,
}

impl Record {
    /// Encodes the record; its own CRC covers the record bytes and the id.
    pub fn encode(&self, id: &[u8]) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0..8].copy_from_slice(&self.id_off.to_le_bytes());
        b[8..16].copy_from_slice(&self.slot.to_le_bytes());
        b[16..20].copy_from_slice(&self.id_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.title_len.to_le_bytes());
        b[24..28].copy_from_slice(&self.meta_len.to_le_bytes());
        b[28..32].copy_from_slice(&self.flags.to_le_bytes());
        b[32..64].copy_from_slice(&self.image_sha);
        b[64..68].copy_from_slice(&self.data_crc.to_le_bytes());
        let c = crc(&[&b[..68], id]);
        b[68..72].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Parses a record without checking its CRC (that needs the id, see [`Record::crc_ok`]).
    pub fn decode(b: &[u8]) -> Self {
        Record {
            id_off: u64_at(b, 0),
            slot: u64_at(b, 8),
            id_len: u32_at(b, 16),
            title_len: u32_at(b, 20),
            meta_len: u32_at(b, 24),
            flags: u32_at(b, 28),
            image_sha: b[32..64].try_into().expect("32 bytes"),
            data_crc: u32_at(b, 64),
        }
    }

    /// Whether the stored record CRC matches the record bytes and `id`.
    pub fn crc_ok(raw: &[u8], id: &[u8]) -> bool {
        crc(&[&raw[..68], id]) == u32_at(raw, 68)
    }
}

/// Header of one delta-log record; the payload `id ++ title ++ metadata ++ features` follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeltaHeader {
    pub kind: u8,
    pub flags: u8,
    pub id_len: u32,
    pub title_len: u32,
    pub meta_len: u32,
    pub feat_len: u32,
    pub image_sha: [u8; 32],
    /// CRC of the whole payload.
    pub data_crc: u32,
}

impl DeltaHeader {
    pub fn payload_len(&self) -> u64 {
        self.id_len as u64 + self.title_len as u64 + self.meta_len as u64 + self.feat_len as u64
    }

    pub fn encode(&self) -> [u8; DELTA_HEADER_LEN] {
        let mut b = [0u8; DELTA_HEADER_LEN];
        b[0..4].copy_from_slice(&DELTA_MAGIC.to_le_bytes());
        b[4] = self.kind;
        b[5] = self.flags;
        b[8..12].copy_from_slice(&self.id_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.title_len.to_le_bytes());
        b[16..20].copy_from_slice(&self.meta_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.feat_len.to_le_bytes());
        b[24..56].copy_from_slice(&self.image_sha);
        b[56..60].copy_from_slice(&self.data_crc.to_le_bytes());
        let c = crc(&[&b[..60]]);
        b[60..64].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Parses a header; `None` when the magic or the header CRC is wrong.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < DELTA_HEADER_LEN || u32_at(b, 0) != DELTA_MAGIC || crc(&[&b[..60]]) != u32_at(b, 60) {
            return None;
        }
        Some(DeltaHeader {
            kind: b[4],
            flags: b[5],
            id_len: u32_at(b, 8),
            title_len: u32_at(b, 12),
            meta_len: u32_at(b, 16),
            feat_len: u32_at(b, 20),
            image_sha: b[24..56].try_into().expect("32 bytes"),
            data_crc: u32_at(b, 56),
        })
    }
}

/// `catalog.json`: what the catalog is and which files hold it. Replacing this file (write to a
/// temporary file, fsync, rename) is the commit point of every change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub format: String,
    pub version: u32,
    pub generation: u64,
    pub fingerprint: String,
    pub form: StoreForm,
    pub dtype: String,
    pub views: usize,
    /// Values per view as stored (vision width for `cls`, text hidden size for `projected`).
    pub width: usize,
    pub vision_width: usize,
    pub base_file: String,
    pub base_bytes: u64,
    pub base_items: u64,
    pub delta_file: String,
    /// Committed length of the delta log; bytes after it are an interrupted write, ignored.
    pub delta_bytes: u64,
    /// Seconds since the Unix epoch of the last change.
    pub updated_unix: u64,
}

#[derive(Serialize, Deserialize)]
struct ManifestFile {
    manifest: Manifest,
    crc32: u32,
}

impl Manifest {
    /// The file's bytes (pretty JSON with a CRC of the manifest's compact serialisation).
    pub fn to_file_bytes(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("manifest serialises");
        let file = ManifestFile { manifest: self.clone(), crc32: crc(&[&body]) };
        let mut out = serde_json::to_vec_pretty(&file).expect("manifest serialises");
        out.push(b'\n');
        out
    }

    /// Reads `dir/catalog.json`, checking its CRC and format version.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::not_catalog(dir, format!("no {MANIFEST}"))
            } else {
                Error::io(&path, e)
            }
        })?;
        let file: ManifestFile = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(&path, format!("manifest is not valid: {e}")))?;
        let m = file.manifest;
        if m.format != FORMAT_NAME {
            return Err(Error::not_catalog(dir, format!("manifest format {:?}", m.format)));
        }
        if crc(&[&serde_json::to_vec(&m).expect("manifest serialises")]) != file.crc32 {
            return Err(Error::corrupt(&path, "manifest checksum mismatch"));
        }
        if m.version != FORMAT_VERSION {
            return Err(Error::not_catalog(dir, format!("format version {}, this build reads {FORMAT_VERSION}", m.version)));
        }
        if m.views != VIEWS || m.dtype != "f16" || m.width == 0 {
            return Err(Error::corrupt(&path, "unsupported views, dtype or width"));
        }
        Ok(m)
    }
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SegHeader {
        SegHeader {
            form: StoreForm::Cls,
            width: 32,
            count: 3,
            slots: 2,
            features_off: SEG_HEADER_LEN as u64,
            records_off: SEG_HEADER_LEN as u64 + 2 * 320,
            blob_off: SEG_HEADER_LEN as u64 + 2 * 320 + 3 * RECORD_LEN as u64,
            blob_len: 10,
            file_len: SEG_HEADER_LEN as u64 + 2 * 320 + 3 * RECORD_LEN as u64 + 10,
            generation: 4,
            fingerprint: "ab".repeat(32),
        }
    }

    #[test]
    fn header_roundtrip_and_checksum() {
        let h = header();
        let mut b = h.encode().unwrap();
        assert_eq!(SegHeader::decode(&b, Path::new("x")).unwrap(), h);
        b[30] ^= 1;
        assert!(matches!(SegHeader::decode(&b, Path::new("x")), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn header_refuses_out_of_bounds_sections() {
        let mut h = header();
        h.blob_len = 1 << 40;
        let b = h.encode().unwrap();
        assert!(SegHeader::decode(&b, Path::new("x")).is_err());
    }

    #[test]
    fn record_crc_covers_id() {
        let r = Record { id_off: 5, slot: 1, id_len: 2, title_len: 3, meta_len: 4, flags: 1, image_sha: [7; 32], data_crc: 99 };
        let b = r.encode(b"ab");
        assert_eq!(Record::decode(&b), r);
        assert!(Record::crc_ok(&b, b"ab"));
        assert!(!Record::crc_ok(&b, b"ac"));
    }

    #[test]
    fn delta_header_roundtrip() {
        let h = DeltaHeader { kind: KIND_UPSERT, flags: 1, id_len: 3, title_len: 4, meta_len: 2, feat_len: 320, image_sha: [1; 32], data_crc: 5 };
        let mut b = h.encode();
        assert_eq!(DeltaHeader::decode(&b), Some(h));
        b[10] ^= 4;
        assert_eq!(DeltaHeader::decode(&b), None);
    }

    #[test]
    fn form_parses_and_prints() {
        assert_eq!("projected".parse::<StoreForm>().unwrap(), StoreForm::Projected);
        assert_eq!(StoreForm::Cls.to_string(), "cls");
        assert!("tokens".parse::<StoreForm>().is_err());
        assert_eq!(feature_bytes(1024), 10 * 1024);
    }
}

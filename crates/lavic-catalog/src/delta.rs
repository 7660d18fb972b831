//! The append-only delta log: upserts and deletes made since the base segment was written. Each
//! record carries a header CRC and a payload CRC. Only the first `delta_bytes` bytes (the
//! committed length in `catalog.json`) count; anything after them is an interrupted append,
//! ignored on open and cut off by the next writer.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{crc, DeltaHeader, DELTA_HEADER_LEN, KIND_DELETE, KIND_UPSERT};
use crate::mapped::MappedFile;
use crate::segment::EntryView;

/// Where a delta record's payload lives: in the log mapped at open, or in memory for records
/// appended by this process.
#[derive(Debug, Clone)]
pub(crate) enum Payload {
    Mapped { map: Arc<MappedFile>, off: usize },
    Owned(Arc<[u8]>),
}

/// One upsert record of the log.
#[derive(Debug, Clone)]
pub(crate) struct DeltaItem {
    header: DeltaHeader,
    payload: Payload,
}

impl DeltaItem {
    /// The payload (a mapped one after checking the log was not cut short under us).
    fn bytes(&self) -> Result<&[u8]> {
        let n = self.header.payload_len() as usize;
        match &self.payload {
            Payload::Mapped { map, off } => Ok(&map.bytes()?[*off..*off + n]),
            Payload::Owned(b) => Ok(&b[..n]),
        }
    }

    /// The entry (call [`EntryView::verify`] before trusting it).
    pub fn view(&self) -> Result<EntryView<'_>> {
        let h = &self.header;
        let b = self.bytes()?;
        let (i, t, m) = (h.id_len as usize, h.title_len as usize, h.meta_len as usize);
        let id = std::str::from_utf8(&b[..i]).map_err(|_| Error::InvalidArgument("delta id is not UTF-8".into()))?;
        Ok(EntryView {
            id,
            title: &b[i..i + t],
            meta: &b[i + t..i + t + m],
            features: &b[i + t + m..],
            flags: h.flags as u32,
            image_sha: h.image_sha,
            data_crc: h.data_crc,
            crc_covers_id: true,
        })
    }
}

/// One operation of the log, in order.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Upsert(Arc<DeltaItem>),
    Delete,
}

/// Encodes an upsert record; returns the record bytes and the in-memory item.
pub(crate) fn encode_upsert(id: &str, title: &str, meta: &str, flags: u32, sha: [u8; 32], features: &[u8]) -> Result<(Vec<u8>, DeltaItem)> {
    let len = |s: usize, what: &str| u32::try_from(s).map_err(|_| Error::InvalidArgument(format!("item {id:?}: {what} is over 4 GiB")));
    let payload: Vec<u8> = [id.as_bytes(), title.as_bytes(), meta.as_bytes(), features].concat();
    let header = DeltaHeader {
        kind: KIND_UPSERT,
        flags: flags as u8,
        id_len: len(id.len(), "id")?,
        title_len: len(title.len(), "title")?,
        meta_len: len(meta.len(), "metadata")?,
        feat_len: len(features.len(), "features")?,
        image_sha: sha,
        data_crc: crc(&[&payload]),
    };
    let mut rec = header.encode().to_vec();
    rec.extend_from_slice(&payload);
    Ok((rec, DeltaItem { header, payload: Payload::Owned(payload.into()) }))
}

/// Encodes a delete record.
pub(crate) fn encode_delete(id: &str) -> Vec<u8> {
    let header = DeltaHeader {
        kind: KIND_DELETE,
        flags: 0,
        id_len: id.len() as u32,
        title_len: 0,
        meta_len: 0,
        feat_len: 0,
        image_sha: [0; 32],
        data_crc: crc(&[id.as_bytes()]),
    };
    let mut rec = header.encode().to_vec();
    rec.extend_from_slice(id.as_bytes());
    rec
}

/// Maps the committed part of a delta log (`None` when it is empty).
/// (The committed prefix of a delta log is never rewritten: writers only append after it,
/// cutting off uncommitted bytes first, and a compaction writes a new generation.)
pub(crate) fn map(path: &Path, committed: u64) -> Result<Option<Arc<MappedFile>>> {
    if committed == 0 {
        return Ok(None);
    }
    Ok(Some(Arc::new(MappedFile::open(path, Some(committed))?)))
}

/// Reads every committed record in order, checking both CRCs of each.
pub(crate) fn replay(mapped: &Arc<MappedFile>, path: &Path) -> Result<Vec<(String, Op)>> {
    let map = mapped.bytes()?;
    let mut ops = Vec::new();
    let mut off = 0usize;
    while off < map.len() {
        let bad = |what: &str| Error::corrupt(path, format!("delta record at byte {off}: {what}"));
        if map.len() - off < DELTA_HEADER_LEN {
            return Err(bad("truncated header"));
        }
        let h = DeltaHeader::decode(&map[off..off + DELTA_HEADER_LEN]).ok_or_else(|| bad("header checksum mismatch"))?;
        let start = off + DELTA_HEADER_LEN;
        let n = h.payload_len() as usize;
        if map.len() - start < n {
            return Err(bad("payload runs past the committed end"));
        }
        let payload = &map[start..start + n];
        if crc(&[payload]) != h.data_crc {
            return Err(bad("payload checksum mismatch"));
        }
        let id = std::str::from_utf8(&payload[..h.id_len as usize]).map_err(|_| bad("id is not UTF-8"))?.to_string();
        let op = match h.kind {
            KIND_UPSERT => Op::Upsert(Arc::new(DeltaItem { header: h, payload: Payload::Mapped { map: mapped.clone(), off: start } })),
            KIND_DELETE => Op::Delete,
            k => return Err(bad(&format!("unknown record kind {k}"))),
        };
        ops.push((id, op));
        off = start + n;
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_replay_in_order_and_corruption_is_found() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("delta.log");
        let (a, item) = encode_upsert("a", "T", "{}", 0, [3; 32], &[1, 2, 3, 4]).unwrap();
        let v = item.view().unwrap();
        assert_eq!((v.id, v.title, v.features), ("a", &b"T"[..], &[1u8, 2, 3, 4][..]));
        v.verify(&path).unwrap();
        let b = encode_delete("a");
        let mut all = [a.clone(), b].concat();
        std::fs::write(&path, &all).unwrap();
        let ops = replay(&map(&path, all.len() as u64).unwrap().unwrap(), &path).unwrap();
        assert_eq!(ops.len(), 2);
        assert!(matches!(ops[1], (ref id, Op::Delete) if id == "a"));
        // An uncommitted tail is not read at all.
        let ops = replay(&map(&path, a.len() as u64).unwrap().unwrap(), &path).unwrap();
        assert_eq!(ops.len(), 1);
        // A flipped payload byte is reported.
        all[DELTA_HEADER_LEN + 2] ^= 0x40;
        std::fs::write(&path, &all).unwrap();
        let err = replay(&map(&path, all.len() as u64).unwrap().unwrap(), &path).unwrap_err();
        assert!(err.to_string().contains("payload checksum"), "{err}");
    }
}

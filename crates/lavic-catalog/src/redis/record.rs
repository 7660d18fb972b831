//! The value of one item's Redis key, and the key layout of a catalog namespace. Described for
//! humans in `FORMAT.md` ("Redis store"). The value holds the same f16 features as an mmap
//! catalog entry plus title, metadata JSON text, flags and image sha256, behind a 56-byte header
//! whose CRC-32 also covers the namespace's encoder fingerprint and the item id (both outside the
//! value), so a value read under another id or another fingerprint is refused, never served.

use sha2::{Digest, Sha256};

use crate::format::{crc, feature_bytes, StoreForm};
use crate::stored::StoredItem;

/// Magic of an item value.
pub(crate) const MAGIC: [u8; 4] = *b"LVRC";
/// Version of the value layout.
pub(crate) const VERSION: u8 = 1;
/// Bytes before the payload.
pub(crate) const HEADER_LEN: usize = 56;
/// Flag bit: the image was missing (white image's features).
const FLAG_MISSING: u8 = 1;

/// Bytes of an index digest: image sha256 ++ the first 8 bytes of sha256(flags, title, metadata).
pub(crate) const DIGEST_LEN: usize = 40;

/// What every value of a namespace must agree with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Hex sha256 of the image encoder (64 characters): the namespace.
    pub fingerprint: String,
    /// What is stored per view.
    pub form: StoreForm,
    /// Values per stored view.
    pub width: usize,
    /// The encoder's vision width (equals `width` for the CLS form).
    pub vision_width: usize,
}

/// Key names of one catalog namespace. Every key carries the hash tag `{<fingerprint>}`, so that
/// on Redis Cluster all keys of one catalog map to one slot (one node): scripts and transactions
/// over them stay atomic there too.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// `PREFIX:{FP}:`: every key starts with it.
    pub base: String,
    /// Hash: fingerprint, form, width, vision_width, format, instance.
    pub meta: String,
    /// Hash: id -> index digest (item count = HLEN; push compares digests).
    pub index: String,
    /// Integer incremented by every write batch (orders invalidations).
    pub epoch: String,
    /// Pub/sub channel of invalidations: `EPOCH ids...`.
    pub channel: String,
}

impl Keys {
    pub fn new(prefix: &str, fingerprint: &str) -> Self {
        let base = format!("{prefix}:{{{fingerprint}}}:");
        Keys { meta: format!("{base}meta"), index: format!("{base}index"), epoch: format!("{base}epoch"), channel: format!("{base}inv"), base }
    }

    /// The key of item `id`.
    pub fn item(&self, id: &str) -> String {
        let mut k = String::with_capacity(self.base.len() + 5 + id.len());
        k.push_str(&self.base);
        k.push_str("item:");
        k.push_str(id);
        k
    }
}

/// Why a value was refused.
pub(crate) type DecodeError = String;

/// Encodes `it` as the value of its key in a namespace of `layout`.
pub(crate) fn encode(it: &StoredItem, layout: &Layout) -> Result<Vec<u8>, DecodeError> {
    let want = feature_bytes(layout.width);
    if it.features.len() != want {
        return Err(format!("item {:?}: features are {} bytes, the catalog stores {want}", it.id, it.features.len()));
    }
    let len32 = |n: usize, what: &str| u32::try_from(n).map_err(|_| format!("item {:?}: {what} is over 4 GiB", it.id));
    let mut v = Vec::with_capacity(HEADER_LEN + it.title.len() + it.metadata.len() + want);
    v.extend_from_slice(&MAGIC);
    v.push(VERSION);
    v.push(form_code(layout.form));
    v.push(if it.image_missing { FLAG_MISSING } else { 0 });
    v.push(0);
    v.extend_from_slice(&len32(layout.width, "width")?.to_le_bytes());
    v.extend_from_slice(&len32(it.title.len(), "title")?.to_le_bytes());
    v.extend_from_slice(&len32(it.metadata.len(), "metadata")?.to_le_bytes());
    v.extend_from_slice(&it.image_sha256);
    let c = checksum(&v[..52], &layout.fingerprint, &it.id, &[it.title.as_bytes(), it.metadata.as_bytes(), &it.features]);
    v.extend_from_slice(&c.to_le_bytes());
    v.extend_from_slice(it.title.as_bytes());
    v.extend_from_slice(it.metadata.as_bytes());
    v.extend_from_slice(&it.features);
    Ok(v)
}

/// Decodes and verifies the value read for `id`: magic, version, form and width of the
/// namespace, lengths, UTF-8, and the checksum (covering fingerprint and id).
pub(crate) fn decode(id: &str, v: &[u8], layout: &Layout) -> Result<StoredItem, DecodeError> {
    if v.len() < HEADER_LEN || v[..4] != MAGIC {
        return Err(format!("item {id:?}: not a lavic item value ({} bytes, bad magic)", v.len()));
    }
    if v[4] != VERSION {
        return Err(format!("item {id:?}: value version {}, this build reads {VERSION}", v[4]));
    }
    let u32_at = |at: usize| u32::from_le_bytes(v[at..at + 4].try_into().expect("4 bytes")) as usize;
    let (width, title_len, meta_len) = (u32_at(8), u32_at(12), u32_at(16));
    if v[5] != form_code(layout.form) || width != layout.width {
        return Err(format!("item {id:?}: value stores form code {} x {width}, the catalog {} x {}", v[5], layout.form, layout.width));
    }
    let feat = feature_bytes(width);
    if v.len() as u128 != HEADER_LEN as u128 + title_len as u128 + meta_len as u128 + feat as u128 {
        return Err(format!("item {id:?}: value is {} bytes, its header says otherwise", v.len()));
    }
    let (t0, m0, f0) = (HEADER_LEN, HEADER_LEN + title_len, HEADER_LEN + title_len + meta_len);
    let stored = u32::from_le_bytes(v[52..56].try_into().expect("4 bytes"));
    if checksum(&v[..52], &layout.fingerprint, id, &[&v[t0..]]) != stored {
        return Err(format!("item {id:?}: checksum mismatch (damaged, or written under another id or encoder)"));
    }
    let text = |b: &[u8], what: &str| String::from_utf8(b.to_vec()).map_err(|_| format!("item {id:?}: {what} is not UTF-8"));
    Ok(StoredItem {
        id: id.to_string(),
        title: text(&v[t0..m0], "title")?,
        metadata: text(&v[m0..f0], "metadata")?,
        image_missing: v[6] & FLAG_MISSING != 0,
        image_sha256: v[20..52].try_into().expect("32 bytes"),
        features: v[f0..].to_vec(),
    })
}

/// The index digest of an item: equal digests mean equal stored items (same image bytes, flags,
/// title and metadata), so `push` can skip them without reading their values.
pub(crate) fn digest(it: &StoredItem) -> [u8; DIGEST_LEN] {
    let mut h = Sha256::new();
    h.update([u8::from(it.image_missing)]);
    h.update((it.title.len() as u64).to_le_bytes());
    h.update(it.title.as_bytes());
    h.update(it.metadata.as_bytes());
    let text: [u8; 32] = h.finalize().into();
    let mut d = [0u8; DIGEST_LEN];
    d[..32].copy_from_slice(&it.image_sha256);
    d[32..].copy_from_slice(&text[..8]);
    d
}

fn checksum(header: &[u8], fingerprint: &str, id: &str, payload: &[&[u8]]) -> u32 {
    let id_len = (id.len() as u32).to_le_bytes();
    let mut parts: Vec<&[u8]> = vec![header, fingerprint.as_bytes(), &id_len, id.as_bytes()];
    parts.extend_from_slice(payload);
    crc(&parts)
}

fn form_code(form: StoreForm) -> u8 {
    match form {
        StoreForm::Cls => 0,
        StoreForm::Projected => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout { fingerprint: "ab".repeat(32), form: StoreForm::Cls, width: 4, vision_width: 4 }
    }

    fn item(id: &str) -> StoredItem {
        StoredItem {
            id: id.into(),
            title: "Mug, 12 oz".into(),
            metadata: r#"{"price":12.5}"#.into(),
            image_missing: false,
            image_sha256: [7; 32],
            features: (0..feature_bytes(4)).map(|i| i as u8).collect(),
        }
    }

    #[test]
    fn roundtrip_and_every_flipped_byte_is_refused() {
        let l = layout();
        let it = item("B01");
        let v = encode(&it, &l).unwrap();
        assert_eq!(v.len(), HEADER_LEN + 10 + 14 + 40);
        assert_eq!(decode("B01", &v, &l).unwrap(), it);
        for at in 0..v.len() {
            let mut bad = v.clone();
            bad[at] ^= 0x10;
            assert!(decode("B01", &bad, &l).is_err(), "flip at byte {at} not caught");
        }
        assert!(decode("B01", &v[..v.len() - 1], &l).is_err());
    }

    #[test]
    fn another_id_or_fingerprint_or_width_is_refused() {
        let l = layout();
        let v = encode(&item("B01"), &l).unwrap();
        assert!(decode("B02", &v, &l).unwrap_err().contains("checksum"));
        let other = Layout { fingerprint: "cd".repeat(32), ..l.clone() };
        assert!(decode("B01", &v, &other).unwrap_err().contains("checksum"));
        let wide = Layout { width: 8, vision_width: 8, ..l.clone() };
        assert!(decode("B01", &v, &wide).is_err());
        let projected = Layout { form: StoreForm::Projected, ..l.clone() };
        assert!(decode("B01", &v, &projected).is_err());
        let mut short = item("B01");
        short.features.pop();
        assert!(encode(&short, &l).is_err());
    }

    #[test]
    fn digests_change_with_every_stored_field() {
        let base = item("B01");
        let d = digest(&base);
        let mut t = base.clone();
        t.title.push('!');
        let mut m = base.clone();
        m.metadata = "{}".into();
        let mut s = base.clone();
        s.image_sha256[0] ^= 1;
        let mut f = base.clone();
        f.image_missing = true;
        for other in [t, m, s, f] {
            assert_ne!(digest(&other), d);
        }
        // Moving bytes between title and metadata changes the digest too.
        let a = StoredItem { title: "ab".into(), metadata: "c".into(), ..base.clone() };
        let b = StoredItem { title: "a".into(), metadata: "bc".into(), ..base };
        assert_ne!(digest(&a), digest(&b));
    }

    #[test]
    fn keys_share_one_hash_tag() {
        let k = Keys::new("lavic", &"ab".repeat(32));
        let tag = format!("{{{}}}", "ab".repeat(32));
        for key in [&k.meta, &k.index, &k.epoch, &k.item("B01")] {
            assert!(key.starts_with("lavic:") && key.contains(&tag), "{key}");
        }
        assert_eq!(k.item("B01"), format!("lavic:{tag}:item:B01"));
    }
}

//! One item as a catalog backend stores it (the stored f16 features of its 5 views, title, image
//! hash, metadata JSON text), and the step every backend shares to serve such items to a prompt:
//! projecting the stored CLS features of all found candidates in one projector call, exactly as
//! [`Catalog::tokens`](crate::Catalog::tokens) does.

use candle_core::Tensor;
use half::f16;
use lavic_model::ImageEncoder;

use crate::catalog::{CatalogItem, ItemInfo};
use crate::error::Result;
use crate::format::{hex, StoreForm, VIEWS};

/// One stored item, as read from (or written to) a backend. Its bytes were checked against their
/// checksum when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredItem {
    /// Item id.
    pub id: String,
    /// Title (empty: the prompt shows `No Title`).
    pub title: String,
    /// Extra fields, as exact JSON text.
    pub metadata: String,
    /// The image was missing; the features are the white image's.
    pub image_missing: bool,
    /// sha256 of the image bytes the features were computed from (zeros when missing).
    pub image_sha256: [u8; 32],
    /// The stored features: 5 views x width values, f16 little-endian.
    pub features: Vec<u8>,
}

impl StoredItem {
    /// What `Catalog.GetItem` shows about the item (metadata as stored).
    pub fn info(&self) -> Result<ItemInfo> {
        Ok(ItemInfo {
            id: self.id.clone(),
            title: self.title.clone(),
            image_sha256: if self.image_missing { String::new() } else { hex(&self.image_sha256) },
            image_missing: self.image_missing,
            metadata: self.metadata.clone(),
        })
    }

    /// Bytes this item holds in memory (for byte-bounded caches).
    pub fn heap_bytes(&self) -> usize {
        self.id.len() + self.title.len() + self.metadata.len() + self.features.len() + std::mem::size_of::<Self>()
    }

    /// The features as a `[5, width]` f16 CPU tensor.
    pub fn features_tensor(&self, width: usize) -> Result<Tensor> {
        Ok(Tensor::from_vec(f16_values(&self.features), (VIEWS, width), &candle_core::Device::Cpu)?)
    }
}

/// Little-endian f16 bytes as values.
pub(crate) fn f16_values(bytes: &[u8]) -> Vec<f16> {
    bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect()
}

/// Turns `m` items' stored values (`m x 5 x width`, in order) into projected tokens
/// `[m, 5, hidden]` in the encoder's dtype on its device: the projector runs once for all of them
/// when the catalog stores CLS features; projected features are served as stored.
pub(crate) fn project_values(values: Vec<f16>, m: usize, form: StoreForm, width: usize, encoder: &ImageEncoder) -> Result<Tensor> {
    let stored = Tensor::from_vec(values, (m, VIEWS, width), &candle_core::Device::Cpu)?.to_device(encoder.device())?;
    let tokens = match form {
        StoreForm::Cls => encoder.project(&stored.to_dtype(encoder.dtype())?)?,
        StoreForm::Projected => stored,
    };
    Ok(tokens.to_dtype(encoder.dtype())?)
}

/// Prompt-ready items for `found` (one entry per requested id, `None` for unknown ids), all found
/// items projected in one call.
pub(crate) fn project_items<S: std::ops::Deref<Target = StoredItem>>(
    found: &[Option<S>],
    form: StoreForm,
    width: usize,
    encoder: &ImageEncoder,
) -> Result<Vec<Option<CatalogItem>>> {
    let m = found.iter().flatten().count();
    if m == 0 {
        return Ok(found.iter().map(|_| None).collect());
    }
    let mut values = Vec::with_capacity(m * VIEWS * width);
    for it in found.iter().flatten() {
        values.extend(f16_values(&it.features));
    }
    let tokens = project_values(values, m, form, width, encoder)?;
    let mut k = 0;
    let mut out = Vec::with_capacity(found.len());
    for f in found {
        out.push(match f {
            None => None,
            Some(it) => {
                let t = tokens.get(k)?;
                k += 1;
                Some(CatalogItem { id: it.id.clone(), title: it.title.clone(), tokens: t, image_missing: it.image_missing })
            }
        });
    }
    Ok(out)
}

//! Decoding of a request's inline images: a [`Validated`] request (encoded bytes, size-checked)
//! becomes a [`Decoded`] one (pixels), which is what the model workers take. CPU and memory work,
//! so it runs in the blocking pool, and only once the request is admitted. A bad image is an
//! INVALID_ARGUMENT naming the inline item.

use lavic_model::ImageEncoder;

use crate::error::{Error, Result};
use crate::validation::{Decoded, Validated};

/// Decodes every inline image of `request` with the encoder's decoding limits.
pub fn decode_images(request: Validated, encoder: &ImageEncoder) -> Result<Decoded> {
    request.map_images(|index, bytes| {
        encoder.decode(&bytes).map_err(|e| Error::invalid(format!("inline_items[{index}].image"), e.to_string()))
    })
}

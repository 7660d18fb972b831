//! AnyRes view extraction, as LLaVA-NeXT's (slow, Pillow-based) `LlavaNextImageProcessor`:
//! best grid pinpoint by effective resolution (ties: least waste), aspect-preserving bicubic
//! resize, centred black padding, tiles of the tower's size row by row, the whole image squashed
//! to one tile as view 0, then per view a shortest-edge resize + centre crop, rescale and CLIP
//! normalisation. LaViC uses exactly [`NUM_VIEWS`] views; missing ones are all-zero tensors.
//!
//! Reference quirks kept on purpose: the padding is `(target - new) // 2` on BOTH sides, so an odd
//! remainder leaves the padded image one pixel short and its last tiles narrower; such a tile is
//! resized on its shortest edge and centre-cropped back to the tile size, as the reference does.

use std::io::Cursor;

use candle_core::{Device, Tensor};

use crate::config::{LlavaConfig, PreprocessorConfig};
use crate::error::{Error, Result};
use crate::resample::{resize_bicubic, Rgb8};

/// Views per image in LaViC (base view + up to 4 tiles).
pub const NUM_VIEWS: usize = 5;

/// Decoding limits: images beyond them are refused before their pixels are allocated.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest accepted width or height.
    pub max_side: u32,
    /// Largest accepted pixel count (width x height), checked from the header before any pixel
    /// is allocated. 16,777,216 (4096 x 4096, 48 MiB as RGB) by default: LaViC sees at most
    /// 672 x 672 of an image, and Pillow's own bomb threshold (~179 M pixels) let a 522 KB PNG
    /// cost ~1 GB to decode (issue 11).
    pub max_pixels: u64,
    /// Largest encoded size in bytes.
    pub max_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_side: 16_384, max_pixels: 16_777_216, max_bytes: 64 << 20 }
    }
}

/// Width and height from an encoded image's header (nothing decoded, no pixel allocated);
/// None when the format or header is not readable (decoding then fails too).
pub fn image_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().ok()?.into_dimensions().ok()
}

/// Decodes an encoded image (JPEG, PNG, WebP, GIF, BMP) to RGB like `Image.open(..).convert("RGB")`.
pub fn decode_rgb(bytes: &[u8], limits: &DecodeLimits) -> Result<Rgb8> {
    if bytes.is_empty() {
        return Err(Error::Image("empty image data".into()));
    }
    if bytes.len() > limits.max_bytes {
        return Err(Error::Image(format!(
            "encoded image is {} bytes, over the limit of {}",
            bytes.len(),
            limits.max_bytes
        )));
    }
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Image(format!("cannot detect format: {e}")))?;
    if reader.format().is_none() {
        return Err(Error::Image("unrecognised image format".into()));
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| Error::Image(format!("cannot read dimensions: {e}")))?;
    if w == 0 || h == 0 {
        return Err(Error::Image(format!("image is {w}x{h}")));
    }
    if w > limits.max_side || h > limits.max_side || w as u64 * h as u64 > limits.max_pixels {
        return Err(Error::Image(format!(
            "image is {w}x{h} ({} pixels), over the decoding limits ({} px per side, {} pixels)",
            w as u64 * h as u64,
            limits.max_side,
            limits.max_pixels
        )));
    }
    if reader_format(bytes) == Some(image::ImageFormat::Jpeg) && !jpeg_complete(bytes) {
        return Err(Error::Image("truncated JPEG: no end-of-image marker after the last scan".into()));
    }
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Image(format!("cannot detect format: {e}")))?;
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(limits.max_pixels * 8);
    reader.limits(l);
    let img = reader.decode().map_err(|e| Error::Image(format!("cannot decode: {e}")))?;
    // `into_rgb8` reuses the buffer of an RGB image instead of copying it.
    let rgb = img.into_rgb8();
    Ok(Rgb8 { width: rgb.width() as usize, height: rgb.height() as usize, data: rgb.into_raw() })
}

fn reader_format(bytes: &[u8]) -> Option<image::ImageFormat> {
    image::guess_format(bytes).ok()
}

/// Whether a JPEG stream has an EOI marker after its last start-of-scan. The decoder we use
/// fills a cut-off scan with grey instead of failing (Pillow raises "image file is truncated"),
/// and inside entropy-coded data 0xFF is always stuffed, so these markers cannot occur by chance.
fn jpeg_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(p) => bytes[p..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// Preprocessing settings, from `preprocessor_config.json` and `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct AnyResConfig {
    /// Tile side = vision tower image size.
    pub tile: usize,
    /// Shortest-edge resize target of each view.
    pub shortest_edge: usize,
    /// Grid pinpoints as (height, width).
    pub pinpoints: Vec<(usize, usize)>,
    /// Channel means.
    pub mean: [f32; 3],
    /// Channel standard deviations.
    pub std: [f32; 3],
    /// Rescale factor (1/255).
    pub rescale: f64,
}

impl AnyResConfig {
    /// Combines the processor config with the model config; refuses grids beyond 5 views.
    pub fn new(model: &LlavaConfig, pre: &PreprocessorConfig) -> Result<Self> {
        let tile = pre
            .crop_size
            .and_then(|c| c.height.or(c.shortest_edge))
            .unwrap_or(model.vision.image_size);
        let shortest_edge = pre
            .size
            .and_then(|s| s.shortest_edge.or(s.height.zip(s.width).map(|(h, w)| h.min(w))))
            .unwrap_or(tile);
        if tile != model.vision.image_size || shortest_edge != tile {
            return Err(Error::Unsupported(format!(
                "preprocessor crop {tile} / size {shortest_edge} differ from the vision tower's image size {}",
                model.vision.image_size
            )));
        }
        let pinpoints: Vec<(usize, usize)> = match &pre.image_grid_pinpoints {
            Some(p) => p.iter().map(|p| (p[0], p[1])).collect(),
            None => model.image_grid_pinpoints.clone(),
        };
        for &(h, w) in &pinpoints {
            let tiles = h.div_ceil(tile) * w.div_ceil(tile);
            if tiles + 1 > NUM_VIEWS || h == 0 || w == 0 {
                return Err(Error::Unsupported(format!(
                    "grid pinpoint {h}x{w} gives {} views; LaViC uses {NUM_VIEWS}",
                    tiles + 1
                )));
            }
        }
        Ok(Self { tile, shortest_edge, pinpoints, mean: pre.image_mean, std: pre.image_std, rescale: pre.rescale_factor })
    }

    /// Stable text describing every setting, for cache fingerprints.
    pub fn describe(&self) -> String {
        format!("{self:?}")
    }
}

/// transformers' `select_best_resolution` for an image of `(height, width)`.
pub fn select_best_resolution(size: (usize, usize), pinpoints: &[(usize, usize)]) -> (usize, usize) {
    let (oh, ow) = (size.0 as f64, size.1 as f64);
    let mut best = pinpoints[0];
    let mut max_eff = 0usize;
    let mut min_waste = usize::MAX;
    for &(h, w) in pinpoints {
        let scale = (w as f64 / ow).min(h as f64 / oh);
        let (dw, dh) = ((ow * scale) as usize, (oh * scale) as usize);
        let eff = (dw * dh).min(size.0 * size.1);
        let waste = w * h - eff;
        if eff > max_eff || (eff == max_eff && waste < min_waste) {
            max_eff = eff;
            min_waste = waste;
            best = (h, w);
        }
    }
    best
}

/// transformers' `_get_patch_output_size`: aspect-preserving size inside `target` (h, w).
fn patch_output_size(size: (usize, usize), target: (usize, usize)) -> (usize, usize) {
    let (oh, ow) = size;
    let (th, tw) = target;
    let sw = tw as f64 / ow as f64;
    let sh = th as f64 / oh as f64;
    if sw < sh {
        (((oh as f64 * sw).ceil() as usize).min(th), tw)
    } else {
        (th, ((ow as f64 * sh).ceil() as usize).min(tw))
    }
}

/// transformers' `resize` with `{"shortest_edge": s}` (no max size).
fn resize_shortest_edge(img: &Rgb8, s: usize) -> Rgb8 {
    let (w, h) = (img.width, img.height);
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (s as f64 * long as f64 / short as f64) as usize;
    let (nw, nh) = if w <= h { (s, new_long) } else { (new_long, s) };
    resize_bicubic(img, nw, nh)
}

/// transformers' `center_crop` to `s x s` (the image is at least that large here).
fn center_crop(img: &Rgb8, s: usize) -> Rgb8 {
    let top = img.height.saturating_sub(s) / 2;
    let left = img.width.saturating_sub(s) / 2;
    let c = img.crop(top, left, s, s);
    if c.width == s && c.height == s {
        c
    } else {
        // Smaller than the crop: transformers pads centred with zeros.
        let (pt, pl) = ((s - c.height) / 2, (s - c.width) / 2);
        c.pad(pt, s - c.height - pt, pl, s - c.width - pl)
    }
}

/// The 8-bit views of an image, base view first (1 to 5 of them).
pub fn views_u8(img: &Rgb8, cfg: &AnyResConfig) -> Vec<Rgb8> {
    let size = (img.height, img.width);
    let best = select_best_resolution(size, &cfg.pinpoints);
    let (nh, nw) = patch_output_size(size, best);
    let resized = resize_bicubic(img, nw, nh);
    let px = (best.1 - nw) / 2;
    let py = (best.0 - nh) / 2;
    let padded = resized.pad(py, py, px, px);
    let mut views = vec![resize_bicubic(img, cfg.shortest_edge, cfg.shortest_edge)];
    let t = cfg.tile;
    for top in (0..padded.height).step_by(t) {
        for left in (0..padded.width).step_by(t) {
            views.push(padded.crop(top, left, t, t));
        }
    }
    views
        .into_iter()
        .take(NUM_VIEWS)
        .map(|v| center_crop(&resize_shortest_edge(&v, cfg.shortest_edge), t))
        .collect()
}

/// Normalised f32 pixels `[5, 3, tile, tile]` of an image and its real view count.
pub fn preprocess(img: &Rgb8, cfg: &AnyResConfig) -> (Vec<f32>, usize) {
    let t = cfg.tile;
    let views = views_u8(img, cfg);
    let mut out = vec![0f32; NUM_VIEWS * 3 * t * t];
    for (v, view) in views.iter().enumerate() {
        for c in 0..3 {
            let base = (v * 3 + c) * t * t;
            for i in 0..t * t {
                // rescale in f64 then cast (transformers' `rescale`), normalise in f32.
                let x = (view.data[i * 3 + c] as f64 * cfg.rescale) as f32;
                out[base + i] = (x - cfg.mean[c]) / cfg.std[c];
            }
        }
    }
    (out, views.len())
}

/// The reference's missing-image fallback: a white image of the tile size.
pub fn white_image(cfg: &AnyResConfig) -> Rgb8 {
    Rgb8::filled(cfg.tile, cfg.tile, [255, 255, 255])
}

/// Stacks preprocessed images into a `[N * 5, 3, tile, tile]` tensor.
pub fn stack_views(images: &[Vec<f32>], cfg: &AnyResConfig, device: &Device) -> Result<Tensor> {
    let t = cfg.tile;
    let data: Vec<f32> = images.iter().flat_map(|v| v.iter().copied()).collect();
    Ok(Tensor::from_vec(data, (images.len() * NUM_VIEWS, 3, t, t), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real() -> Vec<(usize, usize)> {
        vec![(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]
    }

    #[test]
    fn best_resolution_matches_reference_cases() {
        assert_eq!(select_best_resolution((500, 500), &real()), (672, 672));
        assert_eq!(select_best_resolution((300, 900), &real()), (336, 1008));
        assert_eq!(select_best_resolution((300, 600), &real()), (336, 672));
        assert_eq!(select_best_resolution((200, 200), &real()), (336, 672));
    }

    #[test]
    fn view_counts_follow_the_spec() {
        let cfg = AnyResConfig {
            tile: 336,
            shortest_edge: 336,
            pinpoints: real(),
            mean: [0.0; 3],
            std: [1.0; 3],
            rescale: 1.0 / 255.0,
        };
        let count = |w, h| views_u8(&Rgb8::filled(w, h, [9, 9, 9]), &cfg).len();
        assert_eq!(count(800, 800), 5);
        assert_eq!(count(1200, 400), 4);
        assert_eq!(count(336, 336), 3);
        assert_eq!(count(800, 400), 3);
        assert!(views_u8(&Rgb8::filled(333, 301, [1, 2, 3]), &cfg).iter().all(|v| v.width == 336 && v.height == 336));
    }

    #[test]
    fn oversized_and_garbage_images_are_errors() {
        assert!(decode_rgb(b"not an image", &DecodeLimits::default()).is_err());
        assert!(decode_rgb(&[], &DecodeLimits::default()).is_err());
    }
}

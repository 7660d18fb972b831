//! Pillow-exact bicubic resampling of 8-bit RGB images (Pillow's `Image.resize(..., BICUBIC)`,
//! `libImaging/Resample.c`): separable passes, support widened by the scale when shrinking
//! (antialiasing), coefficients normalised per output pixel and quantised to 22-bit fixed point,
//! horizontal pass first unless the height shrinks much more than the width (Pillow >= 11.2; the
//! fixtures were recorded with Pillow 13). The `image` crate's CatmullRom filter uses the same kernel but other
//! rounding, so reproducing Pillow here makes our views bit-identical to the reference's.

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes.
    pub data: Vec<u8>,
}

impl Rgb8 {
    /// A blank image filled with one colour.
    pub fn filled(width: usize, height: usize, rgb: [u8; 3]) -> Self {
        let mut data = Vec::with_capacity(width * height * 3);
        for _ in 0..width * height {
            data.extend_from_slice(&rgb);
        }
        Self { width, height, data }
    }

    /// The sub-image `[top, top + h) x [left, left + w)`, clipped to the image.
    pub fn crop(&self, top: usize, left: usize, h: usize, w: usize) -> Self {
        let h = h.min(self.height.saturating_sub(top));
        let w = w.min(self.width.saturating_sub(left));
        let mut data = Vec::with_capacity(h * w * 3);
        for y in top..top + h {
            let start = (y * self.width + left) * 3;
            data.extend_from_slice(&self.data[start..start + w * 3]);
        }
        Self { width: w, height: h, data }
    }

    /// Pads with black: `top`/`bottom` rows and `left`/`right` columns.
    pub fn pad(&self, top: usize, bottom: usize, left: usize, right: usize) -> Self {
        let w = self.width + left + right;
        let h = self.height + top + bottom;
        let mut out = Self::filled(w, h, [0, 0, 0]);
        for y in 0..self.height {
            let src = y * self.width * 3;
            let dst = ((y + top) * w + left) * 3;
            out.data[dst..dst + self.width * 3].copy_from_slice(&self.data[src..src + self.width * 3]);
        }
        out
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: first source index, tap count, fixed-point coefficients (`ksize` apart).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    kk: Vec<i32>,
}

fn precompute(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for x in 0..ksize {
            let v = if x < xmax && ww != 0.0 { k[x] / ww } else if x < xmax { k[x] } else { 0.0 };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if f < 0.0 { (-0.5 + f) as i32 } else { (0.5 + f) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs { ksize, bounds, kk }
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes like `PIL.Image.resize((width, height), Image.BICUBIC)`.
pub fn resize_bicubic(img: &Rgb8, width: usize, height: usize) -> Rgb8 {
    if img.width == width && img.height == height {
        return img.clone();
    }
    // Pillow >= 11.2 runs the vertical pass first when the height shrinks by more than twice
    // what the width does; the 8-bit rounding between passes makes the order visible.
    let (dh, dw) = (img.height as i64 - height as i64, img.width as i64 - width as i64);
    if dh > 0 && dh > dw * 2 {
        let t = transpose(img);
        return transpose(&resize_h_then_v(&t, height, width));
    }
    resize_h_then_v(img, width, height)
}

/// Swaps rows and columns.
fn transpose(img: &Rgb8) -> Rgb8 {
    let mut data = vec![0u8; img.data.len()];
    for y in 0..img.height {
        for x in 0..img.width {
            let s = (y * img.width + x) * 3;
            let d = (x * img.height + y) * 3;
            data[d..d + 3].copy_from_slice(&img.data[s..s + 3]);
        }
    }
    Rgb8 { width: img.height, height: img.width, data }
}

fn resize_h_then_v(img: &Rgb8, width: usize, height: usize) -> Rgb8 {
    let horiz = precompute(img.width, width);
    let vert = precompute(img.height, height);
    // Only the source rows the vertical pass reads are resampled horizontally.
    let first = vert.bounds.first().map(|b| b.0).unwrap_or(0);
    let last = vert.bounds.last().map(|b| b.0 + b.1).unwrap_or(0);
    let need_h = width != img.width;
    let need_v = height != img.height;
    let tmp = if need_h {
        let rows = if need_v { first..last } else { 0..img.height };
        let mut out = Vec::with_capacity(rows.len() * width * 3);
        for y in rows.clone() {
            let row = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
            for xx in 0..width {
                let (xmin, n) = horiz.bounds[xx];
                let k = &horiz.kk[xx * horiz.ksize..xx * horiz.ksize + n];
                for c in 0..3 {
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (x, &kx) in k.iter().enumerate() {
                        ss = ss.wrapping_add(row[(xmin + x) * 3 + c] as i32 * kx);
                    }
                    out.push(clip8(ss));
                }
            }
        }
        Rgb8 { width, height: rows.len(), data: out }
    } else {
        let rows = if need_v { first..last } else { 0..img.height };
        img.crop(rows.start, 0, rows.len(), img.width)
    };
    if !need_v {
        return tmp;
    }
    let offset = first;
    let mut out = Vec::with_capacity(height * width * 3);
    for yy in 0..height {
        let (ymin, n) = vert.bounds[yy];
        let ymin = ymin - offset;
        let k = &vert.kk[yy * vert.ksize..yy * vert.ksize + n];
        for x in 0..width {
            for c in 0..3 {
                let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                for (y, &ky) in k.iter().enumerate() {
                    ss = ss.wrapping_add(tmp.data[((ymin + y) * width + x) * 3 + c] as i32 * ky);
                }
                out.push(clip8(ss));
            }
        }
    }
    Rgb8 { width, height, data: out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity_and_constant_stays_constant() {
        let img = Rgb8 { width: 3, height: 2, data: (0..18).map(|v| v as u8 * 10).collect() };
        assert_eq!(resize_bicubic(&img, 3, 2), img);
        let flat = Rgb8::filled(37, 23, [200, 10, 99]);
        for (w, h) in [(11, 5), (80, 41), (37, 60)] {
            let r = resize_bicubic(&flat, w, h);
            assert!(r.data.chunks(3).all(|p| p == [200, 10, 99]), "{w}x{h}");
        }
    }

    #[test]
    fn pad_and_crop_round_trip() {
        let img = Rgb8 { width: 2, height: 2, data: (1..=12).collect() };
        let p = img.pad(1, 2, 3, 0);
        assert_eq!((p.width, p.height), (5, 5));
        assert_eq!(p.crop(1, 3, 2, 2), img);
        assert_eq!(&p.data[0..3], &[0, 0, 0]);
    }
}

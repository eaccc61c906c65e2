//! CLIP preprocessing, bit-exact with OpenAI's (torchvision `Resize` + `CenterCrop` on a PIL image).
//!
//! The image is resized so its shorter side is `size` (the longer side truncated, as torchvision does),
//! with PIL's bicubic filter, centre-cropped to `size` x `size` (offsets rounded half to even, as
//! Python's `round`), and normalised per channel. PIL resizes in two separable fixed-point passes,
//! horizontal then vertical, rounding to 8 bits in between; this module reproduces Pillow's
//! `Resample.c` exactly, so the tensor equals PIL's, not merely approximates it. No image crate
//! resizer does (their kernels and rounding differ), which is why it is written here.
//!
//! Only the output pixels inside the crop are computed: PIL computes each output pixel independently,
//! so skipping the ones the crop drops changes nothing but the cost.
//!
//! Known deviation: images with transparency lose their alpha channel before resizing, where PIL
//! resizes premultiplied RGBA; palette images are expanded to RGB, where PIL resizes them with the
//! nearest-neighbour filter. Camera frames are RGB and unaffected.

use image::RgbImage;

use crate::bundle::PreprocessSpec;

const PRECISION_BITS: u32 = 32 - 8 - 2; // Pillow's fixed-point precision for 8-bit images

#[derive(Debug, Clone)]
pub struct Preprocessor {
    size: u32,
    mean: [f32; 3],
    std: [f32; 3],
}

impl Preprocessor {
    pub fn new(spec: &PreprocessSpec) -> Self {
        Preprocessor {
            size: spec.size,
            mean: spec.mean,
            std: spec.std,
        }
    }

    /// Number of f32 values of one preprocessed image: 3 x size x size.
    pub fn tensor_len(&self) -> usize {
        3 * (self.size as usize).pow(2)
    }

    /// Writes the normalised CHW tensor of `image` into `out` (length `self.tensor_len()`).
    pub fn run_into(&self, image: &RgbImage, out: &mut [f32]) {
        let rgb = self.resize_crop(image);
        let plane = (self.size as usize).pow(2);
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                // torchvision: ToTensor divides by 255, then Normalize subtracts and divides, in f32.
                out[c * plane + i] = (px[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
    }

    pub fn run(&self, image: &RgbImage) -> Vec<f32> {
        let mut out = vec![0.0; self.tensor_len()];
        self.run_into(image, &mut out);
        out
    }

    /// The `size` x `size` RGB8 crop of the resized image, row-major: PIL's pixels before ToTensor.
    pub fn resize_crop(&self, image: &RgbImage) -> Vec<u8> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let size = self.size as usize;
        let (rw, rh) = resized_size(w, h, size);
        let (left, top) = (crop_offset(rw, size), crop_offset(rh, size));
        let src = image.as_raw();
        // Nothing to crop from or to: PIL returns the image itself when the size does not change.
        let xs = (rw != w).then(|| Coefficients::new(w, rw, left..left + size));
        let ys = (rh != h).then(|| Coefficients::new(h, rh, top..top + size));

        // Source rows the vertical pass reads (all crop rows when there is no vertical pass).
        let rows = match &ys {
            Some(ys) => ys.source_rows(),
            None => top..top + size,
        };
        let mut tmp = vec![0u8; rows.len() * size * 3];
        for (t, y) in rows.clone().enumerate() {
            let src_row = &src[y * w * 3..(y + 1) * w * 3];
            let dst_row = &mut tmp[t * size * 3..(t + 1) * size * 3];
            match &xs {
                Some(xs) => xs.apply(dst_row, |x, c| src_row[x * 3 + c], 3),
                None => dst_row.copy_from_slice(&src_row[left * 3..(left + size) * 3]),
            }
        }
        let Some(ys) = ys else { return tmp };
        // The vertical pass treats a whole row as the "channels" of one output pixel.
        let row = size * 3;
        let mut out = vec![0u8; size * row];
        ys.apply(&mut out, |y, c| tmp[(y - rows.start) * row + c], row);
        out
    }
}

/// torchvision's `Resize(size)`: the shorter side becomes `size`, the longer `int(size * long / short)`.
fn resized_size(w: usize, h: usize, size: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    if w <= h { (size, new_long) } else { (new_long, size) }
}

/// torchvision's `CenterCrop`: `int(round((extent - size) / 2.0))`, Python rounding half to even.
fn crop_offset(extent: usize, size: usize) -> usize {
    ((extent - size) as f64 / 2.0).round_ties_even() as usize
}

/// Pillow's bicubic kernel (a = -0.5).
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

/// Fixed-point weights of a range of output pixels along one axis (Pillow's `precompute_coeffs`
/// followed by `normalize_coeffs_8bpc`), with the same double arithmetic in the same order.
struct Coefficients {
    /// Per output pixel: first source index and number of taps.
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

impl Coefficients {
    fn new(in_size: usize, out_size: usize, outputs: std::ops::Range<usize>) -> Self {
        const SUPPORT: f64 = 2.0;
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;
        let mut bounds = Vec::with_capacity(outputs.len());
        let mut weights = vec![0i32; outputs.len() * ksize];
        let mut k = vec![0f64; ksize];
        for (i, xx) in outputs.enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero; the clamps follow it as in Pillow.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
            let mut ww = 0.0;
            for (x, kx) in k[..xmax].iter_mut().enumerate() {
                *kx = bicubic(((x + xmin) as f64 - center + 0.5) * ss);
                ww += *kx;
            }
            for (kx, out) in k[..xmax].iter().zip(&mut weights[i * ksize..]) {
                let w = if ww != 0.0 { kx / ww } else { *kx };
                let fixed = w * (1u32 << PRECISION_BITS) as f64;
                *out = if w < 0.0 {
                    (-0.5 + fixed) as i32
                } else {
                    (0.5 + fixed) as i32
                };
            }
            bounds.push((xmin, xmax));
        }
        Coefficients { bounds, ksize, weights }
    }

    /// The range of source indices any output pixel reads.
    fn source_rows(&self) -> std::ops::Range<usize> {
        let start = self.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let end = self.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(0);
        start..end
    }

    /// `dst[i * channels + c] = clip8(sum_x weight * src(x, c))` for every output pixel `i`.
    fn apply(&self, dst: &mut [u8], src: impl Fn(usize, usize) -> u8, channels: usize) {
        for (i, &(xmin, n)) in self.bounds.iter().enumerate() {
            let k = &self.weights[i * self.ksize..i * self.ksize + n];
            for c in 0..channels {
                let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                for (x, &w) in k.iter().enumerate() {
                    ss += src(xmin + x, c) as i32 * w;
                }
                dst[i * channels + c] = (ss >> PRECISION_BITS).clamp(0, 255) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_rule_matches_torchvision() {
        // int(224 * 640 / 427) = 335; a square stays square; portrait keeps width 224.
        assert_eq!(resized_size(640, 427, 224), (335, 224));
        assert_eq!(resized_size(512, 512, 224), (224, 224));
        assert_eq!(resized_size(300, 451, 224), (224, 336));
    }

    #[test]
    fn crop_offsets_round_half_to_even() {
        assert_eq!(crop_offset(225, 224), 0); // round(0.5) == 0
        assert_eq!(crop_offset(227, 224), 2); // round(1.5) == 2
        assert_eq!(crop_offset(229, 224), 2); // round(2.5) == 2
        assert_eq!(crop_offset(335, 224), 56); // round(55.5) == 56
    }

    #[test]
    fn identity_size_is_a_plain_crop() {
        let img = RgbImage::from_fn(224, 230, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8]));
        let p = Preprocessor {
            size: 224,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let out = p.resize_crop(&img);
        // 230 -> offset round(3.0) = 3
        assert_eq!(&out[..3], &[0, 3, 3]);
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(640, 335), (100, 224), (1000, 224), (7, 3)] {
            let c = Coefficients::new(i, o, 0..o);
            for (j, &(_, n)) in c.bounds.iter().enumerate() {
                let s: i32 = c.weights[j * c.ksize..j * c.ksize + n].iter().sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= n as i32, "{i}->{o} pixel {j}: {s}");
            }
        }
    }
}

//! Uncompressed frames (a camera's, a ROS 2 image's) to RGB8. YUYV is 4:2:2 Y'CbCr with BT.601 coefficients and limited range
//! (what UVC webcams and vivid send), converted in 20-bit fixed point; tests hold it to OpenCV's
//! `COLOR_YUV2RGB_YUYV` on the same frames.

use image::RgbImage;

// BT.601, limited range: R = 1.164 (Y - 16) + 1.596 (V - 128), G = 1.164 (Y - 16) - 0.813 (V - 128)
// - 0.391 (U - 128), B = 1.164 (Y - 16) + 2.018 (U - 128); coefficients scaled by 2^20.
const SHIFT: i32 = 20;
const CY: i32 = 1_220_542;
const CRV: i32 = 1_673_527;
const CGV: i32 = -852_492;
const CGU: i32 = -409_993;
const CBU: i32 = 2_116_026;

fn clamp8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

fn yuv_pixel(y: u8, u: i32, v: i32) -> [u8; 3] {
    let y = (y as i32 - 16).max(0) * CY;
    let round = 1 << (SHIFT - 1);
    [
        clamp8((y + CRV * v + round) >> SHIFT),
        clamp8((y + CGV * v + CGU * u + round) >> SHIFT),
        clamp8((y + CBU * u + round) >> SHIFT),
    ]
}

/// How an uncompressed frame's bytes are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// YUV 4:2:2, Y0 U Y1 V per two pixels (V4L2's YUYV, ROS's `yuyv`/`yuv422_yuy2`).
    Yuyv,
    /// YUV 4:2:2, U Y0 V Y1 per two pixels (ROS's `uyvy`, and `yuv422`, its old name).
    Uyvy,
    Rgb,
    Bgr,
    Rgba,
    Bgra,
    /// One grey byte per pixel.
    Mono,
}

impl Layout {
    pub fn bytes_per_pixel(self) -> u32 {
        match self {
            Layout::Mono => 1,
            Layout::Yuyv | Layout::Uyvy => 2,
            Layout::Rgb | Layout::Bgr => 3,
            Layout::Rgba | Layout::Bgra => 4,
        }
    }
}

/// An uncompressed frame whose bytes cannot be the pixels it claims.
#[derive(Debug, thiserror::Error)]
#[error("{layout:?} frame of {len} bytes is too short for {width}x{height}")]
pub struct ConvertError {
    layout: Layout,
    len: usize,
    width: u32,
    height: u32,
}

/// A frame of `width` x `height` pixels in `layout`, rows `stride` bytes apart (a smaller stride, as
/// drivers report 0, means unpadded rows), to RGB8.
pub fn to_rgb(layout: Layout, data: &[u8], width: u32, height: u32, stride: u32) -> Result<RgbImage, ConvertError> {
    let (w, h) = (width as usize, height as usize);
    let row = w * layout.bytes_per_pixel() as usize;
    let stride = (stride as usize).max(row);
    let pairs = matches!(layout, Layout::Yuyv | Layout::Uyvy);
    if w == 0 || h == 0 || (pairs && w % 2 != 0) || data.len() < stride * (h - 1) + row {
        return Err(ConvertError {
            layout,
            len: data.len(),
            width,
            height,
        });
    }
    let mut out = Vec::with_capacity(w * h * 3);
    for line in data.chunks(stride).take(h) {
        let line = &line[..row];
        match layout {
            Layout::Yuyv | Layout::Uyvy => {
                for q in line.chunks_exact(4) {
                    let [y0, u, y1, v] = if layout == Layout::Yuyv {
                        [q[0], q[1], q[2], q[3]]
                    } else {
                        [q[1], q[0], q[3], q[2]]
                    };
                    let (u, v) = (u as i32 - 128, v as i32 - 128);
                    out.extend_from_slice(&yuv_pixel(y0, u, v));
                    out.extend_from_slice(&yuv_pixel(y1, u, v));
                }
            }
            Layout::Rgb => out.extend_from_slice(line),
            Layout::Rgba => line.chunks_exact(4).for_each(|p| out.extend_from_slice(&p[..3])),
            Layout::Bgr | Layout::Bgra => {
                let n = layout.bytes_per_pixel() as usize;
                line.chunks_exact(n)
                    .for_each(|p| out.extend_from_slice(&[p[2], p[1], p[0]]));
            }
            Layout::Mono => line.iter().for_each(|&g| out.extend_from_slice(&[g, g, g])),
        }
    }
    Ok(RgbImage::from_raw(width, height, out).expect("sized above"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_and_primaries() {
        // Y=16 is black, Y=235 white; neutral chroma gives grey; the limits clamp.
        let f = to_rgb(Layout::Yuyv, &[16, 128, 235, 128], 2, 1, 4).unwrap();
        assert_eq!(f.as_raw(), &[0, 0, 0, 255, 255, 255]);
        let red = to_rgb(Layout::Yuyv, &[81, 90, 81, 240], 2, 1, 4).unwrap(); // BT.601 red (Y 81, Cb 90, Cr 240)
        assert!(
            red.as_raw()[0] >= 254 && red.as_raw()[1] <= 1 && red.as_raw()[2] <= 1,
            "{:?}",
            red.as_raw()
        );
    }

    #[test]
    fn strides_and_short_frames() {
        let padded = [10, 20, 30, 99, 99, 40, 50, 60, 99, 99];
        assert_eq!(
            to_rgb(Layout::Rgb, &padded, 1, 2, 5).unwrap().as_raw(),
            &[10, 20, 30, 40, 50, 60]
        );
        assert!(
            to_rgb(Layout::Yuyv, &[0; 7], 2, 2, 4)
                .unwrap_err()
                .to_string()
                .contains("too short")
        );
        assert!(to_rgb(Layout::Yuyv, &[], 0, 0, 0).is_err() && to_rgb(Layout::Rgb, &[], 4, 0, 12).is_err());
        assert!(
            to_rgb(Layout::Uyvy, &[0; 6], 3, 1, 6).is_err(),
            "4:2:2 needs an even width"
        );
    }

    #[test]
    fn every_layout_gives_the_same_pixels() {
        // Two pixels, padded rows of two: the same RGB from each layout's bytes of it.
        let rgb = [[200u8, 100, 50], [0, 255, 7]];
        let pad = [9u8; 3];
        let rows = |pixel: &dyn Fn([u8; 3]) -> Vec<u8>| -> Vec<u8> {
            let row: Vec<u8> = rgb.iter().flat_map(|p| pixel(*p)).chain(pad).collect();
            [row.clone(), row].concat()
        };
        let cases: [(Layout, Vec<u8>); 4] = [
            (Layout::Rgb, rows(&|p| p.to_vec())),
            (Layout::Bgr, rows(&|[r, g, b]| vec![b, g, r])),
            (Layout::Rgba, rows(&|[r, g, b]| vec![r, g, b, 255])),
            (Layout::Bgra, rows(&|[r, g, b]| vec![b, g, r, 0])),
        ];
        let want: Vec<u8> = [rgb.concat(), rgb.concat()].concat();
        for (layout, data) in cases {
            let stride = data.len() as u32 / 2;
            assert_eq!(
                to_rgb(layout, &data, 2, 2, stride).unwrap().as_raw(),
                &want,
                "{layout:?}"
            );
        }
        let mono = to_rgb(Layout::Mono, &[7, 250, 0, 1, 2, 0], 2, 2, 3).unwrap();
        assert_eq!(mono.as_raw(), &[7, 7, 7, 250, 250, 250, 1, 1, 1, 2, 2, 2]);
        // UYVY is YUYV with each byte pair swapped.
        let yuyv = [81, 90, 120, 240, 16, 128, 235, 128];
        let uyvy = [90, 81, 240, 120, 128, 16, 128, 235];
        assert_eq!(
            to_rgb(Layout::Uyvy, &uyvy, 4, 1, 8).unwrap(),
            to_rgb(Layout::Yuyv, &yuyv, 4, 1, 8).unwrap()
        );
    }

    #[test]
    fn yuyv_equals_opencv() {
        // A photograph and every byte value, converted by OpenCV (tests/fixtures/yuyv.py).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/yuyv");
        for (name, w, h) in [("astronaut-160x120", 160, 120), ("noise-64x48", 64, 48)] {
            let yuyv = std::fs::read(dir.join(format!("{name}.yuyv"))).unwrap();
            let want = std::fs::read(dir.join(format!("{name}.rgb"))).unwrap();
            let got = to_rgb(Layout::Yuyv, &yuyv, w, h, w * 2).unwrap();
            let differ = got.as_raw().iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!((differ, got.as_raw().len()), (0, want.len()), "{name}");
        }
    }
}

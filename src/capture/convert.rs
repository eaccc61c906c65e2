//! Camera pixel formats to RGB8. YUYV is 4:2:2 Y'CbCr with BT.601 coefficients and limited range
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

/// YUYV (Y0 U Y1 V per two pixels); `stride` is the bytes per row the driver reports.
pub fn yuyv_to_rgb(data: &[u8], width: u32, height: u32, stride: u32) -> Result<RgbImage, String> {
    let (w, h, stride) = (width as usize, height as usize, stride.max(width * 2) as usize);
    if w == 0 || h == 0 || w % 2 != 0 || data.len() < stride * (h - 1) + w * 2 {
        return Err(format!(
            "YUYV frame of {} bytes is too short for {width}x{height}",
            data.len()
        ));
    }
    let mut out = Vec::with_capacity(w * h * 3);
    for row in data.chunks(stride).take(h) {
        for quad in row[..w * 2].chunks_exact(4) {
            let (u, v) = (quad[1] as i32 - 128, quad[3] as i32 - 128);
            out.extend_from_slice(&yuv_pixel(quad[0], u, v));
            out.extend_from_slice(&yuv_pixel(quad[2], u, v));
        }
    }
    Ok(RgbImage::from_raw(width, height, out).expect("sized above"))
}

/// RGB24 (RGB3): packed R, G, B; rows may be padded to `stride` bytes.
pub fn rgb24_to_rgb(data: &[u8], width: u32, height: u32, stride: u32) -> Result<RgbImage, String> {
    let (w, h, stride) = (width as usize, height as usize, stride.max(width * 3) as usize);
    if w == 0 || h == 0 || data.len() < stride * (h - 1) + w * 3 {
        return Err(format!(
            "RGB24 frame of {} bytes is too short for {width}x{height}",
            data.len()
        ));
    }
    let out: Vec<u8> = data
        .chunks(stride)
        .take(h)
        .flat_map(|row| row[..w * 3].iter().copied())
        .collect();
    Ok(RgbImage::from_raw(width, height, out).expect("sized above"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_and_primaries() {
        // Y=16 is black, Y=235 white; neutral chroma gives grey; the limits clamp.
        let f = yuyv_to_rgb(&[16, 128, 235, 128], 2, 1, 4).unwrap();
        assert_eq!(f.as_raw(), &[0, 0, 0, 255, 255, 255]);
        let red = yuyv_to_rgb(&[81, 90, 81, 240], 2, 1, 4).unwrap(); // BT.601 red (Y 81, Cb 90, Cr 240)
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
            rgb24_to_rgb(&padded, 1, 2, 5).unwrap().as_raw(),
            &[10, 20, 30, 40, 50, 60]
        );
        assert!(yuyv_to_rgb(&[0; 7], 2, 2, 4).unwrap_err().contains("too short"));
        assert!(yuyv_to_rgb(&[], 0, 0, 0).is_err() && rgb24_to_rgb(&[], 4, 0, 12).is_err());
    }

    #[test]
    fn yuyv_equals_opencv() {
        // A photograph and every byte value, converted by OpenCV (tests/fixtures/yuyv.py).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/yuyv");
        for (name, w, h) in [("astronaut-160x120", 160, 120), ("noise-64x48", 64, 48)] {
            let yuyv = std::fs::read(dir.join(format!("{name}.yuyv"))).unwrap();
            let want = std::fs::read(dir.join(format!("{name}.rgb"))).unwrap();
            let got = yuyv_to_rgb(&yuyv, w, h, w * 2).unwrap();
            let differ = got.as_raw().iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!((differ, got.as_raw().len()), (0, want.len()), "{name}");
        }
    }
}

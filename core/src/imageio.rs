//! Decoding image files and uploaded bytes into RGB8, with limits so a hostile or broken file
//! fails with an error instead of exhausting memory.

use std::io::Cursor;
use std::path::Path;

use image::{ImageFormat, ImageReader, Limits, RgbImage};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// Largest accepted width or height, and the most memory one decode may allocate.
pub const MAX_SIDE: u32 = 16_384;
pub const MAX_ALLOC: u64 = 512 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ImageError {
    pub source_name: String,
    pub message: String,
}

fn limits() -> Limits {
    let mut l = Limits::default();
    l.max_image_width = Some(MAX_SIDE);
    l.max_image_height = Some(MAX_SIDE);
    l.max_alloc = Some(MAX_ALLOC);
    l
}

/// Reads an image file (format from its content, not its name) as RGB8, dropping any alpha.
pub fn load_file(path: &Path) -> Result<RgbImage, ImageError> {
    let err = |message: String| ImageError {
        source_name: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    decode(&bytes).map_err(err)
}

/// Decodes image bytes (any supported format) as RGB8, within the size and memory limits above.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, String> {
    decode_limited(bytes, u64::MAX)
}

/// Like [`decode`], refusing an image of more than `max_pixels` pixels before decoding it.
pub fn decode_limited(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, String> {
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())
    };
    let header = reader()?;
    let format = header.format();
    if format.is_none() {
        return Err("not an image in a supported format (JPEG, PNG, WebP, BMP, TIFF, GIF)".into());
    }
    let (w, h) = header
        .into_dimensions()
        .map_err(|e| format!("cannot read the image header: {e}"))?;
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(format!(
            "image is {w}x{h} = {pixels} pixels, more than the {max_pixels} allowed"
        ));
    }
    if format == Some(ImageFormat::Jpeg) {
        return decode_jpeg(bytes);
    }
    let mut reader = reader()?;
    reader.limits(limits());
    let image = reader.decode().map_err(|e| format!("cannot decode image: {e}"))?;
    Ok(image.into_rgb8())
}

/// JPEG through zune-jpeg (the decoder `image` uses) in strict mode: `image` runs it leniently, which
/// turns a truncated file into an image padded with grey instead of an error.
fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage, String> {
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(MAX_SIDE as usize)
        .set_max_height(MAX_SIDE as usize)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let pixels = decoder.decode().map_err(|e| format!("cannot decode JPEG: {e}"))?;
    let (w, h) = decoder.dimensions().ok_or("cannot decode JPEG: no dimensions")?;
    RgbImage::from_raw(w as u32, h as u32, pixels).ok_or_else(|| "cannot decode JPEG: short pixel buffer".into())
}

//! Decoding image files and uploaded bytes into RGB8, with limits so a hostile or broken file
//! fails with an error instead of exhausting memory.

use std::io::Cursor;
use std::path::Path;

use image::{ImageReader, Limits, RgbImage};

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
    let err = |message: String| ImageError { source_name: path.display().to_string(), message };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    decode(&bytes).map_err(err)
}

/// Decodes image bytes (any supported format) as RGB8.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, String> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("not an image in a supported format (JPEG, PNG, WebP, BMP, TIFF, GIF)".into());
    }
    reader.limits(limits());
    let image = reader.decode().map_err(|e| format!("cannot decode image: {e}"))?;
    Ok(image.into_rgb8())
}

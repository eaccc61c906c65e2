//! Decoding image files and uploaded bytes into RGB8, with limits so a hostile or broken file
//! fails with an error instead of exhausting memory.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{ImageFormat, ImageReader, Limits, RgbImage};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// Largest accepted width or height, and the most memory one decode may allocate.
pub const MAX_SIDE: u32 = 16_384;
pub const MAX_ALLOC: u64 = 512 * 1024 * 1024;

/// An image file that could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {fault}", path.display())]
    Decode { path: PathBuf, fault: DecodeFault },
}

/// Why bytes are not an image this module accepts.
#[derive(Debug, thiserror::Error)]
pub enum DecodeFault {
    #[error("not an image in a supported format (JPEG, PNG, WebP, BMP, TIFF, GIF)")]
    Format,
    #[error("cannot read the image header: {0}")]
    Header(std::io::Error),
    #[error("cannot read the image header: {0}")]
    Dimensions(image::ImageError),
    #[error("image is {width}x{height} = {pixels} pixels, more than the {max} allowed")]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        max: u64,
    },
    #[error("cannot decode image: {0}")]
    Image(image::ImageError),
    #[error("cannot decode JPEG: {0}")]
    Jpeg(zune_jpeg::errors::DecodeErrors),
    #[error("cannot decode JPEG: it decoded to fewer pixels than its header says")]
    JpegSize,
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
    let bytes = std::fs::read(path).map_err(|source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&bytes).map_err(|fault| ImageError::Decode {
        path: path.to_path_buf(),
        fault,
    })
}

/// Decodes image bytes (any supported format) as RGB8, within the size and memory limits above.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, DecodeFault> {
    decode_limited(bytes, u64::MAX)
}

/// Like [`decode`], refusing an image of more than `max_pixels` pixels before decoding it.
pub fn decode_limited(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeFault> {
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(DecodeFault::Header)
    };
    let header = reader()?;
    let format = header.format();
    if format.is_none() {
        return Err(DecodeFault::Format);
    }
    let (width, height) = header.into_dimensions().map_err(DecodeFault::Dimensions)?;
    let pixels = width as u64 * height as u64;
    if pixels > max_pixels {
        return Err(DecodeFault::TooLarge {
            width,
            height,
            pixels,
            max: max_pixels,
        });
    }
    if format == Some(ImageFormat::Jpeg) {
        return decode_jpeg(bytes);
    }
    let mut reader = reader()?;
    reader.limits(limits());
    let image = reader.decode().map_err(DecodeFault::Image)?;
    Ok(image.into_rgb8())
}

/// JPEG through zune-jpeg (the decoder `image` uses) in strict mode: `image` runs it leniently, which
/// turns a truncated file into an image padded with grey instead of an error.
fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage, DecodeFault> {
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(MAX_SIDE as usize)
        .set_max_height(MAX_SIDE as usize)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let pixels = decoder.decode().map_err(DecodeFault::Jpeg)?;
    let (w, h) = decoder.dimensions().ok_or(DecodeFault::JpegSize)?;
    RgbImage::from_raw(w as u32, h as u32, pixels).ok_or(DecodeFault::JpegSize)
}

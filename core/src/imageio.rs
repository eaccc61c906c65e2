//! Decoding image files and uploaded bytes into RGB8, with limits so a hostile or broken file
//! fails with an error instead of exhausting memory; and encoding RGB8 as JPEG.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{ColorType, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// Largest accepted width or height, and the most memory one decode of a file the user names may
/// take (the daemon's uploads and folder images get their own `Budget`).
pub const MAX_SIDE: u32 = 16_384;
pub const MAX_ALLOC: u64 = 512 * 1024 * 1024;

/// What one decode may take: the pixels its header may claim, and the memory its pixels need (the
/// decoder's own buffer, in the file's colour type, and the RGB8 image made of it), both checked
/// against the header before anything is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub pixels: u64,
    pub memory: u64,
}

impl Budget {
    /// Files the user names on the command line: any size up to `MAX_SIDE`, within `MAX_ALLOC`.
    pub const FILES: Budget = Budget {
        pixels: u64::MAX,
        memory: MAX_ALLOC,
    };
}
/// What reading a header may allocate, and a decode beyond its pixels: room for ancillary data (a
/// PNG's iCCP profile is inflated while the header is read; a bomb inflates until this bound).
const ANCILLARY_ALLOC: u64 = 16 * 1024 * 1024;
/// Bytes per pixel of the widest layout a decoder may produce (RGBA of 32-bit floats).
const MAX_BYTES_PER_PIXEL: u64 = 16;

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
    #[error("image is {width}x{height}: it has no pixels")]
    Empty { width: u32, height: u32 },
    #[error("image is {width}x{height} = {pixels} pixels, more than the {max} allowed")]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        max: u64,
    },
    #[error(
        "image is {width}x{height} in {color:?}: decoding it takes {} MiB, more than the {} MiB allowed",
        .needed >> 20, .max >> 20
    )]
    TooMuchMemory {
        width: u32,
        height: u32,
        color: ColorType,
        needed: u64,
        max: u64,
    },
    #[error("cannot decode image: {0}")]
    Image(image::ImageError),
    #[error("cannot decode JPEG: {0}")]
    Jpeg(zune_jpeg::errors::DecodeErrors),
    #[error("cannot decode JPEG: it decoded to fewer pixels than its header says")]
    JpegSize,
    #[error("cannot decode JPEG: its {bytes} bytes cannot hold the {width}x{height} pixels its header claims")]
    JpegShort { bytes: usize, width: u32, height: u32 },
}

/// Limits of a decode that may allocate `max_alloc` bytes.
fn limits(max_alloc: u64) -> Limits {
    let mut l = Limits::default();
    l.max_image_width = Some(MAX_SIDE);
    l.max_image_height = Some(MAX_SIDE);
    l.max_alloc = Some(max_alloc);
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

/// `image` as a JPEG of `quality` (1 to 100).
pub fn encode_jpeg(image: &RgbImage, quality: u8) -> image::ImageResult<Vec<u8>> {
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, quality).encode_image(image)?;
    Ok(jpeg)
}

/// Decodes image bytes (any supported format) as RGB8, within the size and memory limits above.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, DecodeFault> {
    decode_limited(bytes, Budget::FILES)
}

/// Like [`decode`], refusing an image over `budget` before decoding it: more pixels than it allows,
/// or pixels that need more memory (in the file's colour type, then as RGB8). The header is read
/// within `ANCILLARY_ALLOC`, and the decode may allocate what its pixels need plus that: a small file
/// cannot claim much memory, whatever it inflates to, and a header's claim of many pixels (an RLE
/// bitmap, a 1-bit PNG of zeros: valid files that inflate a thousandfold) is judged before any of
/// them is made.
pub fn decode_limited(bytes: &[u8], budget: Budget) -> Result<RgbImage, DecodeFault> {
    let reader = |max_alloc: u64| {
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(DecodeFault::Header)?;
        reader.limits(limits(max_alloc));
        Ok(reader)
    };
    let header = reader(ANCILLARY_ALLOC)?;
    let format = header.format();
    if format.is_none() {
        return Err(DecodeFault::Format);
    }
    let decoder = header.into_decoder().map_err(DecodeFault::Dimensions)?;
    let (width, height) = decoder.dimensions();
    let color = decoder.color_type();
    drop(decoder);
    let pixels = width as u64 * height as u64;
    if pixels == 0 {
        // A GIF may say 0x12: nothing to caption, and no size to scale from.
        return Err(DecodeFault::Empty { width, height });
    }
    if pixels > budget.pixels {
        return Err(DecodeFault::TooLarge {
            width,
            height,
            pixels,
            max: budget.pixels,
        });
    }
    let jpeg = format == Some(ImageFormat::Jpeg);
    // JPEG is decoded straight to RGB8 (zune-jpeg); the others in their colour type, then converted
    // (in place when that is RGB8 already).
    let needed = if jpeg || color == ColorType::Rgb8 {
        pixels * 3
    } else {
        pixels * (color.bytes_per_pixel() as u64 + 3)
    };
    if needed > budget.memory {
        return Err(DecodeFault::TooMuchMemory {
            width,
            height,
            color,
            needed,
            max: budget.memory,
        });
    }
    if jpeg {
        return decode_jpeg(bytes, width, height);
    }
    let max_alloc = (pixels * MAX_BYTES_PER_PIXEL + ANCILLARY_ALLOC).min(budget.memory);
    let image = reader(max_alloc)?.decode().map_err(DecodeFault::Image)?;
    Ok(image.into_rgb8())
}

/// JPEG through zune-jpeg (the decoder `image` uses) in strict mode: `image` runs it leniently, which
/// turns a truncated file into an image padded with grey instead of an error.
///
/// Strict mode does not catch an end-of-image marker before the last block: zune-jpeg, like libjpeg,
/// fills the rest with grey. Every 8x8 block of the full-resolution component costs at least one bit
/// (its DC code), so a file with fewer bits than blocks claims pixels it does not hold: a few
/// kilobytes cannot make the daemon decode millions of pixels. A sequential file (any camera's) is
/// also decoded without its end marker, so that data that ends early is an error.
fn decode_jpeg(bytes: &[u8], width: u32, height: u32) -> Result<RgbImage, DecodeFault> {
    let blocks = width.div_ceil(8) as u64 * height.div_ceil(8) as u64;
    if (bytes.len() as u64) * 8 < blocks {
        return Err(DecodeFault::JpegShort {
            bytes: bytes.len(),
            width,
            height,
        });
    }
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(MAX_SIDE as usize)
        .set_max_height(MAX_SIDE as usize)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut headers = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    headers.decode_headers().map_err(DecodeFault::Jpeg)?;
    // A progressive file's scans need their end marker; the bits-per-block check above bounds it.
    let bytes = if headers.info().is_some_and(|info| info.sof.is_progressive()) {
        std::borrow::Cow::Borrowed(bytes)
    } else {
        std::borrow::Cow::Owned(without_end_marker(bytes))
    };
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(&bytes[..]), options);
    let pixels = decoder.decode().map_err(DecodeFault::Jpeg)?;
    let (w, h) = decoder.dimensions().ok_or(DecodeFault::JpegSize)?;
    RgbImage::from_raw(w as u32, h as u32, pixels).ok_or(DecodeFault::JpegSize)
}

/// A sequential JPEG up to its last end-of-image marker, then zero bytes, enough for the decoder's
/// read-ahead past the last block. At the marker zune-jpeg would feed zeros forever and grey out what
/// the data did not cover (a camera frame whose header claims more than its data holds, say); at the
/// end of the input, strict mode refuses the image instead.
fn without_end_marker(bytes: &[u8]) -> Vec<u8> {
    let end = bytes.windows(2).rposition(|m| m == [0xFF, 0xD9]).unwrap_or(bytes.len());
    [&bytes[..end], &[0; 8][..]].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(image: &RgbImage) -> Vec<u8> {
        encode_jpeg(image, 50).unwrap()
    }

    #[test]
    fn a_jpeg_too_short_for_its_header_is_refused_but_a_uniform_one_decodes() {
        // One colour compresses best of all: still more than a bit per block.
        let uniform = jpeg(&RgbImage::from_pixel(2048, 2048, image::Rgb([0, 0, 0])));
        assert_eq!(decode(&uniform).unwrap().dimensions(), (2048, 2048));

        let mut lying = jpeg(&RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([x as u8 * 4, y as u8 * 4, 90])
        }));
        let sof = lying.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        lying[sof + 5..sof + 9].copy_from_slice(&[0x19, 0xC8, 0x17, 0x70]); // 6600 high, 6000 wide
        let error = decode(&lying).unwrap_err().to_string();
        assert!(
            error.contains("cannot hold the 6000x6600 pixels its header claims"),
            "{error}"
        );
    }

    #[test]
    fn a_jpeg_whose_data_ends_before_its_last_block_is_refused() {
        // Enough bits for a block each, not for 640x480 pixels: the data runs out at the end marker.
        let mut lying = jpeg(&RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([x as u8 * 4, y as u8 * 4, 90])
        }));
        let sof = lying.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        lying[sof + 5..sof + 9].copy_from_slice(&[0x01, 0xE0, 0x02, 0x80]);
        let error = decode(&lying).unwrap_err().to_string();
        assert!(error.starts_with("cannot decode JPEG"), "{error}");
    }
}

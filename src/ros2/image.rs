//! `sensor_msgs/Image` and `CompressedImage` as CDR carries them (fields in the order of the
//! messages' definitions in ros2/common_interfaces), and the frames they become.

use clipcap_core::imageio::{self, Budget};
use serde::{Deserialize, Serialize};

use crate::source::{Header, Layout, Pixels};

#[derive(Debug, Serialize, Deserialize)]
pub struct Image {
    pub header: Header,
    pub height: u32,
    pub width: u32,
    pub encoding: String,
    pub is_bigendian: u8,
    /// Bytes per row: at least a row's pixels, more when rows are padded.
    pub step: u32,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CompressedImage {
    pub header: Header,
    /// Free text by convention ("jpeg", "png", "rgb8; jpeg compressed bgr8"): the data's own
    /// signature is what is read.
    pub format: String,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Why an image is not a frame.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// What every image of this kind will be refused for (an encoding clipcap does not read): reported
    /// once, not for each image.
    Kind(String),
    /// This image is broken.
    Image(String),
}

/// A message that carries an image.
pub trait RosImage: serde::de::DeserializeOwned + 'static {
    /// The ROS 2 type (package, name).
    const TYPE: (&'static str, &'static str);
    /// The header, and the frame (within `budget`) or why there is none.
    fn into_frame(self, budget: Budget) -> (Header, Result<Pixels, Refused>);
}

/// The layout of an encoding's bytes (sensor_msgs/image_encodings.hpp), for those clipcap reads.
fn layout(encoding: &str) -> Option<Layout> {
    Some(match encoding {
        "rgb8" => Layout::Rgb,
        "bgr8" => Layout::Bgr,
        "rgba8" => Layout::Rgba,
        "bgra8" => Layout::Bgra,
        "mono8" => Layout::Mono,
        "yuyv" | "yuv422_yuy2" => Layout::Yuyv,
        // "yuv422" is the old name of UYVY.
        "uyvy" | "yuv422" => Layout::Uyvy,
        _ => return None,
    })
}

impl RosImage for Image {
    const TYPE: (&'static str, &'static str) = ("sensor_msgs", "Image");

    fn into_frame(self, budget: Budget) -> (Header, Result<Pixels, Refused>) {
        let max_pixels = budget.pixels;
        let Image {
            header,
            height,
            width,
            encoding,
            step,
            data,
            ..
        } = self;
        let pixels = (|| {
            let layout = layout(&encoding).ok_or_else(|| {
                Refused::Kind(format!(
                    "encoding {encoding:?} is not one of rgb8, bgr8, rgba8, bgra8, mono8, yuv422 (uyvy), yuyv"
                ))
            })?;
            let broken = |why: String| Err(Refused::Image(format!("{width}x{height} {encoding} image: {why}")));
            let count = u64::from(width) * u64::from(height);
            if count == 0 || count > max_pixels {
                return broken(format!("not 1 to {max_pixels} pixels"));
            }
            let row = u64::from(width) * u64::from(layout.bytes_per_pixel());
            if u64::from(step) < row {
                return broken(format!("step {step} is shorter than a row ({row} bytes)"));
            }
            if matches!(layout, Layout::Yuyv | Layout::Uyvy) && width % 2 != 0 {
                return broken("4:2:2 needs an even width".into());
            }
            if (data.len() as u64) < u64::from(step) * u64::from(height - 1) + row {
                return broken(format!(
                    "{} bytes of data, fewer than {height} rows of {step}",
                    data.len()
                ));
            }
            Ok(Pixels::Raw {
                layout,
                data,
                width,
                height,
                stride: step,
            })
        })();
        (header, pixels)
    }
}

impl RosImage for CompressedImage {
    const TYPE: (&'static str, &'static str) = ("sensor_msgs", "CompressedImage");

    fn into_frame(self, budget: Budget) -> (Header, Result<Pixels, Refused>) {
        let CompressedImage { header, format, data } = self;
        let pixels = if data.starts_with(&[0xff, 0xd8, 0xff]) {
            // Decoded when captioned, like a camera's MJPEG (and served as it is by /frame).
            Ok(Pixels::Jpeg(data))
        } else if data.starts_with(b"\x89PNG\r\n\x1a\n") {
            imageio::decode_limited(&data, budget)
                .map(Pixels::Rgb)
                .map_err(|e| Refused::Image(format!("PNG image: {e}")))
        } else {
            Err(Refused::Kind(format!(
                "compressed image of format {format:?} is neither JPEG nor PNG"
            )))
        };
        (header, pixels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Images of up to 1000 pixels.
    const SMALL: Budget = Budget {
        pixels: 1000,
        memory: 1 << 20,
    };
    use crate::source::Stamp;

    fn header() -> Header {
        Header {
            stamp: Stamp { sec: 1, nanosec: 2 },
            frame_id: "cam".into(),
        }
    }

    fn image(encoding: &str, width: u32, height: u32, step: u32, data: Vec<u8>) -> Result<Pixels, Refused> {
        let message = Image {
            header: header(),
            height,
            width,
            encoding: encoding.into(),
            is_bigendian: 0,
            step,
            data,
        };
        message.into_frame(SMALL).1
    }

    #[test]
    fn the_cdr_layout_is_the_one_cyclone_dds_writes() {
        // Cyclone DDS's Python binding serialised this Image (stamp 1.2, "cam", 2x3 rgb8, step 12, bytes
        // 0..23) as these bytes after the 4-byte encapsulation header: is_bigendian right after the
        // string's NUL, then 2 bytes of padding so that step is aligned.
        let mut want = vec![
            1, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, b'c', b'a', b'm', 0, 2, 0, 0, 0, 3, 0, 0, 0,
        ];
        want.extend([5, 0, 0, 0, b'r', b'g', b'b', b'8', 0, 0, 0, 0, 12, 0, 0, 0, 24, 0, 0, 0]);
        want.extend(0..24u8);
        let message = Image {
            header: header(),
            height: 2,
            width: 3,
            encoding: "rgb8".into(),
            is_bigendian: 0,
            step: 12,
            data: (0..24).collect(),
        };
        let bytes = cdr_encoding::to_vec::<_, byteorder::LittleEndian>(&message).unwrap();
        assert_eq!(bytes, want);
        let (back, _) = cdr_encoding::from_bytes::<Image, byteorder::LittleEndian>(&want).unwrap();
        assert_eq!((back.header, back.step, back.data.len()), (header(), 12, 24));
    }

    #[test]
    fn encodings_become_frames_and_bad_images_say_why() {
        // 2x1 rgb8 with 2 bytes of row padding.
        let frame = image("rgb8", 2, 1, 8, vec![1, 2, 3, 4, 5, 6, 0, 0]).unwrap();
        assert_eq!(frame.to_rgb().unwrap().as_raw(), &[1, 2, 3, 4, 5, 6]);
        let bgr = image("bgr8", 2, 1, 6, vec![3, 2, 1, 6, 5, 4]).unwrap();
        assert_eq!(bgr.to_rgb().unwrap().as_raw(), &[1, 2, 3, 4, 5, 6]);
        let mono = image("mono8", 1, 2, 4, vec![9, 0, 0, 0, 8]).unwrap();
        assert_eq!(mono.to_rgb().unwrap().as_raw(), &[9, 9, 9, 8, 8, 8]);
        for encoding in ["rgba8", "bgra8", "yuv422", "uyvy", "yuyv", "yuv422_yuy2"] {
            assert!(image(encoding, 2, 1, 8, vec![0; 8]).is_ok(), "{encoding}");
        }

        let Err(Refused::Kind(why)) = image("16UC1", 2, 1, 4, vec![0; 4]) else {
            panic!()
        };
        assert!(why.contains("\"16UC1\""), "{why}");
        let refused = |r: Result<Pixels, Refused>| match r {
            Err(Refused::Image(why)) => why,
            _ => panic!("not refused"),
        };
        assert!(refused(image("rgb8", 2, 2, 5, vec![0; 12])).contains("step 5 is shorter than a row (6 bytes)"));
        assert!(refused(image("rgb8", 2, 2, 8, vec![0; 13])).contains("13 bytes of data, fewer than 2 rows of 8"));
        assert!(refused(image("rgb8", 0, 2, 0, vec![])).contains("not 1 to 1000 pixels"));
        assert!(refused(image("rgb8", 100, 100, 300, vec![0; 30_000])).contains("not 1 to 1000 pixels"));
        assert!(refused(image("yuyv", 3, 1, 6, vec![0; 6])).contains("even width"));
    }

    #[test]
    fn compressed_images_are_read_by_their_signature() {
        let picture = image::RgbImage::from_fn(8, 4, |x, y| image::Rgb([x as u8 * 30, y as u8 * 60, 90]));
        let mut png = std::io::Cursor::new(Vec::new());
        picture.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let compressed = |format: &str, data: Vec<u8>| {
            CompressedImage {
                header: header(),
                format: format.into(),
                data,
            }
            .into_frame(SMALL)
        };
        let (got_header, frame) = compressed("rgb8; png compressed rgb8", png.into_inner());
        assert_eq!(
            (got_header, frame.unwrap().to_rgb().unwrap().into_owned()),
            (header(), picture)
        );
        assert!(matches!(
            compressed("jpeg", vec![0xff, 0xd8, 0xff, 0xe0]).1,
            Ok(Pixels::Jpeg(_))
        ));
        let Err(Refused::Kind(why)) = compressed("tiff", b"II*\0".to_vec()).1 else {
            panic!()
        };
        assert!(why.contains("\"tiff\" is neither JPEG nor PNG"), "{why}");
    }
}

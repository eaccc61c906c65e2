//! A frame as a source delivers it, and the slot it waits in: only the newest frame waits, so
//! captioning never works through a queue of stale frames (a folder in queue mode waits instead until
//! its frame was taken, so none is dropped).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use clipcap_core::imageio;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::SourceLabel;
use super::convert::{self, ConvertError, Layout};
use super::folder::Ticket;
use crate::shutdown::Shutdown;

/// Why a frame's pixels could not become an image.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Jpeg(#[from] imageio::DecodeFault),
    #[error(transparent)]
    Raw(#[from] ConvertError),
}

/// A frame's pixels as the source delivered them. A camera's buffer is kept as it came and converted
/// only when the frame is captioned or shown: at 15 fps and one caption a second, most frames are
/// replaced in the slot before anyone looks at them.
pub enum Pixels {
    /// Decoded already (a folder's files are decoded as they are read, to refuse bad ones early).
    Rgb(RgbImage),
    /// A camera's JPEG (MJPEG), as it sent it.
    Jpeg(Vec<u8>),
    /// Uncompressed rows, `stride` bytes apart.
    Raw {
        layout: Layout,
        data: Vec<u8>,
        width: u32,
        height: u32,
        stride: u32,
    },
}

impl Pixels {
    /// The frame as RGB8: converted (or decoded) now, unless it already is.
    pub fn to_rgb(&self) -> Result<std::borrow::Cow<'_, RgbImage>, FrameError> {
        use std::borrow::Cow::{Borrowed, Owned};
        Ok(match self {
            Pixels::Rgb(image) => Borrowed(image),
            Pixels::Jpeg(bytes) => Owned(imageio::decode(bytes)?),
            &Pixels::Raw {
                layout,
                ref data,
                width,
                height,
                stride,
            } => Owned(convert::to_rgb(layout, data, width, height, stride)?),
        })
    }
}

/// A ROS 2 image's `std_msgs/Header`: when the camera took it, in which coordinate frame. Carried from
/// the frame into its caption event, so that ROS 2 consumers can match captions to images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub stamp: Stamp,
    pub frame_id: String,
}

/// `builtin_interfaces/Time`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stamp {
    pub sec: i32,
    pub nanosec: u32,
}

/// Where a frame came from.
#[derive(Clone)]
pub struct Origin {
    /// The label of its kind of source, which its caption carries.
    pub source: SourceLabel,
    /// The device path, the file or the topic.
    pub name: String,
    /// A ROS 2 image's header.
    pub header: Option<Header>,
}

pub struct Frame {
    pub pixels: Pixels,
    pub seq: u64,
    pub captured: SystemTime,
    pub origin: Origin,
    /// A queued file (folder queue mode): the captioning thread reports how it ended.
    pub ticket: Option<Ticket>,
}

/// The newest frame, and which frame was last taken for captioning.
#[derive(Default)]
pub struct FrameSlot {
    state: Mutex<SlotState>,
    /// Notified when a frame is taken (a queued `put` waits for it).
    taken: Condvar,
    /// Notified when a frame is stored (the captioning thread waits for it).
    stored: Condvar,
}

#[derive(Default)]
struct SlotState {
    latest: Option<Arc<Frame>>,
    taken: u64,
    next_seq: u64,
}

impl FrameSlot {
    /// Makes `image` the newest frame; true when it replaced one that was never taken (a dropped frame).
    pub fn put(&self, image: Pixels, origin: Origin) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let dropped = s.waiting();
        s.store(image, origin, None);
        self.stored.notify_all();
        dropped
    }

    /// Makes `image` the newest frame once the one waiting (if any) was taken, so that none is
    /// dropped; false (and nothing stored) if `stop` is set first.
    pub fn put_queued(&self, image: Pixels, origin: Origin, ticket: Ticket, shutdown: &Shutdown) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while s.waiting() {
            if shutdown.is_set() {
                return false;
            }
            // Woken by `wait_new`; the timeout only bounds how late the shutdown is noticed.
            s = self
                .taken
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        s.store(image, origin, Some(ticket));
        self.stored.notify_all();
        true
    }

    /// Whether a frame waits to be taken.
    pub fn waiting(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).waiting()
    }

    /// The newest frame, taken or not (for showing it).
    pub fn latest(&self) -> Option<Arc<Frame>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).latest.clone()
    }

    /// The newest frame not taken yet, marking it taken; waits up to `wait` for one to arrive.
    pub fn wait_new(&self, wait: Duration) -> Option<Arc<Frame>> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (mut s, _) = self
            .stored
            .wait_timeout_while(s, wait, |s| !s.waiting())
            .unwrap_or_else(|p| p.into_inner());
        let frame = s.latest.clone().filter(|f| f.seq > s.taken)?;
        s.taken = frame.seq;
        self.taken.notify_all();
        Some(frame)
    }
}

impl SlotState {
    /// Whether the newest frame has not been taken yet.
    fn waiting(&self) -> bool {
        self.latest.as_ref().is_some_and(|f| f.seq > self.taken)
    }

    fn store(&mut self, pixels: Pixels, origin: Origin, ticket: Option<Ticket>) {
        self.next_seq += 1;
        self.latest = Some(Arc::new(Frame {
            pixels,
            seq: self.next_seq,
            captured: SystemTime::now(),
            origin,
            ticket,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_camera_buffers_convert_when_asked() {
        let yuyv = Pixels::Raw {
            layout: Layout::Yuyv,
            data: vec![16, 128, 235, 128, 99, 99],
            width: 2,
            height: 1,
            stride: 6,
        };
        assert_eq!(yuyv.to_rgb().unwrap().as_raw(), &[0, 0, 0, 255, 255, 255]);
        let rgb24 = Pixels::Raw {
            layout: Layout::Rgb,
            data: vec![1, 2, 3, 4, 5, 6],
            width: 1,
            height: 2,
            stride: 3,
        };
        assert_eq!(rgb24.to_rgb().unwrap().as_raw(), &[1, 2, 3, 4, 5, 6]);

        let image = RgbImage::from_fn(16, 8, |x, y| image::Rgb([(x * 16) as u8, (y * 32) as u8, 128]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&image)
            .unwrap();
        let frame = Pixels::Jpeg(jpeg.clone());
        assert_eq!(*frame.to_rgb().unwrap(), imageio::decode(&jpeg).unwrap());
        // A frame the camera garbled fails when it is used, naming why; it is not a panic.
        let truncated = Pixels::Jpeg(jpeg[..jpeg.len() / 2].to_vec())
            .to_rgb()
            .unwrap_err()
            .to_string();
        assert!(truncated.to_lowercase().contains("jpeg"), "{truncated}");
        assert!(matches!(
            Pixels::Rgb(image.clone()).to_rgb().unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}

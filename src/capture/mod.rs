//! Frame sources: a V4L2 camera or a watched folder, each on its own thread, handing frames to a
//! [`FrameSlot`] where only the newest waits, so captioning never works through a queue of stale frames
//! (a folder in queue mode waits instead until its frame was taken, so none is dropped).

mod convert;
mod folder;
mod v4l2;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clipcap_core::imageio;
use image::RgbImage;
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};

use crate::config::{SourceConfig, SourceKind};
use crate::shutdown::{Shutdown, Worker};
pub use convert::Layout;
pub use folder::Ticket;

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
    pub fn to_rgb(&self) -> Result<std::borrow::Cow<'_, RgbImage>, String> {
        use std::borrow::Cow::{Borrowed, Owned};
        Ok(match self {
            Pixels::Rgb(image) => Borrowed(image),
            Pixels::Jpeg(bytes) => Owned(imageio::decode(bytes).map_err(|e| e.to_string())?),
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

pub struct Frame {
    pub pixels: Pixels,
    pub seq: u64,
    pub captured: SystemTime,
    /// Where it came from: the device path, or the file.
    pub origin: String,
    /// A queued file (folder queue mode): the captioning thread reports how it ended.
    pub ticket: Option<Ticket>,
    /// A ROS 2 image's header.
    pub header: Option<Header>,
}

/// The newest frame, and which frame was last taken for captioning.
#[derive(Default)]
pub struct FrameSlot {
    state: Mutex<SlotState>,
    /// Notified when a frame is taken (a queued `put` waits for it).
    taken: Condvar,
}

#[derive(Default)]
struct SlotState {
    latest: Option<Arc<Frame>>,
    taken: u64,
    next_seq: u64,
}

impl FrameSlot {
    /// Makes `image` the newest frame; true when it replaced one that was never taken (a dropped frame).
    pub fn put(&self, image: Pixels, origin: String) -> bool {
        self.put_newest(image, origin, None)
    }

    /// [`FrameSlot::put`] for a ROS 2 image, keeping its header.
    pub fn put_with_header(&self, image: Pixels, origin: String, header: Header) -> bool {
        self.put_newest(image, origin, Some(header))
    }

    fn put_newest(&self, image: Pixels, origin: String, header: Option<Header>) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let dropped = s.waiting();
        s.store(image, origin, None, header);
        dropped
    }

    /// Makes `image` the newest frame once the one waiting (if any) was taken, so that none is
    /// dropped; false (and nothing stored) if `stop` is set first.
    pub fn put_queued(&self, image: Pixels, origin: String, ticket: Ticket, shutdown: &Shutdown) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while s.waiting() {
            if shutdown.is_set() {
                return false;
            }
            // Woken by `take_new`; the timeout only bounds how late the shutdown is noticed.
            s = self
                .taken
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        s.store(image, origin, Some(ticket), None);
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

    /// The newest frame not taken yet, marking it taken.
    pub fn take_new(&self) -> Option<Arc<Frame>> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
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

    fn store(&mut self, pixels: Pixels, origin: String, ticket: Option<Ticket>, header: Option<Header>) {
        self.next_seq += 1;
        self.latest = Some(Arc::new(Frame {
            pixels,
            seq: self.next_seq,
            captured: SystemTime::now(),
            origin,
            ticket,
            header,
        }));
    }
}

/// The counters a source updates (the daemon's Prometheus metrics).
#[derive(Clone)]
pub struct SourceCounters {
    pub frames: IntCounter,
    pub dropped: IntCounter,
    pub errors: IntCounter,
    pub reconnects: IntCounter,
}

/// What a source reports: whether it delivers, its counts, and its last problem.
pub struct SourceStatus {
    pub up: AtomicBool,
    pub counters: SourceCounters,
    /// Whether the source has been up before: the next `set_up` is a reconnect.
    was_up: AtomicBool,
    last_frame: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
}

impl SourceStatus {
    pub fn new(counters: SourceCounters) -> Self {
        SourceStatus {
            up: AtomicBool::new(false),
            counters,
            was_up: AtomicBool::new(false),
            last_frame: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }

    pub fn frame(&self, dropped: bool) {
        self.counters.frames.inc();
        if dropped {
            self.counters.dropped.inc();
        }
        *self.last_frame.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    pub fn set_up(&self) {
        self.up.store(true, Ordering::Relaxed);
        if self.was_up.swap(true, Ordering::Relaxed) {
            self.counters.reconnects.inc();
        }
    }

    pub fn fail(&self, error: String) {
        tracing::warn!("source: {error}");
        self.counters.errors.inc();
        self.up.store(false, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// Seconds since the last frame, if any came.
    pub fn since_last_frame(&self) -> Option<f64> {
        self.last_frame
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed().as_secs_f64())
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The configured source, created before anything slow happens at start (so that a folder's
/// "already there" means there when the daemon started), and started later with [`Source::spawn`].
pub enum Source {
    /// No thread of its own: `kind = "none"` (only uploads are captioned), or `"ros2"`, whose images
    /// the daemon's ROS 2 node (src/ros2) puts in the slot.
    None,
    V4l2(SourceConfig),
    Folder(folder::Watcher),
}

impl Source {
    /// Lists a watched folder now (and loads a queue's journal: an unreadable one is an error).
    pub fn new(config: &SourceConfig, max_pixels: u64) -> Result<Source, String> {
        Ok(match config.kind {
            SourceKind::None | SourceKind::Ros2 => Source::None,
            SourceKind::V4l2 => Source::V4l2(config.clone()),
            SourceKind::Folder => Source::Folder(folder::Watcher::new(config, max_pixels)?),
        })
    }

    /// Starts the source's thread (none for `kind = "none"` or `"ros2"`).
    pub fn spawn(
        self,
        slot: Arc<FrameSlot>,
        status: Arc<SourceStatus>,
        shutdown: Shutdown,
    ) -> std::io::Result<Option<Worker>> {
        let name = match self {
            Source::None => return Ok(None),
            Source::V4l2(_) => "capture-v4l2",
            Source::Folder(_) => "capture-folder",
        };
        let worker = Worker::spawn(name, move || {
            // The camera library panics on some device errors; a source must not take the daemon down.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match self {
                Source::V4l2(config) => v4l2::run(&config, &slot, &status, &shutdown),
                Source::Folder(watcher) => watcher.run(&slot, &status, &shutdown),
                Source::None => {}
            }));
            if result.is_err() {
                status.fail("the capture thread panicked; restart the service to capture again".into());
            }
        })?;
        Ok(Some(worker))
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
        let truncated = Pixels::Jpeg(jpeg[..jpeg.len() / 2].to_vec()).to_rgb().unwrap_err();
        assert!(truncated.to_lowercase().contains("jpeg"), "{truncated}");
        assert!(matches!(
            Pixels::Rgb(image.clone()).to_rgb().unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}

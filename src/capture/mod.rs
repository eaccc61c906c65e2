//! Frame sources: a V4L2 camera or a watched folder, each on its own thread, handing frames to a
//! [`FrameSlot`] where only the newest waits, so captioning never works through a queue of stale frames.

mod convert;
mod folder;
mod v4l2;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntCounter;

use crate::config::{SourceConfig, SourceKind};

pub struct Frame {
    pub image: image::RgbImage,
    pub seq: u64,
    pub captured: SystemTime,
    /// Where it came from: the device path, or the file.
    pub origin: String,
}

/// The newest frame, and which frame was last taken for captioning.
#[derive(Default)]
pub struct FrameSlot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    latest: Option<Arc<Frame>>,
    taken: u64,
    next_seq: u64,
}

impl FrameSlot {
    /// Makes `image` the newest frame; true when it replaced one that was never taken (a dropped frame).
    pub fn put(&self, image: image::RgbImage, origin: String) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.next_seq += 1;
        let dropped = s.latest.as_ref().is_some_and(|f| f.seq > s.taken);
        s.latest = Some(Arc::new(Frame {
            image,
            seq: s.next_seq,
            captured: SystemTime::now(),
            origin,
        }));
        dropped
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
        Some(frame)
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

/// Sleeps `total` in short naps, returning early (false) once `stop` is set.
pub(crate) fn nap(total: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + total;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    !stop.load(Ordering::Relaxed)
}

/// Starts the configured source's thread (none for `kind = "none"`, where only uploads are captioned).
pub fn spawn(
    config: &SourceConfig,
    max_pixels: u64,
    slot: Arc<FrameSlot>,
    status: Arc<SourceStatus>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Option<JoinHandle<()>>> {
    let config = config.clone();
    let name = match config.kind {
        SourceKind::None => return Ok(None),
        SourceKind::V4l2 => "capture-v4l2",
        SourceKind::Folder => "capture-folder",
    };
    let handle = std::thread::Builder::new().name(name.into()).spawn(move || {
        // The camera library panics on some device errors; a source must not take the daemon down.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match config.kind {
            SourceKind::V4l2 => v4l2::run(&config, &slot, &status, &stop),
            SourceKind::Folder => folder::run(&config, max_pixels, &slot, &status, &stop),
            SourceKind::None => {}
        }));
        if result.is_err() {
            status.fail("the capture thread panicked; restart the service to capture again".into());
        }
    })?;
    Ok(Some(handle))
}

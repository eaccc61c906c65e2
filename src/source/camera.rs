//! `source.kind = "v4l2"`: a V4L2 camera through the `v4l` crate: format negotiation (the first of
//! the configured pixel formats the driver accepts), memory-mapped streaming, and on any failure (no
//! camera yet, unplugged, driver error) a reconnect with exponential backoff while the daemon goes on.
//! Its keys: `device`, `width`, `height`, `fps`, `formats`, `reconnect_min_ms`, `reconnect_max_ms`.
//! Its captions are labelled `camera`; it is ready while frames come.

use std::sync::Arc;
use std::time::Duration;

use v4l::buffer::{Flags, Type};
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::video::capture::Parameters;
use v4l::{Device, Format, FourCC};

use super::{FrameSlot, Kind, Layout, NotReady, Origin, Pixels, SourceConfig, SourceLabel, SourceStatus, Spec};
use crate::settings::{Invalid, check};
use crate::shutdown::{Shutdown, Worker};
use clipcap_core::imageio::Budget;

pub(super) const SPEC: Spec = Spec { validate, open };

fn open(config: &SourceConfig, _budget: Budget) -> super::Opened {
    Ok(Box::new(Camera(config.clone())))
}

/// The pixel formats `source.formats` may name.
const FORMATS: [&str; 3] = ["MJPG", "YUYV", "RGB3"];

fn validate(config: &SourceConfig) -> Result<(), Invalid> {
    if let Some(f) = config.formats.iter().find(|f| !FORMATS.contains(&f.as_str())) {
        return Err(Invalid::new(
            "source.formats",
            format!("source.formats: {f:?} is not one of MJPG, YUYV, RGB3"),
        ));
    }
    check(
        !config.formats.is_empty() && config.width > 0 && config.height > 0,
        "source.formats",
        || "source.formats must name a format, and source.width and height be > 0".into(),
    )
}

struct Camera(SourceConfig);

impl Kind for Camera {
    fn readiness(&self, status: &SourceStatus) -> Result<(), NotReady> {
        super::streaming(status, NotReady::CameraSilent, NotReady::NotOpen)
    }

    fn start(
        &self,
        slot: Arc<FrameSlot>,
        status: Arc<SourceStatus>,
        shutdown: Shutdown,
    ) -> std::io::Result<Option<Worker>> {
        let config = self.0.clone();
        super::spawn_capture("capture-v4l2", status, move |status| {
            run(&config, &slot, status, &shutdown)
        })
    }
}

/// Why the camera stopped delivering.
#[derive(Debug, thiserror::Error)]
enum CameraError {
    #[error("cannot open: {0}")]
    Open(std::io::Error),
    #[error("cannot stream: {0}")]
    Stream(std::io::Error),
    #[error("no frame for a second")]
    NoFrame,
    #[error("capture failed: {0}")]
    Capture(std::io::Error),
    #[error("none of the pixel formats {formats} is supported: {tried}")]
    Formats { formats: String, tried: String },
}

fn run(config: &SourceConfig, slot: &FrameSlot, status: &SourceStatus, shutdown: &Shutdown) {
    let (min, max) = (
        Duration::from_millis(config.reconnect_min_ms),
        Duration::from_millis(config.reconnect_max_ms),
    );
    let mut backoff = min;
    while !shutdown.is_set() {
        let mut delivered = false;
        let error = match stream(config, slot, status, shutdown, &mut delivered) {
            Ok(()) => return, // asked to stop
            Err(e) => e,
        };
        if delivered {
            backoff = min; // it worked for a while: retry soon
        }
        status.fail(format!(
            "camera {}: {error}; retrying in {:.1} s",
            config.device.display(),
            backoff.as_secs_f64()
        ));
        if !shutdown.nap(backoff) {
            return;
        }
        backoff = (backoff * 2).min(max);
    }
}

/// Opens the camera and delivers frames until it fails (Err) or `stop` is set (Ok).
fn stream(
    config: &SourceConfig,
    slot: &FrameSlot,
    status: &SourceStatus,
    shutdown: &Shutdown,
    delivered: &mut bool,
) -> Result<(), CameraError> {
    let dev = Device::with_path(&config.device).map_err(CameraError::Open)?;
    let format = negotiate(&dev, config)?;
    if config.fps > 0
        && let Err(e) = dev.set_params(&Parameters::with_fps(config.fps))
    {
        tracing::info!(
            "camera {}: frame rate {} not set: {e}",
            config.device.display(),
            config.fps
        );
    }
    let mut stream = Stream::with_buffers(&dev, Type::VideoCapture, 4).map_err(CameraError::Stream)?;
    stream.set_timeout(Duration::from_millis(1000)); // wake up to notice `stop`
    tracing::info!(
        "camera streaming: {} {}x{} {}",
        config.device.display(),
        format.width,
        format.height,
        format.fourcc
    );
    status.set_up();
    // Frames the driver flagged as corrupt since the last good one.
    let mut flagged = 0u64;
    while !shutdown.is_set() {
        let (data, meta) = match stream.next() {
            Ok(frame) => frame,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(CameraError::NoFrame),
            Err(e) => return Err(CameraError::Capture(e)),
        };
        // V4L2_BUF_FLAG_ERROR: the data may be corrupt (a USB transfer lost, say). Not captioned,
        // counted as source errors; logged when it starts and when good frames return.
        if meta.flags.contains(Flags::ERROR) {
            if flagged == 0 {
                tracing::warn!(
                    "camera {}: frames flagged corrupt by the driver; dropping them",
                    config.device.display()
                );
            }
            flagged += 1;
            status.bad_frame();
            continue;
        }
        if flagged > 0 {
            tracing::info!(
                "camera {}: good frames again after {flagged} flagged corrupt",
                config.device.display()
            );
            flagged = 0;
        }
        let used = (meta.bytesused as usize).min(data.len());
        // Copied out of the driver's buffer as it is; converted only if it is captioned or shown.
        let origin = Origin {
            source: SourceLabel::Camera,
            name: config.device.display().to_string(),
            header: None,
        };
        let dropped = slot.put(pixels(&format, &data[..used]), origin);
        status.frame(dropped);
        *delivered = true;
    }
    Ok(())
}

/// The first configured pixel format the driver takes at the configured size.
fn negotiate(dev: &Device, config: &SourceConfig) -> Result<Format, CameraError> {
    let mut tried = Vec::new();
    for name in &config.formats {
        // Four ASCII characters: validate() allows only FORMATS.
        let wanted = FourCC::new(&name.as_bytes().try_into().unwrap_or(*b"    "));
        let asked = Format::new(config.width, config.height, wanted);
        match dev.set_format(&asked) {
            Ok(got) if got.fourcc == wanted => return Ok(got),
            Ok(got) => tried.push(format!("{name} (driver offered {})", got.fourcc)),
            Err(e) => tried.push(format!("{name} ({e})")),
        }
    }
    Err(CameraError::Formats {
        formats: config.formats.join(", "),
        tried: tried.join("; "),
    })
}

/// The frame in the negotiated format: MJPG, YUYV or RGB3, the only ones `source.formats` may name.
fn pixels(format: &Format, data: &[u8]) -> Pixels {
    let (data, width, height, stride) = (data.to_vec(), format.width, format.height, format.stride);
    let layout = match &format.fourcc.repr {
        b"YUYV" => Layout::Yuyv,
        b"RGB3" => Layout::Rgb,
        _ => return Pixels::Jpeg(data),
    };
    Pixels::Raw {
        layout,
        data,
        width,
        height,
        stride,
    }
}

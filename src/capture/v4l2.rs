//! A V4L2 camera through the `v4l` crate: format negotiation (the first of the configured pixel
//! formats the driver accepts), memory-mapped streaming, conversion to RGB, and on any failure (no
//! camera yet, unplugged, driver error) a reconnect with exponential backoff while the daemon goes on.

use std::sync::Arc;
use std::time::Duration;

use v4l::buffer::{Flags, Type};
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::video::capture::Parameters;
use v4l::{Device, Format, FourCC};

use super::{FrameSlot, Layout, Pixels, SourceStatus};
use crate::config::SourceConfig;
use crate::shutdown::Shutdown;

pub fn run(config: &SourceConfig, slot: &Arc<FrameSlot>, status: &Arc<SourceStatus>, shutdown: &Shutdown) {
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
) -> Result<(), String> {
    let dev = Device::with_path(&config.device).map_err(|e| format!("cannot open: {e}"))?;
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
    let mut stream = Stream::with_buffers(&dev, Type::VideoCapture, 4).map_err(|e| format!("cannot stream: {e}"))?;
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
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err("no frame for a second".into()),
            Err(e) => return Err(format!("capture failed: {e}")),
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
            status.counters.errors.inc();
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
        let dropped = slot.put(pixels(&format, &data[..used]), config.device.display().to_string());
        status.frame(dropped);
        *delivered = true;
    }
    Ok(())
}

/// The first configured pixel format the driver takes at the configured size.
fn negotiate(dev: &Device, config: &SourceConfig) -> Result<Format, String> {
    let mut tried = Vec::new();
    for name in &config.formats {
        let wanted = FourCC::new(&fourcc_bytes(name)?);
        let asked = Format::new(config.width, config.height, wanted);
        match dev.set_format(&asked) {
            Ok(got) if got.fourcc == wanted => return Ok(got),
            Ok(got) => tried.push(format!("{name} (driver offered {})", got.fourcc)),
            Err(e) => tried.push(format!("{name} ({e})")),
        }
    }
    Err(format!(
        "none of the pixel formats {} is supported: {}",
        config.formats.join(", "),
        tried.join("; ")
    ))
}

fn fourcc_bytes(name: &str) -> Result<[u8; 4], String> {
    name.as_bytes()
        .try_into()
        .map_err(|_| format!("pixel format {name:?} is not a four-character code"))
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

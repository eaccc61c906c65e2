//! What a source reports while it runs: whether it delivers, its counts, and its last problem;
//! readiness (each kind's `readiness`) and /metrics read it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus::IntCounter;

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
    up: AtomicBool,
    counters: SourceCounters,
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

    /// A frame the source could not use (flagged corrupt by the driver, undecodable): a source
    /// error that does not take the source down.
    pub fn bad_frame(&self) {
        self.counters.errors.inc();
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Up, with a frame within `window`.
    pub fn fresh(&self, window: Duration) -> bool {
        self.is_up() && self.since_last_frame().is_some_and(|s| s < window.as_secs_f64())
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

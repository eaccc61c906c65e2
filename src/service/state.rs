//! What the pipeline publishes and the HTTP side reads: captions and their comparisons (latest, a
//! bounded history, a broadcast for SSE, the JSON-lines log), votes (logged), readiness, and the
//! pipeline's heartbeat for the watchdog.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::caption_log::CaptionLog;
use super::compare::CompareStats;
use super::metrics::Metrics;
use crate::capture::{FrameSlot, Header, SourceStatus};
use crate::config::SourceKind;
use crate::publish::Outbox;
use clipcap_core::captioner::Caption;

/// A caption of another decoder on the same frame (captioning.compare).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Compared {
    pub decoder: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds this decoder took (its steps included), as `ms.decode` of a caption.
    pub ms: f64,
    /// CLIPScore of the caption (when the bundle has CLIP's text encoder).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_score: Option<f64>,
}

/// The comparison of one source caption: its decoder and CLIPScore, and the other decoders' captions.
/// Published after the caption itself, so that comparing never delays it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// The caption's id.
    pub id: u64,
    pub decoder: String,
    pub caption: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_score: Option<f64>,
    /// The caption's decoding milliseconds.
    pub ms: f64,
    pub compare: Vec<Compared>,
}

/// A person's choice of the best caption of a frame (the kiosk page's votes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vote {
    /// The caption's id.
    pub id: u64,
    pub decoder: String,
    pub client: String,
    pub time: String,
}

/// What the event stream carries.
#[derive(Debug, Clone)]
pub enum Published {
    Caption(Arc<CaptionEvent>),
    Comparison(Arc<Comparison>),
}

#[derive(Debug, Clone, Serialize)]
pub struct CaptionEvent {
    pub id: u64,
    /// When the frame was captured (or the image uploaded), RFC 3339.
    pub time: String,
    /// "camera", "folder", "ros2" or "upload".
    pub source: String,
    /// The device, file, topic or client it came from.
    pub origin: String,
    /// The ROS 2 image's header (stamp and frame id), when it came from a ROS 2 topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<Header>,
    #[serde(flatten)]
    pub caption: Caption,
    /// CLIPScore of the caption, once a comparison of its frame ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_score: Option<f64>,
    /// The other decoders' captions, once a comparison of its frame ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub compare: Vec<Compared>,
}

/// One line of the caption log: what happened (`caption`, `comparison`, `vote`), in which run.
#[derive(Serialize)]
struct LogLine<'a, T: Serialize> {
    event: &'static str,
    run: u64,
    #[serde(flatten)]
    body: &'a T,
}

/// Where the records (captions, comparisons, votes) are written besides the history and the stream.
pub struct Sinks {
    /// The caption log.
    pub log: Option<CaptionLog>,
    /// The MQTT publisher's spool.
    pub outbox: Option<Arc<Outbox>>,
}

pub struct State {
    history: Mutex<VecDeque<Arc<CaptionEvent>>>,
    capacity: usize,
    events: broadcast::Sender<Published>,
    next_id: AtomicU64,
    log: Mutex<Option<CaptionLog>>,
    /// The MQTT publisher's spool: gets every log record, in log order.
    outbox: Option<Arc<Outbox>>,
    heartbeat: Mutex<Instant>,
    /// Set by the captioning thread once the models are loaded.
    pub model_ready: AtomicBool,
    /// This run of the daemon (its start, Unix ms): caption ids restart at 1 in each run.
    pub run: u64,
    pub metrics: Metrics,
    pub source: Arc<SourceStatus>,
    pub source_kind: SourceKind,
    pub frames: Arc<FrameSlot>,
    /// Uploads sent to the pipeline and not yet taken: comparisons yield to them.
    pub uploads_waiting: AtomicUsize,
    /// Running statistics of the compared decoders.
    pub compare: CompareStats,
}

impl State {
    pub fn new(
        capacity: usize,
        sinks: Sinks,
        metrics: Metrics,
        source: Arc<SourceStatus>,
        source_kind: SourceKind,
        frames: Arc<FrameSlot>,
        primary_decoder: &str,
    ) -> Self {
        State {
            history: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            events: broadcast::channel(64).0,
            next_id: AtomicU64::new(1),
            run: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            log: Mutex::new(sinks.log),
            outbox: sinks.outbox,
            heartbeat: Mutex::new(Instant::now()),
            model_ready: AtomicBool::new(false),
            metrics,
            source,
            source_kind,
            frames,
            uploads_waiting: AtomicUsize::new(0),
            compare: CompareStats::new(primary_decoder),
        }
    }

    /// Appends a record to the caption log and the publisher's spool (if any), counting a failed write.
    fn log<T: Serialize>(&self, event: &'static str, body: &T) {
        // Held while the record goes to both, so that both see the records in the same order.
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.is_none() && self.outbox.is_none() {
            return;
        }
        let mut line = serde_json::to_string(&LogLine {
            event,
            run: self.run,
            body,
        })
        .expect("log lines serialise");
        if let Some(outbox) = &self.outbox {
            outbox.append(&line);
        }
        if let Some(log) = log.as_mut() {
            line.push('\n');
            if log.append(&line).is_err() {
                self.metrics.error("log");
            }
        }
    }

    /// Stores, broadcasts and logs a caption; returns the event.
    pub fn publish(
        &self,
        source: &str,
        origin: String,
        header: Option<Header>,
        time: SystemTime,
        caption: Caption,
    ) -> Arc<CaptionEvent> {
        self.metrics.observe(&caption);
        self.metrics.captions.with_label_values(&[source]).inc();
        let event = Arc::new(CaptionEvent {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            time: humantime::format_rfc3339_millis(time).to_string(),
            source: source.to_string(),
            origin,
            header,
            caption,
            clip_score: None,
            compare: Vec::new(),
        });
        {
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            if h.len() == self.capacity {
                h.pop_front();
            }
            h.push_back(event.clone());
        }
        self.log("caption", &*event);
        let _ = self.events.send(Published::Caption(event.clone())); // no subscribers is fine
        event
    }

    /// Publishes a comparison: attached to its caption in the history, logged and streamed.
    pub fn publish_comparison(&self, comparison: Comparison) {
        {
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = h.iter_mut().find(|e| e.id == comparison.id) {
                let mut event = (**entry).clone();
                event.clip_score = comparison.clip_score;
                event.compare = comparison.compare.clone();
                *entry = Arc::new(event);
            }
        }
        self.log("comparison", &comparison);
        let _ = self.events.send(Published::Comparison(Arc::new(comparison)));
    }

    /// The caption `id` of this run, while the history holds it.
    pub fn caption(&self, id: u64) -> Option<Arc<CaptionEvent>> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.iter().find(|e| e.id == id).cloned()
    }

    pub fn record_vote(&self, vote: &Vote) {
        self.log("vote", vote);
    }

    pub fn latest(&self) -> Option<Arc<CaptionEvent>> {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).back().cloned()
    }

    /// Up to `limit` captions, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Arc<CaptionEvent>> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.events.subscribe()
    }

    pub fn beat(&self) {
        *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Whether the pipeline thread has looped within `window` (it wakes at least every 200 ms).
    pub fn pipeline_alive(&self, window: Duration) -> bool {
        self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()).elapsed() < window
    }

    /// Ready: the model is loaded and the source delivers (a camera, or a ROS 2 topic's publisher, sent
    /// a frame in the last 5 s, a watched folder can be read); with no source, the model alone.
    /// Otherwise the reason.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.model_ready.load(Ordering::Relaxed) {
            return Err("loading the model".into());
        }
        if let Some(refusal) = self.outbox.as_ref().and_then(|o| o.refusal()) {
            return Err(format!("publishing: {refusal}"));
        }
        let up = self.source.up.load(Ordering::Relaxed);
        let fresh = up && self.source.since_last_frame().is_some_and(|s| s < 5.0);
        let reason = || {
            let never = match self.source_kind {
                SourceKind::Ros2 => "no publisher on the ROS 2 image topic yet",
                _ => "source not open yet",
            };
            self.source.last_error().unwrap_or_else(|| never.into())
        };
        match self.source_kind {
            SourceKind::None => Ok(()),
            SourceKind::Folder if up => Ok(()),
            SourceKind::V4l2 | SourceKind::Ros2 if fresh => Ok(()),
            SourceKind::V4l2 if up => Err("camera open but no frame in the last 5 s".into()),
            SourceKind::Ros2 if up => {
                Err("the ROS 2 image topic has a publisher but sent no frame in the last 5 s".into())
            }
            _ => Err(reason()),
        }
    }
}

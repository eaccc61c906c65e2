//! What the pipeline publishes and the HTTP side reads: captions and their comparisons (latest, a
//! bounded history, a broadcast for SSE, the JSON-lines log and the MQTT spool), votes (logged),
//! readiness, and the pipeline's heartbeat for the watchdog. The records themselves are
//! crate::records'.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

use super::caption_log::CaptionLog;
use super::compare::{CompareStats, DecoderSummary};
use super::metrics::{ErrorKind, Metrics};
use crate::publish::Outbox;
use crate::records::{BundleId, CaptionEvent, Comparison, Published, Vote};
use crate::source::{self, Origin, SourceStatus};
use clipcap_core::captioner::Caption;

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

/// A source as the daemon runs it: its captioning thread, readiness, GET /v1/sources and the frame
/// endpoint read it here.
pub struct Source {
    pub name: String,
    pub kind: Arc<dyn source::Kind>,
    pub label: source::SourceLabel,
    /// Its frames (the newest is shown by GET /v1/frame/latest.jpg).
    pub frames: Arc<source::FrameSlot>,
    pub status: Arc<SourceStatus>,
}

/// Why the daemon is not ready.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("loading the model")]
    Loading,
    #[error("publishing: {0}")]
    Publishing(String),
    #[error("source {0}: {1}")]
    Source(String, source::NotReady),
}

pub struct State {
    history: Mutex<VecDeque<Arc<CaptionEvent>>>,
    capacity: usize,
    events: broadcast::Sender<Published>,
    /// The next caption's id, held by `publish` from taking an id to the caption's broadcast, so that
    /// the history, the log and the event stream all get the captions of concurrent threads (sources,
    /// uploads) in id order.
    next_id: Mutex<u64>,
    log: Mutex<Option<CaptionLog>>,
    /// The MQTT publisher's spool: gets every log record, in log order.
    outbox: Option<Arc<Outbox>>,
    heartbeat: Mutex<Instant>,
    /// Set by the captioning thread once the models are loaded.
    model_ready: AtomicBool,
    /// This run of the daemon (its start, Unix ms): caption ids restart at 1 in each run.
    run: u64,
    metrics: Arc<Metrics>,
    sources: Vec<Source>,
    /// Running statistics of the compared decoders.
    compare: CompareStats,
    /// Who voted for which caption of the history: one vote each.
    voters: Mutex<HashMap<u64, HashSet<String>>>,
}

impl State {
    pub fn new(
        capacity: usize,
        sinks: Sinks,
        metrics: Arc<Metrics>,
        sources: Vec<Source>,
        primary_decoder: &str,
    ) -> Self {
        State {
            history: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            events: broadcast::channel(64).0,
            next_id: Mutex::new(1),
            run: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            log: Mutex::new(sinks.log),
            outbox: sinks.outbox,
            heartbeat: Mutex::new(Instant::now()),
            model_ready: AtomicBool::new(false),
            metrics,
            sources,
            compare: CompareStats::new(primary_decoder),
            voters: Mutex::default(),
        }
    }

    /// This run of the daemon: its start in Unix milliseconds.
    pub fn run(&self) -> u64 {
        self.run
    }

    pub fn set_model_ready(&self) {
        self.model_ready.store(true, Ordering::Relaxed);
    }

    pub fn model_ready(&self) -> bool {
        self.model_ready.load(Ordering::Relaxed)
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
                self.metrics.error(ErrorKind::Log);
            }
        }
    }

    /// Stores, broadcasts and logs a caption of an image of the source named `source` (or `upload`)
    /// from `origin`, taken at `time`; returns the event.
    pub fn publish(
        &self,
        source: &str,
        origin: Origin,
        time: SystemTime,
        caption: Caption,
        bundle: &BundleId,
    ) -> Arc<CaptionEvent> {
        self.metrics.observe(&caption);
        self.metrics.caption(source);
        let mut next_id = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
        let event = Arc::new(CaptionEvent {
            id: *next_id,
            time: humantime::format_rfc3339_millis(time).to_string(),
            source: source.to_string(),
            kind: origin.source,
            origin: origin.name,
            header: origin.header,
            caption,
            bundle: bundle.clone(),
            clip_score: None,
            compare: Vec::new(),
        });
        *next_id += 1;
        {
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            if h.len() == self.capacity
                && let Some(gone) = h.pop_front()
            {
                self.voters.lock().unwrap_or_else(|p| p.into_inner()).remove(&gone.id);
            }
            h.push_back(event.clone());
        }
        self.log("caption", &*event);
        let _ = self.events.send(Published::Caption(event.clone())); // no subscribers is fine
        event
    }

    /// Publishes a comparison: counted in the running statistics, attached to its caption in the
    /// history, logged and streamed.
    pub fn publish_comparison(&self, comparison: Comparison) {
        self.compare.record(&comparison, &self.metrics);
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

    /// The running statistics of the compared decoders.
    pub fn compare_snapshot(&self) -> Vec<DecoderSummary> {
        self.compare.snapshot()
    }

    /// The caption `id` of this run, while the history holds it.
    pub fn caption(&self, id: u64) -> Option<Arc<CaptionEvent>> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.iter().find(|e| e.id == id).cloned()
    }

    /// Whether `voter` may vote for caption `id`: the first time, yes (and it is remembered while the
    /// history holds the caption); again, no.
    pub fn claim_vote(&self, id: u64, voter: &str) -> bool {
        let mut voters = self.voters.lock().unwrap_or_else(|p| p.into_inner());
        voters.entry(id).or_default().insert(voter.to_string())
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

    /// The configured sources, in order.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Ready: the model is loaded, the broker has not refused us, and every source is ready as its
    /// kind says (a camera or ROS 2 topic sent a frame in the last 5 s, a folder can be listed).
    /// Otherwise the reason, naming the first source that is not.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if !self.model_ready() {
            return Err(NotReady::Loading);
        }
        if let Some(refusal) = self.outbox.as_ref().and_then(|o| o.refusal()) {
            return Err(NotReady::Publishing(refusal));
        }
        for s in &self.sources {
            s.kind
                .readiness(&s.status)
                .map_err(|why| NotReady::Source(s.name.clone(), why))?;
        }
        Ok(())
    }
}

//! The captioning thread: ONNX Runtime calls block, so they run here, off the async runtime. It
//! serves uploads first (in turns across clients: uploads.rs), and otherwise captions the newest
//! camera frame at most every `captioning.interval_ms`, skipping frames whose scene has not changed.
//! After a source caption is published, the comparison decoders may run on the same frame
//! (`captioning.compare`, sampled).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::metrics::{ErrorKind, Metrics, SkipReason};
use super::state::State;
use super::uploads::{Upload, UploadReceiver};
use crate::config::CaptioningConfig;
use crate::decoders::Decoders;
use crate::records::{CaptionEvent, Compared, Comparison};
use crate::shutdown::{Shutdown, Worker};
use crate::source::{Frame, FrameError, FrameSlot, Kind, Origin, SourceLabel, SourceStatus};
use clipcap_core::bundle::Bundle;
use clipcap_core::captioner::{CaptionError, Captioner, Prepared};
use clipcap_core::cosine;
use clipcap_core::runtime::Runtime;

/// The source as the captioning thread sees it: its frames, its rules, its status.
pub struct Feed {
    pub frames: Arc<FrameSlot>,
    pub kind: Arc<dyn Kind>,
    pub status: Arc<SourceStatus>,
}

/// What the captioning thread works with, besides the models it loads itself.
pub struct Setup {
    pub bundle: Bundle,
    pub decoders: Decoders,
    pub config: CaptioningConfig,
    pub seed: u64,
    pub state: Arc<State>,
    pub metrics: Arc<Metrics>,
    pub source: Feed,
    pub uploads: UploadReceiver,
    pub shutdown: Shutdown,
}

/// Why a source frame has no caption.
#[derive(Debug, thiserror::Error)]
enum NotCaptioned {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Caption(#[from] CaptionError),
    #[error("unchanged scene")]
    Unchanged,
}

/// Starts the captioning thread. It loads the models first, reporting on the returned channel
/// whether they loaded (the API serves meanwhile: on a Jetson, building TensorRT engines takes
/// minutes), then captions until the shutdown.
pub fn spawn(runtime: Runtime, setup: Setup) -> std::io::Result<(Worker, oneshot::Receiver<Result<(), CaptionError>>)> {
    let (loaded, model) = oneshot::channel();
    let worker = Worker::spawn("captioning", move || {
        tracing::info!("loading {}", setup.bundle.dir.display());
        let captioner = match Captioner::load(&setup.bundle, &runtime) {
            Ok(c) => c,
            Err(e) => return drop(loaded.send(Err(e))),
        };
        setup.state.set_model_ready();
        let _ = loaded.send(Ok(()));
        Pipeline {
            captioner,
            s: setup,
            compare_count: 0,
            compared_at: VecDeque::new(),
        }
        .run()
    })?;
    Ok((worker, model))
}

struct Pipeline {
    captioner: Captioner,
    s: Setup,
    /// Source captions so far and the times of the comparisons of the last minute (sampling).
    compare_count: u64,
    compared_at: VecDeque<Instant>,
}

/// How long the thread waits at most before looking again (keeps the heartbeat fresh).
const TICK: Duration = Duration::from_millis(200);
/// Once a caption is due, how often the slot is checked for a new frame (the latency it adds).
const POLL: Duration = Duration::from_millis(20);

impl Pipeline {
    fn run(mut self) {
        let interval = Duration::from_millis(self.s.config.interval_ms);
        let queue = self.s.source.kind.every_frame();
        let mut next_due = Instant::now();
        let mut last_scene: Option<Vec<f32>> = None;
        while !self.s.shutdown.is_set() {
            self.s.state.beat();
            let until_due = next_due.saturating_duration_since(Instant::now());
            let wait = if until_due.is_zero() { POLL } else { until_due.min(TICK) };
            match self.s.uploads.recv_timeout(wait) {
                Ok(upload) => self.upload(upload),
                Err(RecvTimeoutError::Disconnected) => return,
                // A queue's files are captioned as they come: no cadence.
                Err(RecvTimeoutError::Timeout) if queue || Instant::now() >= next_due => {
                    if let Some(frame) = self.s.source.frames.take_new() {
                        next_due = Instant::now() + interval;
                        let outcome = self.camera(&frame, queue, &mut last_scene);
                        match (&frame.ticket, outcome) {
                            (Some(ticket), Ok(id)) => ticket.captioned(id),
                            (Some(ticket), Err(e)) => ticket.failed(&e),
                            (None, _) => {}
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        // Uploads already accepted still get their captions: their clients are waiting.
        while let Some(upload) = self.s.uploads.try_recv() {
            self.upload(upload);
        }
    }

    fn upload(&mut self, upload: Upload) {
        let outcome = self.captioner.prepare(&upload.image).and_then(|prepared| {
            let Decoders { default, fallback, .. } = &mut self.s.decoders;
            let mut chosen = upload.decoder;
            let decoder = chosen.as_mut().unwrap_or(default);
            let outcome = self
                .captioner
                .decode(&prepared, decoder, fallback.as_mut(), self.s.seed);
            self.s.metrics.decoder_failures(&outcome);
            outcome
        });
        let origin = Origin {
            source: SourceLabel::Upload,
            name: upload.origin,
            header: None,
        };
        let result = outcome
            .map(|caption| self.s.state.publish(origin, upload.received, caption))
            .inspect_err(|_| self.s.metrics.error(ErrorKind::Caption));
        if let Ok(since) = upload.received.elapsed() {
            self.s.metrics.upload_seconds.observe(since.as_secs_f64());
        }
        let _ = upload.reply.send(result); // the client may have gone
    }

    /// Captions a source frame (every one, without the scene-change rule, when `every_frame`): the
    /// published caption's id, or why there is none.
    fn camera(
        &mut self,
        frame: &Frame,
        every_frame: bool,
        last_scene: &mut Option<Vec<f32>>,
    ) -> Result<u64, NotCaptioned> {
        let source = frame.origin.source.as_str();
        let image = match frame.pixels.to_rgb() {
            Ok(image) => image,
            // A bad frame (a corrupt MJPEG, say) is the source's error; the camera goes on.
            Err(e) => {
                tracing::warn!("{source} frame {}: {e}", frame.seq);
                self.s.source.status.bad_frame();
                return Err(e.into());
            }
        };
        let prepared = match self.captioner.prepare(&image) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("{source} frame: {e}");
                self.s.metrics.error(ErrorKind::Caption);
                return Err(e.into());
            }
        };
        if !every_frame && self.unchanged(&prepared, last_scene) {
            self.s.metrics.frames_skipped.inc();
            return Err(NotCaptioned::Unchanged);
        }
        let Decoders { default, fallback, .. } = &mut self.s.decoders;
        let outcome = self
            .captioner
            .decode(&prepared, default, fallback.as_mut(), self.s.seed);
        self.s.metrics.decoder_failures(&outcome);
        match outcome {
            Ok(caption) => {
                *last_scene = Some(prepared.image_embeds.clone());
                let event = self.s.state.publish(frame.origin.clone(), frame.captured, caption);
                // Published first: comparing never delays the caption.
                if !self.s.decoders.compare.is_empty() && self.compare_due() {
                    self.compare(&prepared, &event);
                }
                Ok(event.id)
            }
            Err(e) => {
                tracing::warn!("{source} caption failed: {e}");
                self.s.metrics.error(ErrorKind::Caption);
                Err(e.into())
            }
        }
    }

    /// Whether this caption's frame gets a comparison: every `compare_every`th source caption, at
    /// most `compare_per_minute` a minute, and not while a frame or an upload waits. Skips are counted.
    fn compare_due(&mut self) -> bool {
        let c = &self.s.config;
        self.compare_count += 1;
        let skip = if !(self.compare_count - 1).is_multiple_of(c.compare_every) {
            Some(SkipReason::Sampled)
        } else if self.s.source.frames.waiting() || self.s.uploads.waiting() {
            Some(SkipReason::Busy)
        } else {
            let minute_ago = Instant::now().checked_sub(Duration::from_secs(60));
            self.compared_at.retain(|t| minute_ago.is_none_or(|m| *t > m));
            (c.compare_per_minute > 0 && self.compared_at.len() as u64 >= c.compare_per_minute)
                .then_some(SkipReason::Rate)
        };
        match skip {
            Some(reason) => {
                self.s.metrics.compare_skipped(reason);
                false
            }
            None => {
                self.compared_at.push_back(Instant::now());
                true
            }
        }
    }

    /// Runs the comparison decoders on the frame of `event`, scores every caption with CLIP (when the
    /// bundle has its text encoder), and publishes the comparison.
    fn compare(&mut self, prepared: &Prepared, event: &CaptionEvent) {
        let metrics = &self.s.metrics;
        let mut compared: Vec<Compared> = Vec::with_capacity(self.s.decoders.compare.len());
        for d in self.s.decoders.compare.iter_mut() {
            let start = Instant::now();
            let outcome = self.captioner.decode(prepared, d, None, self.s.seed);
            metrics.decoder_failures(&outcome);
            compared.push(match outcome {
                Ok(c) => {
                    metrics.decoded(&c.decoder, c.ms.decode);
                    Compared {
                        decoder: c.decoder,
                        caption: Some(c.caption),
                        error: None,
                        ms: c.ms.decode,
                        clip_score: None,
                    }
                }
                Err(e) => {
                    metrics.error(ErrorKind::Compare);
                    Compared {
                        decoder: d.label().into(),
                        caption: None,
                        error: Some(e.to_string()),
                        ms: start.elapsed().as_secs_f64() * 1e3,
                        clip_score: None,
                    }
                }
            });
        }
        let mut texts = vec![event.caption.caption.as_str()];
        texts.extend(compared.iter().filter_map(|c| c.caption.as_deref()));
        let scores = match self.captioner.clip_scores(prepared, &texts) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("CLIPScore: {e}");
                metrics.error(ErrorKind::Compare);
                None
            }
        };
        let mut scores = scores.into_iter().flatten();
        let clip_score = scores.next();
        for c in compared.iter_mut().filter(|c| c.caption.is_some()) {
            c.clip_score = scores.next();
        }
        let comparison = Comparison {
            id: event.id,
            decoder: event.caption.decoder.clone(),
            caption: event.caption.caption.clone(),
            clip_score,
            ms: event.caption.ms.decode,
            compare: compared,
        };
        self.s.state.publish_comparison(comparison);
    }

    /// Whether the scene is within `scene_change` cosine distance of the last captioned one.
    fn unchanged(&self, prepared: &Prepared, last: &Option<Vec<f32>>) -> bool {
        let threshold = self.s.config.scene_change;
        threshold > 0.0
            && last
                .as_ref()
                .is_some_and(|l| 1.0 - cosine(l, &prepared.image_embeds) < threshold as f64)
    }
}

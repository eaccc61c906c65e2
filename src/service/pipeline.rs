//! The captioning threads: ONNX Runtime calls block, so they run here, off the async runtime. One
//! thread loads the models, then runs one thread per source and `captioning.upload_concurrency`
//! threads for uploads (in turns across clients: uploads.rs), each with its own decoders. They share
//! the live model (live.rs: each caption takes it as it starts, so a reload swaps it between
//! captions), whose language-model calls decode every caption in flight together (clipcap-core's
//! batch.rs). A source's thread captions its newest frame at most every `captioning.interval_ms`,
//! skipping frames whose scene has not changed, so a slow or silent source holds up nothing but
//! itself. After a source caption is published, the comparison decoders may caption the same frame
//! (`captioning.compare`, sampled), all at once, and with them the shadow bundle
//! (`captioning.shadow_bundle`) with the primary decoder.

use std::collections::VecDeque;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::keep::Keeper;
use super::live::{Live, Model};
use super::metrics::{ErrorKind, Metrics, SkipReason};
use super::state::{Source, State};
use super::uploads::{Upload, UploadReceiver};
use crate::config::CaptioningConfig;
use crate::decoders::Decoders;
use crate::records::{CaptionEvent, Compared, Comparison, shadow_label};
use crate::shutdown::{Shutdown, Worker};
use crate::source::{Frame, FrameError, Origin, SourceLabel};
use clipcap_core::bundle::Bundle;
use clipcap_core::captioner::{CaptionError, Captioner, Prepared};
use clipcap_core::cosine;
use clipcap_core::decoding::DecoderInstance;
use clipcap_core::runtime::Runtime;
use image::RgbImage;

/// What the captioning threads work with, besides the models they load.
pub struct Setup {
    pub bundle: Bundle,
    /// Where the loaded model goes, and where each caption takes it from.
    pub live: Arc<Live>,
    /// captioning.shadow_bundle, opened.
    pub shadow: Option<Bundle>,
    /// captioning.keep_compared_frames, opened.
    pub keeper: Option<Keeper>,
    /// One set for each thread: the sources' (`State::sources`) in their order, then the upload
    /// threads'.
    pub decoders: Vec<Decoders>,
    pub config: CaptioningConfig,
    pub seed: u64,
    pub state: Arc<State>,
    pub metrics: Arc<Metrics>,
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

/// Starts the captioning threads. The models are loaded first, on the returned worker's thread,
/// which reports on the returned channel whether they loaded (the API serves meanwhile: on a Jetson,
/// building TensorRT engines takes minutes), then captions until the shutdown.
pub fn spawn(runtime: Runtime, setup: Setup) -> std::io::Result<(Worker, oneshot::Receiver<Result<(), CaptionError>>)> {
    let (loaded, model) = oneshot::channel();
    let worker = Worker::spawn("captioning", move || {
        tracing::info!("loading {}", setup.bundle.dir.display());
        let captioner = match Captioner::load(&setup.bundle, &runtime, setup.config.batching()) {
            Ok(c) => c,
            Err(e) => return drop(loaded.send(Err(e))),
        };
        setup.live.set(Model::new(setup.bundle.clone(), captioner));
        let shadow = match &setup.shadow {
            Some(bundle) => match Captioner::load(bundle, &runtime, setup.config.batching()) {
                Ok(c) => Some(Model::new(bundle.clone(), c)),
                Err(e) => return drop(loaded.send(Err(e))),
            },
            None => None,
        };
        setup.state.set_model_ready();
        let _ = loaded.send(Ok(()));
        run(setup, shadow.as_ref());
    })?;
    Ok((worker, model))
}

/// What every captioning thread shares.
struct Shared<'a> {
    live: &'a Live,
    shadow: Option<&'a Model>,
    keeper: Option<&'a Keeper>,
    config: &'a CaptioningConfig,
    seed: u64,
    state: &'a State,
    metrics: &'a Metrics,
    uploads: &'a UploadReceiver,
    shutdown: &'a Shutdown,
    /// Source captions so far and the times of the comparisons of the last minute (sampling), across
    /// sources.
    compares: Mutex<(u64, VecDeque<Instant>)>,
    turns: Turns,
}

/// Sources take turns: a source with a frame to caption starts only when no other busy source has
/// started fewer captions, busy being waiting to start one, or having finished one within `GRACE`
/// (the time a folder takes to read its next file). When captioning is saturated, each busy source
/// gets its share, give or take one; a source that is idle (waiting for its interval, or without
/// frames) holds up no one for longer than `GRACE`, and the one with the fewest starts never waits.
struct Turns {
    sources: Mutex<Vec<Turn>>,
    changed: Condvar,
    grace: Duration,
}

#[derive(Clone, Default)]
struct Turn {
    started: u64,
    waiting: bool,
    finished: Option<Instant>,
}

/// How long a source that just finished a caption keeps its turn.
const GRACE: Duration = Duration::from_millis(10);

impl Turns {
    fn new(sources: usize, grace: Duration) -> Turns {
        Turns {
            sources: Mutex::new(vec![Turn::default(); sources]),
            changed: Condvar::new(),
            grace,
        }
    }

    /// Waits until source `me` may start a caption, and counts it started.
    fn take(&self, me: usize) {
        let mut turns = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        turns[me].waiting = true;
        loop {
            let mine = turns[me].started;
            let busy = |t: &Turn| t.waiting || t.finished.is_some_and(|f| f.elapsed() < self.grace);
            if !turns.iter().any(|t| t.started < mine && busy(t)) {
                let turn = &mut turns[me];
                (turn.started, turn.waiting) = (mine + 1, false);
                self.changed.notify_all();
                return;
            }
            // Woken when a source starts or finishes; the timeout ends a grace that ran out.
            turns = self
                .changed
                .wait_timeout(turns, self.grace)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Source `me` finished a caption.
    fn done(&self, me: usize) {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner)[me].finished = Some(Instant::now());
        self.changed.notify_all();
    }
}

/// Runs one thread per source and the upload threads until the shutdown; then the uploads already
/// accepted get their captions (their clients are waiting).
fn run(setup: Setup, shadow: Option<&Model>) {
    let Setup {
        live,
        keeper,
        decoders,
        config,
        seed,
        state,
        metrics,
        uploads,
        shutdown,
        ..
    } = setup;
    let sources = state.sources();
    let shared = Shared {
        live: &live,
        shadow,
        keeper: keeper.as_ref(),
        config: &config,
        seed,
        state: &state,
        metrics: &metrics,
        uploads: &uploads,
        shutdown: &shutdown,
        compares: Mutex::new((0, VecDeque::new())),
        turns: Turns::new(sources.len(), GRACE),
    };
    let mut decoders = decoders.into_iter();
    std::thread::scope(|scope| {
        for (index, feed) in sources.iter().enumerate() {
            let decoders = decoders.next().expect("one set of decoders per source");
            let thread = SourceThread {
                s: &shared,
                index,
                feed,
                decoders,
            };
            spawn_scoped(scope, format!("caption-{}", feed.name), move || thread.run());
        }
        for (i, decoders) in decoders.enumerate() {
            let shared = &shared;
            spawn_scoped(scope, format!("upload-{i}"), move || {
                let mut decoders = decoders;
                while !shared.shutdown.is_set() {
                    shared.state.beat();
                    match shared.uploads.recv_timeout(TICK) {
                        Ok(upload) => shared.upload(&mut decoders, upload),
                        Err(RecvTimeoutError::Disconnected) => return,
                        Err(RecvTimeoutError::Timeout) => {}
                    }
                }
                while let Some(upload) = shared.uploads.try_recv() {
                    shared.upload(&mut decoders, upload);
                }
            });
        }
    });
}

/// A named scoped thread; a failure to start one is logged (the others go on).
fn spawn_scoped<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    name: String,
    body: impl FnOnce() + Send + 'scope,
) {
    if let Err(e) = std::thread::Builder::new().name(name.clone()).spawn_scoped(scope, body) {
        tracing::error!("cannot start the captioning thread {name}: {e}");
    }
}

/// How long a thread waits at most before looking again (keeps the heartbeat fresh).
const TICK: Duration = Duration::from_millis(200);

impl Shared<'_> {
    /// The model a caption starting now uses, to its end.
    fn model(&self) -> Arc<Model> {
        self.live
            .current()
            .expect("the captioning threads start after the model is loaded")
    }

    fn upload(&self, decoders: &mut Decoders, upload: Upload) {
        let model = self.model();
        let captioner = &model.captioner;
        let outcome = captioner.prepare(&upload.image).and_then(|prepared| {
            let Decoders { default, fallback, .. } = decoders;
            let mut chosen = upload.decoder;
            let decoder = chosen.as_mut().unwrap_or(default);
            let outcome = captioner.decode(&prepared, decoder, fallback.as_mut(), self.seed);
            self.metrics.decoder_failures(&outcome);
            outcome
        });
        let origin = Origin {
            source: SourceLabel::Upload,
            name: upload.origin,
            header: None,
        };
        let result = outcome
            .map(|caption| {
                self.state.publish(
                    SourceLabel::Upload.as_str(),
                    origin,
                    upload.received,
                    caption,
                    &model.id,
                )
            })
            .inspect_err(|_| self.metrics.error(ErrorKind::Caption));
        if let Ok(since) = upload.received.elapsed() {
            self.metrics.upload_seconds.observe(since.as_secs_f64());
        }
        let _ = upload.reply.send(result); // the client may have gone
    }
}

/// One source's captioning thread.
struct SourceThread<'a> {
    s: &'a Shared<'a>,
    /// Its place in `Shared::turns`.
    index: usize,
    feed: &'a Source,
    decoders: Decoders,
}

impl SourceThread<'_> {
    fn run(mut self) {
        let interval = Duration::from_millis(self.s.config.interval_ms);
        // A queue's files are captioned as they come: no cadence.
        let queue = self.feed.kind.every_frame();
        let mut next_due = Instant::now();
        let mut last_scene: Option<Scene> = None;
        while !self.s.shutdown.is_set() {
            self.s.state.beat();
            let until_due = next_due.saturating_duration_since(Instant::now());
            if !queue && !until_due.is_zero() {
                std::thread::sleep(until_due.min(TICK));
                continue;
            }
            let Some(frame) = self.feed.frames.wait_new(TICK) else {
                continue;
            };
            self.s.turns.take(self.index);
            next_due = Instant::now() + interval;
            let outcome = self.caption(&frame, queue, &mut last_scene);
            self.s.turns.done(self.index);
            match (&frame.ticket, outcome) {
                (Some(ticket), Ok(id)) => ticket.captioned(id),
                (Some(ticket), Err(e)) => ticket.failed(&e),
                (None, _) => {}
            }
        }
    }

    /// Captions a source frame (every one, without the scene-change rule, when `every_frame`): the
    /// published caption's id, or why there is none.
    fn caption(
        &mut self,
        frame: &Frame,
        every_frame: bool,
        last_scene: &mut Option<Scene>,
    ) -> Result<u64, NotCaptioned> {
        let (s, source) = (self.s, self.feed.name.as_str());
        let model = s.model();
        let image = match frame.pixels.to_rgb() {
            Ok(image) => image,
            // A bad frame (a corrupt MJPEG, say) is the source's error; the camera goes on.
            Err(e) => {
                tracing::warn!("source {source}: frame {}: {e}", frame.seq);
                self.feed.status.bad_frame();
                return Err(e.into());
            }
        };
        let prepared = match model.captioner.prepare(&image) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("source {source}: {e}");
                s.metrics.error(ErrorKind::Caption);
                return Err(e.into());
            }
        };
        if !every_frame && self.unchanged(&model, &prepared, last_scene) {
            s.metrics.frame_skipped(source);
            return Err(NotCaptioned::Unchanged);
        }
        let Decoders { default, fallback, .. } = &mut self.decoders;
        let outcome = model.captioner.decode(&prepared, default, fallback.as_mut(), s.seed);
        s.metrics.decoder_failures(&outcome);
        match outcome {
            Ok(caption) => {
                *last_scene = Some(Scene {
                    bundle: model.id.sha256.clone(),
                    embedding: prepared.image_embeds.clone(),
                });
                let event = s
                    .state
                    .publish(source, frame.origin.clone(), frame.captured, caption, &model.id);
                // Published first: comparing never delays the caption.
                if (!self.decoders.compare.is_empty() || s.shadow.is_some()) && self.compare_due() {
                    self.compare(&model, &image, &prepared, &event);
                }
                Ok(event.id)
            }
            Err(e) => {
                tracing::warn!("source {source}: caption failed: {e}");
                s.metrics.error(ErrorKind::Caption);
                Err(e.into())
            }
        }
    }

    /// Whether this caption's frame gets a comparison: every `compare_every`th source caption, at
    /// most `compare_per_minute` a minute, and not while a frame or an upload waits. Skips are counted.
    fn compare_due(&self) -> bool {
        let c = self.s.config;
        let mut guard = self.s.compares.lock().unwrap_or_else(PoisonError::into_inner);
        let (count, compared_at) = &mut *guard;
        *count += 1;
        let skip = if !(*count - 1).is_multiple_of(c.compare_every) {
            Some(SkipReason::Sampled)
        } else if self.feed.frames.waiting() || self.s.uploads.waiting() {
            Some(SkipReason::Busy)
        } else {
            let minute_ago = Instant::now().checked_sub(Duration::from_secs(60));
            compared_at.retain(|t| minute_ago.is_none_or(|m| *t > m));
            (c.compare_per_minute > 0 && compared_at.len() as u64 >= c.compare_per_minute).then_some(SkipReason::Rate)
        };
        match skip {
            Some(reason) => {
                self.s.metrics.compare_skipped(reason);
                false
            }
            None => {
                compared_at.push_back(Instant::now());
                true
            }
        }
    }

    /// Runs the comparison decoders on the frame of `event`, all at once (their steps share the
    /// model's calls), and the shadow bundle with the primary decoder beside them; scores every
    /// caption with CLIP (when its bundle has the text encoder), and publishes the comparison.
    fn compare(&mut self, model: &Model, image: &RgbImage, prepared: &Prepared, event: &CaptionEvent) {
        let (s, metrics) = (self.s, self.s.metrics);
        let captioner = &model.captioner;
        let Decoders { default, compare, .. } = &mut self.decoders;
        let (outcomes, shadowed): (Vec<_>, _) = std::thread::scope(|scope| {
            let running: Vec<_> = compare
                .iter_mut()
                .map(|d| {
                    scope.spawn(move || {
                        let start = Instant::now();
                        let outcome = captioner.decode(prepared, d, None, s.seed);
                        (d.label().to_string(), start.elapsed(), outcome)
                    })
                })
                .collect();
            let shadowed = s.shadow.map(|shadow| shadow_caption(shadow, default, image, s.seed));
            let outcomes = running
                .into_iter()
                .map(|r| r.join().expect("a decoder's panic is caught at the plugin boundary"))
                .collect();
            (outcomes, shadowed)
        });
        let mut compared: Vec<Compared> = Vec::with_capacity(outcomes.len());
        for (label, took, outcome) in outcomes {
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
                        bundle: None,
                    }
                }
                Err(e) => {
                    metrics.error(ErrorKind::Compare);
                    Compared {
                        decoder: label,
                        caption: None,
                        error: Some(e.to_string()),
                        ms: took.as_secs_f64() * 1e3,
                        clip_score: None,
                        bundle: None,
                    }
                }
            });
        }
        let mut texts = vec![event.caption.caption.as_str()];
        texts.extend(compared.iter().filter_map(|c| c.caption.as_deref()));
        let scores = match captioner.clip_scores(prepared, &texts) {
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
        if let Some(shadowed) = shadowed {
            if shadowed.caption.is_none() {
                metrics.error(ErrorKind::Compare);
            }
            compared.push(shadowed);
        }
        let comparison = Comparison {
            id: event.id,
            source: event.source.clone(),
            decoder: event.caption.decoder.clone(),
            caption: event.caption.caption.clone(),
            clip_score,
            ms: event.caption.ms.decode,
            compare: compared,
            bundle: Some(model.id.clone()),
            frame: s.keeper.and_then(|k| match k.keep(s.state.run(), event.id, image) {
                Ok(path) => Some(path.display().to_string()),
                Err(e) => {
                    tracing::warn!("captioning.keep_compared_frames: {e:#}");
                    metrics.error(ErrorKind::Frame);
                    None
                }
            }),
        };
        s.state.publish_comparison(comparison);
    }

    /// Whether the scene is within `scene_change` cosine distance of the last captioned one (by the
    /// same model: another one's embedding is not comparable).
    fn unchanged(&self, model: &Model, prepared: &Prepared, last: &Option<Scene>) -> bool {
        let threshold = self.s.config.scene_change;
        threshold > 0.0
            && last.as_ref().is_some_and(|l| {
                l.bundle == model.id.sha256 && 1.0 - cosine(&l.embedding, &prepared.image_embeds) < threshold as f64
            })
    }
}

/// The shadow bundle's caption of a compared frame with `decoder` (the primary one), scored with the
/// shadow bundle's own CLIP, as a compared caption labelled `DECODER@BUNDLE`.
fn shadow_caption(shadow: &Model, decoder: &mut DecoderInstance, image: &RgbImage, seed: u64) -> Compared {
    let start = Instant::now();
    let label = shadow_label(decoder.label(), &shadow.id.name);
    let captioned = shadow.captioner.prepare(image).and_then(|prepared| {
        let caption = shadow.captioner.decode(&prepared, decoder, None, seed)?;
        Ok((prepared, caption))
    });
    match captioned {
        Ok((prepared, caption)) => {
            let clip_score = shadow
                .captioner
                .clip_scores(&prepared, &[caption.caption.as_str()])
                .unwrap_or_else(|e| {
                    tracing::warn!("CLIPScore of the shadow bundle {}: {e}", shadow.id.name);
                    None
                })
                .and_then(|scores| scores.first().copied());
            Compared {
                decoder: label,
                caption: Some(caption.caption),
                error: None,
                ms: caption.ms.decode,
                clip_score,
                bundle: Some(shadow.id.clone()),
            }
        }
        Err(e) => {
            tracing::warn!("shadow bundle {}: {e}", shadow.id.name);
            Compared {
                decoder: label,
                caption: None,
                error: Some(e.to_string()),
                ms: start.elapsed().as_secs_f64() * 1e3,
                clip_score: None,
                bundle: Some(shadow.id.clone()),
            }
        }
    }
}

/// The last captioned scene of a source: its image embedding, and the bundle that made it.
struct Scene {
    bundle: String,
    embedding: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_source_ahead_waits_for_a_busy_one_behind_and_not_for_an_idle_one() {
        let turns = Turns::new(3, Duration::from_secs(30));
        turns.take(0);
        // Source 1 just finished a caption (it has started none here): source 0, one ahead, waits
        // until source 1 starts again. Source 2 never captions: idle, it holds up no one.
        turns.done(1);
        let one_started = AtomicBool::new(false);
        let start = Instant::now();
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| {
                turns.take(0);
                one_started.load(Ordering::SeqCst)
            });
            std::thread::sleep(Duration::from_millis(50));
            one_started.store(true, Ordering::SeqCst);
            turns.take(1);
            assert!(
                waiting.join().unwrap(),
                "source 0 started before source 1, which was behind"
            );
        });
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the wait lasted the whole grace"
        );
    }
}

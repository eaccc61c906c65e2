//! `clipcap serve`: the captioning daemon. Camera (or folder) frames are captioned on their own
//! thread and published over HTTP (JSON, Server-Sent Events, a kiosk page), Prometheus metrics and a
//! JSON-lines log; systemd is told when it is ready, pinged while healthy, and told when it stops.
//!
//! Threads: one capture thread (capture::spawn), one captioning thread (pipeline.rs) that owns the
//! models and decoders, and the tokio runtime for HTTP. Faults are contained where they happen: a
//! missing camera is retried, a failing decoder falls back or fails one caption, a bad upload gets a
//! 4xx; the daemon keeps serving.

mod compare;
mod http;
mod metrics;
mod notify;
mod pipeline;
mod ratelimit;
mod state;

use std::future::IntoFuture;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::capture::{self, FrameSlot, SourceCounters, SourceStatus};
use crate::config::Config;
use clipcap_core::bundle::Bundle;
use clipcap_core::captioner::Captioner;
use clipcap_core::decoding::{DecoderInstance, Plugins};
use clipcap_core::runtime::Runtime;
use metrics::Metrics;
pub use pipeline::Decoders;
use pipeline::Pipeline;
use state::State;
pub use state::{Comparison, Vote};

/// Uploads waiting for the captioning thread before new ones get 503.
const UPLOAD_QUEUE: usize = 8;

/// Everything `serve` needs, loaded and checked: also what `check-config` verifies.
pub struct Loaded {
    pub bundle: Bundle,
    pub plugins: Arc<Plugins>,
    pub decoders: Decoders,
}

/// Opens the bundle and creates every configured decoder, so that a bad bundle, plugin folder or
/// decoder parameter is an error before anything starts.
pub fn load(config: &Config, bundle: &Path) -> anyhow::Result<Loaded> {
    let bundle = Bundle::open(bundle)?;
    let plugins = Arc::new(Plugins::load(&config.plugins.options()));
    let create = |key: &str, name: &str| -> anyhow::Result<DecoderInstance> {
        config
            .create_decoder(&plugins, name)
            .with_context(|| format!("{key} = {name:?}"))
    };
    let fallback = &config.decoding.fallback;
    let decoders = Decoders {
        default: create("decoding.decoder", &config.decoding.decoder)?,
        fallback: (!fallback.is_empty())
            .then(|| create("decoding.fallback", fallback))
            .transpose()?,
        compare: config
            .captioning
            .compare
            .iter()
            .map(|n| create("captioning.compare", n))
            .collect::<anyhow::Result<_>>()?,
    };
    Ok(Loaded {
        bundle,
        plugins,
        decoders,
    })
}

fn caption_log(target: &str) -> anyhow::Result<Option<Box<dyn std::io::Write + Send>>> {
    Ok(match target {
        "" => None,
        "-" => Some(Box::new(std::io::stdout())),
        path => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("caption log {path}"))?,
        )),
    })
}

pub fn run(config: Config, bundle: &Path) -> anyhow::Result<()> {
    // First, before anything slow: a watched folder's "already there" is what was there at start.
    let source = capture::Source::new(&config.source, config.service.max_image_pixels).map_err(anyhow::Error::msg)?;
    let Loaded {
        bundle,
        plugins,
        decoders,
    } = load(&config, bundle)?;
    let runtime = Runtime::init(&config.runtime)?;
    let listener = std::net::TcpListener::bind(&config.service.listen)
        .with_context(|| format!("cannot listen on {}", config.service.listen))?;
    listener.set_nonblocking(true)?;

    let metrics = Metrics::new();
    let counters = SourceCounters {
        frames: metrics.frames_captured.clone(),
        dropped: metrics.frames_dropped.clone(),
        errors: metrics.errors.with_label_values(&["source"]),
        reconnects: metrics.source_reconnects.clone(),
    };
    let source_status = Arc::new(SourceStatus::new(counters));
    let frames = Arc::new(FrameSlot::default());
    let log = caption_log(&config.service.caption_log)?;
    let state = Arc::new(State::new(
        config.service.history,
        log,
        metrics,
        source_status.clone(),
        config.source.kind,
        frames.clone(),
        decoders.default.label(),
    ));
    let stop = Arc::new(AtomicBool::new(false));

    let capture = source.spawn(frames, source_status, stop.clone())?;
    // The API serves (health, readiness "loading the model") while the captioning thread loads the
    // models, which takes minutes on a Jetson building TensorRT engines; READY follows the load.
    let (uploads, queue) = std::sync::mpsc::sync_channel(UPLOAD_QUEUE);
    let (loaded, model) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let (manifest, bundle_dir) = (bundle.manifest.clone(), bundle.dir.display().to_string());
    let captioning = {
        let (cadence, seed, folder_mode) = (
            config.captioning.clone(),
            config.decoding.seed,
            config.source.folder_mode,
        );
        let (state, stop) = (state.clone(), stop.clone());
        std::thread::Builder::new().name("captioning".into()).spawn(move || {
            tracing::info!("loading {}", bundle.dir.display());
            let captioner = match Captioner::load(&bundle, &runtime) {
                Ok(c) => c,
                Err(e) => return drop(loaded.send(Err(e.to_string()))),
            };
            state.model_ready.store(true, Ordering::Relaxed);
            let _ = loaded.send(Ok(()));
            Pipeline {
                captioner,
                decoders,
                config: cadence,
                folder_mode,
                seed,
                state,
                uploads: queue,
                stop,
                compare_count: 0,
                compared_at: Default::default(),
            }
            .run()
        })?
    };

    let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
    let api = http::Api {
        stopping: stopping_rx.clone(),
        state: state.clone(),
        manifest,
        bundle_dir,
        plugins,
        uploads,
        votes: ratelimit::RateLimit::new(config.captioning.votes_per_minute),
        config: config.clone(),
    };
    let bound = Duration::from_millis(config.service.shutdown_timeout_ms);
    let failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tracing::info!("serving on http://{}", config.service.listen);
        let app = http::router(api).into_make_service_with_connect_info::<std::net::SocketAddr>();
        let (listen, state, failure) = (config.service.listen.clone(), state.clone(), failure.clone());
        let started = async move {
            match model.await {
                Ok(Ok(())) => {
                    notify::ready(&format!("serving on {listen}"));
                    if let Some(period) = notify::watchdog_period() {
                        tokio::spawn(watchdog(state, period));
                    }
                    std::future::pending().await
                }
                Ok(Err(e)) => *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e),
                Err(_) => *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some("captioning thread ended".into()),
            }
        };
        let signalled = async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = started => {}
            }
            notify::stopping();
            let _ = stopping.send(true);
        };
        let server = axum::serve(listener, app).with_graceful_shutdown(signalled).into_future();
        // Requests in progress get the shutdown bound to finish; then their connections are dropped.
        let mut stopped = stopping_rx;
        tokio::select! {
            served = server => served,
            _ = async {
                let _ = stopped.wait_for(|s| *s).await;
                tokio::time::sleep(bound).await;
            } => {
                tracing::warn!("HTTP requests still open {} ms after the stop signal; dropping them", bound.as_millis());
                Ok(())
            }
        }
    });

    // Stop: no new work, finish (or abandon, past the bound) the caption in flight, flush the log.
    stop.store(true, Ordering::Relaxed);
    let deadline = std::time::Instant::now() + bound;
    while !captioning.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !captioning.is_finished() {
        tracing::warn!(
            "the caption in flight did not finish within {} ms; leaving it",
            bound.as_millis()
        );
    }
    if let Some(capture) = capture
        && !capture.is_finished()
    {
        std::thread::sleep(Duration::from_millis(100)); // it polls `stop` at least every 50 ms
    }
    state.flush_log();
    rt.shutdown_timeout(Duration::from_millis(200));
    served.context("HTTP server")?;
    if let Some(error) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        anyhow::bail!("cannot load the models: {error}");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Pings systemd's watchdog at half its period while the captioning thread keeps looping; a hung
/// pipeline stops the pings and systemd restarts the service.
async fn watchdog(state: Arc<State>, period: Duration) {
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tick.tick().await;
        if state.pipeline_alive(period / 2) {
            notify::watchdog();
        } else {
            tracing::error!(
                "captioning thread has not looped for {:?}; withholding the watchdog ping",
                period / 2
            );
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
}

//! `clipcap serve`: the captioning daemon. Camera (or folder) frames are captioned on their own
//! thread and published over HTTP (JSON, Server-Sent Events, a kiosk page), Prometheus metrics and a
//! JSON-lines log; systemd is told when it is ready, pinged while healthy, and told when it stops.
//!
//! Threads: each source's (`source::Kind::start`), the captioning threads (pipeline.rs: one per
//! source and the upload threads, sharing the models, each with its own decoders), and the tokio
//! runtime for HTTP. Faults are contained where they happen: a
//! missing camera is retried, a failing decoder falls back or fails one caption, a bad upload gets a
//! 4xx; the daemon keeps serving.

mod access;
mod admission;
mod caption_log;
mod compare;
mod http;
mod keep;
mod live;
mod metrics;
mod notify;
mod pipeline;
mod ratelimit;
mod server;
mod state;
mod uploads;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::Config;
use crate::decoders::{DecoderFactory, Decoders};
use crate::publish::{self, Outbox};
use crate::records::shadow_label;
use crate::shutdown::{Shutdown, Worker};
use crate::source::{self, FrameSlot, Kind, SourceStatus};
use clipcap_core::bundle::Bundle;
use clipcap_core::decoding::{PluginOptions, Plugins};
use clipcap_core::runtime::Runtime;
use metrics::Metrics;
pub use metrics::{ConnectionRefusal, ErrorKind, SkipReason};
use server::{Server, Stop};
use state::{Sinks, State};

/// Uploads waiting for the captioning thread before new ones get 503.
const UPLOAD_QUEUE: usize = 8;

/// Everything `serve` needs, loaded and checked: also what `check-config` verifies.
pub struct Loaded {
    pub bundle: Bundle,
    /// captioning.shadow_bundle, opened (and verified like the bundle).
    pub shadow: Option<Bundle>,
    pub decoders: Decoders,
    pub factory: DecoderFactory,
}

/// Opens the bundle, loads the plugins with `plugins` (config.plugin_options(), but for the fuzz
/// harness) and creates every configured decoder, so that a bad bundle, plugin folder or decoder
/// parameter is an error before anything starts.
pub fn load(config: &Config, bundle: &Path, plugins: &PluginOptions) -> anyhow::Result<Loaded> {
    let bundle = config.security.open_bundle(bundle)?;
    let shadow = &config.captioning.shadow_bundle;
    let shadow = (!shadow.as_os_str().is_empty())
        .then(|| config.security.open_bundle(shadow).context("captioning.shadow_bundle"))
        .transpose()?;
    let factory = DecoderFactory::new(config, Arc::new(Plugins::load(plugins)));
    let decoders = Decoders::create(&factory, config, true)?;
    Ok(Loaded {
        bundle,
        shadow,
        decoders,
        factory,
    })
}

/// A source opened at start (`source::open`), not started yet.
struct Opened {
    name: String,
    kind: Arc<dyn Kind>,
    label: source::SourceLabel,
}

/// Opens every configured source, before anything slow: a watched folder's "already there" is what
/// was there at start.
fn open_sources(config: &Config) -> anyhow::Result<Vec<Opened>> {
    config
        .sources()
        .into_iter()
        .map(|s| {
            let kind: Arc<dyn Kind> = source::open(&s, config.service.decode_budget())
                .with_context(|| format!("source {}", s.name))?
                .into();
            let label = s.kind.label().expect("Config::sources has no `none`");
            Ok(Opened {
                name: s.name,
                kind,
                label,
            })
        })
        .collect()
}

/// The daemon's parts wired together, before anything runs: the shared state, the API, the captioning
/// threads' set-up (with each source's frame slot and status), and the MQTT outbox when publishing.
struct Parts {
    state: Arc<State>,
    live: Arc<live::Live>,
    metrics: Arc<Metrics>,
    api: http::Api,
    setup: pipeline::Setup,
    outbox: Option<Arc<Outbox>>,
}

fn assemble(config: &Config, loaded: Loaded, opened: Vec<Opened>, shutdown: &Shutdown) -> anyhow::Result<Parts> {
    let Loaded {
        bundle,
        shadow,
        decoders,
        factory,
    } = loaded;
    let mut labels = decoders.labels();
    if let Some(shadow) = &shadow {
        labels.push(shadow_label(decoders.default.label(), &shadow.name()));
    }
    let metrics = Arc::new(Metrics::new(labels));
    let live = Arc::new(live::Live::default());
    let access = Arc::new(access::Access::new(&config.service, metrics.clone())?);
    let sources: Vec<state::Source> = opened
        .into_iter()
        .map(|o| state::Source {
            frames: Arc::new(FrameSlot::default()),
            status: Arc::new(SourceStatus::new(metrics.source_counters(&o.name))),
            name: o.name,
            kind: o.kind,
            label: o.label,
        })
        .collect();
    // One set of decoders for each captioning thread: each source's, then each upload thread's
    // (without the compared ones, which only sources use; isolated, each is a process).
    let threads = sources.len() + config.captioning.upload_concurrency;
    let mut all = vec![decoders];
    for thread in 1..threads {
        all.push(Decoders::create(&factory, config, thread < sources.len())?);
    }
    let primary = all[0].default.label().to_string();
    let outbox = if config.publish.url.is_empty() {
        None
    } else {
        Some(Outbox::open(&config.publish, metrics.publish_counters())?)
    };
    let state = Arc::new(State::new(
        config.service.history,
        Sinks {
            log: caption_log::CaptionLog::open(&config.service.caption_log)?,
            outbox: outbox.clone(),
        },
        metrics.clone(),
        sources,
        &primary,
    ));

    let (uploads, queue) = uploads::uploads(UPLOAD_QUEUE, config.service.uploads_in_flight);
    let api = http::Api {
        state: state.clone(),
        metrics: metrics.clone(),
        service: config.service.clone(),
        captioning: config.captioning.clone(),
        decoding: config.decoding.clone(),
        decoders: factory,
        live: live.clone(),
        uploads,
        votes: ratelimit::RateLimit::new(config.captioning.votes_per_minute),
        voter_key: std::hash::RandomState::new(),
        upload_limit: (config.service.uploads_per_minute > 0)
            .then(|| ratelimit::RateLimit::new(config.service.uploads_per_minute)),
        access,
        shutdown: shutdown.clone(),
        decodes: tokio::sync::Semaphore::new(http::MAX_DECODES),
    };
    let kept = &config.captioning.keep_compared_frames;
    let keeper = (!kept.as_os_str().is_empty())
        .then(|| keep::Keeper::open(kept, config.captioning.keep_compared_frames_mb))
        .transpose()?;
    let setup = pipeline::Setup {
        bundle,
        live: live.clone(),
        shadow,
        keeper,
        decoders: all,
        config: config.captioning.clone(),
        seed: config.decoding.seed,
        state: state.clone(),
        metrics: metrics.clone(),
        uploads: queue,
        shutdown: shutdown.clone(),
    };
    Ok(Parts {
        state,
        live,
        metrics,
        api,
        setup,
        outbox,
    })
}

/// The API and the captioning threads without a listener or running sources (the configured
/// sources are opened for their rules, never started): requests go to `router` in the process, with
/// a `ConnectInfo<SocketAddr>` extension standing for the peer, and frames put in `frames` are
/// captioned as the first source's. The fuzz harnesses of the HTTP path
/// (fuzz/src/lib.rs) and tests/camera_frames.rs drive the daemon this way.
pub struct Offline {
    pub router: axum::Router,
    /// The first source's frame slot (a slot no thread reads, without sources): a frame put here is
    /// captioned as that source's would be.
    pub frames: Arc<FrameSlot>,
    shutdown: Shutdown,
    captioning: Option<Worker>,
}

impl Offline {
    /// Loads as `serve` does (with `plugins` for config.plugin_options(): the process is not
    /// clipcap, so its isolated decoders need clipcap's path) and returns once the models are loaded.
    pub fn start(config: &Config, bundle: &Path, plugins: &PluginOptions) -> anyhow::Result<Offline> {
        let loaded = load(config, bundle, plugins)?;
        let runtime = Runtime::init(&config.runtime)?;
        let shutdown = Shutdown::new();
        // The configured kinds' rules (readiness, every frame or not), but never started: the frames
        // come from the caller.
        let parts = assemble(config, loaded, open_sources(config)?, &shutdown)?;
        let frames = parts
            .state
            .sources()
            .first()
            .map_or_else(Arc::default, |s| s.frames.clone());
        let (captioning, model) = pipeline::spawn(runtime, parts.setup)?;
        let offline = Offline {
            router: http::router(parts.api),
            frames,
            shutdown,
            captioning: Some(captioning),
        };
        model
            .blocking_recv()
            .context("the captioning thread ended before loading the models")?
            .context("cannot load the models")?;
        Ok(offline)
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(captioning) = self.captioning.take() {
            captioning.join_by(Instant::now() + Duration::from_secs(5));
        }
    }
}

/// The status and comparison messages of the MQTT publisher.
fn status_messages(config: &Config, state: &Arc<State>, bundle: &str) -> anyhow::Result<publish::Messages> {
    let device = config.publish.device()?;
    let run = state.run();
    let status = |online: bool| {
        let mut status = serde_json::json!({
            "state": if online { "online" } else { "offline" },
            "device": device,
            "run": run,
        });
        if online {
            status["version"] = env!("CARGO_PKG_VERSION").into();
            status["bundle"] = bundle.into();
            status["decoder"] = config.decoding.decoder.clone().into();
            status["compare"] = config.captioning.compare.clone().into();
        }
        status.to_string()
    };
    let (online, offline) = (status(true), status(false));
    let stats = state.clone();
    Ok(publish::Messages {
        online,
        offline,
        compare: Box::new(move || serde_json::json!({"run": run, "decoders": stats.compare_snapshot()}).to_string()),
        compare_every: Duration::from_secs(config.publish.compare_interval_s),
    })
}

/// The ROS 2 node, when the source is a ROS 2 topic or `ros2.enabled` asks to publish captions.
#[cfg(feature = "ros2")]
fn ros2_node(config: &Config, parts: &Parts, shutdown: &Shutdown) -> anyhow::Result<Option<Worker>> {
    let sources = parts.state.sources();
    // At most one source is a ROS 2 topic (source::validate_all).
    let topic = sources.iter().find(|s| s.label == source::SourceLabel::Ros2);
    if topic.is_none() && !config.ros2.enabled {
        return Ok(None);
    }
    let feed = topic.map(|s| crate::ros2::Feed {
        slot: s.frames.clone(),
        status: s.status.clone(),
        budget: config.service.decode_budget(),
    });
    let captions = parts.state.subscribe();
    let counters = parts.metrics.ros2_counters();
    let names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
    let node = crate::ros2::spawn(&config.ros2, feed, &names, captions, counters, shutdown.clone())?;
    Ok(Some(node))
}

/// The daemon: its parts, started in order, then stopped in reverse once the shutdown is set. `file`
/// is the configuration file it was read from and `flag` `serve --bundle`: a reload reads them again.
pub fn run(config: Config, file: Option<&Path>, flag: Option<PathBuf>) -> anyhow::Result<()> {
    let bundle = config.bundle_dir(flag.clone())?;
    // First, before anything slow: a watched folder's "already there" is what was there at start.
    let opened = open_sources(&config)?;
    let loaded = load(&config, &bundle, &config.plugin_options())?;
    let runtime = Runtime::init(&config.runtime)?;
    // The reload's self-test decoder, made now: a decoder that cannot be made is an error at start.
    let probe = loaded
        .factory
        .create(&config.decoding.decoder)
        .with_context(|| format!("decoding.decoder = {:?}", config.decoding.decoder))?;
    let tls = (!config.service.tls_cert.as_os_str().is_empty()).then(|| server::Tls {
        cert: config.service.tls_cert.clone(),
        key: config.service.tls_key.clone(),
    });
    let server = Server::bind(&config.service.listen, tls)?;
    let shutdown = Shutdown::new();

    let bundle_dir = loaded.bundle.dir.display().to_string();
    let parts = assemble(&config, loaded, opened, &shutdown)?;
    let mut captures = Vec::new();
    for s in parts.state.sources() {
        let started = s
            .kind
            .start(s.frames.clone(), s.status.clone(), shutdown.clone())
            .with_context(|| format!("source {}", s.name))?;
        captures.extend(started);
    }
    let publisher = match &parts.outbox {
        Some(outbox) => {
            let messages = status_messages(&config, &parts.state, &bundle_dir)?;
            Some(publish::spawn(
                &config.publish,
                outbox.clone(),
                messages,
                shutdown.clone(),
            )?)
        }
        None => None,
    };
    #[cfg(feature = "ros2")]
    let ros2 = ros2_node(&config, &parts, &shutdown)?;
    let (requests, reloads) = std::sync::mpsc::sync_channel(1);
    let reloader = live::Reloader {
        file: file.map(Path::to_path_buf),
        flag,
        security: config.security.clone(),
        runtime: runtime.clone(),
        batching: config.captioning.batching(),
        decoder: probe,
        seed: config.decoding.seed,
        live: parts.live.clone(),
        metrics: parts.metrics.clone(),
    }
    .spawn(reloads, shutdown.clone())?;
    let Parts { api, setup, .. } = parts;
    let (captioning, model) = pipeline::spawn(runtime, setup)?;

    let bound = Duration::from_millis(config.service.shutdown_timeout_ms);
    let served = server.serve(api, model, requests, &shutdown, bound);
    // Stopping: no new work; the caption in flight and accepted uploads finish within the bound.
    shutdown.trigger();
    let deadline = Instant::now() + bound;
    captioning.join_by(deadline);
    reloader.join_by(deadline);
    for capture in captures {
        capture.join_by(deadline);
    }
    #[cfg(feature = "ros2")]
    if let Some(ros2) = ros2 {
        ros2.join_by(deadline);
    }
    // Last, so that the records of the captions finished above are spooled; they are sent now if the
    // broker is there, or at the next start.
    if let Some(publisher) = publisher {
        publisher.join_by(Instant::now() + Duration::from_secs(2));
    }
    match served? {
        Stop::Signal => {
            tracing::info!("stopped");
            Ok(())
        }
        Stop::LoadFailed(e) => Err(anyhow::Error::new(e).context("cannot load the models")),
        Stop::CaptioningGone => anyhow::bail!("the captioning thread ended before loading the models"),
    }
}

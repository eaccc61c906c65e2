//! The live bundle: the model every caption uses, and its replacement while the daemon runs.
//!
//! SIGHUP (systemd's `reload`) reads the configuration file again. A changed `service.bundle` (or
//! the same folder with another manifest) is opened and, with `security.require_signed`, verified;
//! loaded beside the live model; proven by a self-test caption with `decoding.decoder`; and swapped
//! in. A caption takes the live model when it starts and keeps it to its end, so no caption fails or
//! is skipped during a swap, and the old model is freed when its last caption ends. A refusal leaves
//! the live bundle serving; it is logged, counted (`clipcap_reloads_total{result}`) and shown by
//! `GET /v1/bundle` until the next reload.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::metrics::{Metrics, Reloaded};
use crate::config::{Config, SecurityConfig};
use crate::records::BundleId;
use crate::shutdown::{Shutdown, Worker};
use clipcap_core::Batching;
use clipcap_core::bundle::Bundle;
use clipcap_core::captioner::Captioner;
use clipcap_core::decoding::DecoderInstance;
use clipcap_core::runtime::Runtime;

/// A loaded bundle and its captioner.
pub struct Model {
    pub bundle: Bundle,
    pub captioner: Captioner,
    /// What each caption record of this model carries.
    pub id: BundleId,
    /// When it went live, RFC 3339.
    pub since: String,
}

impl Model {
    pub fn new(bundle: Bundle, captioner: Captioner) -> Model {
        Model {
            id: BundleId {
                name: bundle.name(),
                sha256: bundle.manifest_sha256.clone(),
            },
            bundle,
            captioner,
            since: now(),
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The last reload that did not swap in its bundle, and why.
#[derive(Debug, Clone, Serialize)]
struct Refusal {
    path: String,
    reason: String,
    time: String,
}

/// The live model (none until the first load), and the last refused reload.
#[derive(Default)]
pub struct Live {
    model: RwLock<Option<Arc<Model>>>,
    refused: Mutex<Option<Refusal>>,
}

impl Live {
    /// The model a caption starting now uses; `None` only before the first load.
    pub fn current(&self) -> Option<Arc<Model>> {
        self.model.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Makes `model` live, and returns the model it replaces: captions in progress keep the one
    /// they started with.
    pub fn set(&self, model: Model) -> Option<Arc<Model>> {
        self.model
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(Arc::new(model))
    }

    fn refuse(&self, path: &Path, reason: String) {
        *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = Some(Refusal {
            path: path.display().to_string(),
            reason,
            time: now(),
        });
    }

    /// `GET /v1/bundle`: the live bundle (its folder, name, manifest SHA-256, signer, since when, and
    /// manifest) and the last refused reload.
    pub fn describe(&self) -> serde_json::Value {
        let refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut out = match self.current() {
            Some(m) => serde_json::json!({
                "path": m.bundle.dir.display().to_string(),
                "name": m.id.name,
                "sha256": m.id.sha256,
                "signed_by": m.bundle.signed_by,
                "since": m.since,
                "manifest": m.bundle.manifest,
            }),
            None => serde_json::json!({"loading": true}),
        };
        out["last_refused"] = serde_json::to_value(refused).unwrap_or_default();
        out
    }
}

/// Where a reload finds its bundle, and what it loads it with.
pub struct Reloader {
    /// The configuration file `serve` read (`--config`), read again at each reload.
    pub file: Option<PathBuf>,
    /// `serve --bundle`, which overrides service.bundle at each reload too.
    pub flag: Option<PathBuf>,
    /// The security settings at start: a reload cannot relax them.
    pub security: SecurityConfig,
    pub runtime: Runtime,
    pub batching: Batching,
    /// decoding.decoder, for the self-test caption.
    pub decoder: DecoderInstance,
    pub seed: u64,
    pub live: Arc<Live>,
    pub metrics: Arc<Metrics>,
}

/// How long the reload thread waits at most before looking at the shutdown again.
const TICK: Duration = Duration::from_millis(200);

impl Reloader {
    /// Reloads once for each request on `requests` (SIGHUP) until the shutdown.
    pub fn spawn(mut self, requests: Receiver<()>, shutdown: Shutdown) -> std::io::Result<Worker> {
        Worker::spawn("reload", move || {
            while !shutdown.is_set() {
                match requests.recv_timeout(TICK) {
                    Ok(()) => {
                        let done = self.reload();
                        self.metrics.reloaded(done);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
    }

    fn reload(&mut self) -> Reloaded {
        let configured = Config::load(self.file.as_deref()).map_err(anyhow::Error::from);
        let dir = match configured.and_then(|c| c.bundle_dir(self.flag.clone())) {
            Ok(dir) => dir,
            Err(e) => {
                let path = self.file.clone().unwrap_or_default();
                tracing::error!("reload refused: {e:#}; the live bundle keeps serving");
                self.live.refuse(&path, format!("{e:#}"));
                return Reloaded::Refused;
            }
        };
        match self.load(&dir) {
            Ok(None) => {
                tracing::info!("reload: {} is the live bundle already", dir.display());
                Reloaded::Unchanged
            }
            Ok(Some(model)) => {
                tracing::info!(
                    "reload: {} ({}, manifest SHA-256 {}) is live",
                    dir.display(),
                    model.id.name,
                    model.id.sha256
                );
                if let Some(old) = self.live.set(model) {
                    release(old);
                }
                Reloaded::Swapped
            }
            Err(e) => {
                tracing::error!(
                    "reload: {} refused: {e:#}; the live bundle keeps serving",
                    dir.display()
                );
                self.live.refuse(&dir, format!("{e:#}"));
                Reloaded::Refused
            }
        }
    }

    /// The bundle in `dir`, loaded and proven by a self-test caption; `None` when it is the live one.
    fn load(&mut self, dir: &Path) -> anyhow::Result<Option<Model>> {
        let bundle = self.security.open_bundle(dir)?;
        if let Some(live) = self.live.current()
            && live.bundle.manifest_sha256 == bundle.manifest_sha256
            && same_folder(&live.bundle.dir, &bundle.dir)
        {
            return Ok(None);
        }
        let captioner = Captioner::load(&bundle, &self.runtime, self.batching.clone())?;
        let prepared = captioner.prepare(&test_image())?;
        let caption = captioner
            .decode(&prepared, &mut self.decoder, None, self.seed)
            .map_err(|e| anyhow::anyhow!("the self-test caption failed: {e}"))?;
        anyhow::ensure!(!caption.caption.trim().is_empty(), "the self-test caption is empty");
        tracing::info!("reload: self-test caption of {}: {:?}", dir.display(), caption.caption);
        Ok(Some(Model::new(bundle, captioner)))
    }
}

/// Frees a replaced model once the captions that started with it have ended, and gives the memory
/// back to the system: ONNX Runtime's weights are many allocations of a few MB, which glibc keeps in
/// its heap after they are freed unless asked to trim it (measured: without the trim, the daemon's
/// RSS after a swap of the full-size bundle stayed at both bundles' size).
fn release(old: Arc<Model>) {
    let name = old.id.name.clone();
    while Arc::strong_count(&old) > 1 {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(old);
    // SAFETY: malloc_trim only returns free memory of the heap to the system; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
    tracing::info!("reload: the memory of {name} is freed");
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The self-test's image: a colour gradient, the same every time.
fn test_image() -> image::RgbImage {
    image::RgbImage::from_fn(256, 256, |x, y| image::Rgb([x as u8, y as u8, ((x + y) / 2) as u8]))
}

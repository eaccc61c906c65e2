//! The ONNX Runtime environment: loading the library, choosing execution providers, making sessions.
//!
//! ONNX Runtime is loaded at run time (`ort`'s `load-dynamic`) and the API version requested is the
//! oldest that serves (api-17: ONNX Runtime 1.17 or newer; tested with 1.19.2, tests/cli.rs, and the
//! pinned 1.23.2, [`PINNED_WHEEL`]), so the same binary runs on the runtime builds that
//! Jetson images ship as well as on the pinned wheel used here. Execution providers are tried in the
//! configured order; one that this build of ONNX Runtime lacks, or that fails to start (no GPU, missing
//! CUDA libraries), is skipped with a warning, and CPU is always the last resort.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::session::builder::SessionBuilder;
use serde::Deserialize;

/// The library file name the system loader is asked for when nothing else is configured.
pub const DEFAULT_LIBRARY: &str = "libonnxruntime.so";
/// The wheel whose `libonnxruntime.so` this project is tested with.
pub const PINNED_WHEEL: &str = "onnxruntime==1.23.2";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "cannot load ONNX Runtime from {path}: {source}\n\
         Install it with `pip install {PINNED_WHEEL}` (scripts/setup.sh does) and point \
         runtime.onnxruntime_library in the config, or ORT_DYLIB_PATH, at \
         <site-packages>/onnxruntime/capi/libonnxruntime.so.<version>"
    )]
    Library {
        path: PathBuf,
        source: ort::LoadDynamicError,
    },
    #[error("ONNX Runtime: {0}")]
    Ort(#[from] ort::Error),
    #[error("{path}: cannot load the ONNX graph: {source}")]
    Model { path: PathBuf, source: ort::Error },
    /// A graph returned something other than its checked signature promised.
    #[error("output `{tensor}` has shape {shape:?}; expected {expected}")]
    Output {
        tensor: String,
        shape: Vec<i64>,
        expected: String,
    },
    #[error("output `{0}` is missing")]
    MissingOutput(String),
}

impl From<ort::Error<SessionBuilder>> for RuntimeError {
    fn from(e: ort::Error<SessionBuilder>) -> Self {
        RuntimeError::Ort(e.into())
    }
}

/// An execution provider, by its configuration name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Tensorrt,
    Cuda,
    Cpu,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Tensorrt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        }
    }
}

/// How ONNX Runtime is found and sessions are made (the daemon's `[runtime]` table).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeOptions {
    /// Path of `libonnxruntime.so`; empty means `ORT_DYLIB_PATH`, then the executable's folder, then the
    /// system's library search path.
    pub onnxruntime_library: PathBuf,
    /// Execution providers in order of preference; unavailable ones are skipped with a warning.
    pub providers: Vec<Provider>,
    /// Threads inside one operator; 0 lets ONNX Runtime choose (one per core).
    pub intra_threads: usize,
    /// Threads across independent operators; 1 runs the graph sequentially.
    pub inter_threads: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            onnxruntime_library: PathBuf::new(),
            providers: vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu],
            intra_threads: 0,
            inter_threads: 1,
        }
    }
}

pub struct Runtime {
    env: Environment,
    /// The configured providers that this ONNX Runtime build has, in order; CPU is implied last.
    providers: Vec<Provider>,
    options: RuntimeOptions,
}

impl Runtime {
    /// Loads ONNX Runtime on first use; later calls share the process's one environment (ONNX Runtime
    /// allows one per process) and only apply their own session settings.
    pub fn init(options: &RuntimeOptions) -> Result<Runtime, RuntimeError> {
        static ENV: Mutex<Option<Environment>> = Mutex::new(None);
        let path = library_path(options);
        let env = {
            let mut env = ENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match &*env {
                Some(e) => e.clone(),
                None => {
                    let builder = ort::init_from(&path).map_err(|source| RuntimeError::Library {
                        path: path.clone(),
                        source,
                    })?;
                    env.insert(builder.with_name("clipcap").build()?).clone()
                }
            }
        };
        let (mut providers, mut missing) = (Vec::new(), Vec::new());
        for &p in &options.providers {
            let available = match p {
                Provider::Tensorrt => ep::TensorRT::is_available()?,
                Provider::Cuda => ep::CUDA::is_available()?,
                Provider::Cpu => true,
            };
            if available {
                providers.push(p);
            } else {
                missing.push(p.name());
            }
        }
        if !missing.is_empty() {
            tracing::warn!(
                "execution providers {} are not in this ONNX Runtime build ({}); using {}",
                missing.join(", "),
                path.display(),
                providers.first().map_or("cpu", |p| p.name())
            );
        }
        Ok(Runtime {
            env,
            providers,
            options: options.clone(),
        })
    }

    pub fn session(&self, path: &Path) -> Result<Session, RuntimeError> {
        let mut builder = Session::builder(&self.env)?
            .with_intra_threads(self.options.intra_threads)?
            .with_inter_threads(self.options.inter_threads)?;
        for &p in &self.providers {
            match register(p, &mut builder) {
                Ok(()) => {
                    tracing::debug!(model = %path.display(), provider = p.name(), "execution provider registered");
                    break;
                }
                Err(e) => {
                    tracing::warn!(model = %path.display(), provider = p.name(), error = %e, "execution provider failed; falling back")
                }
            }
        }
        builder.commit_from_file(path).map_err(|e| RuntimeError::Model {
            path: path.to_path_buf(),
            source: e,
        })
    }
}

fn register(p: Provider, builder: &mut SessionBuilder) -> ort::Result<()> {
    match p {
        Provider::Tensorrt => ep::TensorRT::default().register(builder),
        Provider::Cuda => ep::CUDA::default().register(builder),
        Provider::Cpu => Ok(()), // always there; needs no registration
    }
}

/// Configured path, else `ORT_DYLIB_PATH`, else the bare library name (which `ort` looks up next to the
/// executable first, then through the system loader).
fn library_path(options: &RuntimeOptions) -> PathBuf {
    if !options.onnxruntime_library.as_os_str().is_empty() {
        return options.onnxruntime_library.clone();
    }
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_LIBRARY),
    }
}

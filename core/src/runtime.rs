//! The ONNX Runtime environment: loading the library, choosing execution providers, making sessions.
//!
//! ONNX Runtime is loaded at run time (`ort`'s `load-dynamic`) and the API version requested is the
//! oldest that serves (api-17: ONNX Runtime 1.17 or newer; tested with 1.19.2, tests/cli.rs, and the
//! pinned 1.23.2, [`PINNED_WHEEL`]), so the same binary runs on the runtime builds that
//! Jetson images ship as well as on the pinned wheel used here. Execution providers are registered in
//! the configured order (by default the best this build has: TensorRT, CUDA, CPU), and each node runs
//! on the first that takes it; one that this build of ONNX Runtime lacks is skipped (noted at info
//! level when the default list names it, a warning when the configuration does), one that fails to
//! start (no GPU, missing CUDA libraries) with a warning, and CPU is always the last resort. The GPU
//! providers' options are built in `providers`.

mod providers;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use ort::environment::Environment;
use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider, ExecutionProvider};
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::session::builder::SessionBuilder;
use serde::Deserialize;

use crate::bundle::TensorSpec;

pub use providers::Arena;

/// The providers tried when none are configured, best first.
pub const AUTOMATIC: [Provider; 3] = [Provider::Tensorrt, Provider::Cuda, Provider::Cpu];

/// The library file name the system loader is asked for when nothing else is configured.
pub const DEFAULT_LIBRARY: &str = "libonnxruntime.so";
/// The wheel whose `libonnxruntime.so` this project is tested with.
pub const PINNED_WHEEL: &str = "onnxruntime==1.23.2";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "cannot load ONNX Runtime from {path}: {source}\n\
         Install it with `pip install {PINNED_WHEEL}` (scripts/setup.sh takes it from that wheel) and point \
         runtime.onnxruntime_library in the config, or ORT_DYLIB_PATH, at \
         <site-packages>/onnxruntime/capi/libonnxruntime.so.<version>"
    )]
    Library {
        path: PathBuf,
        source: ort::LoadDynamicError,
    },
    #[error("ONNX Runtime at {path}: cannot read its version (OrtGetApiBase)")]
    Version { path: PathBuf },
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
    /// Execution providers in order of preference; empty: [`AUTOMATIC`], those this build has.
    pub providers: Vec<Provider>,
    /// Threads inside one operator; 0 lets ONNX Runtime choose (one per core).
    pub intra_threads: usize,
    /// Threads across independent operators; 1 runs the graph sequentially.
    pub inter_threads: usize,
    /// Create a bundle's image encoder, mapper and language model sessions at once: a sooner first
    /// caption for a higher peak of memory while they load (BENCHMARKS.md, "What we tried").
    pub parallel_sessions: bool,
    /// CUDA device index, for CUDA and TensorRT.
    pub gpu_device: u32,
    /// CUDA's memory arena limit in MiB; 0: no limit.
    pub gpu_memory_limit_mb: u64,
    pub cuda_arena: Arena,
    /// Let TensorRT run layers in fp16 where it chooses.
    pub tensorrt_fp16: bool,
    /// Folder for TensorRT's engines and timing cache; empty: engines are rebuilt at every start.
    pub tensorrt_cache: PathBuf,
    /// The largest batch TensorRT's engines accept (beam search runs one row per beam).
    pub tensorrt_max_batch: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            onnxruntime_library: PathBuf::new(),
            providers: Vec::new(),
            intra_threads: 0,
            inter_threads: 1,
            parallel_sessions: false,
            gpu_device: 0,
            gpu_memory_limit_mb: 0,
            cuda_arena: Arena::NextPowerOfTwo,
            tensorrt_fp16: true,
            tensorrt_cache: PathBuf::new(),
            tensorrt_max_batch: 8,
        }
    }
}

#[derive(Clone)]
pub struct Runtime {
    env: Environment,
    /// The loaded library's version, as it reports it ("1.23.2").
    version: String,
    /// The configured providers that this ONNX Runtime build has, in order; CPU is implied last.
    providers: Vec<Provider>,
    options: RuntimeOptions,
}

impl Runtime {
    /// Loads ONNX Runtime on first use; later calls share the process's one environment (ONNX Runtime
    /// allows one per process) and only apply their own session settings.
    pub fn init(options: &RuntimeOptions) -> Result<Runtime, RuntimeError> {
        // The environment and the version of the library it was loaded from: later calls may name
        // another library, but the process keeps the first.
        static ENV: Mutex<Option<(Environment, String)>> = Mutex::new(None);
        let path = library_path(options);
        let (env, version) = {
            let mut env = ENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match &*env {
                Some(loaded) => loaded.clone(),
                None => {
                    let builder = ort::init_from(&path).map_err(|source| RuntimeError::Library {
                        path: path.clone(),
                        source,
                    })?;
                    let built = builder.with_name("clipcap").build()?;
                    let version = library_version(&path).ok_or_else(|| RuntimeError::Version { path: path.clone() })?;
                    env.insert((built, version)).clone()
                }
            }
        };
        let explicit = !options.providers.is_empty();
        let wanted = if explicit {
            &options.providers[..]
        } else {
            &AUTOMATIC[..]
        };
        let (providers, missing) = usable(wanted, |p| match p {
            Provider::Tensorrt => ep::TensorRT::is_available(),
            Provider::Cuda => ep::CUDA::is_available(),
            Provider::Cpu => Ok(true),
        })?;
        // Said once a process: every later `init` finds the same library. A GPU provider missing from
        // a CPU build is the expected path unless the configuration asked for it.
        static REPORTED: Once = Once::new();
        if !missing.is_empty() {
            REPORTED.call_once(|| {
                let (missing, library) = (missing.join(" or "), path.display());
                let using = providers.first().map_or("cpu", |p| p.name());
                if explicit {
                    tracing::warn!(
                        "execution provider {missing} is not in this ONNX Runtime build ({library}); using {using}"
                    );
                } else {
                    tracing::info!("this ONNX Runtime build ({library}) has no {missing} provider; using {using}");
                }
            });
        }
        Ok(Runtime {
            env,
            version,
            providers,
            options: options.clone(),
        })
    }

    /// Whether a bundle's sessions are created at once (`parallel_sessions`).
    pub fn parallel_sessions(&self) -> bool {
        self.options.parallel_sessions
    }

    /// The loaded ONNX Runtime's version ("1.23.2").
    pub fn version(&self) -> &str {
        &self.version
    }

    /// A session for the graph at `path`, whose `inputs` (as the loader checks them) give TensorRT the
    /// range of their shapes, and the provider that leads it (the first that started; CPU if none did).
    pub fn session(&self, path: &Path, inputs: &[TensorSpec]) -> Result<(Session, Provider), RuntimeError> {
        let mut builder = Session::builder(&self.env)?
            .with_intra_threads(self.options.intra_threads)?
            .with_inter_threads(self.options.inter_threads)?;
        // Every provider that starts is registered, in order: ONNX Runtime gives each node to the first
        // that takes it, so what TensorRT cannot build runs on CUDA rather than on the CPU.
        let mut first = None;
        for &p in &self.providers {
            match self.register(p, inputs, &mut builder) {
                Ok(()) => {
                    tracing::debug!(model = %path.display(), provider = p.name(), "execution provider registered");
                    first.get_or_insert(p);
                }
                Err(e) => {
                    tracing::warn!(model = %path.display(), provider = p.name(), error = %e, "execution provider failed; falling back")
                }
            }
        }
        let building = first == Some(Provider::Tensorrt);
        let cache = &self.options.tensorrt_cache;
        let cached = if building {
            tracing::info!(model = %path.display(), cache = %cache.display(),
                "TensorRT: loading or building engines (a build takes minutes; with tensorrt_cache set, only the first start builds)");
            files_in(cache)
        } else {
            0
        };
        let session = std::thread::scope(|s| {
            let (done, wait) = mpsc::channel::<()>();
            if building {
                s.spawn(move || progress(path, wait));
            }
            let session = builder.commit_from_file(path);
            drop(done);
            session
        })
        .map_err(|e| RuntimeError::Model {
            path: path.to_path_buf(),
            source: e,
        })?;
        if building {
            match files_in(cache).saturating_sub(cached) {
                0 => tracing::info!(model = %path.display(), "TensorRT: engines ready (nothing new cached)"),
                n => {
                    tracing::info!(model = %path.display(), cache = %cache.display(), "TensorRT: engines ready, {n} new file(s) cached")
                }
            }
        }
        Ok((session, first.unwrap_or(Provider::Cpu)))
    }

    /// Where outputs kept between runs should live for a session led by `provider`: the GPU's memory
    /// for CUDA and TensorRT (both allocate through CUDA), the host's for the CPU.
    pub fn device_memory(&self, provider: Provider) -> Result<MemoryInfo<'static>, RuntimeError> {
        let (device, id) = placement(provider, self.options.gpu_device);
        Ok(MemoryInfo::new(device, id, AllocatorType::Device, MemoryType::Default)?)
    }

    fn register(&self, p: Provider, inputs: &[TensorSpec], builder: &mut SessionBuilder) -> ort::Result<()> {
        match p {
            Provider::Tensorrt => {
                configured(ep::TensorRT::default(), providers::tensorrt(&self.options, inputs)).register(builder)
            }
            Provider::Cuda => configured(ep::CUDA::default(), providers::cuda(&self.options)).register(builder),
            Provider::Cpu => Ok(()), // always there; needs no registration
        }
    }
}

fn configured<P: ArbitrarilyConfigurableExecutionProvider>(provider: P, options: providers::Options) -> P {
    options
        .into_iter()
        .fold(provider, |p, (key, value)| p.with_arbitrary_config(key, value))
}

/// The device (and its index) whose memory a session led by `provider` computes in.
fn placement(provider: Provider, gpu_device: u32) -> (AllocationDevice<'static>, i32) {
    match provider {
        Provider::Tensorrt | Provider::Cuda => (AllocationDevice::CUDA, gpu_device as i32),
        Provider::Cpu => (AllocationDevice::CPU, 0),
    }
}

/// The configured providers that are `available`, in order, and the names of those that are not.
fn usable(
    configured: &[Provider],
    available: impl Fn(Provider) -> ort::Result<bool>,
) -> ort::Result<(Vec<Provider>, Vec<&'static str>)> {
    let (mut providers, mut missing) = (Vec::new(), Vec::new());
    for &p in configured {
        if available(p)? {
            providers.push(p);
        } else {
            missing.push(p.name());
        }
    }
    Ok((providers, missing))
}

/// Logs every 30 s until `done` closes, while TensorRT builds (it reports no progress of its own).
fn progress(path: &Path, done: mpsc::Receiver<()>) {
    let start = Instant::now();
    while let Err(RecvTimeoutError::Timeout) = done.recv_timeout(Duration::from_secs(30)) {
        tracing::info!(model = %path.display(), "TensorRT: still building engines ({} s)", start.elapsed().as_secs());
    }
}

/// The version that the ONNX Runtime library `ort` loaded from `path` reports (`OrtGetApiBase()->
/// GetVersionString`, which `ort` reads but does not expose). The path is resolved as `ort` resolves it
/// (next to the executable first), and the library is only looked up among those already loaded
/// (`RTLD_NOLOAD`), so this reads the very library the sessions use; None if it is not found.
fn library_version(path: &Path) -> Option<String> {
    use libloading::os::unix::{Library, RTLD_NOW, Symbol};
    let beside = std::env::current_exe().ok()?.parent()?.join(path);
    let resolved = if !path.is_absolute() && beside.exists() {
        beside
    } else {
        path.to_path_buf()
    };
    // SAFETY: RTLD_NOLOAD opens nothing new: it returns the handle of a library already loaded (by
    // `ort`, whose initialisers have run), or fails.
    let library = unsafe { Library::open(Some(&resolved), RTLD_NOW | libc::RTLD_NOLOAD) }.ok()?;
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release (onnxruntime_c_api.h).
    let base: Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
        unsafe { library.get(b"OrtGetApiBase") }.ok()?;
    // SAFETY: the API base is a static of the library, valid while it is loaded (it stays loaded:
    // `ort` holds it for the life of the process).
    let base = unsafe { base().as_ref() }?;
    // SAFETY: GetVersionString returns a pointer to a static NUL-terminated string of the library.
    let version = unsafe { std::ffi::CStr::from_ptr((base.GetVersionString)()) };
    version.to_str().ok().map(str::to_owned)
}

/// How many files `folder` holds (0 if it is unset or unreadable).
fn files_in(folder: &Path) -> usize {
    std::fs::read_dir(folder).map_or(0, |entries| entries.count())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_providers_are_skipped_in_the_configured_order() {
        let configured = [Provider::Tensorrt, Provider::Cuda, Provider::Cpu];
        // A CUDA-only build (no TensorRT provider): CUDA first, then CPU.
        let (providers, missing) = usable(&configured, |p| Ok(p != Provider::Tensorrt)).unwrap();
        assert_eq!(providers, [Provider::Cuda, Provider::Cpu]);
        assert_eq!(missing, ["tensorrt"]);
        // The CPU-only wheel: CPU alone, the others named in the order given.
        let order = [Provider::Cuda, Provider::Cpu, Provider::Tensorrt];
        let (providers, missing) = usable(&order, |p| Ok(p == Provider::Cpu)).unwrap();
        assert_eq!(providers, [Provider::Cpu]);
        assert_eq!(missing, ["cuda", "tensorrt"]);
    }

    #[test]
    fn a_gpu_led_session_keeps_its_cache_on_the_configured_gpu() {
        for gpu in [Provider::Tensorrt, Provider::Cuda] {
            assert_eq!(placement(gpu, 2), (AllocationDevice::CUDA, 2));
        }
        assert_eq!(placement(Provider::Cpu, 2), (AllocationDevice::CPU, 0));
    }
}

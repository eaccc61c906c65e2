//! The decoders available to this process: plugin libraries found in the configured folders (each
//! listed by a process of its own, isolation/listing.rs, so that nothing of a library runs here
//! before a decoder of it is created in this process), and instances created from requests.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::host::HostCtx;
use super::isolation::{self, Isolated, IsolationOptions, Launch};
use super::params::DecoderRequest;
use super::plugin::{self, DecoderInfo, LoadedDecoder, create_raw, decode_raw};
use super::security::{self, Vetting};
use super::{DecodeError, DecoderFault, Generation, PluginError, PluginFault, RequestError};

/// Where plugins are looked for, what a file must pass to be loaded, and how isolated decoders run.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginOptions {
    pub directories: Vec<PathBuf>,
    pub vetting: Vetting,
    pub isolation: IsolationOptions,
}

#[derive(serde::Serialize)]
pub struct Plugins {
    decoders: Vec<DecoderInfo>,
    refused: Vec<PluginError>,
    #[serde(skip)]
    options: PluginOptions,
    /// The libraries loaded into this process, by path: only those of decoders created in process.
    #[serde(skip)]
    loaded: Mutex<BTreeMap<PathBuf, Vec<LoadedDecoder>>>,
}

/// Whether libraries can be listed by a process of their own here; says why not, once.
fn lister_runs(options: &PluginOptions) -> bool {
    isolation::lister_runs(&options.isolation)
        .inspect_err(|e| {
            tracing::warn!(
                "cannot run {} ({e}): plugins are listed in this process, where a library that crashes as it \
                 loads takes this process down",
                options.isolation.program.display()
            )
        })
        .is_ok()
}

impl Plugins {
    /// Lists every `*.so` in the directories (in order; a decoder name already taken is refused),
    /// each library read in a process of its own. A folder that cannot be read is reported as a
    /// refusal, not an error.
    pub fn load(options: &PluginOptions) -> Plugins {
        let mut plugins = Plugins {
            decoders: Vec::new(),
            refused: Vec::new(),
            options: options.clone(),
            loaded: Mutex::default(),
        };
        let in_child = std::cell::OnceCell::new();
        for dir in &options.directories {
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) => {
                    plugins.refused.push(PluginError {
                        path: dir.clone(),
                        reason: PluginFault::Folder(e),
                    });
                    continue;
                }
            };
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "so"))
                .collect();
            paths.sort();
            for path in paths {
                if let Err(error) = plugins.add(&path, options, *in_child.get_or_init(|| lister_runs(options))) {
                    tracing::warn!("plugin refused: {error}");
                    plugins.refused.push(error);
                }
            }
        }
        plugins
    }

    /// Adds the decoders of the library at `path`, listed by a process of its own (`in_child`), or
    /// loaded into this one where such processes cannot run.
    fn add(&mut self, path: &Path, options: &PluginOptions, in_child: bool) -> Result<(), PluginError> {
        let found = if in_child {
            isolation::describe(path, &options.vetting, &options.isolation)?
        } else {
            let loaded = self.loaded.get_mut().unwrap_or_else(PoisonError::into_inner);
            load_here(loaded, path, &options.vetting)?
                .iter()
                .map(|d| d.info.clone())
                .collect()
        };
        for d in &found {
            if let Some(other) = self.decoders.iter().find(|o| o.name == d.name) {
                return Err(PluginError {
                    path: path.to_path_buf(),
                    reason: PluginFault::Duplicate {
                        decoder: d.name.clone(),
                        other: other.path.clone(),
                    },
                });
            }
        }
        self.decoders.extend(found);
        Ok(())
    }

    pub fn decoders(&self) -> &[DecoderInfo] {
        &self.decoders
    }

    pub fn refused(&self) -> &[PluginError] {
        &self.refused
    }

    /// An instance of the requested decoder with its parameters checked, in its own process when the
    /// request says `isolate = true`, or it says nothing and `isolate` is true.
    pub fn create(&self, request: &DecoderRequest, isolate: bool) -> Result<DecoderInstance, RequestError> {
        let info = self
            .decoders
            .iter()
            .find(|d| d.name == request.decoder)
            .ok_or_else(|| {
                let known: Vec<&str> = self.decoders.iter().map(|d| d.name.as_str()).collect();
                RequestError::Unknown {
                    decoder: request.decoder.clone(),
                    label: request.label.clone(),
                    available: if known.is_empty() {
                        "none (no plugins loaded)".into()
                    } else {
                        known.join(", ")
                    },
                }
            })?;
        let values = request.values(info)?;
        let isolate = request.isolate.unwrap_or(isolate);
        let create_error = |message: String| RequestError::Create {
            decoder: info.name.clone(),
            message,
        };
        let backend = if isolate {
            let launch = Launch {
                options: self.options.isolation.clone(),
                plugin: info.path.clone(),
                decoder: info.name.clone(),
                label: request.label.clone(),
                vetting: self.options.vetting.clone(),
                values,
            };
            let isolated = Isolated::start(launch).map_err(|e| create_error(e.to_string()))?;
            Backend::Isolated(Box::new(isolated))
        } else {
            let decoder = self.in_process(info).map_err(|e| create_error(e.to_string()))?;
            let instance = create_raw(&decoder, &values).map_err(|refused| create_error(refused.0))?;
            Backend::InProcess { instance, decoder }
        };
        Ok(DecoderInstance {
            label: request.label.clone(),
            backend,
        })
    }

    /// `info`'s decoder loaded into this process: its library is vetted and loaded the first time,
    /// and must still provide the decoder as it was listed.
    fn in_process(&self, info: &DecoderInfo) -> Result<LoadedDecoder, PluginError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        load_here(&mut loaded, &info.path, &self.options.vetting)?
            .iter()
            .find(|d| d.info == *info)
            .cloned()
            .ok_or_else(|| PluginError {
                path: info.path.clone(),
                reason: PluginFault::Changed,
            })
    }
}

/// The decoders of the library at `path` in this process: vetted and loaded the first time, kept in
/// `loaded` for the life of the process.
fn load_here<'a>(
    loaded: &'a mut BTreeMap<PathBuf, Vec<LoadedDecoder>>,
    path: &Path,
    vetting: &Vetting,
) -> Result<&'a [LoadedDecoder], PluginError> {
    if !loaded.contains_key(path) {
        let file = security::open(path, vetting)?;
        loaded.insert(path.to_path_buf(), plugin::load(path, file)?);
    }
    Ok(&loaded[path])
}

/// A created decoder, used by one thread at a time (the ABI's rule).
pub struct DecoderInstance {
    label: String,
    backend: Backend,
}

/// Where the decoder runs: in this process, or in its own (isolation/).
enum Backend {
    InProcess {
        instance: *mut c_void,
        decoder: LoadedDecoder,
    },
    Isolated(Box<Isolated>),
}

// SAFETY: the ABI lets an instance move between threads as long as one thread uses it at a time,
// which `&mut self` on `decode` guarantees.
unsafe impl Send for DecoderInstance {}

impl DecoderInstance {
    /// How the instance was asked for: a config table's name or a `name:key=value` spec.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the decoder runs in its own process.
    pub fn isolated(&self) -> bool {
        matches!(self.backend, Backend::Isolated(_))
    }

    /// One caption's token ids, after checking everything the plugin did and returned.
    pub fn decode(&mut self, generation: &mut Generation) -> Result<Vec<u32>, DecodeError> {
        let fail = |fault: DecoderFault| DecodeError::Decoder {
            decoder: self.label.clone(),
            fault,
        };
        let (max_tokens, vocab) = (generation.max_tokens(), generation.vocab_size());
        let mut ctx = HostCtx::new(generation, &self.label);
        let done = match &mut self.backend {
            Backend::InProcess { instance, decoder } => {
                let table = ctx.table();
                // SAFETY: `instance` is this decoder's live instance, used by this thread alone
                // (`&mut self`); `table` outlives the call and `ctx` does not move during it.
                unsafe { decode_raw(decoder, *instance, &table, max_tokens) }
            }
            Backend::Isolated(isolated) => isolated.decode(&mut ctx).map_err(fail)?,
        };
        if let Some(violation) = ctx.violation {
            return Err(fail(DecoderFault::Violation(violation)));
        }
        if done.status != 0 {
            return Err(fail(DecoderFault::Failed(done.message)));
        }
        let len = done.len as usize;
        if len > max_tokens {
            return Err(fail(DecoderFault::TooManyTokens { len, max: max_tokens }));
        }
        if done.tokens.is_empty() {
            return Err(fail(DecoderFault::NoTokens));
        }
        if let Some(&token) = done.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(fail(DecoderFault::Token { token, vocab }));
        }
        Ok(done.tokens)
    }
}

impl Drop for DecoderInstance {
    fn drop(&mut self) {
        if let Backend::InProcess { instance, decoder } = &self.backend {
            // SAFETY: `instance` came from this decoder's `create` and is destroyed once, here.
            unsafe { (decoder.fns.destroy)(*instance) };
        }
    }
}

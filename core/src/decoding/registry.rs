//! The decoders available to this process: plugin libraries found in the configured folders (each
//! checked by `security` and `plugin` before use), and instances created from requests.

use std::ffi::{CStr, c_char, c_void};
use std::path::{Path, PathBuf};

use super::host::HostCtx;
use super::params::DecoderRequest;
use super::plugin::{self, DecoderInfo};
use super::{DecodeError, DecoderFault, Generation, PluginError, PluginFault, RequestError, security};

/// Where plugins are looked for, and whether files others could write are refused.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginOptions {
    pub directories: Vec<PathBuf>,
    /// Load plugins even from files or folders that others could write (development only).
    pub allow_insecure: bool,
}

#[derive(Default, serde::Serialize)]
pub struct Plugins {
    decoders: Vec<DecoderInfo>,
    refused: Vec<PluginError>,
}

impl Plugins {
    /// Loads every `*.so` in the directories (in order; a decoder name already taken is refused).
    /// A folder that cannot be read is reported as a refusal, not an error.
    pub fn load(options: &PluginOptions) -> Plugins {
        let mut plugins = Plugins::default();
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
                if let Err(error) = plugins.add(&path, options.allow_insecure) {
                    tracing::warn!("plugin refused: {error}");
                    plugins.refused.push(error);
                }
            }
        }
        plugins
    }

    fn add(&mut self, path: &Path, allow_insecure: bool) -> Result<(), PluginError> {
        let file = security::open(path, allow_insecure)?;
        let found = plugin::load(path, file)?;
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

    /// An instance of the requested decoder with its parameters checked.
    pub fn create(&self, request: &DecoderRequest) -> Result<DecoderInstance, RequestError> {
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
        let mut err = [0 as c_char; 512];
        // SAFETY: `create` passed the descriptor checks; `values` has one value per declared
        // parameter, in order, and `err` is a writable buffer of the length passed.
        let instance = unsafe { (info.fns.create)(values.as_ptr(), err.as_mut_ptr(), err.len()) };
        if instance.is_null() {
            return Err(RequestError::Create {
                decoder: info.name.clone(),
                message: message(&err),
            });
        }
        Ok(DecoderInstance {
            info: info.clone(),
            label: request.label.clone(),
            instance,
        })
    }
}

fn message(buf: &[c_char]) -> String {
    if !buf.contains(&0) {
        return "(no message)".into();
    }
    // SAFETY: the buffer holds a NUL (checked above), so the string ends inside it.
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

/// A created decoder, used by one thread at a time (the ABI's rule).
pub struct DecoderInstance {
    info: DecoderInfo,
    label: String,
    instance: *mut c_void,
}

// SAFETY: the ABI lets an instance move between threads as long as one thread uses it at a time,
// which `&mut self` on `decode` guarantees.
unsafe impl Send for DecoderInstance {}

impl DecoderInstance {
    /// How the instance was asked for: a config table's name or a `name:key=value` spec.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// One caption's token ids, after checking everything the plugin did and returned.
    pub fn decode(&mut self, generation: &mut Generation) -> Result<Vec<u32>, DecodeError> {
        let fail = |fault: DecoderFault| DecodeError::Decoder {
            decoder: self.label.clone(),
            fault,
        };
        let (max_tokens, vocab) = (generation.max_tokens(), generation.vocab_size());
        let mut ctx = HostCtx::new(generation, &self.label);
        let table = ctx.table();
        let mut out = vec![0u32; max_tokens];
        let mut len = 0usize;
        let mut err = [0 as c_char; 1024];
        // SAFETY: `decode` passed the descriptor checks; `instance` is this decoder's live instance,
        // `table` outlives the call and `ctx` does not move during it, and `out` and `err` are
        // writable buffers of the lengths passed.
        let status = unsafe {
            (self.info.fns.decode)(
                self.instance,
                &table,
                out.as_mut_ptr(),
                out.len(),
                &mut len,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if let Some(violation) = ctx.violation {
            return Err(fail(DecoderFault::Violation(violation)));
        }
        if status != 0 {
            return Err(fail(DecoderFault::Failed(message(&err))));
        }
        if len > max_tokens {
            return Err(fail(DecoderFault::TooManyTokens { len, max: max_tokens }));
        }
        out.truncate(len);
        if out.is_empty() {
            return Err(fail(DecoderFault::NoTokens));
        }
        if let Some(&token) = out.iter().find(|&&t| t as usize >= vocab) {
            return Err(fail(DecoderFault::Token { token, vocab }));
        }
        Ok(out)
    }
}

impl Drop for DecoderInstance {
    fn drop(&mut self) {
        // SAFETY: `instance` came from this decoder's `create` and is destroyed once, here.
        unsafe { (self.info.fns.destroy)(self.instance) };
    }
}

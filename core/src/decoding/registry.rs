//! The decoders available to this process: plugin libraries found in the configured folders (each
//! checked by `security` and `plugin` before use), and instances created from requests.

use std::ffi::{CStr, c_char, c_void};
use std::path::PathBuf;

use super::host::HostCtx;
use super::params::DecoderRequest;
use super::plugin::{self, DecoderInfo};
use super::{DecodeError, Generation, security};

/// A library that was not loaded, and why.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Default)]
pub struct Plugins {
    decoders: Vec<DecoderInfo>,
    refused: Vec<Refusal>,
}

impl Plugins {
    /// Loads every `*.so` in `directories` (in order; a decoder name already taken is refused).
    /// A folder that cannot be read is reported as a refusal, not an error.
    pub fn load(directories: &[PathBuf], allow_insecure: bool) -> Plugins {
        let mut plugins = Plugins::default();
        for dir in directories {
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) => {
                    plugins.refused.push(Refusal {
                        path: dir.clone(),
                        reason: format!("cannot read folder: {e}"),
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
                if let Err(reason) = plugins.add(&path, allow_insecure) {
                    tracing::warn!(plugin = %path.display(), "plugin refused: {reason}");
                    plugins.refused.push(Refusal { path, reason });
                }
            }
        }
        plugins
    }

    fn add(&mut self, path: &std::path::Path, allow_insecure: bool) -> Result<(), String> {
        if !allow_insecure {
            security::check(path)?;
        }
        let found = plugin::load(path)?;
        for d in &found {
            if let Some(other) = self.decoders.iter().find(|o| o.name == d.name) {
                return Err(format!(
                    "decoder `{}` is already provided by {}",
                    d.name,
                    other.path.display()
                ));
            }
        }
        self.decoders.extend(found);
        Ok(())
    }

    pub fn decoders(&self) -> &[DecoderInfo] {
        &self.decoders
    }

    pub fn refused(&self) -> &[Refusal] {
        &self.refused
    }

    /// An instance of the requested decoder with its parameters checked.
    pub fn create(&self, request: &DecoderRequest) -> Result<DecoderInstance, String> {
        let info = self
            .decoders
            .iter()
            .find(|d| d.name == request.decoder)
            .ok_or_else(|| {
                let known: Vec<&str> = self.decoders.iter().map(|d| d.name.as_str()).collect();
                format!(
                    "no decoder `{}` (from {:?}); available: {}",
                    request.decoder,
                    request.label,
                    if known.is_empty() {
                        "none (no plugins loaded)".into()
                    } else {
                        known.join(", ")
                    }
                )
            })?;
        let values = request.values(info)?;
        let mut err = [0 as c_char; 512];
        let instance = unsafe { (info.fns.create)(values.as_ptr(), err.as_mut_ptr(), err.len()) };
        if instance.is_null() {
            return Err(format!(
                "decoder `{}` could not be created: {}",
                info.name,
                message(&err)
            ));
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
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

/// A created decoder, used by one thread at a time (the ABI's rule).
pub struct DecoderInstance {
    info: DecoderInfo,
    label: String,
    instance: *mut c_void,
}

unsafe impl Send for DecoderInstance {}

impl DecoderInstance {
    /// How the instance was asked for: a config table's name or a `name:key=value` spec.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn info(&self) -> &DecoderInfo {
        &self.info
    }

    /// One caption's token ids, after checking everything the plugin did and returned.
    pub fn decode(&mut self, generation: &mut Generation) -> Result<Vec<u32>, DecodeError> {
        let fail = |message: String| DecodeError::Decoder {
            decoder: self.label.clone(),
            message,
        };
        let (max_tokens, vocab) = (generation.max_tokens(), generation.vocab_size());
        let mut ctx = HostCtx::new(generation);
        let table = ctx.table();
        let mut out = vec![0u32; max_tokens];
        let mut len = 0usize;
        let mut err = [0 as c_char; 1024];
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
            return Err(fail(violation));
        }
        if status != 0 {
            return Err(fail(message(&err)));
        }
        if len > max_tokens {
            return Err(fail(format!("reported {len} tokens; at most {max_tokens} are allowed")));
        }
        out.truncate(len);
        if out.is_empty() {
            return Err(fail("returned no tokens".into()));
        }
        if let Some(t) = out.iter().find(|&&t| t as usize >= vocab) {
            return Err(fail(format!("returned token {t}, outside the vocabulary of {vocab}")));
        }
        Ok(out)
    }
}

impl Drop for DecoderInstance {
    fn drop(&mut self) {
        unsafe { (self.info.fns.destroy)(self.instance) };
    }
}

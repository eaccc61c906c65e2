//! Loading one plugin library and checking its descriptor before anything in it is called:
//! the entry symbol, the ABI version, the struct sizes, and every pointer the descriptor holds.

use std::ffi::{CStr, c_char};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clipcap_plugin_sdk::ffi;
use libloading::Library;

use super::security::CheckedFile;
use super::{PluginError, PluginFault};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    Int,
    Float,
    Bool,
}

impl ParamKind {
    pub fn name(self) -> &'static str {
        match self {
            ParamKind::Int => "int",
            ParamKind::Float => "float",
            ParamKind::Bool => "bool",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ParamInfo {
    pub name: String,
    pub description: String,
    pub kind: ParamKind,
    pub default: f64,
    pub min: f64,
    pub max: f64,
}

/// The functions of one decoder, valid while `library` is loaded.
#[derive(Clone, Copy)]
pub(crate) struct DecoderFns {
    pub create: ffi::CreateFn,
    pub decode: ffi::DecodeFn,
    pub destroy: ffi::DestroyFn,
}

/// A decoder a plugin provides. Its JSON (`plugins list --json`, `GET /v1/decoders`) is this struct.
#[derive(Clone, serde::Serialize)]
pub struct DecoderInfo {
    pub name: String,
    pub description: String,
    pub params: Vec<ParamInfo>,
    pub plugin: String,
    #[serde(rename = "version")]
    pub plugin_version: String,
    #[serde(rename = "abi")]
    pub abi_version: u32,
    pub path: PathBuf,
    #[serde(skip)]
    pub(crate) fns: DecoderFns,
    /// Keeps the code behind `fns` loaded as long as this info or an instance exists.
    #[serde(skip)]
    pub(crate) _library: Arc<Library>,
}

fn refuse<T>(reason: String) -> Result<T, PluginFault> {
    Err(PluginFault::Descriptor(reason))
}

/// # Safety
/// `ptr` is null or points to a NUL-terminated string that outlives the call.
unsafe fn text(ptr: *const c_char, what: &str) -> Result<String, PluginFault> {
    if ptr.is_null() {
        return refuse(format!("{what} is null"));
    }
    // SAFETY: not null, and NUL-terminated by the caller's contract.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map(str::to_string)
        .or_else(|_| refuse(format!("{what} is not UTF-8")))
}

fn size_check(what: &str, plugin: u32, host: usize) -> Result<(), PluginFault> {
    if plugin as usize != host {
        return refuse(format!(
            "struct {what} is {plugin} bytes in the plugin, {host} in clipcap: built against another clipcap_decoder.h"
        ));
    }
    Ok(())
}

/// Loads `path` and returns the decoders it provides, or why it is refused.
/// Loads the library `file` (opened and checked from `path`) and returns the decoders it provides,
/// or why it is refused.
pub fn load(path: &Path, file: CheckedFile) -> Result<Vec<DecoderInfo>, PluginError> {
    decoders(path, file).map_err(|reason| PluginError {
        path: path.to_path_buf(),
        reason,
    })
}

fn decoders(path: &Path, file: CheckedFile) -> Result<Vec<DecoderInfo>, PluginFault> {
    // SAFETY: loading runs the library's initialisers; security::open has vetted who could have
    // written this very file (or the user allowed insecure plugins) and that it is an ELF file for
    // this machine, which is all a host can know before running it.
    let library = Arc::new(unsafe { Library::new(file.loader_path()) }.map_err(PluginFault::Load)?);
    file.keep_open();
    // SAFETY: the symbol's type is the ABI's entry point; a library that exports another thing under
    // this name is outside what any host can check.
    let entry: ffi::EntryFn = *unsafe { library.get::<ffi::EntryFn>(ffi::ENTRY_SYMBOL) }
        .or_else(|_| refuse("no `clipcap_plugin_entry` symbol: not a clipcap decoder plugin".into()))?;
    // SAFETY: the entry point takes the ABI version and returns a descriptor or null.
    let descriptor = unsafe { entry(ffi::ABI_VERSION) };
    if descriptor.is_null() {
        return refuse(format!(
            "the plugin does not support decoder ABI version {}",
            ffi::ABI_VERSION
        ));
    }
    // SAFETY: not null; the descriptor is static data of the library, which `library` keeps loaded. Its
    // fields are read only after the version and sizes below say the layout is ours.
    let d = unsafe { &*descriptor };
    if d.abi_version != ffi::ABI_VERSION {
        return refuse(format!(
            "built for decoder ABI version {}, this clipcap speaks version {}",
            d.abi_version,
            ffi::ABI_VERSION
        ));
    }
    size_check("clipcap_plugin", d.plugin_size, size_of::<ffi::Plugin>())?;
    size_check("clipcap_decoder", d.decoder_size, size_of::<ffi::DecoderSpec>())?;
    size_check("clipcap_param", d.param_size, size_of::<ffi::Param>())?;
    size_check("clipcap_host", d.host_size, size_of::<ffi::Host>())?;
    // SAFETY: the ABI makes the descriptor's strings NUL-terminated statics, or null.
    let plugin = unsafe { text(d.name, "plugin name") }?;
    // SAFETY: as above.
    let plugin_version = unsafe { text(d.version, "plugin version") }?;
    if d.num_decoders == 0 || d.decoders.is_null() {
        return refuse("the plugin provides no decoders".into());
    }
    // SAFETY: not null, and the ABI makes it an array of `num_decoders` specs of the checked size.
    let specs = unsafe { std::slice::from_raw_parts(d.decoders, d.num_decoders as usize) };
    let mut out: Vec<DecoderInfo> = Vec::with_capacity(specs.len());
    for (i, s) in specs.iter().enumerate() {
        // SAFETY: as above, for the decoder specs.
        let name = unsafe { text(s.name, &format!("decoder {i}'s name")) }?;
        let (Some(create), Some(decode), Some(destroy)) = (s.create, s.decode, s.destroy) else {
            return refuse(format!("decoder `{name}` lacks create, decode or destroy"));
        };
        if out.iter().any(|o| o.name == name) {
            return refuse(format!("decoder `{name}` is declared twice"));
        }
        if s.num_params > 0 && s.params.is_null() {
            return refuse(format!("decoder `{name}`: parameters are null"));
        }
        let raw = if s.num_params == 0 {
            &[][..]
        } else {
            // SAFETY: not null, and the ABI makes it an array of `num_params` params of the checked size.
            unsafe { std::slice::from_raw_parts(s.params, s.num_params as usize) }
        };
        let mut params: Vec<ParamInfo> = Vec::with_capacity(raw.len());
        for p in raw {
            // SAFETY: as above, for the parameters.
            let pname = unsafe { text(p.name, &format!("a parameter name of `{name}`")) }?;
            let kind = match p.kind {
                ffi::PARAM_INT => ParamKind::Int,
                ffi::PARAM_FLOAT => ParamKind::Float,
                ffi::PARAM_BOOL => ParamKind::Bool,
                k => return refuse(format!("decoder `{name}`: parameter `{pname}` has unknown kind {k}")),
            };
            if !(p.min <= p.default_value && p.default_value <= p.max) {
                return refuse(format!(
                    "decoder `{name}`: parameter `{pname}` default {} is outside [{}, {}]",
                    p.default_value, p.min, p.max
                ));
            }
            if params.iter().any(|q| q.name == pname) || pname == "decoder" {
                return refuse(format!(
                    "decoder `{name}`: parameter name `{pname}` is reserved or repeated"
                ));
            }
            params.push(ParamInfo {
                // SAFETY: as above.
                description: unsafe { text(p.description, &format!("description of `{pname}`")) }?,
                name: pname,
                kind,
                default: p.default_value,
                min: p.min,
                max: p.max,
            });
        }
        out.push(DecoderInfo {
            // SAFETY: as above.
            description: unsafe { text(s.description, &format!("description of `{name}`")) }?,
            name,
            params,
            plugin: plugin.clone(),
            plugin_version: plugin_version.clone(),
            abi_version: d.abi_version,
            path: path.to_path_buf(),
            fns: DecoderFns {
                create,
                decode,
                destroy,
            },
            _library: library.clone(),
        });
    }
    Ok(out)
}

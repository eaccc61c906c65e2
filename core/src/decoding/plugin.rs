//! Loading one plugin library and checking its descriptor before anything in it is called:
//! the entry symbol, the ABI version, the struct sizes, and every pointer the descriptor holds.

use std::ffi::{CStr, c_char};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clipcap_plugin_sdk::ffi;
use libloading::Library;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

#[derive(Debug, Clone)]
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

/// A decoder a plugin provides.
#[derive(Clone)]
pub struct DecoderInfo {
    pub name: String,
    pub description: String,
    pub params: Vec<ParamInfo>,
    pub plugin: String,
    pub plugin_version: String,
    pub abi_version: u32,
    pub path: PathBuf,
    pub(crate) fns: DecoderFns,
    /// Keeps the code behind `fns` loaded as long as this info or an instance exists.
    pub(crate) _library: Arc<Library>,
}

unsafe fn text(ptr: *const c_char, what: &str) -> Result<String, String> {
    if ptr.is_null() {
        return Err(format!("{what} is null"));
    }
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map(str::to_string)
        .map_err(|_| format!("{what} is not UTF-8"))
}

fn size_check(what: &str, plugin: u32, host: usize) -> Result<(), String> {
    if plugin as usize != host {
        return Err(format!(
            "struct {what} is {plugin} bytes in the plugin, {host} in clipcap: built against another clipcap_decoder.h"
        ));
    }
    Ok(())
}

/// Loads `path` and returns the decoders it provides, or why it is refused.
pub fn load(path: &Path) -> Result<Vec<DecoderInfo>, String> {
    let library = Arc::new(unsafe { Library::new(path) }.map_err(|e| format!("cannot load: {e}"))?);
    let entry: ffi::EntryFn = *unsafe { library.get::<ffi::EntryFn>(ffi::ENTRY_SYMBOL) }
        .map_err(|_| "no `clipcap_plugin_entry` symbol: not a clipcap decoder plugin".to_string())?;
    let descriptor = unsafe { entry(ffi::ABI_VERSION) };
    if descriptor.is_null() {
        return Err(format!(
            "the plugin does not support decoder ABI version {}",
            ffi::ABI_VERSION
        ));
    }
    let d = unsafe { &*descriptor };
    if d.abi_version != ffi::ABI_VERSION {
        return Err(format!(
            "built for decoder ABI version {}, this clipcap speaks version {}",
            d.abi_version,
            ffi::ABI_VERSION
        ));
    }
    size_check("clipcap_plugin", d.plugin_size, size_of::<ffi::Plugin>())?;
    size_check("clipcap_decoder", d.decoder_size, size_of::<ffi::DecoderSpec>())?;
    size_check("clipcap_param", d.param_size, size_of::<ffi::Param>())?;
    size_check("clipcap_host", d.host_size, size_of::<ffi::Host>())?;
    let plugin = unsafe { text(d.name, "plugin name") }?;
    let plugin_version = unsafe { text(d.version, "plugin version") }?;
    if d.num_decoders == 0 || d.decoders.is_null() {
        return Err("the plugin provides no decoders".into());
    }
    let specs = unsafe { std::slice::from_raw_parts(d.decoders, d.num_decoders as usize) };
    let mut out: Vec<DecoderInfo> = Vec::with_capacity(specs.len());
    for (i, s) in specs.iter().enumerate() {
        let name = unsafe { text(s.name, &format!("decoder {i}'s name")) }?;
        let (Some(create), Some(decode), Some(destroy)) = (s.create, s.decode, s.destroy) else {
            return Err(format!("decoder `{name}` lacks create, decode or destroy"));
        };
        if out.iter().any(|o| o.name == name) {
            return Err(format!("decoder `{name}` is declared twice"));
        }
        if s.num_params > 0 && s.params.is_null() {
            return Err(format!("decoder `{name}`: parameters are null"));
        }
        let raw = if s.num_params == 0 {
            &[][..]
        } else {
            unsafe { std::slice::from_raw_parts(s.params, s.num_params as usize) }
        };
        let mut params: Vec<ParamInfo> = Vec::with_capacity(raw.len());
        for p in raw {
            let pname = unsafe { text(p.name, &format!("a parameter name of `{name}`")) }?;
            let kind = match p.kind {
                ffi::PARAM_INT => ParamKind::Int,
                ffi::PARAM_FLOAT => ParamKind::Float,
                ffi::PARAM_BOOL => ParamKind::Bool,
                k => return Err(format!("decoder `{name}`: parameter `{pname}` has unknown kind {k}")),
            };
            if !(p.min <= p.default_value && p.default_value <= p.max) {
                return Err(format!(
                    "decoder `{name}`: parameter `{pname}` default {} is outside [{}, {}]",
                    p.default_value, p.min, p.max
                ));
            }
            if params.iter().any(|q| q.name == pname) || pname == "decoder" {
                return Err(format!(
                    "decoder `{name}`: parameter name `{pname}` is reserved or repeated"
                ));
            }
            params.push(ParamInfo {
                description: unsafe { text(p.description, &format!("description of `{pname}`")) }?,
                name: pname,
                kind,
                default: p.default_value,
                min: p.min,
                max: p.max,
            });
        }
        out.push(DecoderInfo {
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

//! Loading one plugin library and checking its descriptor before anything in it is called:
//! the entry symbol, the ABI version, the struct sizes, and every pointer the descriptor holds.

use std::ffi::{CStr, c_char, c_void};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clipcap_plugin_sdk::ffi;
use libloading::Library;
use serde::{Deserialize, Serialize};

use super::host;
use super::security::CheckedFile;
use super::{PluginError, PluginFault};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// A decoder a plugin provides, as its descriptor says. Its JSON (`plugins list --json`, `GET
/// /v1/decoders`, and what `clipcap describe-plugin` reports) is this struct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderInfo {
    pub name: String,
    pub description: String,
    pub params: Vec<ParamInfo>,
    pub plugin: String,
    #[serde(rename = "version")]
    pub plugin_version: String,
    /// The ABI the plugin was built for, "major.minor".
    #[serde(rename = "abi")]
    pub abi_version: String,
    pub path: PathBuf,
}

/// A decoder of a library loaded into this process: its descriptor and its functions.
#[derive(Clone)]
pub(crate) struct LoadedDecoder {
    pub info: DecoderInfo,
    pub fns: DecoderFns,
    /// Keeps the code behind `fns` loaded as long as this or an instance exists.
    _library: Arc<Library>,
}

/// Keys of a decoder request that are the host's, never a plugin parameter's (params.rs).
pub(crate) const RESERVED: [&str; 2] = ["decoder", "isolate"];

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

/// A struct of the plugin's, `len` bytes long by its own account, read as this host's version of it:
/// the fields both know, and zero (the ABI's "absent") for fields the plugin's minor lacks.
///
/// # Safety
/// `src` points to at least `len` readable bytes, and `T` is valid when all zero (pointers, integers,
/// floats, `Option`s of function pointers).
unsafe fn read_grown<T>(src: *const u8, len: usize) -> T {
    let mut out = std::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: `src` has `len` bytes (caller), `out` has size_of::<T>(); the copy takes the smaller.
    unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr().cast::<u8>(), len.min(size_of::<T>())) };
    // SAFETY: all-zero is a valid T (caller), and the copied bytes are the plugin's fields of T.
    unsafe { out.assume_init() }
}

/// Refuses a struct smaller than ABI 2.0's: such a plugin was not built against clipcap_decoder.h.
fn at_least(what: &str, plugin: u32, minimum: usize) -> Result<usize, PluginFault> {
    if (plugin as usize) < minimum {
        return refuse(format!(
            "struct {what} is {plugin} bytes in the plugin, less than ABI {}.0's {minimum}: not built against clipcap_decoder.h",
            ffi::ABI_MAJOR
        ));
    }
    Ok(plugin as usize)
}

fn version(v: u32) -> String {
    format!("{}.{}", ffi::abi_major(v), ffi::abi_minor(v))
}

/// Loads the library `file` (opened and checked from `path`) and returns the decoders it provides,
/// or why it is refused.
pub(crate) fn load(path: &Path, file: CheckedFile) -> Result<Vec<LoadedDecoder>, PluginError> {
    decoders(path, file).map_err(|reason| PluginError {
        path: path.to_path_buf(),
        reason,
    })
}

fn decoders(path: &Path, file: CheckedFile) -> Result<Vec<LoadedDecoder>, PluginFault> {
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
            "the plugin does not support decoder ABI {}",
            version(ffi::ABI_VERSION)
        ));
    }
    // SAFETY: not null; every version of the descriptor starts with its ABI version and its size,
    // static data of the library, which `library` keeps loaded.
    let (abi, plugin_size) = unsafe { (*descriptor.cast::<u32>(), *descriptor.cast::<u32>().add(1)) };
    if ffi::abi_major(abi) != ffi::ABI_MAJOR {
        return refuse(format!(
            "built for decoder ABI {}, this clipcap speaks {}: a different major version",
            version(abi),
            version(ffi::ABI_VERSION)
        ));
    }
    let plugin_size = at_least("clipcap_plugin", plugin_size, ffi::PLUGIN_SIZE_2_0)?;
    // SAFETY: the descriptor is `plugin_size` bytes by its own account (at least ABI 2.0's), and a
    // zeroed ffi::Plugin is valid.
    let d: ffi::Plugin = unsafe { read_grown(descriptor.cast(), plugin_size) };
    let decoder_size = at_least("clipcap_decoder", d.decoder_size, ffi::DECODER_SIZE_2_0)?;
    let param_size = at_least("clipcap_param", d.param_size, ffi::PARAM_SIZE_2_0)?;
    at_least("clipcap_host", d.host_size, ffi::HOST_SIZE_2_0)?;
    for i in 0..d.num_required_extensions as usize {
        if d.required_extensions.is_null() {
            return refuse("required extensions are null".into());
        }
        // SAFETY: not null; the ABI makes it an array of `num_required_extensions` strings.
        let id = unsafe { text(*d.required_extensions.add(i), "a required extension") }?;
        let offered: Vec<&str> = host::OFFERED.iter().filter_map(|e| e.to_str().ok()).collect();
        if !offered.contains(&id.as_str()) {
            return refuse(format!(
                "needs extension `{id}`, which this clipcap does not offer (it offers {})",
                offered.join(", ")
            ));
        }
    }
    // SAFETY: the ABI makes the descriptor's strings NUL-terminated statics, or null.
    let plugin = unsafe { text(d.name, "plugin name") }?;
    // SAFETY: as above.
    let plugin_version = unsafe { text(d.version, "plugin version") }?;
    if d.num_decoders == 0 || d.decoders.is_null() {
        return refuse("the plugin provides no decoders".into());
    }
    let specs = (0..d.num_decoders as usize).map(|i| {
        // SAFETY: `decoders` is an array of `num_decoders` specs, `decoder_size` bytes apart (ABI;
        // at least ABI 2.0's size), and a zeroed DecoderSpec is valid.
        unsafe { read_grown::<ffi::DecoderSpec>(d.decoders.cast::<u8>().add(i * decoder_size), decoder_size) }
    });
    let mut out: Vec<LoadedDecoder> = Vec::with_capacity(specs.len());
    for (i, s) in specs.enumerate() {
        // SAFETY: as above, for the decoder specs.
        let name = unsafe { text(s.name, &format!("decoder {i}'s name")) }?;
        let (Some(create), Some(decode), Some(destroy)) = (s.create, s.decode, s.destroy) else {
            return refuse(format!("decoder `{name}` lacks create, decode or destroy"));
        };
        if out.iter().any(|o| o.info.name == name) {
            return refuse(format!("decoder `{name}` is declared twice"));
        }
        if s.num_params > 0 && s.params.is_null() {
            return refuse(format!("decoder `{name}`: parameters are null"));
        }
        let raw = (0..s.num_params as usize).map(|j| {
            // SAFETY: `params` is not null (checked) and an array of `num_params` params,
            // `param_size` bytes apart (ABI; at least ABI 2.0's size); a zeroed Param is valid.
            unsafe { read_grown::<ffi::Param>(s.params.cast::<u8>().add(j * param_size), param_size) }
        });
        let mut params: Vec<ParamInfo> = Vec::with_capacity(s.num_params as usize);
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
            if params.iter().any(|q| q.name == pname) || RESERVED.contains(&pname.as_str()) {
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
        let info = DecoderInfo {
            // SAFETY: as above.
            description: unsafe { text(s.description, &format!("description of `{name}`")) }?,
            name,
            params,
            plugin: plugin.clone(),
            plugin_version: plugin_version.clone(),
            abi_version: version(abi),
            path: path.to_path_buf(),
        };
        out.push(LoadedDecoder {
            info,
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

/// A plugin's refusal to create an instance: its message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(pub String);

/// What a decoder's `decode` gave back: its status, the tokens it wrote (at most the buffer's
/// length), the count it reported (which may exceed that), and its message.
#[derive(Debug, Serialize, Deserialize)]
pub struct Done {
    pub status: i32,
    pub tokens: Vec<u32>,
    pub len: u64,
    pub message: String,
}

impl Done {
    pub fn failed(message: String) -> Done {
        Done {
            status: 1,
            tokens: Vec::new(),
            len: 0,
            message,
        }
    }
}

/// A new instance of `decoder` from checked parameter values, or the plugin's message.
pub(crate) fn create_raw(decoder: &LoadedDecoder, values: &[f64]) -> Result<*mut c_void, Refused> {
    let mut err = [0 as c_char; 512];
    // SAFETY: `create` passed the descriptor checks; `values` has one value per declared parameter,
    // in order (DecoderRequest::values), and `err` is a writable buffer of the length passed.
    let instance = unsafe { (decoder.fns.create)(values.as_ptr(), err.as_mut_ptr(), err.len()) };
    if instance.is_null() {
        return Err(Refused(message(&err)));
    }
    Ok(instance)
}

/// One `decode` call of `instance` with `table`, and what it gave back (unchecked).
///
/// # Safety
/// `instance` came from `decoder`'s `create` and is not used elsewhere during the call; `table` is a
/// complete host table whose functions and ctx stay valid for the call.
pub(crate) unsafe fn decode_raw(
    decoder: &LoadedDecoder,
    instance: *mut c_void,
    table: &ffi::Host,
    max_tokens: usize,
) -> Done {
    let mut out = vec![0u32; max_tokens];
    let mut len = 0usize;
    let mut err = [0 as c_char; 1024];
    // SAFETY: the caller's contract for `instance` and `table`; `out` and `err` are writable buffers
    // of the lengths passed.
    let status = unsafe {
        (decoder.fns.decode)(
            instance,
            table,
            out.as_mut_ptr(),
            out.len(),
            &mut len,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    out.truncate(len);
    Done {
        status,
        tokens: out,
        len: len as u64,
        message: message(&err),
    }
}

fn message(buf: &[c_char]) -> String {
    if !buf.contains(&0) {
        return "(no message)".into();
    }
    // SAFETY: the buffer holds a NUL (checked above), so the string ends inside it.
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

//! The C ABI of include/clipcap_decoder.h, field for field. The host and every Rust plugin use these
//! types, so the ABI has one Rust definition; the host's tests load a plugin compiled from C against
//! the header (plugins/c/greedy.c): the struct sizes are compared at load and the plugin calls the
//! host through the C layout. The header states the rules for changing the ABI (major.minor, structs
//! that only grow at the end, extensions by id); docs/plugins.md explains them.

use std::ffi::{CStr, c_char, c_void};
use std::mem::offset_of;

pub const ABI_MAJOR: u32 = 2;
pub const ABI_MINOR: u32 = 1;
/// `(major << 16) | minor`, as `CLIPCAP_DECODER_ABI_VERSION`.
pub const ABI_VERSION: u32 = (ABI_MAJOR << 16) | ABI_MINOR;
pub const ENTRY_SYMBOL: &[u8] = b"clipcap_plugin_entry\0";

pub const fn abi_major(version: u32) -> u32 {
    version >> 16
}

pub const fn abi_minor(version: u32) -> u32 {
    version & 0xffff
}

/// The sizes of the structs in ABI 2.0, the smallest a plugin of this major may declare.
pub const PLUGIN_SIZE_2_0: usize = offset_of!(Plugin, required_extensions);
pub const HOST_SIZE_2_0: usize = offset_of!(Host, get_extension);
pub const DECODER_SIZE_2_0: usize = size_of::<DecoderSpec>();
pub const PARAM_SIZE_2_0: usize = size_of::<Param>();

/// Extension "clipcap.log" (minor 1): messages into the host's log.
pub const EXTENSION_LOG: &CStr = c"clipcap.log";
pub const LOG_ERROR: u32 = 0;
pub const LOG_WARN: u32 = 1;
pub const LOG_INFO: u32 = 2;
pub const LOG_DEBUG: u32 = 3;

pub type LogFn = unsafe extern "C" fn(ctx: *mut c_void, level: u32, message: *const c_char);

#[repr(C)]
pub struct LogExtension {
    pub size: u32,
    pub log: LogFn,
}

pub const PARAM_INT: u32 = 0;
pub const PARAM_FLOAT: u32 = 1;
pub const PARAM_BOOL: u32 = 2;

#[repr(C)]
#[derive(Debug)]
pub struct Param {
    pub name: *const c_char,
    pub description: *const c_char,
    pub kind: u32,
    pub default_value: f64,
    pub min: f64,
    pub max: f64,
}

// SAFETY: descriptors are immutable statics pointing at static strings; nothing writes through them.
unsafe impl Sync for Param {}

impl Param {
    pub const fn int(name: &'static CStr, description: &'static CStr, default: i64, min: i64, max: i64) -> Self {
        Self::new(name, description, PARAM_INT, default as f64, min as f64, max as f64)
    }
    pub const fn float(name: &'static CStr, description: &'static CStr, default: f64, min: f64, max: f64) -> Self {
        Self::new(name, description, PARAM_FLOAT, default, min, max)
    }
    pub const fn bool(name: &'static CStr, description: &'static CStr, default: bool) -> Self {
        Self::new(name, description, PARAM_BOOL, if default { 1.0 } else { 0.0 }, 0.0, 1.0)
    }
    const fn new(name: &'static CStr, description: &'static CStr, kind: u32, d: f64, min: f64, max: f64) -> Self {
        Param {
            name: name.as_ptr(),
            description: description.as_ptr(),
            kind,
            default_value: d,
            min,
            max,
        }
    }
}

pub type StartFn = unsafe extern "C" fn(ctx: *mut c_void) -> i32;
pub type BatchFn = unsafe extern "C" fn(ctx: *mut c_void) -> u32;
pub type StepFn = unsafe extern "C" fn(ctx: *mut c_void, parents: *const u32, tokens: *const u32, n: u32) -> i32;
pub type RowFn = unsafe extern "C" fn(ctx: *mut c_void, seq: u32) -> *const f32;
pub type ContextFn = unsafe extern "C" fn(ctx: *mut c_void, seq: u32, len: *mut u32) -> *const f32;
pub type RandomFn = unsafe extern "C" fn(ctx: *mut c_void) -> f64;
pub type DetokenizeFn =
    unsafe extern "C" fn(ctx: *mut c_void, ids: *const u32, n: u32, buf: *mut c_char, cap: usize) -> usize;
pub type SimilarityFn =
    unsafe extern "C" fn(ctx: *mut c_void, texts: *const *const c_char, n: u32, out: *mut f32) -> i32;
pub type LastErrorFn = unsafe extern "C" fn(ctx: *mut c_void) -> *const c_char;
pub type GetExtensionFn = unsafe extern "C" fn(ctx: *mut c_void, id: *const c_char) -> *const c_void;

#[repr(C)]
pub struct Host {
    pub abi_version: u32,
    pub size: u32,
    pub ctx: *mut c_void,
    pub vocab_size: u32,
    pub hidden_size: u32,
    pub eos_token: u32,
    pub max_tokens: u32,
    pub stop_tokens: *const u32,
    pub num_stop_tokens: u32,
    pub clip_logit_scale: f32,
    pub start: StartFn,
    pub batch: BatchFn,
    pub step: StepFn,
    pub logits: RowFn,
    pub hidden: RowFn,
    pub context: ContextFn,
    pub random: RandomFn,
    pub detokenize: DetokenizeFn,
    pub image_text_similarity: SimilarityFn,
    pub last_error: LastErrorFn,
    /// Minor 1: read it only when `size` says the host has it.
    pub get_extension: GetExtensionFn,
}

pub type CreateFn = unsafe extern "C" fn(values: *const f64, err: *mut c_char, err_len: usize) -> *mut c_void;
pub type DecodeFn = unsafe extern "C" fn(
    instance: *mut c_void,
    host: *const Host,
    out: *mut u32,
    out_cap: usize,
    out_len: *mut usize,
    err: *mut c_char,
    err_len: usize,
) -> i32;
pub type DestroyFn = unsafe extern "C" fn(instance: *mut c_void);

/// Function pointers are `Option`s: they come from a plugin, and the host refuses null ones.
#[repr(C)]
pub struct DecoderSpec {
    pub name: *const c_char,
    pub description: *const c_char,
    pub params: *const Param,
    pub num_params: u32,
    pub create: Option<CreateFn>,
    pub decode: Option<DecodeFn>,
    pub destroy: Option<DestroyFn>,
}

// SAFETY: as for Param.
unsafe impl Sync for DecoderSpec {}

#[repr(C)]
pub struct Plugin {
    pub abi_version: u32,
    pub plugin_size: u32,
    pub decoder_size: u32,
    pub param_size: u32,
    pub host_size: u32,
    pub name: *const c_char,
    pub version: *const c_char,
    pub decoders: *const DecoderSpec,
    pub num_decoders: u32,
    /// Minor 1.
    pub required_extensions: *const *const c_char,
    pub num_required_extensions: u32,
}

// SAFETY: as for Param.
unsafe impl Sync for Plugin {}

impl Plugin {
    pub const fn new(name: &'static CStr, version: &'static CStr, decoders: &'static [DecoderSpec]) -> Self {
        Plugin {
            abi_version: ABI_VERSION,
            plugin_size: size_of::<Plugin>() as u32,
            decoder_size: size_of::<DecoderSpec>() as u32,
            param_size: size_of::<Param>() as u32,
            host_size: size_of::<Host>() as u32,
            name: name.as_ptr(),
            version: version.as_ptr(),
            decoders: decoders.as_ptr(),
            num_decoders: decoders.len() as u32,
            required_extensions: std::ptr::null(),
            num_required_extensions: 0,
        }
    }
}

pub type EntryFn = unsafe extern "C" fn(host_abi_version: u32) -> *const Plugin;

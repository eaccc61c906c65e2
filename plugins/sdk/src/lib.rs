//! SDK for clipcap decoder plugins.
//!
//! A plugin implements [`Decoder`] for each decoding strategy it offers and exports them with
//! [`export_plugin!`]. The macro produces the C entry point of include/clipcap_decoder.h; the
//! trampolines here turn raw pointers into a safe [`Host`], catch panics at the boundary (a panic
//! becomes an error for that caption, and the instance is rebuilt before its next use), and check that
//! a decoder returns no more tokens than the host allows.
//!
//! ```no_run
//! use std::ffi::CStr;
//! use clipcap_plugin_sdk::{Decoder, Host, Param, Params, export_plugin, select::argmax};
//!
//! struct Greedy;
//! impl Decoder for Greedy {
//!     const NAME: &'static CStr = c"my_greedy";
//!     const DESCRIPTION: &'static CStr = c"the most likely token at every step";
//!     const PARAMS: &'static [Param] = &[];
//!     fn new(_: &Params) -> Result<Self, String> {
//!         Ok(Greedy)
//!     }
//!     fn decode(&mut self, host: &mut Host) -> Result<Vec<u32>, String> {
//!         let mut tokens = Vec::new();
//!         loop {
//!             let token = argmax(host.logits(0)?);
//!             tokens.push(token);
//!             if host.is_stop(token) || tokens.len() == host.max_tokens() {
//!                 return Ok(tokens);
//!             }
//!             host.step(&[0], &[token])?;
//!         }
//!     }
//! }
//! export_plugin!(name: c"example", decoders: [Greedy]);
//! ```

pub mod ffi;
mod host;
pub mod select;

use std::any::Any;
use std::ffi::{CStr, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

pub use ffi::Param;
pub use host::Host;

/// One decoding strategy.
pub trait Decoder: Sized + 'static {
    const NAME: &'static CStr;
    const DESCRIPTION: &'static CStr;
    const PARAMS: &'static [Param];
    /// An instance with validated parameter values (the host range-checks them against `PARAMS`).
    fn new(params: &Params) -> Result<Self, String>;
    /// The token ids of one caption, stop token included when one was produced.
    fn decode(&mut self, host: &mut Host) -> Result<Vec<u32>, String>;
}

/// Parameter values of one instance, looked up by name.
pub struct Params<'a> {
    specs: &'static [Param],
    values: &'a [f64],
}

impl Params<'_> {
    pub fn float(&self, name: &str) -> f64 {
        let i = self
            .specs
            .iter()
            // SAFETY: parameter names are NUL-terminated statics (decoder_spec builds them from CStr).
            .position(|p| unsafe { CStr::from_ptr(p.name) }.to_str() == Ok(name))
            .unwrap_or_else(|| panic!("parameter `{name}` is not declared in PARAMS"));
        self.values[i]
    }
    pub fn int(&self, name: &str) -> i64 {
        self.float(name) as i64
    }
    pub fn usize(&self, name: &str) -> usize {
        self.float(name) as usize
    }
    pub fn bool(&self, name: &str) -> bool {
        self.float(name) != 0.0
    }
}

/// The C descriptor of decoder `D`, for [`export_plugin!`].
pub const fn decoder_spec<D: Decoder>() -> ffi::DecoderSpec {
    ffi::DecoderSpec {
        name: D::NAME.as_ptr(),
        description: D::DESCRIPTION.as_ptr(),
        params: D::PARAMS.as_ptr(),
        num_params: D::PARAMS.len() as u32,
        create: Some(create::<D>),
        decode: Some(decode::<D>),
        destroy: Some(destroy::<D>),
    }
}

/// Exports the plugin's entry point. `name` is a C string literal; the version is the crate's.
#[macro_export]
macro_rules! export_plugin {
    (name: $name:expr, decoders: [$($decoder:ty),+ $(,)?]) => {
        static __CLIPCAP_DECODERS: &[$crate::ffi::DecoderSpec] = &[$($crate::decoder_spec::<$decoder>()),+];
        static __CLIPCAP_PLUGIN: $crate::ffi::Plugin = $crate::ffi::Plugin::new(
            $name,
            match ::std::ffi::CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
                Ok(version) => version,
                Err(_) => panic!("package version contains NUL"),
            },
            __CLIPCAP_DECODERS,
        );
        /// The plugin's entry point (include/clipcap_decoder.h).
        #[unsafe(no_mangle)]
        pub extern "C" fn clipcap_plugin_entry(host_abi_version: u32) -> *const $crate::ffi::Plugin {
            // Any minor of this major: the descriptor says which minor it was built for.
            if $crate::ffi::abi_major(host_abi_version) == $crate::ffi::ABI_MAJOR {
                &__CLIPCAP_PLUGIN
            } else {
                ::std::ptr::null()
            }
        }
    };
}

/// A decoder instance, with what is needed to rebuild it after a panic left it in an unknown state.
struct Instance<D> {
    decoder: Option<D>,
    values: Vec<f64>,
}

fn panic_message(panic: Box<dyn Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into());
    format!("decoder panicked: {text}")
}

/// Copies `message` into the host's buffer, truncated, NUL-terminated.
///
/// # Safety
/// `err` is null or points to `err_len` writable bytes.
unsafe fn write_error(err: *mut c_char, err_len: usize, message: &str) {
    if err.is_null() || err_len == 0 {
        return;
    }
    let n = message.len().min(err_len - 1);
    // SAFETY: the caller passes `err` with room for `err_len` bytes (ABI); not null and n < err_len, checked
    // above.
    unsafe {
        std::ptr::copy_nonoverlapping(message.as_ptr().cast(), err, n);
        *err.add(n) = 0;
    }
}

unsafe extern "C" fn create<D: Decoder>(values: *const f64, err: *mut c_char, err_len: usize) -> *mut c_void {
    let values: Vec<f64> = if D::PARAMS.is_empty() {
        Vec::new()
    } else {
        // SAFETY: the host passes one value per declared parameter (ABI).
        unsafe { std::slice::from_raw_parts(values, D::PARAMS.len()) }.to_vec()
    };
    match catch_unwind(|| {
        D::new(&Params {
            specs: D::PARAMS,
            values: &values,
        })
    }) {
        Ok(Ok(decoder)) => Box::into_raw(Box::new(Instance {
            decoder: Some(decoder),
            values,
        }))
        .cast(),
        Ok(Err(message)) => {
            // SAFETY: `err` and `err_len` are the host's buffer, as the ABI passes them.
            unsafe { write_error(err, err_len, &message) };
            std::ptr::null_mut()
        }
        Err(panic) => {
            // SAFETY: as above.
            unsafe { write_error(err, err_len, &panic_message(panic)) };
            std::ptr::null_mut()
        }
    }
}

unsafe extern "C" fn decode<D: Decoder>(
    instance: *mut c_void,
    host: *const ffi::Host,
    out: *mut u32,
    out_cap: usize,
    out_len: *mut usize,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    // SAFETY: `instance` came from `create` (a boxed Instance<D>) and the ABI gives one thread at a time.
    let instance = unsafe { &mut *instance.cast::<Instance<D>>() };
    // SAFETY: the host's table, valid for this call (ABI).
    let raw = unsafe { &*host };
    let result = catch_unwind(AssertUnwindSafe(|| {
        if instance.decoder.is_none() {
            instance.decoder = Some(D::new(&Params {
                specs: D::PARAMS,
                values: &instance.values,
            })?);
        }
        let decoder = instance.decoder.as_mut().expect("just built");
        decoder.decode(&mut Host::new(raw))
    }));
    let message = match result {
        Ok(Ok(tokens)) if tokens.len() <= out_cap => {
            // SAFETY: `out` has room for `out_cap` ids (ABI), and tokens.len() <= out_cap (matched);
            // `out_len` is the host's.
            unsafe {
                std::ptr::copy_nonoverlapping(tokens.as_ptr(), out, tokens.len());
                *out_len = tokens.len();
            }
            return 0;
        }
        Ok(Ok(tokens)) => format!(
            "decoder produced {} tokens, more than the {out_cap} allowed",
            tokens.len()
        ),
        Ok(Err(message)) => message,
        Err(panic) => {
            instance.decoder = None;
            panic_message(panic)
        }
    };
    // SAFETY: `err` and `err_len` are the host's buffer, as the ABI passes them.
    unsafe { write_error(err, err_len, &message) };
    1
}

unsafe extern "C" fn destroy<D: Decoder>(instance: *mut c_void) {
    if !instance.is_null() {
        // A panicking destructor must not unwind into the host.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: not null (checked); it came from `create`'s Box and the host destroys it once.
            drop(unsafe { Box::from_raw(instance.cast::<Instance<D>>()) })
        }));
    }
}

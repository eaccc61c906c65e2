//! The host function table handed to plugins (`clipcap_host` in the C header), over a [`Generation`].
//!
//! Every function catches panics (nothing may unwind into a plugin), checks its arguments, and on
//! failure leaves a message for `last_error`. Requests a correct decoder never makes (a sequence
//! that does not exist, a token outside the vocabulary, a step beyond the budget) are also recorded
//! as violations, which fail the caption whatever the decoder returns afterwards.

use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use clipcap_plugin_sdk::ffi;

use super::Generation;

pub(crate) struct HostCtx<'g, 'a> {
    pub generation: &'g mut Generation<'a>,
    /// The decoder instance's label, for what it logs.
    decoder: &'g str,
    pub violation: Option<String>,
    error: CString,
    context: Vec<f32>,
}

impl<'g, 'a> HostCtx<'g, 'a> {
    pub fn new(generation: &'g mut Generation<'a>, decoder: &'g str) -> Self {
        HostCtx {
            generation,
            decoder,
            violation: None,
            error: CString::default(),
            context: Vec::new(),
        }
    }

    fn fail(&mut self, message: String) {
        self.error = CString::new(message.replace('\0', " ")).expect("NULs replaced");
    }

    fn violate(&mut self, message: String) {
        self.violation.get_or_insert_with(|| message.clone());
        self.fail(message);
    }

    /// The table for one `decode` call; `self` must outlive it and not move while it is used.
    pub fn table(&mut self) -> ffi::Host {
        let ctx = (self as *mut Self).cast();
        let g = &self.generation;
        ffi::Host {
            abi_version: ffi::ABI_VERSION,
            size: size_of::<ffi::Host>() as u32,
            ctx,
            vocab_size: g.vocab_size() as u32,
            hidden_size: g.hidden_size() as u32,
            eos_token: g.eos_token(),
            max_tokens: g.max_tokens() as u32,
            stop_tokens: g.stop_tokens().as_ptr(),
            num_stop_tokens: g.stop_tokens().len() as u32,
            clip_logit_scale: g.logit_scale().unwrap_or(0.0),
            start,
            batch,
            step,
            logits,
            hidden,
            context,
            random,
            detokenize,
            image_text_similarity,
            last_error,
            get_extension,
        }
    }
}

/// Extension "clipcap.log": static, so valid for every decode call.
static LOG: ffi::LogExtension = ffi::LogExtension {
    size: size_of::<ffi::LogExtension>() as u32,
    log,
};

/// The extensions this host offers: each id with the table `get_extension` returns for it.
pub(crate) fn offered() -> [(&'static CStr, *const c_void); 1] {
    [(ffi::EXTENSION_LOG, (&raw const LOG).cast())]
}

unsafe extern "C" fn get_extension(ctx: *mut c_void, id: *const c_char) -> *const c_void {
    if id.is_null() {
        return std::ptr::null();
    }
    // SAFETY: not null; the ABI makes `id` NUL-terminated.
    let id = unsafe { CStr::from_ptr(id) };
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    with(unsafe { host(ctx) }, std::ptr::null(), |_| {
        let found = offered().into_iter().find(|(offered, _)| *offered == id);
        found.map_or(std::ptr::null(), |(_, table)| table)
    })
}

unsafe extern "C" fn log(ctx: *mut c_void, level: u32, message: *const c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: not null; the ABI makes `message` NUL-terminated.
    let message = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    with(unsafe { host(ctx) }, (), |h| match level {
        ffi::LOG_ERROR => tracing::error!(decoder = h.decoder, "{message}"),
        ffi::LOG_WARN => tracing::warn!(decoder = h.decoder, "{message}"),
        ffi::LOG_INFO => tracing::info!(decoder = h.decoder, "{message}"),
        _ => tracing::debug!(decoder = h.decoder, "{message}"),
    })
}

/// The context behind a table's `ctx`.
///
/// # Safety
/// `ctx` is the `ctx` of a table made by [`HostCtx::table`] whose `HostCtx` is alive and has not
/// moved, and nothing else uses that `HostCtx` while the reference lives: what the ABI promises of a
/// decoder's calls (one at a time, during `decode`). The lifetimes are the caller's to keep short.
unsafe fn host<'h>(ctx: *mut c_void) -> &'h mut HostCtx<'h, 'h> {
    // SAFETY: the caller's contract above.
    unsafe { &mut *ctx.cast::<HostCtx>() }
}

/// Runs `f` on `host`, turning a panic into `on_panic` and a message.
fn with<T>(host: &mut HostCtx, on_panic: T, f: impl FnOnce(&mut HostCtx) -> T) -> T {
    match catch_unwind(AssertUnwindSafe(|| f(&mut *host))) {
        Ok(value) => value,
        Err(_) => {
            host.violate("the host panicked while serving the decoder".into());
            on_panic
        }
    }
}

unsafe extern "C" fn start(ctx: *mut c_void) -> i32 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    with(unsafe { host(ctx) }, 1, |h| match h.generation.start() {
        Ok(()) => 0,
        Err(e) => {
            h.violate(format!("start failed: {e}"));
            1
        }
    })
}

unsafe extern "C" fn batch(ctx: *mut c_void) -> u32 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    with(unsafe { host(ctx) }, 0, |h| h.generation.batch() as u32)
}

unsafe extern "C" fn step(ctx: *mut c_void, parents: *const u32, tokens: *const u32, n: u32) -> i32 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    with(unsafe { host(ctx) }, 1, |h| {
        if n > 0 && (parents.is_null() || tokens.is_null()) {
            h.violate("step: null parents or tokens".into());
            return 1;
        }
        let (parents, tokens) = if n == 0 {
            (&[][..], &[][..])
        } else {
            // SAFETY: both are non-null (checked above) and the ABI makes them arrays of `n` entries.
            unsafe {
                (
                    std::slice::from_raw_parts(parents, n as usize),
                    std::slice::from_raw_parts(tokens, n as usize),
                )
            }
        };
        match h.generation.step(parents, tokens) {
            Ok(()) => 0,
            Err(e) => {
                h.violate(format!("step refused: {e}"));
                1
            }
        }
    })
}

fn row(host: &mut HostCtx, seq: u32, what: &str, get: fn(&Generation, usize) -> Option<*const f32>) -> *const f32 {
    with(host, std::ptr::null(), |h| match get(h.generation, seq as usize) {
        Some(ptr) => ptr,
        None => {
            h.violate(format!(
                "{what} of sequence {seq} requested; the batch has {}",
                h.generation.batch()
            ));
            std::ptr::null()
        }
    })
}

unsafe extern "C" fn logits(ctx: *mut c_void, seq: u32) -> *const f32 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    row(unsafe { host(ctx) }, seq, "logits", |g, s| {
        g.logits(s).map(<[f32]>::as_ptr)
    })
}

unsafe extern "C" fn hidden(ctx: *mut c_void, seq: u32) -> *const f32 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    row(unsafe { host(ctx) }, seq, "hidden state", |g, s| {
        g.hidden(s).map(<[f32]>::as_ptr)
    })
}

unsafe extern "C" fn context(ctx: *mut c_void, seq: u32, len: *mut u32) -> *const f32 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    with(unsafe { host(ctx) }, std::ptr::null(), |h| {
        match h.generation.context(seq as usize) {
            Some(states) => {
                h.context = states;
                if !len.is_null() {
                    // SAFETY: `len` is non-null (checked) and points to the decoder's u32 (ABI).
                    unsafe { *len = (h.context.len() / h.generation.hidden_size()) as u32 };
                }
                h.context.as_ptr()
            }
            None => {
                h.violate(format!(
                    "context of sequence {seq} requested; the batch has {}",
                    h.generation.batch()
                ));
                std::ptr::null()
            }
        }
    })
}

unsafe extern "C" fn random(ctx: *mut c_void) -> f64 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    with(unsafe { host(ctx) }, 0.0, |h| h.generation.random())
}

unsafe extern "C" fn detokenize(ctx: *mut c_void, ids: *const u32, n: u32, buf: *mut c_char, cap: usize) -> usize {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    with(unsafe { host(ctx) }, 0, |h| {
        let ids = if n == 0 || ids.is_null() {
            &[][..]
        } else {
            // SAFETY: `ids` is non-null (checked) and the ABI makes it an array of `n` ids.
            unsafe { std::slice::from_raw_parts(ids, n as usize) }
        };
        let text = match h.generation.detokenize(ids) {
            Ok(text) => text,
            Err(e) => {
                h.fail(format!("detokenize: {e}"));
                return 0;
            }
        };
        if !buf.is_null() {
            // SAFETY: `buf` is non-null (checked) and has room for `cap` bytes (ABI); at most `cap` are
            // written.
            unsafe { std::ptr::copy_nonoverlapping(text.as_ptr().cast(), buf, text.len().min(cap)) };
        }
        text.len()
    })
}

unsafe extern "C" fn image_text_similarity(
    ctx: *mut c_void,
    texts: *const *const c_char,
    n: u32,
    out: *mut f32,
) -> i32 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    with(unsafe { host(ctx) }, 1, |h| {
        if n > 0 && (texts.is_null() || out.is_null()) {
            h.violate("image_text_similarity: null texts or output".into());
            return 1;
        }
        let ptrs = if n == 0 {
            &[][..]
        } else {
            // SAFETY: `texts` is non-null (checked) and the ABI makes it an array of `n` pointers.
            unsafe { std::slice::from_raw_parts(texts, n as usize) }
        };
        let owned: Vec<String> = ptrs
            .iter()
            .map(|&p| {
                if p.is_null() {
                    String::new()
                } else {
                    // SAFETY: non-null (checked); the ABI makes each text NUL-terminated.
                    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
                }
            })
            .collect();
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        match h.generation.similarity(&refs) {
            Ok(sims) => {
                // SAFETY: `out` is non-null (checked) with room for `n` floats (ABI), and `sims` has one per
                // text, `n`.
                unsafe { std::ptr::copy_nonoverlapping(sims.as_ptr(), out, sims.len()) };
                0
            }
            Err(e) => {
                h.fail(e.to_string()); // a capability question, not a violation: the decoder may do without
                1
            }
        }
    })
}

unsafe extern "C" fn last_error(ctx: *mut c_void) -> *const c_char {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    unsafe { host(ctx) }.error.as_ptr()
}

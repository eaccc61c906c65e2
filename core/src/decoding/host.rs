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
    /// The fixed part of the caption's host table.
    pub facts: Facts,
    /// The decoder instance's label, for what it logs.
    decoder: &'g str,
    pub violation: Option<String>,
    error: CString,
    context: Vec<f32>,
}

/// The per-sequence rows a decoder can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Row {
    Logits,
    Hidden,
    /// Every position's hidden state, prefix first.
    Context,
}

/// What the host functions do, whichever side of a process boundary the decoder runs on: the
/// in-process table below and the isolated decoder's server (isolation/server.rs) both call these.
impl<'g, 'a> HostCtx<'g, 'a> {
    pub fn new(generation: &'g mut Generation<'a>, decoder: &'g str) -> Self {
        HostCtx {
            facts: Facts::of(generation),
            generation,
            decoder,
            violation: None,
            error: CString::default(),
            context: Vec::new(),
        }
    }

    /// A failed call's message, for `last_error`.
    pub fn fail(&mut self, message: String) {
        self.error = CString::new(message.replace('\0', " ")).expect("NULs replaced");
    }

    pub fn last_error(&self) -> &CStr {
        &self.error
    }

    pub fn violate(&mut self, message: String) {
        self.violation.get_or_insert_with(|| message.clone());
        self.fail(message);
    }

    pub fn start(&mut self) -> bool {
        match self.generation.start() {
            Ok(()) => true,
            Err(e) => {
                self.violate(format!("start failed: {e}"));
                false
            }
        }
    }

    pub fn step(&mut self, parents: &[u32], tokens: &[u32]) -> bool {
        if parents.len() != tokens.len() {
            self.violate(format!("step: {} parents for {} tokens", parents.len(), tokens.len()));
            return false;
        }
        match self.generation.step(parents, tokens) {
            Ok(()) => true,
            Err(e) => {
                self.violate(format!("step refused: {e}"));
                false
            }
        }
    }

    /// Row `what` of sequence `seq`; asking for a sequence that does not exist is a violation.
    pub fn row(&mut self, what: Row, seq: u32) -> Option<&[f32]> {
        let s = seq as usize;
        let found = match what {
            Row::Logits => self.generation.logits(s).is_some(),
            Row::Hidden => self.generation.hidden(s).is_some(),
            Row::Context => match self.generation.context(s) {
                Some(states) => {
                    self.context = states;
                    true
                }
                None => false,
            },
        };
        if !found {
            let name = match what {
                Row::Logits => "logits",
                Row::Hidden => "hidden state",
                Row::Context => "context",
            };
            self.violate(format!(
                "{name} of sequence {seq} requested; the batch has {}",
                self.generation.batch()
            ));
            return None;
        }
        match what {
            Row::Logits => self.generation.logits(s),
            Row::Hidden => self.generation.hidden(s),
            Row::Context => Some(&self.context),
        }
    }

    pub fn detokenize(&mut self, ids: &[u32]) -> Option<String> {
        self.generation
            .detokenize(ids)
            .map_err(|e| self.fail(format!("detokenize: {e}")))
            .ok()
    }

    pub fn similarity(&mut self, texts: &[String]) -> Option<Vec<f32>> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        // A capability question, not a violation: the decoder may do without.
        self.generation
            .similarity(&refs)
            .map_err(|e| self.fail(e.to_string()))
            .ok()
    }

    /// A message of the decoder's (extension "clipcap.log") into the log, attributed to it.
    pub fn log(&self, level: u32, message: &str) {
        let decoder = self.decoder;
        match level {
            ffi::LOG_ERROR => tracing::error!(decoder, "{message}"),
            ffi::LOG_WARN => tracing::warn!(decoder, "{message}"),
            ffi::LOG_INFO => tracing::info!(decoder, "{message}"),
            _ => tracing::debug!(decoder, "{message}"),
        }
    }

    /// The table for one `decode` call; `self` must outlive it and not move while it is used.
    pub fn table(&mut self) -> ffi::Host {
        let ctx = (self as *mut Self).cast();
        table(&self.facts, ctx, &IN_PROCESS)
    }
}

/// What a decoder knows of a caption before it asks anything: the fixed fields of its host table.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Facts {
    pub vocab_size: u32,
    pub hidden_size: u32,
    pub eos_token: u32,
    pub max_tokens: u32,
    pub stop_tokens: Vec<u32>,
    /// 0 when the bundle has no text encoder (the ABI's "absent").
    pub clip_logit_scale: f32,
}

impl Facts {
    pub fn of(g: &Generation) -> Facts {
        Facts {
            vocab_size: g.vocab_size() as u32,
            hidden_size: g.hidden_size() as u32,
            eos_token: g.eos_token(),
            max_tokens: g.max_tokens() as u32,
            stop_tokens: g.stop_tokens().to_vec(),
            clip_logit_scale: g.logit_scale().unwrap_or(0.0),
        }
    }
}

/// The functions of a host table: the ones here serve a decoder in this process, those of
/// isolation/child.rs forward to the daemon.
pub(crate) struct HostFns {
    pub start: ffi::StartFn,
    pub batch: ffi::BatchFn,
    pub step: ffi::StepFn,
    pub logits: ffi::RowFn,
    pub hidden: ffi::RowFn,
    pub context: ffi::ContextFn,
    pub random: ffi::RandomFn,
    pub detokenize: ffi::DetokenizeFn,
    pub image_text_similarity: ffi::SimilarityFn,
    pub last_error: ffi::LastErrorFn,
    pub get_extension: ffi::GetExtensionFn,
}

const IN_PROCESS: HostFns = HostFns {
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
};

/// A host table of `facts`, `ctx` and `fns`; `facts` must outlive it (the table points into it).
pub(crate) fn table(facts: &Facts, ctx: *mut c_void, fns: &HostFns) -> ffi::Host {
    ffi::Host {
        abi_version: ffi::ABI_VERSION,
        size: size_of::<ffi::Host>() as u32,
        ctx,
        vocab_size: facts.vocab_size,
        hidden_size: facts.hidden_size,
        eos_token: facts.eos_token,
        max_tokens: facts.max_tokens,
        stop_tokens: facts.stop_tokens.as_ptr(),
        num_stop_tokens: facts.stop_tokens.len() as u32,
        clip_logit_scale: facts.clip_logit_scale,
        start: fns.start,
        batch: fns.batch,
        step: fns.step,
        logits: fns.logits,
        hidden: fns.hidden,
        context: fns.context,
        random: fns.random,
        detokenize: fns.detokenize,
        image_text_similarity: fns.image_text_similarity,
        last_error: fns.last_error,
        get_extension: fns.get_extension,
    }
}

/// Extension "clipcap.log": static, so valid for every decode call.
static LOG: ffi::LogExtension = ffi::LogExtension {
    size: size_of::<ffi::LogExtension>() as u32,
    log,
};

/// The ids of the extensions every host offers (in process and in an isolated decoder's process);
/// `extension` serves each.
pub(crate) const OFFERED: [&CStr; 1] = [ffi::EXTENSION_LOG];

/// `get_extension` of a host whose "clipcap.log" table is `log`: that table for its id, else null.
///
/// # Safety
/// `id` is null or NUL-terminated (the ABI).
pub(crate) unsafe fn extension(id: *const c_char, log: &'static ffi::LogExtension) -> *const c_void {
    if id.is_null() {
        return std::ptr::null();
    }
    // SAFETY: not null; NUL-terminated by the caller's contract.
    if unsafe { CStr::from_ptr(id) } == ffi::EXTENSION_LOG {
        (log as *const ffi::LogExtension).cast()
    } else {
        std::ptr::null()
    }
}

unsafe extern "C" fn get_extension(_ctx: *mut c_void, id: *const c_char) -> *const c_void {
    // SAFETY: the ABI makes `id` null or NUL-terminated.
    unsafe { extension(id, &LOG) }
}

unsafe extern "C" fn log(ctx: *mut c_void, level: u32, message: *const c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: not null; the ABI makes `message` NUL-terminated.
    let message = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    with(unsafe { host(ctx) }, (), |h| h.log(level, &message))
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
    with(unsafe { host(ctx) }, 1, |h| status(h.start()))
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
        status(h.step(parents, tokens))
    })
}

fn status(ok: bool) -> i32 {
    if ok { 0 } else { 1 }
}

fn pointer(row: Option<&[f32]>) -> *const f32 {
    row.map_or(std::ptr::null(), <[f32]>::as_ptr)
}

unsafe extern "C" fn logits(ctx: *mut c_void, seq: u32) -> *const f32 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    with(unsafe { host(ctx) }, std::ptr::null(), |h| {
        pointer(h.row(Row::Logits, seq))
    })
}

unsafe extern "C" fn hidden(ctx: *mut c_void, seq: u32) -> *const f32 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    with(unsafe { host(ctx) }, std::ptr::null(), |h| {
        pointer(h.row(Row::Hidden, seq))
    })
}

unsafe extern "C" fn context(ctx: *mut c_void, seq: u32, len: *mut u32) -> *const f32 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    with(unsafe { host(ctx) }, std::ptr::null(), |h| {
        let width = h.generation.hidden_size();
        let states = h.row(Row::Context, seq);
        if let Some(states) = states
            && !len.is_null()
        {
            // SAFETY: `len` is non-null (checked) and points to the decoder's u32 (ABI).
            unsafe { *len = (states.len() / width) as u32 };
        }
        pointer(states)
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
        let Some(text) = h.detokenize(ids) else { return 0 };
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
        let Some(sims) = h.similarity(&owned) else { return 1 };
        // SAFETY: `out` is non-null (checked) with room for `n` floats (ABI), and `sims` has one per
        // text, `n`.
        unsafe { std::ptr::copy_nonoverlapping(sims.as_ptr(), out, sims.len()) };
        0
    })
}

unsafe extern "C" fn last_error(ctx: *mut c_void) -> *const c_char {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    unsafe { host(ctx) }.last_error().as_ptr()
}

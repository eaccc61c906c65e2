//! The safe face of the host's function table.

use std::ffi::{CStr, CString, c_void};
use std::mem::offset_of;

use crate::ffi;

/// What a decoder may see and do during one caption. The borrow checker holds the header's validity
/// rules: `logits` and `hidden` borrow `self` (valid until the next `start` or `step`, which need
/// `&mut self`); `context` borrows it mutably, since the host reuses one buffer for every `context`
/// call, so no other host call can be made while its slice is alive (tests/ui shows the misuse
/// that no longer compiles).
pub struct Host<'a> {
    raw: &'a ffi::Host,
}

impl<'a> Host<'a> {
    pub(crate) fn new(raw: &'a ffi::Host) -> Self {
        Host { raw }
    }

    fn error(&self) -> String {
        // SAFETY: the table is valid for this decode call (ABI), and last_error
        // returns a NUL-terminated string valid until the next host call.
        let message = unsafe { CStr::from_ptr((self.raw.last_error)(self.raw.ctx)) };
        message.to_string_lossy().into_owned()
    }

    pub fn vocab_size(&self) -> usize {
        self.raw.vocab_size as usize
    }

    pub fn hidden_size(&self) -> usize {
        self.raw.hidden_size as usize
    }

    pub fn eos_token(&self) -> u32 {
        self.raw.eos_token
    }

    /// The most tokens a caption may have, and the most steps a decoder may take for it.
    pub fn max_tokens(&self) -> usize {
        self.raw.max_tokens as usize
    }

    pub fn stop_tokens(&self) -> &[u32] {
        if self.raw.num_stop_tokens == 0 {
            return &[];
        }
        // SAFETY: not null (checked); the host gives `num_stop_tokens` ids, valid for the call.
        unsafe { std::slice::from_raw_parts(self.raw.stop_tokens, self.raw.num_stop_tokens as usize) }
    }

    pub fn is_stop(&self, token: u32) -> bool {
        self.stop_tokens().contains(&token)
    }

    /// CLIP's image-text logit scale, when the bundle has a text encoder.
    pub fn clip_logit_scale(&self) -> Option<f32> {
        (self.raw.clip_logit_scale > 0.0).then_some(self.raw.clip_logit_scale)
    }

    /// Back to one sequence holding just the image prefix.
    pub fn start(&mut self) -> Result<(), String> {
        // SAFETY: the table is valid for this decode call (ABI).
        match unsafe { (self.raw.start)(self.raw.ctx) } {
            0 => Ok(()),
            _ => Err(self.error()),
        }
    }

    /// Number of live sequences.
    pub fn batch(&self) -> usize {
        // SAFETY: the table is valid for this decode call (ABI).
        unsafe { (self.raw.batch)(self.raw.ctx) as usize }
    }

    /// One model step: new sequence `i` continues old sequence `parents[i]` with `tokens[i]`.
    pub fn step(&mut self, parents: &[u32], tokens: &[u32]) -> Result<(), String> {
        if parents.len() != tokens.len() {
            return Err(format!("{} parents for {} tokens", parents.len(), tokens.len()));
        }
        // SAFETY: the table is valid for this decode call (ABI); both slices have
        // `parents.len()` entries (checked).
        let status = unsafe { (self.raw.step)(self.raw.ctx, parents.as_ptr(), tokens.as_ptr(), parents.len() as u32) };
        if status == 0 { Ok(()) } else { Err(self.error()) }
    }

    /// Next-token logits of sequence `seq`.
    pub fn logits(&self, seq: usize) -> Result<&[f32], String> {
        self.row(
            // SAFETY: the table is valid for this decode call (ABI).
            unsafe { (self.raw.logits)(self.raw.ctx, seq as u32) },
            self.vocab_size(),
        )
    }

    /// Last-layer hidden state of the last position of sequence `seq`.
    pub fn hidden(&self, seq: usize) -> Result<&[f32], String> {
        self.row(
            // SAFETY: the table is valid for this decode call (ABI).
            unsafe { (self.raw.hidden)(self.raw.ctx, seq as u32) },
            self.hidden_size(),
        )
    }

    /// Hidden states of every position of sequence `seq` (prefix included), row after row. The
    /// slice lives in a buffer the next `context` call replaces: copy it to keep it.
    pub fn context(&mut self, seq: usize) -> Result<&[f32], String> {
        let mut len = 0u32;
        // SAFETY: the table is valid for this decode call (ABI); `len` is a u32 to write.
        let ptr = unsafe { (self.raw.context)(self.raw.ctx, seq as u32, &mut len) };
        self.row(ptr, len as usize * self.hidden_size())
    }

    fn row(&self, ptr: *const f32, len: usize) -> Result<&[f32], String> {
        if ptr.is_null() {
            return Err(self.error());
        }
        // SAFETY: not null (checked); the host returns `len` floats, valid until its next call, which `&self`
        // borrowing the result prevents.
        Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
    }

    /// The caption's seeded random stream: uniform in [0, 1).
    pub fn random(&mut self) -> f64 {
        // SAFETY: the table is valid for this decode call (ABI).
        unsafe { (self.raw.random)(self.raw.ctx) }
    }

    /// Text of `ids`, special tokens dropped.
    pub fn detokenize(&self, ids: &[u32]) -> String {
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: the table is valid for this decode call (ABI); `ids` and `buf`
            // are valid for the lengths passed.
            let n = unsafe {
                (self.raw.detokenize)(
                    self.raw.ctx,
                    ids.as_ptr(),
                    ids.len() as u32,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n <= buf.len() {
                buf.truncate(n);
                return String::from_utf8_lossy(&buf).into_owned();
            }
            buf.resize(n, 0);
        }
    }

    /// The table of the host's extension `id`, or None when the host does not offer it (or is of a
    /// minor without extensions).
    pub fn extension(&self, id: &CStr) -> Option<*const c_void> {
        // The field exists only in hosts of minor 1 and later; `size` says whether this one has it.
        if (self.raw.size as usize) < offset_of!(ffi::Host, get_extension) + size_of::<ffi::GetExtensionFn>() {
            return None;
        }
        // SAFETY: the table is valid for this decode call (ABI) and holds `get_extension` (size
        // checked above); `id` is NUL-terminated.
        let table = unsafe { (self.raw.get_extension)(self.raw.ctx, id.as_ptr()) };
        (!table.is_null()).then_some(table)
    }

    /// Writes `message` to the host's log (`ffi::LOG_*` level); false when the host has no log.
    pub fn log(&self, level: u32, message: &str) -> bool {
        let Some(table) = self.extension(ffi::EXTENSION_LOG) else {
            return false;
        };
        let log = table.cast::<ffi::LogExtension>();
        // SAFETY: the host returned this table for "clipcap.log", so it is a LogExtension whose
        // `size` field comes first; it is valid for this decode call.
        if (unsafe { (*log).size } as usize) < size_of::<ffi::LogExtension>() {
            return false;
        }
        let text = CString::new(message.replace('\0', " ")).expect("NULs replaced");
        // SAFETY: a whole LogExtension (size checked); `text` is NUL-terminated and outlives the call.
        unsafe { ((*log).log)(self.raw.ctx, level, text.as_ptr()) };
        true
    }

    /// Cosine similarity of each text to the image (CLIP); an error when the bundle has no text encoder.
    pub fn image_text_similarity(&mut self, texts: &[String]) -> Result<Vec<f32>, String> {
        let c: Vec<CString> = texts
            .iter()
            .map(|t| CString::new(t.replace('\0', " ")).expect("NULs replaced"))
            .collect();
        let ptrs: Vec<_> = c.iter().map(|s| s.as_ptr()).collect();
        let mut out = vec![0f32; texts.len()];
        // SAFETY: the table is valid for this decode call (ABI); `ptrs` holds
        // NUL-terminated strings alive in `c`, and `out` has room for one float per text.
        let status = unsafe {
            (self.raw.image_text_similarity)(self.raw.ctx, ptrs.as_ptr(), ptrs.len() as u32, out.as_mut_ptr())
        };
        if status == 0 { Ok(out) } else { Err(self.error()) }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::c_char;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    static LOOKUPS: AtomicUsize = AtomicUsize::new(0);
    static LOGGED: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn log(_: *mut c_void, _: u32, _: *const c_char) {
        LOGGED.fetch_add(1, Ordering::SeqCst);
    }
    static LOG: ffi::LogExtension = ffi::LogExtension {
        size: size_of::<ffi::LogExtension>() as u32,
        log,
    };
    unsafe extern "C" fn get_extension(_: *mut c_void, id: *const c_char) -> *const c_void {
        LOOKUPS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the SDK passes a NUL-terminated id.
        match unsafe { CStr::from_ptr(id) } == ffi::EXTENSION_LOG {
            true => (&raw const LOG).cast(),
            false => std::ptr::null(),
        }
    }
    unsafe extern "C" fn start(_: *mut c_void) -> i32 {
        0
    }
    unsafe extern "C" fn batch(_: *mut c_void) -> u32 {
        1
    }
    unsafe extern "C" fn step(_: *mut c_void, _: *const u32, _: *const u32, _: u32) -> i32 {
        0
    }
    unsafe extern "C" fn row(_: *mut c_void, _: u32) -> *const f32 {
        std::ptr::null()
    }
    unsafe extern "C" fn context(_: *mut c_void, _: u32, _: *mut u32) -> *const f32 {
        std::ptr::null()
    }
    unsafe extern "C" fn random(_: *mut c_void) -> f64 {
        0.5
    }
    unsafe extern "C" fn detokenize(_: *mut c_void, _: *const u32, _: u32, _: *mut c_char, _: usize) -> usize {
        0
    }
    unsafe extern "C" fn similarity(_: *mut c_void, _: *const *const c_char, _: u32, _: *mut f32) -> i32 {
        1
    }
    unsafe extern "C" fn last_error(_: *mut c_void) -> *const c_char {
        c"".as_ptr()
    }

    fn table(size: usize) -> ffi::Host {
        ffi::Host {
            abi_version: ffi::ABI_VERSION,
            size: size as u32,
            ctx: std::ptr::null_mut(),
            vocab_size: 2,
            hidden_size: 2,
            eos_token: 1,
            max_tokens: 4,
            stop_tokens: std::ptr::null(),
            num_stop_tokens: 0,
            clip_logit_scale: 0.0,
            start,
            batch,
            step,
            logits: row,
            hidden: row,
            context,
            random,
            detokenize,
            image_text_similarity: similarity,
            last_error,
            get_extension,
        }
    }

    #[test]
    fn extensions_are_looked_up_only_in_hosts_that_have_them() {
        // A host of minor 0 states a table without `get_extension`: the SDK never reads that field
        // (here it exists, and counts calls), so a plugin of minor 1 runs in the older host.
        let older = table(ffi::HOST_SIZE_2_0);
        let host = Host::new(&older);
        assert!(host.extension(ffi::EXTENSION_LOG).is_none());
        assert!(!host.log(ffi::LOG_INFO, "dropped"));
        assert_eq!(LOOKUPS.load(Ordering::SeqCst), 0);

        let current = table(size_of::<ffi::Host>());
        let host = Host::new(&current);
        assert!(host.extension(c"clipcap.no-such-extension").is_none());
        assert!(host.log(ffi::LOG_INFO, "kept"));
        assert_eq!((LOOKUPS.load(Ordering::SeqCst), LOGGED.load(Ordering::SeqCst)), (2, 1));
    }
}

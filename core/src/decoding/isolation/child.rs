//! `clipcap decoder-host`: the process an isolated decoder runs in. It loads the plugin with the
//! same checks as the daemon, confines itself (sandbox.rs), creates the decoder instance, then
//! serves captions: each `decode` gets a host table whose functions ask the daemon over the socket
//! and read rows from the shared arena. It exits when the daemon closes the socket.

use std::ffi::{CStr, CString, c_char, c_void};
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use clipcap_plugin_sdk::ffi;

use super::arena::ArenaReader;
use super::protocol::{self, Call, Done, Refusal, Reply, ToChild, ToParent};
use super::sandbox::{self, SandboxError};
use crate::decoding::host::{self, Facts, HostFns, Row};
use crate::decoding::plugin::{self, LoadedDecoder, create_raw, decode_raw};
use crate::decoding::{PluginError, security};

/// The descriptors the daemon hands its decoder process (server.rs puts them there).
pub(crate) const SOCKET_FD: i32 = 3;
pub(crate) const ARENA_FD: i32 = 4;

/// What `clipcap decoder-host` is told on its command line.
#[derive(Debug, Clone)]
pub struct HostArgs {
    pub plugin: PathBuf,
    pub decoder: String,
    /// The instance's label (as in the daemon's log), so that `ps` tells the processes apart.
    pub label: String,
    pub vetting: crate::decoding::Vetting,
    pub memory_mb: u64,
}

/// Why a decoder's process could not start, or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("{}: no decoder `{decoder}`", .plugin.display())]
    NoDecoder { plugin: PathBuf, decoder: String },
    #[error("expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
    #[error(transparent)]
    Socket(#[from] protocol::RecvError),
}

/// Runs the decoder process until the daemon closes the socket; an error says why it cannot start.
pub fn decoder_host(args: &HostArgs) -> Result<(), HostError> {
    // SAFETY: the daemon started this process with its socket and the arena on these descriptors
    // (server.rs), and nothing else in this process owns them.
    let (socket, arena) = unsafe { (OwnedFd::from_raw_fd(SOCKET_FD), OwnedFd::from_raw_fd(ARENA_FD)) };
    let mut socket = UnixStream::from(socket);
    sandbox::limit_memory(args.memory_mb)?;
    let file = security::open(&args.plugin, &args.vetting)?;
    let info = plugin::load(&args.plugin, file)?
        .into_iter()
        .find(|d| d.info.name == args.decoder)
        .ok_or_else(|| HostError::NoDecoder {
            plugin: args.plugin.clone(),
            decoder: args.decoder.clone(),
        })?;
    sandbox::confine()?;
    let values = match protocol::recv(&mut socket, None) {
        Ok(ToChild::Create { values }) => values,
        Ok(other) => {
            return Err(HostError::Unexpected {
                expected: "Create",
                got: format!("{other:?}"),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let instance = match create_raw(&info, &values) {
        Ok(instance) => {
            send(&mut socket, &ToParent::Created(Ok(())));
            instance
        }
        Err(refused) => {
            send(&mut socket, &ToParent::Created(Err(Refusal(refused.0))));
            return Ok(());
        }
    };
    let mut remote = Remote {
        socket,
        arena: ArenaReader::new(File::from(arena)),
        last_error: CString::default(),
        width: 0,
    };
    loop {
        match protocol::recv(&mut remote.socket, None) {
            Ok(ToChild::Decode { facts, arena_bytes }) => {
                let done = remote.decode(&info, instance, &facts, arena_bytes);
                send(&mut remote.socket, &ToParent::Done(done));
            }
            Err(protocol::RecvError::Closed) => return Ok(()),
            Ok(other) => {
                return Err(HostError::Unexpected {
                    expected: "Decode",
                    got: format!("{other:?}"),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends, or ends this process: without the daemon there is nothing left to do.
fn send(socket: &mut UnixStream, message: &ToParent) {
    if protocol::send(socket, message).is_err() {
        std::process::exit(0);
    }
}

/// The host table's context in the decoder's process.
struct Remote {
    socket: UnixStream,
    arena: ArenaReader,
    last_error: CString,
    /// The caption's hidden size, for `context`'s length in positions.
    width: usize,
}

impl Remote {
    fn decode(&mut self, info: &LoadedDecoder, instance: *mut c_void, facts: &Facts, arena_bytes: u64) -> Done {
        self.width = facts.hidden_size as usize;
        if let Err(e) = self.arena.resize(arena_bytes) {
            return Done::failed(format!("cannot map the arena: {e}"));
        }
        let table = host::table(facts, (self as *mut Self).cast(), &FORWARDING);
        // SAFETY: `instance` came from this decoder's `create`; `table` and `self` (its ctx) outlive
        // the call and `self` is not otherwise used during it.
        unsafe { decode_raw(info, instance, &table, facts.max_tokens as usize) }
    }

    /// Asks the daemon; ends this process if the daemon is gone or answers nonsense.
    fn call(&mut self, call: Call) -> Reply {
        send(&mut self.socket, &ToParent::Call(call));
        match protocol::recv(&mut self.socket, None) {
            Ok(ToChild::Reply(reply)) => reply,
            _ => std::process::exit(0),
        }
    }

    /// A request refused here, before it could be sent (null arrays): the daemon records it as the
    /// violation it would be in process.
    fn violate(&mut self, message: &str) -> i32 {
        send(&mut self.socket, &ToParent::Call(Call::Violation(message.into())));
        self.fail(message.into());
        1
    }

    fn fail(&mut self, message: String) {
        self.last_error = CString::new(message.replace('\0', " ")).expect("NULs replaced");
    }

    fn stepped(&mut self, reply: Reply) -> i32 {
        let Reply::Stepped { ok, arena_bytes } = reply else {
            std::process::exit(2)
        };
        if let Err(e) = self.arena.resize(arena_bytes) {
            self.fail(format!("cannot map the arena: {e}"));
            return 1;
        }
        match ok {
            Ok(()) => 0,
            Err(Refusal(message)) => {
                self.fail(message);
                1
            }
        }
    }

    fn row(&mut self, what: Row, seq: u32) -> Option<&[f32]> {
        let Reply::Row(slot) = self.call(Call::Row { what, seq }) else {
            std::process::exit(2)
        };
        match slot {
            Ok(slot) => self.arena.row(slot.offset, slot.len),
            Err(Refusal(message)) => {
                self.fail(message);
                None
            }
        }
    }
}

/// The host table's functions in the decoder's process: each asks the daemon.
const FORWARDING: HostFns = HostFns {
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

/// The context behind the table's `ctx`.
///
/// # Safety
/// `ctx` is the `ctx` of the table `Remote::decode` made, during that `decode` call, and nothing
/// else uses the `Remote` meanwhile (the ABI: a decoder's calls come one at a time).
unsafe fn remote<'r>(ctx: *mut c_void) -> &'r mut Remote {
    // SAFETY: the caller's contract above.
    unsafe { &mut *ctx.cast::<Remote>() }
}

// A panic in these functions aborts the process (Rust does not unwind out of `extern "C"`), which
// the daemon reports as a crash of the decoder.

unsafe extern "C" fn start(ctx: *mut c_void) -> i32 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    let r = unsafe { remote(ctx) };
    let reply = r.call(Call::Start);
    r.stepped(reply)
}

unsafe extern "C" fn batch(ctx: *mut c_void) -> u32 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    match unsafe { remote(ctx) }.call(Call::Batch) {
        Reply::Batch(n) => n,
        _ => std::process::exit(2),
    }
}

unsafe extern "C" fn step(ctx: *mut c_void, parents: *const u32, tokens: *const u32, n: u32) -> i32 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    let r = unsafe { remote(ctx) };
    if n > 0 && (parents.is_null() || tokens.is_null()) {
        return r.violate("step: null parents or tokens");
    }
    let (parents, tokens) = if n == 0 {
        (Vec::new(), Vec::new())
    } else {
        // SAFETY: both are non-null (checked) and the ABI makes them arrays of `n` entries.
        unsafe {
            (
                std::slice::from_raw_parts(parents, n as usize).to_vec(),
                std::slice::from_raw_parts(tokens, n as usize).to_vec(),
            )
        }
    };
    let reply = r.call(Call::Step { parents, tokens });
    r.stepped(reply)
}

unsafe extern "C" fn logits(ctx: *mut c_void, seq: u32) -> *const f32 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    let row = unsafe { remote(ctx) }.row(Row::Logits, seq);
    row.map_or(std::ptr::null(), <[f32]>::as_ptr)
}

unsafe extern "C" fn hidden(ctx: *mut c_void, seq: u32) -> *const f32 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    let row = unsafe { remote(ctx) }.row(Row::Hidden, seq);
    row.map_or(std::ptr::null(), <[f32]>::as_ptr)
}

unsafe extern "C" fn context(ctx: *mut c_void, seq: u32, len: *mut u32) -> *const f32 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    let r = unsafe { remote(ctx) };
    let width = r.width.max(1);
    let Some(states) = r.row(Row::Context, seq) else {
        return std::ptr::null();
    };
    if !len.is_null() {
        // SAFETY: `len` is non-null (checked) and points to the decoder's u32 (ABI).
        unsafe { *len = (states.len() / width) as u32 };
    }
    states.as_ptr()
}

unsafe extern "C" fn random(ctx: *mut c_void) -> f64 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    match unsafe { remote(ctx) }.call(Call::Random) {
        Reply::Random(x) => x,
        _ => std::process::exit(2),
    }
}

unsafe extern "C" fn detokenize(ctx: *mut c_void, ids: *const u32, n: u32, buf: *mut c_char, cap: usize) -> usize {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    let r = unsafe { remote(ctx) };
    let ids = if n == 0 || ids.is_null() {
        Vec::new()
    } else {
        // SAFETY: `ids` is non-null (checked) and the ABI makes it an array of `n` ids.
        unsafe { std::slice::from_raw_parts(ids, n as usize) }.to_vec()
    };
    let Reply::Text(text) = r.call(Call::Detokenize(ids)) else {
        std::process::exit(2)
    };
    match text {
        Ok(text) => {
            if !buf.is_null() {
                // SAFETY: `buf` is non-null (checked) with room for `cap` bytes (ABI); at most `cap`
                // are written.
                unsafe { std::ptr::copy_nonoverlapping(text.as_ptr().cast(), buf, text.len().min(cap)) };
            }
            text.len()
        }
        Err(message) => {
            r.fail(message.0);
            0
        }
    }
}

unsafe extern "C" fn image_text_similarity(
    ctx: *mut c_void,
    texts: *const *const c_char,
    n: u32,
    out: *mut f32,
) -> i32 {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    let r = unsafe { remote(ctx) };
    if n > 0 && (texts.is_null() || out.is_null()) {
        return r.violate("image_text_similarity: null texts or output");
    }
    let owned: Vec<String> = if n == 0 {
        Vec::new()
    } else {
        // SAFETY: `texts` is non-null (checked) and the ABI makes it an array of `n` pointers, each
        // null or NUL-terminated.
        unsafe { std::slice::from_raw_parts(texts, n as usize) }
            .iter()
            .map(|&p| {
                if p.is_null() {
                    String::new()
                } else {
                    // SAFETY: non-null (checked); the ABI makes each text NUL-terminated.
                    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
                }
            })
            .collect()
    };
    let Reply::Similarity(sims) = r.call(Call::Similarity(owned)) else {
        std::process::exit(2)
    };
    match sims {
        Ok(sims) => {
            // SAFETY: `out` is non-null (checked) with room for `n` floats (ABI); the daemon sends one
            // similarity per text, and at most `n` are copied.
            unsafe { std::ptr::copy_nonoverlapping(sims.as_ptr(), out, sims.len().min(n as usize)) };
            0
        }
        Err(message) => {
            r.fail(message.0);
            1
        }
    }
}

unsafe extern "C" fn last_error(ctx: *mut c_void) -> *const c_char {
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    unsafe { remote(ctx) }.last_error.as_ptr()
}

/// Extension "clipcap.log" in the decoder's process: messages go to the daemon's log.
static LOG: ffi::LogExtension = ffi::LogExtension {
    size: size_of::<ffi::LogExtension>() as u32,
    log,
};

unsafe extern "C" fn get_extension(_ctx: *mut c_void, id: *const c_char) -> *const c_void {
    // SAFETY: the ABI makes `id` null or NUL-terminated.
    unsafe { host::extension(id, &LOG) }
}

unsafe extern "C" fn log(ctx: *mut c_void, level: u32, message: *const c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: not null; the ABI makes `message` NUL-terminated.
    let message = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
    // SAFETY: the plugin passes the ctx of the table it was given, during `decode` (ABI).
    send(
        &mut unsafe { remote(ctx) }.socket,
        &ToParent::Call(Call::Log { level, message }),
    );
}

//! Decoders that break the plugin rules on purpose, so the host's tests can show each violation is
//! caught, reported, and survived (in process, or in their own process for the faults that would
//! kill any process), and one that uses the host's extensions through the SDK. Built
//! with the workspace, never installed.

use std::ffi::CStr;

use clipcap_plugin_sdk::{Decoder, Host, Param, Params, export_plugin};

/// Panics in the middle of a caption, after a valid step.
pub struct Panic;
impl Decoder for Panic {
    const NAME: &'static CStr = c"panic";
    const DESCRIPTION: &'static CStr = c"panics during decode";
    const PARAMS: &'static [Param] = &[];
    fn new(_: &Params) -> Result<Self, String> {
        Ok(Panic)
    }
    fn decode(&mut self, host: &mut Host) -> Result<Vec<u32>, String> {
        host.step(&[0], &[13])?;
        panic!("deliberate panic in the middle of a caption");
    }
}

/// Returns a token id outside the vocabulary.
pub struct BadToken;
impl Decoder for BadToken {
    const NAME: &'static CStr = c"bad_token";
    const DESCRIPTION: &'static CStr = c"returns a token id outside the vocabulary";
    const PARAMS: &'static [Param] = &[];
    fn new(_: &Params) -> Result<Self, String> {
        Ok(BadToken)
    }
    fn decode(&mut self, host: &mut Host) -> Result<Vec<u32>, String> {
        Ok(vec![13, host.vocab_size() as u32 + 7])
    }
}

/// Asks to continue a sequence that does not exist, ignores the refusal, and returns a valid caption.
pub struct BadParent;
impl Decoder for BadParent {
    const NAME: &'static CStr = c"bad_parent";
    const DESCRIPTION: &'static CStr = c"steps from a sequence that does not exist";
    const PARAMS: &'static [Param] = &[];
    fn new(_: &Params) -> Result<Self, String> {
        Ok(BadParent)
    }
    fn decode(&mut self, host: &mut Host) -> Result<Vec<u32>, String> {
        let _ = host.step(&[5], &[13]);
        Ok(vec![13])
    }
}

/// Keeps stepping past the budget, ignoring the refusals, then returns a valid caption.
pub struct StepFlood;
impl Decoder for StepFlood {
    const NAME: &'static CStr = c"step_flood";
    const DESCRIPTION: &'static CStr = c"steps beyond the budget";
    const PARAMS: &'static [Param] = &[];
    fn new(_: &Params) -> Result<Self, String> {
        Ok(StepFlood)
    }
    fn decode(&mut self, host: &mut Host) -> Result<Vec<u32>, String> {
        for _ in 0..host.max_tokens() + 5 {
            let _ = host.step(&[0], &[262]);
        }
        Ok(vec![13])
    }
}

/// Fails to build when `fail` is set: the host reports the plugin's message.
pub struct Picky;
impl Decoder for Picky {
    const NAME: &'static CStr = c"picky";
    const DESCRIPTION: &'static CStr = c"refuses to be created with fail = true";
    const PARAMS: &'static [Param] = &[Param::bool(c"fail", c"refuse creation", false)];
    fn new(p: &Params) -> Result<Self, String> {
        if p.bool("fail") {
            Err("picky refuses to be created (fail = true)".into())
        } else {
            Ok(Picky)
        }
    }
    fn decode(&mut self, host: &mut Host) -> Result<Vec<u32>, String> {
        Err(format!("picky never captions (vocabulary of {})", host.vocab_size()))
    }
}

/// Writes to the host's log through the "clipcap.log" extension, then ends the caption at once;
/// fails when the host offers no log.
pub struct Logs;
impl Decoder for Logs {
    const NAME: &'static CStr = c"logs";
    const DESCRIPTION: &'static CStr = c"logs through the host's clipcap.log extension";
    const PARAMS: &'static [Param] = &[];
    fn new(_: &Params) -> Result<Self, String> {
        Ok(Logs)
    }
    fn decode(&mut self, host: &mut Host) -> Result<Vec<u32>, String> {
        if host.extension(c"clipcap.no-such-extension").is_some() {
            return Err("the host offered an extension that does not exist".into());
        }
        if !host.log(clipcap_plugin_sdk::ffi::LOG_INFO, "logs: hello from the SDK") {
            return Err("the host has no clipcap.log extension".into());
        }
        Ok(vec![host.eos_token()])
    }
}

/// The faults only an isolated decoder survives (`kind`), each on the `after`-th caption of its
/// process; the captions before it end at once with end-of-text.
pub struct Crash {
    kind: Fault,
    after: i64,
    captions: i64,
}

#[derive(Clone, Copy)]
enum Fault {
    Segfault,
    Abort,
    Spin,
    Hang,
    Hog,
    Garbage,
    Network(u16),
}

impl Decoder for Crash {
    const NAME: &'static CStr = c"crash";
    const DESCRIPTION: &'static CStr =
        c"kind 0 segfaults, 1 aborts, 2 loops forever, 3 sleeps forever, 4 allocates without end, 5 writes garbage to every descriptor, 6 connects to 127.0.0.1:port";
    const PARAMS: &'static [Param] = &[
        Param::int(c"kind", c"the fault (see the description)", 0, 0, 6),
        Param::int(c"after", c"fault on this caption of the process", 1, 1, 1000),
        Param::int(c"port", c"kind 6: the port", 9, 1, 65535),
    ];
    fn new(p: &Params) -> Result<Self, String> {
        let kind = match p.int("kind") {
            0 => Fault::Segfault,
            1 => Fault::Abort,
            2 => Fault::Spin,
            3 => Fault::Hang,
            4 => Fault::Hog,
            5 => Fault::Garbage,
            _ => Fault::Network(p.int("port") as u16),
        };
        Ok(Crash {
            kind,
            after: p.int("after"),
            captions: 0,
        })
    }
    fn decode(&mut self, host: &mut Host) -> Result<Vec<u32>, String> {
        self.captions += 1;
        if self.captions < self.after {
            return Ok(vec![host.eos_token()]);
        }
        match self.kind {
            // SAFETY: none: an invalid write is the fault this decoder exists to commit.
            Fault::Segfault => unsafe { std::ptr::without_provenance_mut::<u32>(8).write_volatile(1) },
            Fault::Abort => std::process::abort(),
            Fault::Spin => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            Fault::Hang => std::thread::sleep(std::time::Duration::from_secs(3600)),
            Fault::Hog => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Fault::Garbage => {
                for fd in 0..64 {
                    // SAFETY: `write` with a valid buffer and its length; a descriptor that is not
                    // open just fails.
                    unsafe { libc::write(fd, b"garbage!garbage!".as_ptr().cast(), 16) };
                }
            }
            Fault::Network(port) => {
                std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
            }
        }
        Ok(vec![host.eos_token()])
    }
}

export_plugin!(name: c"misbehave", decoders: [Panic, BadToken, BadParent, StepFlood, Picky, Logs, Crash]);

//! Decoders that break the plugin rules on purpose, so the host's tests can show each violation is
//! caught, reported, and survived, and one that uses the host's extensions through the SDK. Built
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

export_plugin!(name: c"misbehave", decoders: [Panic, BadToken, BadParent, StepFlood, Picky, Logs]);

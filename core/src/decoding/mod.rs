//! Decoding strategies live in plugins (shared libraries with a C ABI, include/clipcap_decoder.h);
//! this module loads them and serves them.
//!
//! A decoder drives a [`Generation`] through the host function table: it reads logits and hidden
//! states of the live sequences and asks for steps as (parent sequence, next token) pairs. The host
//! owns the model and the KV cache, enforces the budget and checks every request and every result,
//! so a misbehaving decoder can only fail its own caption.

mod generation;
mod host;
mod isolation;
mod params;
mod plugin;
mod registry;
mod security;

use std::path::PathBuf;

pub use generation::{ClipGuide, Generation, SimilarityError};
pub use isolation::{HostArgs, IsolationOptions, ListingArgs, decoder_host, describe_plugin};
pub use params::{DecoderRequest, ParamValue};
pub use plugin::{DecoderInfo, ParamInfo, ParamKind};
pub use registry::{DecoderInstance, PluginOptions, Plugins};
pub use security::Vetting;

use crate::lm::LmError;

/// A caption that a decoder did not produce.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Lm(#[from] LmError),
    #[error("decoder `{decoder}`: {fault}")]
    Decoder { decoder: String, fault: DecoderFault },
}

/// What a decoder did wrong in one caption.
#[derive(Debug, thiserror::Error)]
pub enum DecoderFault {
    /// A request through the host table that a correct decoder never makes (host.rs says which).
    #[error("{0}")]
    Violation(String),
    /// The decoder reported failure; its own message.
    #[error("{0}")]
    Failed(String),
    #[error("reported {len} tokens; at most {max} are allowed")]
    TooManyTokens { len: usize, max: usize },
    #[error("returned no tokens")]
    NoTokens,
    #[error("returned token {token}, outside the vocabulary of {vocab}")]
    Token { token: u32, vocab: usize },
    /// An isolated decoder's process died during the caption.
    #[error("its process crashed: {0}")]
    Crashed(String),
    /// An isolated decoder computed longer than allowed between two host calls (it was killed).
    #[error("no answer within {} ms; its process was killed", .0.as_millis())]
    TimedOut(std::time::Duration),
    /// An isolated decoder's process broke the protocol (it was killed).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// An isolated decoder whose process is not running: it failed and waits to be restarted.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl DecoderFault {
    /// The kind of fault, for metrics and records.
    pub fn kind(&self) -> FaultKind {
        match self {
            DecoderFault::Violation(_) => FaultKind::Violation,
            DecoderFault::Failed(_) => FaultKind::Failed,
            DecoderFault::TooManyTokens { .. } | DecoderFault::NoTokens | DecoderFault::Token { .. } => {
                FaultKind::Output
            }
            DecoderFault::Crashed(_) => FaultKind::Crashed,
            DecoderFault::TimedOut(_) => FaultKind::Timeout,
            DecoderFault::Protocol(_) => FaultKind::Protocol,
            DecoderFault::Unavailable(_) => FaultKind::Unavailable,
        }
    }
}

/// Why a caption failed, in one word: the kind of a [`DecoderFault`], or `Model` when the model path
/// failed rather than the decoder. docs/api.md lists them (the `fault` of `fallback_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    Violation,
    Failed,
    Output,
    Crashed,
    Timeout,
    Protocol,
    Unavailable,
    Model,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Violation,
        FaultKind::Failed,
        FaultKind::Output,
        FaultKind::Crashed,
        FaultKind::Timeout,
        FaultKind::Protocol,
        FaultKind::Unavailable,
        FaultKind::Model,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Violation => "violation",
            FaultKind::Failed => "failed",
            FaultKind::Output => "output",
            FaultKind::Crashed => "crashed",
            FaultKind::Timeout => "timeout",
            FaultKind::Protocol => "protocol",
            FaultKind::Unavailable => "unavailable",
            FaultKind::Model => "model",
        }
    }
}

/// A plugin library (or plugin folder) that was not loaded, and why. `Plugins::refused` lists them.
#[derive(Debug, thiserror::Error, serde::Serialize)]
#[error("{}: {reason}", path.display())]
pub struct PluginError {
    pub path: PathBuf,
    #[serde(serialize_with = "as_text")]
    pub reason: PluginFault,
}

#[derive(Debug, thiserror::Error)]
pub enum PluginFault {
    #[error("cannot read folder: {0}")]
    Folder(std::io::Error),
    /// The file or a folder above it could be replaced by others (security.rs).
    #[error("{0}")]
    Insecure(String),
    #[error("cannot open: {0}")]
    Open(std::io::Error),
    #[error("built for {plugin}; this clipcap runs on {host}")]
    Architecture { plugin: String, host: String },
    #[error("cannot load: {0}")]
    Load(libloading::Error),
    /// The descriptor broke the ABI's rules (plugin.rs says which).
    #[error("{0}")]
    Descriptor(String),
    #[error("decoder `{decoder}` is already provided by {}", other.display())]
    Duplicate { decoder: String, other: PathBuf },
    /// Not signed by a trusted key, or changed since (security.trusted_keys_file).
    #[error("{0}")]
    Untrusted(crate::trust::TrustFault),
    /// The process that read the descriptor (isolation/listing.rs) crashed, hung or could not start.
    #[error("{0}")]
    Lister(String),
    /// A refusal that process gave: one of the reasons above, as text.
    #[error("{0}")]
    Relayed(String),
    /// The file changed between its listing and its loading into this process.
    #[error("changed since it was listed: its decoders are no longer those listed")]
    Changed,
}

/// A decoder that cannot be created as asked: a bad spec or table, an unknown decoder or parameter,
/// a bad value, or the plugin's own refusal.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("decoder spec {spec:?}: {reason}")]
    Spec { spec: String, reason: String },
    #[error("decoders.{table}.decoder = {value} is not a decoder name")]
    Table { table: String, value: ParamValue },
    #[error("no decoder `{decoder}` (from {label:?}); available: {available}")]
    Unknown {
        decoder: String,
        label: String,
        available: String,
    },
    #[error("decoder `{decoder}` ({label}): unknown parameter `{param}`; {known}")]
    UnknownParam {
        decoder: String,
        label: String,
        param: String,
        known: String,
    },
    #[error("decoder `{decoder}` ({label}): parameter `{param}` = {value}: {reason}")]
    BadValue {
        decoder: String,
        label: String,
        param: String,
        value: ParamValue,
        reason: String,
    },
    #[error("decoder `{decoder}` could not be created: {message}")]
    Create { decoder: String, message: String },
}

fn as_text<S: serde::Serializer>(value: &impl std::fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

//! Decoding strategies live in plugins (shared libraries with a C ABI, include/clipcap_decoder.h);
//! this module loads them and serves them.
//!
//! A decoder drives a [`Generation`] through the host function table: it reads logits and hidden
//! states of the live sequences and asks for steps as (parent sequence, next token) pairs. The host
//! owns the model and the KV cache, enforces the budget and checks every request and every result,
//! so a misbehaving decoder can only fail its own caption.

mod generation;
mod host;
mod params;
mod plugin;
mod registry;
mod security;

pub use generation::{ClipGuide, Generation};
pub use params::{DecoderRequest, ParamValue};
pub use plugin::{DecoderInfo, ParamInfo, ParamKind};
pub use registry::{DecoderInstance, Plugins, Refusal};

use crate::lm::LmError;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Lm(#[from] LmError),
    #[error("decoder `{decoder}`: {message}")]
    Decoder { decoder: String, message: String },
}

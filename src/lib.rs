//! clipcap: image captioning (CLIP -> mapper -> GPT-2) through ONNX Runtime.
//!
//! See ARCHITECTURE.md for the map of modules and the rules that keep them apart.

pub mod bench;
pub mod bundle;
pub mod captioner;
pub mod capture;
pub mod clip_text;
pub mod config;
pub mod decoding;
pub mod eval;
pub mod imageio;
pub mod lm;
pub mod metrics;
pub mod preprocess;
pub mod report;
pub mod runtime;
pub mod service;
pub mod vision;

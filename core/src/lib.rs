//! clipcap-core: the model path of clipcap, image in, caption out (CLIP -> mapper -> GPT-2 through
//! ONNX Runtime, text generation by decoder plugins), and the caption metrics.
//!
//! It knows nothing of the configuration file, the command line or the daemon: callers pass small
//! option structs ([`runtime::RuntimeOptions`], [`decoding::PluginOptions`]). Every module has its
//! own error type naming the file, tensor or plugin at fault. See ARCHITECTURE.md.

mod batch;
pub mod bundle;
pub mod captioner;
mod clip_text;
pub mod decoding;
pub mod graph_io;
pub mod imageio;
mod lm;
pub mod metrics;
pub mod preprocess;
pub mod runtime;
pub mod trust;
mod vision;

pub use batch::{BatchStats, BatchedLm, Batching, LmSession};
pub use lm::{LanguageModel, LmError, Padding};
pub use vision::{VisionError, cosine};

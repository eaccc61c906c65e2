//! clipcap's daemon and commands as a library: the configuration, the frame sources, the service,
//! publishing and the evaluation and report commands. The model path is the `clipcap-core` crate;
//! the command line (src/main.rs and its commands) and the fuzz harnesses (fuzz/) are this library's
//! users.

pub mod bench;
pub mod config;
pub mod decoders;
pub mod eval;
pub mod gallery;
pub mod jobs;
pub mod plot;
mod publish;
pub mod ratings;
pub mod records;
pub mod report;
mod ros2;
pub mod service;
pub mod settings;
mod shutdown;
pub mod source;
pub mod table;
mod tls;

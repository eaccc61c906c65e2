//! clipcap's daemon and commands as a library: the configuration, capture, the service, publishing and
//! the evaluation and report commands. The model path is the `clipcap-core` crate; the command line
//! (src/main.rs) and the fuzz harnesses (fuzz/) are this library's users.

pub mod bench;
pub mod capture;
pub mod config;
pub mod eval;
mod publish;
pub mod report;
mod ros2;
pub mod service;
mod shutdown;
mod tls;

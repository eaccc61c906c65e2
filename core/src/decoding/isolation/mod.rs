//! Decoders in their own process (`isolate = true`): a crash, an endless loop, a memory blow-up or
//! nonsense on the wire costs the caption in progress, never the daemon.
//!
//! The daemon keeps the model, the KV cache and every check of the in-process host (host.rs); the
//! decoder's process (`clipcap decoder-host`, child.rs) loads the plugin, confines itself
//! (sandbox.rs) and runs `create` and `decode` with a host table whose calls travel over a socket
//! (protocol.rs) and whose rows of floats come through shared memory (arena.rs). server.rs is the
//! daemon's side of one such process; this module restarts it, with backoff, after it fails.
//! listing.rs reads a library's descriptor the same way, in a process of its own.

mod arena;
mod child;
mod listing;
pub(crate) mod protocol;
mod sandbox;
mod server;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use child::{HostArgs, decoder_host};
pub use listing::{ListingArgs, describe_plugin};
pub(crate) use listing::{describe, lister_runs};
use protocol::Done;
use server::Child;
pub use server::StartError;

use super::DecoderFault;
use super::host::HostCtx;

/// How isolated decoders run.
#[derive(Debug, Clone, PartialEq)]
pub struct IsolationOptions {
    /// The executable with the `decoder-host` command: clipcap itself.
    pub program: PathBuf,
    /// The decoder process's memory limit (heap and private mappings), MiB.
    pub memory_mb: u64,
    /// CPU time a decoder may use on one caption, seconds (RLIMIT_CPU; the kernel kills it after).
    pub cpu_seconds: u64,
    /// Longest the decoder may compute between two host calls before it is killed.
    pub wait: Duration,
    /// First wait before a failed decoder's process is started again; doubled after each
    /// consecutive failure, up to 30 s.
    pub restart: Duration,
}

/// Everything needed to start (and restart) one decoder's process.
pub(crate) struct Launch {
    pub options: IsolationOptions,
    pub plugin: PathBuf,
    pub decoder: String,
    pub label: String,
    pub vetting: crate::decoding::Vetting,
    pub values: Vec<f64>,
}

/// The longest wait between restarts.
const MAX_RESTART_WAIT: Duration = Duration::from_secs(30);

/// An isolated decoder instance: its process, or when that failed, when to start another.
pub(crate) struct Isolated {
    launch: Launch,
    child: Option<Child>,
    failures: u32,
    retry_at: Instant,
    last_fault: String,
}

impl Isolated {
    /// Starts the decoder's process and creates the instance there; the error is why not.
    pub fn start(launch: Launch) -> Result<Isolated, StartError> {
        let child = Child::spawn(&launch)?;
        Ok(Isolated {
            launch,
            child: Some(child),
            failures: 0,
            retry_at: Instant::now(),
            last_fault: String::new(),
        })
    }

    pub fn decode(&mut self, ctx: &mut HostCtx) -> Result<Done, DecoderFault> {
        let child = match &mut self.child {
            Some(child) => child,
            None => {
                let wait = self.retry_at.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    return Err(DecoderFault::Unavailable(format!(
                        "its process failed ({}); restarting in {} ms",
                        self.last_fault,
                        wait.as_millis()
                    )));
                }
                match Child::spawn(&self.launch) {
                    Ok(child) => {
                        tracing::info!(decoder = self.launch.label, "decoder process restarted");
                        self.child.insert(child)
                    }
                    Err(e) => return Err(self.failed(DecoderFault::Unavailable(format!("cannot restart: {e}")))),
                }
            }
        };
        match child.decode(ctx, &self.launch.options) {
            Ok(done) => {
                self.failures = 0;
                Ok(done)
            }
            Err(fault) => Err(self.failed(fault)),
        }
    }

    /// Drops the process (killing it) and schedules the next start.
    fn failed(&mut self, fault: DecoderFault) -> DecoderFault {
        self.child = None;
        self.failures += 1;
        let wait = self
            .launch
            .options
            .restart
            .saturating_mul(1 << (self.failures - 1).min(16))
            .min(MAX_RESTART_WAIT);
        self.retry_at = Instant::now() + wait;
        self.last_fault = fault.to_string();
        tracing::warn!(
            decoder = self.launch.label,
            "decoder process failed: {fault}; next start in {} ms",
            wait.as_millis()
        );
        fault
    }
}

//! Publishing to an MQTT 5 broker (`[publish]`, docs/fleet.md): every caption-log record (captions,
//! comparisons, votes) goes to `{prefix}/{device}/captions`, the daemon's state to the retained
//! `{prefix}/{device}/status` (a Last Will says offline), the comparison statistics periodically to
//! `{prefix}/{device}/compare`.
//!
//! Nothing is lost: a record is appended to the on-disk spool (spool.rs) before it is sent, and leaves
//! it only when the broker acknowledges it (QoS 1 PUBACK); after an outage or a restart the backlog is
//! sent in order. The connection lives on its own thread (mqtt.rs); the captioning thread only
//! appends, so a slow or absent broker never delays a caption.

mod mqtt;
mod settings;
pub mod spool;

use std::sync::{Arc, Mutex};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::Notify;

use crate::shutdown::{Shutdown, Worker};
pub use mqtt::{Messages, client_options, describe};
pub use settings::{Broker, PublishConfig};
use spool::Spool;

/// The publishing metrics (service/metrics.rs registers them).
pub struct PublishCounters {
    pub connected: IntGauge,
    pub waiting: IntGauge,
    pub acked: IntCounter,
    pub dropped: IntCounter,
    pub errors: IntCounter,
    pub spool_errors: IntCounter,
}

/// The connection's state, for readiness.
#[derive(Default)]
struct Health {
    connected: bool,
    /// The last connection error while not connected, and whether it is a refusal (credentials,
    /// certificates) that retrying does not fix.
    error: Option<(String, bool)>,
}

/// What the daemon hands records to; shared by the state (appends) and the connection thread.
pub struct Outbox {
    spool: Mutex<Spool>,
    wake: Notify,
    health: Mutex<Health>,
    counters: PublishCounters,
}

impl Outbox {
    /// Opens the spool (recovering an earlier run's backlog).
    pub fn open(config: &PublishConfig, counters: PublishCounters) -> anyhow::Result<Arc<Outbox>> {
        let (spool, found) = Spool::open(&config.spool, config.spool_max_mb * 1024 * 1024)?;
        if found.waiting > 0 {
            tracing::info!(
                "publish: {} record(s) from an earlier run wait in {}",
                found.waiting,
                config.spool.display()
            );
        }
        counters.spool_errors.inc_by(found.broken as u64);
        let outbox = Outbox {
            spool: Mutex::new(spool),
            wake: Notify::new(),
            health: Mutex::new(Health::default()),
            counters,
        };
        outbox.update(&outbox.lock());
        Ok(Arc::new(outbox))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, spool: &Spool) {
        self.counters.waiting.set(spool.waiting() as i64);
        let dropped = spool.dropped();
        let reported = self.counters.dropped.get();
        if dropped > reported {
            self.counters.dropped.inc_by(dropped - reported);
        }
    }

    /// Spools a record (one JSON object) and wakes the connection. A failed write is reported and
    /// counted; the record is still sent from memory.
    pub fn append(&self, record: &str) {
        let mut spool = self.lock();
        if let Err(e) = spool.append(record) {
            tracing::warn!("publish: {e}");
            self.counters.spool_errors.inc();
        }
        self.update(&spool);
        drop(spool);
        self.wake.notify_one();
    }

    /// Why the broker will not take the records, when it refused us (not an outage, which retrying
    /// fixes): readiness reports it.
    pub fn refusal(&self) -> Option<String> {
        let h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        match &h.error {
            Some((message, true)) if !h.connected => Some(message.clone()),
            _ => None,
        }
    }

    fn set_health(&self, connected: bool, error: Option<(String, bool)>) {
        self.counters.connected.set(connected as i64);
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = Health { connected, error };
    }
}

/// Starts the connection thread: publishes the spool's records, the status and the comparisons until
/// `shutdown`, then says offline.
pub fn spawn(
    config: &PublishConfig,
    outbox: Arc<Outbox>,
    messages: Messages,
    shutdown: Shutdown,
) -> anyhow::Result<Worker> {
    let connection = mqtt::Connection::new(config, messages)?;
    Ok(Worker::spawn("publish", move || connection.run(&outbox, &shutdown))?)
}

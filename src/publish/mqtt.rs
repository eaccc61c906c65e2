//! The broker connection (rumqttc, MQTT 5) on the `publish` thread: connects and reconnects with
//! backoff, sends the spool's records in order with a window of QoS 1 publishes in flight, and takes
//! a record out of the spool when its PUBACK comes.
//!
//! Each connection starts a new session (clean start): what rumqttc had queued for the old one is
//! dropped, so after every CONNACK the spool is sent again from its first unacknowledged record. A
//! record the broker got but whose acknowledgement was lost is therefore sent twice; consumers
//! de-duplicate by (run, id), which every record carries. rumqttc numbers the publishes itself and
//! reports each number as the publish goes out (`Outgoing::Publish`), in the order they were handed
//! to it: that is how an acknowledgement finds its record.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, LastWill, Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};

use super::Outbox;
use super::PublishConfig;
use crate::shutdown::Shutdown;

/// Spool records sent and not yet acknowledged, at most.
const WINDOW: usize = 16;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the connection publishes besides the spool's records.
pub struct Messages {
    /// The retained status once connected: online, with the bundle, decoders and version.
    pub online: String,
    /// The Last Will, and the status at a clean stop.
    pub offline: String,
    /// The comparison statistics, built when they are sent.
    pub compare: Box<dyn Fn() -> String + Send>,
    pub compare_every: Duration,
}

struct Topics {
    captions: String,
    status: String,
    compare: String,
}

pub struct Connection {
    options: MqttOptions,
    broker: String,
    topics: Topics,
    qos: QoS,
    messages: Messages,
}

/// The state of one session with the broker.
#[derive(Default)]
struct Session {
    connected: bool,
    /// What was handed to rumqttc and not yet numbered: a spool record's seq, or None (status, compare).
    queued: VecDeque<Option<u64>>,
    /// Numbered publishes waiting for their PUBACK.
    numbered: HashMap<u16, Option<u64>>,
    /// Spool records handed over and not yet acknowledged.
    in_flight: usize,
    /// The last spool record handed over in this session.
    sent: u64,
}

fn read_password(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("publish.password_file {}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// Client options for the broker of `config` (address, credentials, TLS) as `client_id`, and the
/// broker's "host:port" for messages.
pub fn client_options(config: &PublishConfig, client_id: &str) -> anyhow::Result<(MqttOptions, String)> {
    let super::Broker { tls, host, port } = config.broker()?;
    let mut options = MqttOptions::new(client_id, host.clone(), port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_start(true)
        .set_connection_timeout(10)
        // rumqttc allocates a slot per possible packet id up front: 65536 (about 8 MB) unless limited.
        .set_outgoing_inflight_upper_limit(WINDOW as u16 + 8);
    if !config.username.is_empty() {
        options.set_credentials(config.username.clone(), read_password(&config.password_file)?);
    }
    if tls {
        let client = (!config.client_cert.as_os_str().is_empty())
            .then_some((config.client_cert.as_path(), config.client_key.as_path()));
        let tls = crate::tls::client_config(&config.ca_file, client).context("MQTT over TLS")?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls))));
    }
    Ok((options, format!("{host}:{port}")))
}

impl Connection {
    pub fn new(config: &PublishConfig, messages: Messages) -> anyhow::Result<Connection> {
        let device = config.device()?;
        let topic = |leaf: &str| format!("{}/{device}/{leaf}", config.topic_prefix);
        let topics = Topics {
            captions: topic("captions"),
            status: topic("status"),
            compare: topic("compare"),
        };
        let (mut options, broker) = client_options(config, &device)?;
        options.set_last_will(LastWill::new(
            &topics.status,
            messages.offline.clone(),
            QoS::AtLeastOnce,
            true,
            None,
        ));
        Ok(Connection {
            options,
            broker,
            topics,
            qos: if config.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            messages,
        })
    }

    /// The thread's body: serves until `shutdown`.
    pub fn run(self, outbox: &Outbox, shutdown: &Shutdown) {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(self.serve(outbox, shutdown)),
            Err(e) => tracing::error!("publish: cannot start its runtime: {e}"),
        }
    }

    async fn serve(self, outbox: &Outbox, shutdown: &Shutdown) {
        let (client, mut events) = AsyncClient::new(self.options.clone(), WINDOW + 8);
        let mut session = Session::default();
        let mut backoff = BACKOFF_MIN;
        let mut compare = tokio::time::interval(self.messages.compare_every);
        compare.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            if session.connected {
                self.fill(&client, outbox, &mut session);
            }
            // Waking for a new record or the comparisons drops a poll in progress, as rumqttc's own
            // `recv_timeout` does; never while connecting (`connected` is false then).
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = outbox.wake.notified(), if session.connected => {}
                _ = compare.tick(), if session.connected => {
                    let stats = (self.messages.compare)();
                    self.send(&client, &mut session, &self.topics.compare, false, stats);
                }
                event = events.poll() => match event {
                    Ok(event) => {
                        backoff = BACKOFF_MIN;
                        self.handle(event, &client, outbox, &mut session);
                    }
                    Err(e) => {
                        session.connected = false;
                        let (message, refused) = describe(&e, &self.broker);
                        tracing::warn!("publish: {message}; retrying in {} ms", backoff.as_millis());
                        outbox.counters.errors.inc();
                        outbox.set_health(false, Some((message, refused)));
                        tokio::select! {
                            _ = shutdown.wait() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                },
            }
        }
        if session.connected {
            self.say_offline(&client, &mut events).await;
        }
        outbox.set_health(false, None);
    }

    /// Hands spool records to rumqttc while fewer than WINDOW are in flight.
    fn fill(&self, client: &AsyncClient, outbox: &Outbox, session: &mut Session) {
        let spool = outbox.lock();
        while session.in_flight < WINDOW {
            let Some(record) = spool.next_after(session.sent) else {
                break;
            };
            if client
                .try_publish(&self.topics.captions, self.qos, false, record.payload.clone())
                .is_err()
            {
                break; // its queue is full; the next event frees a place
            }
            session.queued.push_back(Some(record.seq));
            session.sent = record.seq;
            session.in_flight += 1;
        }
    }

    fn send(&self, client: &AsyncClient, session: &mut Session, topic: &str, retain: bool, payload: String) {
        if client.try_publish(topic, QoS::AtLeastOnce, retain, payload).is_ok() {
            session.queued.push_back(None);
        }
    }

    fn handle(&self, event: Event, client: &AsyncClient, outbox: &Outbox, session: &mut Session) {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                let spool = outbox.lock();
                tracing::info!(
                    "publish: connected to {} ({} record(s) waiting)",
                    self.broker,
                    spool.waiting()
                );
                *session = Session {
                    connected: true,
                    sent: spool.acked(),
                    ..Session::default()
                };
                drop(spool);
                outbox.set_health(true, None);
                self.send(client, session, &self.topics.status, true, self.messages.online.clone());
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let Some(item) = session.queued.pop_front() else {
                    return;
                };
                if self.qos == QoS::AtMostOnce && item.is_some() {
                    acknowledged(outbox, session, item); // QoS 0: sent is all there is
                } else {
                    session.numbered.insert(pkid, item);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                let Some(item) = session.numbered.remove(&ack.pkid) else {
                    return;
                };
                match ack.reason {
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers => acknowledged(outbox, session, item),
                    reason => {
                        // Kept in the spool: sent again after the next reconnection.
                        let message = format!("the broker refused a message on {}: {reason:?}", self.broker);
                        tracing::warn!("publish: {message}");
                        outbox.counters.errors.inc();
                        if item.is_some() {
                            session.in_flight -= 1;
                        }
                        outbox.set_health(true, Some((message, true)));
                    }
                }
            }
            Event::Incoming(Packet::Disconnect(d)) => {
                tracing::warn!("publish: {} disconnected us: {:?}", self.broker, d.reason_code);
            }
            _ => {}
        }
    }

    /// The retained status says offline (a clean stop sends no Last Will), then DISCONNECT; a second at most.
    async fn say_offline(&self, client: &AsyncClient, events: &mut EventLoop) {
        let _ = client.try_publish(
            &self.topics.status,
            QoS::AtLeastOnce,
            true,
            self.messages.offline.clone(),
        );
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(event) = events.poll().await {
                if event == Event::Outgoing(Outgoing::Disconnect) {
                    break;
                }
            }
        })
        .await;
    }
}

/// A spool record the broker has: out of the spool.
fn acknowledged(outbox: &Outbox, session: &mut Session, item: Option<u64>) {
    let Some(seq) = item else {
        return;
    };
    session.in_flight -= 1;
    let mut spool = outbox.lock();
    if let Err(e) = spool.ack(seq) {
        tracing::warn!("publish: {e}");
        outbox.counters.spool_errors.inc();
    }
    outbox.counters.acked.inc();
    outbox.update(&spool);
}

/// A connection error in an operator's words, and whether it is a refusal that retrying will not fix
/// (credentials, certificates) rather than an outage.
pub fn describe(e: &ConnectionError, broker: &str) -> (String, bool) {
    use ConnectReturnCode::*;
    match e {
        ConnectionError::ConnectionRefused(code @ (BadUserNamePassword | NotAuthorized)) => (
            format!("{broker} refused the credentials ({code:?}): check publish.username and password_file"),
            true,
        ),
        ConnectionError::ConnectionRefused(
            code @ (ServerUnavailable | ServerBusy | ConnectionRateExceeded | QuotaExceeded),
        ) => (format!("{broker} is unavailable ({code:?})"), false),
        ConnectionError::ConnectionRefused(code) => (format!("{broker} refused the connection ({code:?})"), true),
        ConnectionError::Tls(tls) => match rustls_error(tls) {
            Some(rustls::Error::InvalidCertificate(why)) => (
                format!("{broker}'s TLS certificate is not trusted ({why:?}): check publish.ca_file"),
                true,
            ),
            Some(other) => (format!("TLS with {broker} failed: {other}"), true),
            None => (format!("cannot reach {broker}: {tls}"), false),
        },
        ConnectionError::Io(io) => (format!("cannot reach {broker}: {io}"), false),
        other => (format!("connection to {broker}: {other}"), false),
    }
}

fn rustls_error(e: &rumqttc::TlsError) -> Option<&rustls::Error> {
    match e {
        rumqttc::TlsError::TLS(inner) => Some(inner),
        rumqttc::TlsError::Io(io) => io.get_ref().and_then(|inner| inner.downcast_ref()),
        _ => None,
    }
}

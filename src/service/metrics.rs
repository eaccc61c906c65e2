//! Prometheus metrics of the daemon (`GET /metrics`), one registry, registered once.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::publish::PublishCounters;
use crate::source::{SourceCounters, SourceStatus};
use clipcap_core::captioner::{Caption, CaptionError};
use clipcap_core::decoding::DecodeError;

/// Decoders other than the configured ones (uploads may name any `name:key=value` spec) get their
/// own series up to this many; later ones share `decoder="other"`, so that /metrics stays bounded.
const MAX_OTHER_DECODERS: usize = 32;

/// Latency buckets from 1 ms to 30 s.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The `kind` label of `clipcap_errors_total`: what failed. docs/api.md's table lists each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Source,
    Upload,
    Caption,
    Compare,
    /// A compared frame that could not be kept (captioning.keep_compared_frames).
    Frame,
    Vote,
    Log,
    Publish,
    Spool,
    Connection,
    Host,
    Origin,
    Auth,
    Ros2,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::Source,
        ErrorKind::Upload,
        ErrorKind::Caption,
        ErrorKind::Compare,
        ErrorKind::Frame,
        ErrorKind::Vote,
        ErrorKind::Log,
        ErrorKind::Publish,
        ErrorKind::Spool,
        ErrorKind::Connection,
        ErrorKind::Host,
        ErrorKind::Origin,
        ErrorKind::Auth,
        ErrorKind::Ros2,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Source => "source",
            ErrorKind::Upload => "upload",
            ErrorKind::Caption => "caption",
            ErrorKind::Compare => "compare",
            ErrorKind::Frame => "frame",
            ErrorKind::Vote => "vote",
            ErrorKind::Log => "log",
            ErrorKind::Publish => "publish",
            ErrorKind::Spool => "spool",
            ErrorKind::Connection => "connection",
            ErrorKind::Host => "host",
            ErrorKind::Origin => "origin",
            ErrorKind::Auth => "auth",
            ErrorKind::Ros2 => "ros2",
        }
    }
}

/// The `reason` label of `clipcap_compare_skipped_total`: why a source caption was not compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Not every caption is compared (captioning.compare_every).
    Sampled,
    /// A frame or an upload waited.
    Busy,
    /// captioning.compare_per_minute was reached.
    Rate,
}

impl SkipReason {
    pub const ALL: [SkipReason; 3] = [SkipReason::Sampled, SkipReason::Busy, SkipReason::Rate];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Sampled => "sampled",
            SkipReason::Busy => "busy",
            SkipReason::Rate => "rate",
        }
    }
}

/// Why a connection was refused (the `reason` of `clipcap_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// `max_connections` are open.
    Full,
    /// Its address holds `max_connections_per_client`.
    Client,
    /// It is not from loopback, and only the slots kept for loopback are left.
    Reserved,
}

impl ConnectionRefusal {
    pub const ALL: [ConnectionRefusal; 3] = [
        ConnectionRefusal::Full,
        ConnectionRefusal::Client,
        ConnectionRefusal::Reserved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionRefusal::Full => "full",
            ConnectionRefusal::Client => "client",
            ConnectionRefusal::Reserved => "reserved",
        }
    }
}

/// What a reload of the bundle did (the `result` of `clipcap_reloads_total`; live.rs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reloaded {
    Swapped,
    /// The configured bundle is the live one (same folder and manifest).
    Unchanged,
    Refused,
}

impl Reloaded {
    pub const ALL: [Reloaded; 3] = [Reloaded::Swapped, Reloaded::Unchanged, Reloaded::Refused];

    pub fn as_str(self) -> &'static str {
        match self {
            Reloaded::Swapped => "swapped",
            Reloaded::Unchanged => "unchanged",
            Reloaded::Refused => "refused",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    frames_captured: IntCounterVec,
    frames_dropped: IntCounterVec,
    frames_skipped: IntCounterVec,
    source_reconnects: IntCounterVec,
    source_up: IntGaugeVec,
    source_frame_age: GaugeVec,
    captions: IntCounterVec,
    errors: IntCounterVec,
    connections_refused: IntCounterVec,
    decoder_failures: IntCounterVec,
    stage_seconds: HistogramVec,
    decoder_seconds: HistogramVec,
    pub upload_seconds: Histogram,
    compare_skipped: IntCounterVec,
    compare_captions: IntCounterVec,
    compare_failures: IntCounterVec,
    compare_clip_score: GaugeVec,
    compare_win_rate: GaugeVec,
    votes: IntCounterVec,
    reloads: IntCounterVec,
    publish_connected: IntGauge,
    publish_waiting: IntGauge,
    publish_acked: IntCounter,
    publish_dropped: IntCounter,
    #[cfg(feature = "ros2")]
    ros2_publishers: IntGauge,
    #[cfg(feature = "ros2")]
    ros2_published: IntCounter,
    decoder_labels: DecoderLabels,
}

/// The `decoder` label values: every configured decoder, then the first `MAX_OTHER_DECODERS` others.
struct DecoderLabels {
    configured: HashSet<String>,
    others: Mutex<HashSet<String>>,
}

impl DecoderLabels {
    fn label<'a>(&self, decoder: &'a str) -> &'a str {
        if self.configured.contains(decoder) {
            return decoder;
        }
        let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        if others.contains(decoder) || (others.len() < MAX_OTHER_DECODERS && others.insert(decoder.to_string())) {
            decoder
        } else {
            "other"
        }
    }
}

impl Metrics {
    /// `decoders`: the configured decoders' labels, which always have their own series.
    pub fn new(decoders: impl IntoIterator<Item = String>) -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| registered(&registry, IntCounter::new(name, help));
        let counter_vec = |name: &str, help: &str, label: &str| {
            registered(&registry, IntCounterVec::new(Opts::new(name, help), &[label]))
        };
        let histogram_opts = |name: &str, help: &str| HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
        let histogram_vec = |name: &str, help: &str, label: &str| {
            registered(&registry, HistogramVec::new(histogram_opts(name, help), &[label]))
        };
        let gauge = |name: &str, help: &str| registered(&registry, IntGauge::new(name, help));
        let upload_seconds = registered(
            &registry,
            Histogram::with_opts(histogram_opts(
                "clipcap_upload_seconds",
                "time from upload to caption, queueing included",
            )),
        );
        let gauge_vec =
            |name: &str, help: &str| registered(&registry, GaugeVec::new(Opts::new(name, help), &["decoder"]));
        // Every result from the start: a dashboard sees 0 refusals before the first.
        let reloads = counter_vec(
            "clipcap_reloads_total",
            "reloads (SIGHUP): `swapped` (a new bundle is live), `unchanged` (the configured bundle was live), `refused` (the live bundle kept serving; GET /v1/bundle says why)",
            "result",
        );
        for result in Reloaded::ALL {
            reloads.with_label_values(&[result.as_str()]);
        }
        Metrics {
            reloads,
            compare_skipped: counter_vec(
                "clipcap_compare_skipped_total",
                "source captions not compared: `sampled` (captioning.compare_every), `rate` (compare_per_minute), `busy` (a frame or upload waited)",
                "reason",
            ),
            compare_captions: counter_vec(
                "clipcap_compare_captions_total",
                "captions in comparisons, by decoder (the primary one included)",
                "decoder",
            ),
            compare_failures: counter_vec(
                "clipcap_compare_failures_total",
                "comparison decoders that failed on a frame",
                "decoder",
            ),
            compare_clip_score: gauge_vec(
                "clipcap_compare_clip_score",
                "mean CLIPScore of the decoder's captions in comparisons",
            ),
            compare_win_rate: gauge_vec(
                "clipcap_compare_win_rate",
                "share of compared frames where the decoder's CLIPScore beat the primary decoder's (ties half)",
            ),
            votes: counter_vec(
                "clipcap_votes_total",
                "votes for the best caption, by decoder",
                "decoder",
            ),
            publish_connected: gauge("clipcap_publish_connected", "1 while connected to the MQTT broker"),
            publish_waiting: gauge(
                "clipcap_publish_waiting",
                "records in the spool waiting for the broker's acknowledgement",
            ),
            publish_acked: counter(
                "clipcap_publish_acked_total",
                "records the broker acknowledged (left the spool)",
            ),
            publish_dropped: counter(
                "clipcap_publish_dropped_total",
                "records dropped unsent, the oldest first, because the spool was over publish.spool_max_mb",
            ),
            frames_captured: counter_vec("clipcap_frames_captured_total", "frames received, by source", "source"),
            frames_dropped: counter_vec(
                "clipcap_frames_dropped_total",
                "frames replaced by a newer one before captioning (latest frame wins), by source",
                "source",
            ),
            frames_skipped: counter_vec(
                "clipcap_frames_skipped_total",
                "frames not captioned because the scene had not changed (captioning.scene_change), by source",
                "source",
            ),
            source_reconnects: counter_vec(
                "clipcap_source_reconnects_total",
                "times a source was open again after a failure",
                "source",
            ),
            source_up: registered(
                &registry,
                IntGaugeVec::new(Opts::new("clipcap_source_up", "1 while a source delivers"), &["source"]),
            ),
            source_frame_age: registered(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "clipcap_source_frame_age_seconds",
                        "seconds since a source's last frame (NaN before the first)",
                    ),
                    &["source"],
                ),
            ),
            #[cfg(feature = "ros2")]
            ros2_publishers: gauge(
                "clipcap_ros2_image_publishers",
                "publishers matched on the ROS 2 image topic (source.kind = \"ros2\")",
            ),
            #[cfg(feature = "ros2")]
            ros2_published: counter(
                "clipcap_ros2_captions_published_total",
                "captions published on ROS 2 (each on caption_topic and caption_json_topic)",
            ),
            captions: counter_vec("clipcap_captions_total", "captions published, by source", "source"),
            errors: counter_vec("clipcap_errors_total", "errors, by kind", "kind"),
            connections_refused: counter_vec(
                "clipcap_connections_refused_total",
                "connections closed as they arrived: `full` (service.max_connections), `client` (max_connections_per_client), `reserved` (local_connections)",
                "reason",
            ),
            decoder_failures: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "clipcap_decoder_failures_total",
                        "captions a decoder failed (the fallback's or a comparison's included), by decoder and fault: crashed, timeout, protocol, unavailable (isolated decoders), violation, failed, output",
                    ),
                    &["decoder", "fault"],
                ),
            ),
            stage_seconds: histogram_vec("clipcap_stage_seconds", "time per caption stage", "stage"),
            decoder_seconds: histogram_vec("clipcap_decoder_seconds", "decoding time per decoder", "decoder"),
            upload_seconds,
            registry,
            decoder_labels: DecoderLabels {
                configured: decoders.into_iter().collect(),
                others: Mutex::default(),
            },
        }
    }

    pub fn observe(&self, caption: &Caption) {
        let ms = &caption.ms;
        for (stage, value) in [
            ("preprocess", ms.preprocess),
            ("encode", ms.encode),
            ("map", ms.map),
            ("decode", ms.decode),
            ("total", ms.total),
        ] {
            self.stage_seconds.with_label_values(&[stage]).observe(value / 1e3);
        }
        self.decoded(&caption.decoder, ms.decode);
    }

    /// One decoder's time on one caption (the published one's, or a comparison's).
    pub fn decoded(&self, decoder: &str, ms: f64) {
        let decoder = self.decoder_labels.label(decoder);
        self.decoder_seconds.with_label_values(&[decoder]).observe(ms / 1e3);
    }

    pub fn reloaded(&self, result: Reloaded) {
        self.reloads.with_label_values(&[result.as_str()]).inc();
    }

    pub fn compare_skipped(&self, reason: SkipReason) {
        self.compare_skipped.with_label_values(&[reason.as_str()]).inc();
    }

    /// A decoder's caption in a comparison (or its failure).
    pub fn compared(&self, decoder: &str, ok: bool) {
        let counter = if ok {
            &self.compare_captions
        } else {
            &self.compare_failures
        };
        counter.with_label_values(&[decoder]).inc();
    }

    /// A compared decoder's running mean CLIPScore and win rate against the primary decoder.
    pub fn compare_summary(&self, decoder: &str, clip_score: Option<f64>, win_rate: Option<f64>) {
        if let Some(mean) = clip_score {
            self.compare_clip_score.with_label_values(&[decoder]).set(mean);
        }
        if let Some(rate) = win_rate {
            self.compare_win_rate.with_label_values(&[decoder]).set(rate);
        }
    }

    pub fn vote(&self, decoder: &str) {
        self.votes.with_label_values(&[decoder]).inc();
    }

    /// Counts the decoder failure in a caption's outcome: the failed decoder behind a fallback's
    /// caption, or the decoder whose failure is the error.
    pub fn decoder_failures(&self, outcome: &Result<Caption, CaptionError>) {
        let failed = match outcome {
            Ok(caption) => caption.fallback_from.as_ref().map(|f| (f.decoder.as_str(), f.fault)),
            Err(CaptionError::Decode(DecodeError::Decoder { decoder, fault })) => {
                Some((decoder.as_str(), fault.kind()))
            }
            Err(_) => None,
        };
        if let Some((decoder, fault)) = failed {
            let decoder = self.decoder_labels.label(decoder);
            self.decoder_failures
                .with_label_values(&[decoder, fault.as_str()])
                .inc();
        }
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors.with_label_values(&[kind.as_str()]).inc();
    }

    /// The counter of errors of `kind`, for a part that counts them itself (a source, the
    /// publisher, the ROS 2 node, the listener).
    pub fn error_counter(&self, kind: ErrorKind) -> IntCounter {
        self.errors.with_label_values(&[kind.as_str()])
    }

    /// A connection closed as it arrived, and why.
    pub fn connection_refused(&self, reason: ConnectionRefusal) {
        self.connections_refused.with_label_values(&[reason.as_str()]).inc();
        self.error(ErrorKind::Connection);
    }

    /// A caption published, by the name of its source (`upload` for uploads).
    pub fn caption(&self, source: &str) {
        self.captions.with_label_values(&[source]).inc();
    }

    /// The counters the source named `source` updates. The series exist from the start, at 0.
    pub fn source_counters(&self, source: &str) -> SourceCounters {
        self.frames_skipped.with_label_values(&[source]);
        SourceCounters {
            frames: self.frames_captured.with_label_values(&[source]),
            dropped: self.frames_dropped.with_label_values(&[source]),
            errors: self.error_counter(ErrorKind::Source),
            reconnects: self.source_reconnects.with_label_values(&[source]),
        }
    }

    /// A frame of `source` not captioned: its scene had not changed.
    pub fn frame_skipped(&self, source: &str) {
        self.frames_skipped.with_label_values(&[source]).inc();
    }

    /// The counters and gauges the MQTT publisher updates.
    pub fn publish_counters(&self) -> PublishCounters {
        PublishCounters {
            connected: self.publish_connected.clone(),
            waiting: self.publish_waiting.clone(),
            acked: self.publish_acked.clone(),
            dropped: self.publish_dropped.clone(),
            errors: self.error_counter(ErrorKind::Publish),
            spool_errors: self.error_counter(ErrorKind::Spool),
        }
    }

    /// The counters and gauge the ROS 2 node updates.
    #[cfg(feature = "ros2")]
    pub fn ros2_counters(&self) -> crate::ros2::Counters {
        crate::ros2::Counters {
            publishers: self.ros2_publishers.clone(),
            published: self.ros2_published.clone(),
            errors: self.error_counter(ErrorKind::Ros2),
        }
    }

    /// The Prometheus text exposition format, with each source's state as it is now.
    pub fn render<'a>(&self, sources: impl IntoIterator<Item = (&'a str, &'a SourceStatus)>) -> String {
        for (name, status) in sources {
            self.source_up.with_label_values(&[name]).set(status.is_up() as i64);
            self.source_frame_age
                .with_label_values(&[name])
                .set(status.since_last_frame().unwrap_or(f64::NAN));
        }
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Registers a newly made metric (once, at start: names are fixed) and returns it.
fn registered<M: Collector + Clone + 'static>(registry: &Registry, metric: prometheus::Result<M>) -> M {
    let metric = metric.expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("registered once");
    metric
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceLabel;
    use clipcap_core::decoding::FaultKind;

    /// The values in the first column of the table that follows `intro` in docs/api.md.
    fn documented(intro: &str) -> Vec<String> {
        let api = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
        let table = api
            .split_once(intro)
            .unwrap_or_else(|| panic!("docs/api.md has no {intro:?}"))
            .1;
        table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2) // the header and its rule
            .map(|l| l.split('|').nth(1).unwrap().trim().trim_matches('`').to_string())
            .collect()
    }

    #[test]
    fn docs_api_md_lists_every_label_value() {
        let names = |all: &[&str]| all.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let errors: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(documented("Error kinds, the `kind`"), names(&errors));
        let sources: Vec<&str> = SourceLabel::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(documented("Source labels, the `kind`"), names(&sources));
        let faults: Vec<&str> = FaultKind::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(documented("Fault kinds, the `fault`"), names(&faults));
        let reasons: Vec<&str> = SkipReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(documented("Skip reasons, the `reason`"), names(&reasons));
        let refusals: Vec<&str> = ConnectionRefusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(documented("Connection refusals, the `reason`"), names(&refusals));
        let reloads: Vec<&str> = Reloaded::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(documented("Reload results, the `result`"), names(&reloads));
    }

    #[test]
    fn a_label_value_is_its_serialised_name() {
        for source in SourceLabel::ALL {
            assert_eq!(serde_json::to_value(source).unwrap(), source.as_str());
        }
        for fault in FaultKind::ALL {
            assert_eq!(serde_json::to_value(fault).unwrap(), fault.as_str());
        }
    }
}

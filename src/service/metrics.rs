//! Prometheus metrics of the daemon (`GET /metrics`), one registry, registered once.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

use super::compare::DecoderSummary;
use clipcap_core::captioner::{Caption, CaptionError};
use clipcap_core::decoding::DecodeError;

/// Decoders other than the configured ones (uploads may name any `name:key=value` spec) get their
/// own series up to this many; later ones share `decoder="other"`, so that /metrics stays bounded.
const MAX_OTHER_DECODERS: usize = 32;

/// Latency buckets from 1 ms to 30 s.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    pub frames_captured: IntCounter,
    pub frames_dropped: IntCounter,
    pub frames_skipped: IntCounter,
    pub source_reconnects: IntCounter,
    pub source_up: IntGauge,
    pub source_frame_age: Gauge,
    pub captions: IntCounterVec,
    pub errors: IntCounterVec,
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
    pub publish_connected: IntGauge,
    pub publish_waiting: IntGauge,
    pub publish_acked: IntCounter,
    pub publish_dropped: IntCounter,
    #[cfg(feature = "ros2")]
    pub ros2_publishers: IntGauge,
    #[cfg(feature = "ros2")]
    pub ros2_published: IntCounter,
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
        Metrics {
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
            frames_captured: counter("clipcap_frames_captured_total", "frames received from the source"),
            frames_dropped: counter(
                "clipcap_frames_dropped_total",
                "frames replaced by a newer one before captioning (latest frame wins)",
            ),
            frames_skipped: counter(
                "clipcap_frames_skipped_total",
                "frames not captioned because the scene had not changed (captioning.scene_change)",
            ),
            source_reconnects: counter(
                "clipcap_source_reconnects_total",
                "times the source was open again after a failure",
            ),
            source_up: gauge("clipcap_source_up", "1 while the frame source delivers"),
            source_frame_age: registered(
                &registry,
                Gauge::new(
                    "clipcap_source_frame_age_seconds",
                    "seconds since the source's last frame (NaN before the first)",
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

    pub fn compare_skipped(&self, reason: &str) {
        self.compare_skipped.with_label_values(&[reason]).inc();
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

    pub fn compare_summary(&self, s: &DecoderSummary) {
        if let Some(clip) = &s.clip_score {
            self.compare_clip_score.with_label_values(&[&s.decoder]).set(clip.mean);
        }
        if let Some(rate) = s.win_rate {
            self.compare_win_rate.with_label_values(&[&s.decoder]).set(rate);
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
            self.decoder_failures.with_label_values(&[decoder, fault]).inc();
        }
    }

    pub fn error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
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

//! The live comparison of decoders: running statistics of every decoder the daemon runs on its source
//! frames (the primary one, `captioning.compare`, and the shadow bundle's `DECODER@BUNDLE`), from the
//! comparison records the pipeline publishes. Served as `GET /v1/compare` and as Prometheus gauges.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use super::metrics::Metrics;
use crate::records::Comparison;

/// Latencies kept per decoder for the percentiles: the most recent ones.
const LATENCIES: usize = 1000;

#[derive(Default)]
struct Running {
    captions: u64,
    failures: u64,
    clip_n: u64,
    clip_sum: f64,
    clip_sumsq: f64,
    words: u64,
    ms: VecDeque<f64>,
    /// Frames where this decoder and the primary both have a CLIPScore, and this one's wins (a tie
    /// counts one half).
    duels: u64,
    wins: f64,
    /// Its captions equal to the primary caption of their frame.
    same: u64,
}

/// What `GET /v1/compare` says of one decoder.
#[derive(Debug, Clone, Serialize)]
pub struct DecoderSummary {
    pub decoder: String,
    pub primary: bool,
    pub captions: u64,
    pub failures: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_score: Option<Interval>,
    pub mean_words: f64,
    pub ms_p50: f64,
    pub ms_p95: f64,
    /// Share of frames where its CLIPScore beat the primary decoder's (ties count half).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub win_rate: Option<f64>,
    /// Share of its captions equal to the primary caption of their frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
}

/// A mean with its 95% interval (normal approximation).
#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

pub struct CompareStats {
    primary: String,
    decoders: Mutex<BTreeMap<String, Running>>,
}

impl CompareStats {
    pub fn new(primary: &str) -> Self {
        CompareStats {
            primary: primary.to_string(),
            decoders: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds one frame's comparison: the primary caption and every compared one.
    pub fn record(&self, c: &Comparison, metrics: &Metrics) {
        let mut decoders = self.decoders.lock().unwrap_or_else(|p| p.into_inner());
        let primary_clip = c.clip_score;
        let mut update = |decoder: &str, caption: Option<&str>, clip: Option<f64>, ms: f64| {
            let r = decoders.entry(decoder.to_string()).or_default();
            match caption {
                None => r.failures += 1,
                Some(text) => {
                    r.captions += 1;
                    r.words += text.split_whitespace().count() as u64;
                    r.same += u64::from(text == c.caption);
                }
            }
            if let Some(x) = clip {
                r.clip_n += 1;
                r.clip_sum += x;
                r.clip_sumsq += x * x;
            }
            if r.ms.len() == LATENCIES {
                r.ms.pop_front();
            }
            r.ms.push_back(ms);
            if decoder != self.primary
                && let (Some(x), Some(p)) = (clip, primary_clip)
            {
                r.duels += 1;
                r.wins += if x > p {
                    1.0
                } else if x == p {
                    0.5
                } else {
                    0.0
                };
            }
            metrics.compared(decoder, caption.is_some());
        };
        update(&c.decoder, Some(&c.caption), primary_clip, c.ms);
        for other in &c.compare {
            update(&other.decoder, other.caption.as_deref(), other.clip_score, other.ms);
        }
        for s in Self::summaries(&self.primary, &decoders) {
            metrics.compare_summary(&s.decoder, s.clip_score.map(|c| c.mean), s.win_rate);
        }
    }

    pub fn snapshot(&self) -> Vec<DecoderSummary> {
        let decoders = self.decoders.lock().unwrap_or_else(|p| p.into_inner());
        Self::summaries(&self.primary, &decoders)
    }

    fn summaries(primary: &str, decoders: &BTreeMap<String, Running>) -> Vec<DecoderSummary> {
        decoders
            .iter()
            .map(|(name, r)| {
                let mut ms: Vec<f64> = r.ms.iter().copied().collect();
                ms.sort_by(f64::total_cmp);
                let at = |q: f64| clipcap_core::metrics::quantile(&ms, q).unwrap_or(0.0);
                let clip_score = (r.clip_n > 0).then(|| {
                    let n = r.clip_n as f64;
                    let mean = r.clip_sum / n;
                    let var = if r.clip_n > 1 {
                        ((r.clip_sumsq - n * mean * mean) / (n - 1.0)).max(0.0)
                    } else {
                        0.0
                    };
                    let half = 1.96 * (var / n).sqrt();
                    Interval {
                        mean,
                        low: mean - half,
                        high: mean + half,
                    }
                });
                DecoderSummary {
                    decoder: name.clone(),
                    primary: name == primary,
                    captions: r.captions,
                    failures: r.failures,
                    clip_score,
                    mean_words: if r.captions > 0 {
                        r.words as f64 / r.captions as f64
                    } else {
                        0.0
                    },
                    ms_p50: at(0.5),
                    ms_p95: at(0.95),
                    win_rate: (r.duels > 0).then(|| r.wins / r.duels as f64),
                    agreement: (name != primary && r.captions > 0).then(|| r.same as f64 / r.captions as f64),
                }
            })
            .collect()
    }
}

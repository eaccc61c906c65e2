//! `clipcap bench`: where the time of a caption goes, per decoder, measured in one process so that
//! decoders can be compared as ratios on a noisy machine, next to the machine's memory bound.
//!
//! For each decoder every image is captioned `runs` times (after one unmeasured warm-up round), by
//! `concurrency` threads at once that share the model's calls (each with its own decoder instance):
//! `captions_per_s` is captions over wall-clock time, and each caption's latency includes waiting for
//! the calls it shares. A
//! decoder's own time is its `decode` time minus the model steps it asked for, so `decoder_ms_per_step`
//! is the overhead a decoding strategy adds to each model step. A language-model step reads every
//! weight once, so it cannot be faster than the LM's weight bytes over the machine's read bandwidth
//! (`step_bound_ms`), which this process measures before the models run.

use std::time::Instant;

use serde::Serialize;

use clipcap_core::captioner::{Caption, CaptionError, Captioner, Prepared};
use clipcap_core::decoding::DecoderInstance;

use crate::jobs;

#[derive(Debug, Clone, Serialize)]
pub struct DecoderBench {
    pub decoder: String,
    pub captions: usize,
    pub preprocess_ms: f64,
    pub encode_ms: f64,
    pub map_ms: f64,
    pub decode_ms: f64,
    pub steps: f64,
    /// Model time per step, the prefix pass included (as a caption pays it).
    pub model_ms_per_step: f64,
    pub decoder_ms_per_step: f64,
    /// model_ms_per_step over the memory bound's step time.
    pub bound_ratio: f64,
    /// Whole caption (preprocessing to text): median and 95th percentile.
    pub p50_ms: f64,
    pub p95_ms: f64,
    /// Captions a second: captions over the wall-clock time of the measured rounds.
    pub captions_per_s: f64,
    /// decode_ms relative to the first decoder's.
    pub decode_ratio: f64,
}

/// The machine and the process, measured in the same run as the decoders.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// ONNX Runtime's intra-op threads; the bandwidth measurement reads with as many and twice as many.
    pub threads: usize,
    /// Streaming read bandwidth, GB/s (the best of several passes, thread and stream counts over a
    /// buffer far larger than caches).
    pub read_gb_per_s: f64,
    /// The language model's graph file, weights included.
    pub lm_weight_bytes: u64,
    /// lm_weight_bytes / read bandwidth: no step can be faster.
    pub step_bound_ms: f64,
    /// From the start of the process to the end of its first caption (sessions created on the way).
    pub first_caption_ms: f64,
    /// Peak resident memory of the process (VmHWM), MB.
    pub peak_rss_mb: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Captions in flight at once.
    pub concurrency: usize,
    pub machine: Machine,
    pub decoders: Vec<DecoderBench>,
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    // Linear interpolation between closest ranks (numpy's default).
    let rank = p * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

fn median(v: Vec<f64>) -> f64 {
    percentile(v, 0.5)
}

/// What `run` needs besides the decoders.
pub struct Setup<'a> {
    pub images: &'a [Prepared],
    pub runs: usize,
    pub seed: u64,
    /// When the process started (main's first line).
    pub started: Instant,
    pub threads: usize,
    pub lm_weight_bytes: u64,
}

/// Captions each prepared image `runs` times with each decoder; medians per decoder. `lanes[t][d]` is
/// thread `t`'s instance of decoder `d`.
pub fn run(captioner: &Captioner, lanes: &mut [Vec<DecoderInstance>], s: &Setup) -> Result<Report, CaptionError> {
    let mut first_caption_ms = None;
    let mut out: Vec<DecoderBench> = Vec::new();
    let images = s.images.len();
    for d in 0..lanes.first().map_or(0, Vec::len) {
        let label = lanes[0][d].label().to_string();
        // `rounds` over the images on every lane: the captions, and the wall time they took.
        let mut round = |rounds: usize| -> Result<(Vec<Caption>, f64), CaptionError> {
            let t = Instant::now();
            let mut results = Vec::with_capacity(rounds * images);
            jobs::run(
                lanes,
                rounds * images,
                |lane, i| captioner.decode(&s.images[i % images], &mut lane[d], None, s.seed),
                |_, c| {
                    first_caption_ms.get_or_insert_with(|| s.started.elapsed().as_secs_f64() * 1e3);
                    results.push(c)
                },
            );
            let wall = t.elapsed().as_secs_f64();
            Ok((results.into_iter().collect::<Result<_, _>>()?, wall))
        };
        round(1)?; // warm-up: allocator, caches, lazy init
        let (captions, wall) = round(s.runs)?;
        let captions_per_s = captions.len() as f64 / wall;
        let of = |f: fn(&Caption) -> f64| median(captions.iter().map(f).collect());
        let decode_ms = of(|c| c.ms.decode);
        let per_step = |f: fn(&Caption) -> f64| median(captions.iter().map(|c| f(c) / c.steps.max(1) as f64).collect());
        let totals: Vec<f64> = captions.iter().map(|c| c.ms.total).collect();
        out.push(DecoderBench {
            decoder: label,
            captions: captions.len(),
            preprocess_ms: of(|c| c.ms.preprocess),
            encode_ms: of(|c| c.ms.encode),
            map_ms: of(|c| c.ms.map),
            decode_ms,
            steps: of(|c| c.steps as f64),
            model_ms_per_step: per_step(|c| c.ms.decode - c.ms.decoder),
            decoder_ms_per_step: per_step(|c| c.ms.decoder),
            bound_ratio: f64::NAN, // filled in below, once the bandwidth is known
            p50_ms: percentile(totals.clone(), 0.5),
            p95_ms: percentile(totals, 0.95),
            captions_per_s,
            decode_ratio: out.first().map_or(1.0, |base| decode_ms / base.decode_ms),
        });
    }
    // Measured after the captions, so that its buffer does not count in the peak RSS.
    let peak_rss_mb = peak_rss_mb();
    let read_gb_per_s = read_bandwidth(s.threads);
    let step_bound_ms = s.lm_weight_bytes as f64 / (read_gb_per_s * 1e9) * 1e3;
    for d in &mut out {
        d.bound_ratio = d.model_ms_per_step / step_bound_ms;
    }
    Ok(Report {
        concurrency: lanes.len(),
        machine: Machine {
            threads: s.threads,
            read_gb_per_s,
            lm_weight_bytes: s.lm_weight_bytes,
            step_bound_ms,
            first_caption_ms: first_caption_ms.unwrap_or(f64::NAN),
            peak_rss_mb,
        },
        decoders: out,
    })
}

/// VmHWM of /proc/self/status, in MB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb * 1024.0 / 1e6)
}

/// Streaming read bandwidth in GB/s: threads each sum their share of a 512 MiB buffer, the best of
/// 5 passes (the first one also faults the pages in, so it is not counted) over `threads` and twice
/// as many threads, each reading one stream or four at once. Reading four streams at once keeps more
/// cache-line fills in flight, as a matrix product's kernel does: one stream per thread measured 20%
/// below what ONNX Runtime's fp32 step reached on an Intel Xeon, so that the step looked faster than
/// the bound (BENCHMARKS.md).
fn read_bandwidth(threads: usize) -> f64 {
    const BYTES: usize = 512 << 20;
    let buffer: Vec<u64> = (0..BYTES / 8).map(|i| i as u64).collect();
    let threads = threads.max(1);
    let mut best = f64::INFINITY;
    for (threads, streams) in [(threads, 1), (threads, 4), (2 * threads, 1), (2 * threads, 4)] {
        let chunk = buffer.len().div_ceil(threads);
        for pass in 0..6 {
            let t = Instant::now();
            let sums: u64 = std::thread::scope(|scope| {
                let handles: Vec<_> = buffer
                    .chunks(chunk)
                    .map(|part| scope.spawn(move || sum(part, streams)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("summing cannot panic"))
                    .fold(0, u64::wrapping_add)
            });
            std::hint::black_box(sums);
            if pass > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
    }
    BYTES as f64 / best / 1e9
}

/// The wrapping sum of `part` read as `streams` equal streams in turn, 512 bytes of each at a time,
/// with the widest vector loads the processor has (ONNX Runtime's kernels use them too).
fn sum(part: &[u64], streams: usize) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the processor has AVX-512F, checked just above.
            return unsafe { sum_avx512(part, streams) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the processor has AVX2, checked just above.
            return unsafe { sum_avx2(part, streams) };
        }
    }
    sum_streams(part, streams)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn sum_avx512(part: &[u64], streams: usize) -> u64 {
    sum_streams(part, streams)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_avx2(part: &[u64], streams: usize) -> u64 {
    sum_streams(part, streams)
}

#[inline(always)]
fn sum_streams(part: &[u64], streams: usize) -> u64 {
    const BLOCK: usize = 64;
    let n = part.len() / streams;
    let mut total = 0u64;
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        for s in 0..streams {
            total = part[s * n + start..s * n + end]
                .iter()
                .fold(total, |a, &x| a.wrapping_add(x));
        }
    }
    part[streams * n..].iter().fold(total, |a, &x| a.wrapping_add(x))
}

//! `clipcap bench`: where the time of a caption goes, per decoder, measured in one process so that
//! decoders can be compared as ratios on a noisy machine.
//!
//! For each decoder every image is captioned `runs` times (after one unmeasured warm-up round). A
//! decoder's own time is its `decode` time minus the model steps it asked for, so `decoder_ms_per_step`
//! is the overhead a decoding strategy adds to each model step.

use serde::Serialize;

use clipcap_core::captioner::{Caption, CaptionError, Captioner, Prepared};
use clipcap_core::decoding::DecoderInstance;

#[derive(Debug, Clone, Serialize)]
pub struct DecoderBench {
    pub decoder: String,
    pub captions: usize,
    pub preprocess_ms: f64,
    pub encode_ms: f64,
    pub map_ms: f64,
    pub decode_ms: f64,
    pub steps: f64,
    pub model_ms_per_step: f64,
    pub decoder_ms_per_step: f64,
    /// decode_ms relative to the first decoder's.
    pub decode_ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Captions each prepared image `runs` times with each decoder; medians per decoder.
pub fn run(
    captioner: &mut Captioner,
    images: &[Prepared],
    decoders: &mut [DecoderInstance],
    runs: usize,
    seed: u64,
) -> Result<Vec<DecoderBench>, CaptionError> {
    let mut out: Vec<DecoderBench> = Vec::new();
    for decoder in decoders.iter_mut() {
        for image in images {
            captioner.decode(image, decoder, None, seed)?; // warm-up: allocator, caches, lazy init
        }
        let mut captions: Vec<Caption> = Vec::new();
        for _ in 0..runs {
            for image in images {
                captions.push(captioner.decode(image, decoder, None, seed)?);
            }
        }
        let of = |f: fn(&Caption) -> f64| median(captions.iter().map(f).collect());
        let steps = of(|c| c.steps as f64);
        let decode_ms = of(|c| c.ms.decode);
        let per_step = |f: fn(&Caption) -> f64| median(captions.iter().map(|c| f(c) / c.steps.max(1) as f64).collect());
        out.push(DecoderBench {
            decoder: decoder.label().to_string(),
            captions: captions.len(),
            preprocess_ms: of(|c| c.ms.preprocess),
            encode_ms: of(|c| c.ms.encode),
            map_ms: of(|c| c.ms.map),
            decode_ms,
            steps,
            model_ms_per_step: per_step(|c| c.ms.decode - c.ms.decoder),
            decoder_ms_per_step: per_step(|c| c.ms.decoder),
            decode_ratio: out.first().map_or(1.0, |base| decode_ms / base.decode_ms),
        });
    }
    Ok(out)
}

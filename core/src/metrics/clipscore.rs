//! CLIPScore and RefCLIPScore (Hessel et al. 2021, the reference code jmhessel/clipscore): a caption's
//! agreement with the image by CLIP alone, `2.5 * max(cos(image, text), 0)` with every text prefixed
//! "A photo depicts ", and, with references, the harmonic mean of that and the caption's best cosine
//! with a reference (clipped at 0). The paper used fp16 on a GPU; fp32 on a CPU differs in the 4th digit.

use crate::cosine;

/// What the reference code puts before every caption and reference.
pub const PREFIX: &str = "A photo depicts ";
/// The reference code's weight `w`.
const W: f64 = 2.5;

/// CLIP-S of a caption's text embedding (of `PREFIX` + caption) against the image embedding.
pub fn clip_score(image: &[f32], caption: &[f32]) -> f64 {
    W * cosine(image, caption).max(0.0)
}

/// RefCLIP-S: the harmonic mean of `clip_s` and the best cosine of the caption's text embedding with
/// the references' (all of `PREFIX` + text).
pub fn ref_clip_score(clip_s: f64, caption: &[f32], references: &[Vec<f32>]) -> f64 {
    let best = references
        .iter()
        .map(|r| cosine(caption, r))
        .fold(f64::NEG_INFINITY, f64::max)
        .max(0.0);
    if clip_s + best == 0.0 {
        0.0
    } else {
        2.0 * clip_s * best / (clip_s + best)
    }
}

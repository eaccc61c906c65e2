//! Caption metrics, in Rust so that decoders can be compared on the device: BLEU-1..4, ROUGE-L and
//! CIDEr-D equal to pycocoevalcap's (tokenised by [`ptb`], its PTBTokenizer port), CLIPScore and
//! RefCLIPScore, length and diversity, and the paired bootstrap that says whether a difference is
//! real. METEOR and SPICE need Java and downloads; they stay in the export tool (`clipcap-export
//! evaluate`).

mod bleu;
pub mod bootstrap;
mod cider;
pub mod clipscore;
pub mod coco;
mod diversity;
pub mod ptb;
mod rouge;
mod unicode62;

use serde::Serialize;

pub use bleu::BleuCounts;
pub use diversity::{Diversity, diversity};

/// The value at quantile `q` (0 to 1) of `sorted` (ascending), nearest rank; None when empty. The
/// percentiles of latencies and the bounds of bootstrap intervals all come from here.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied()
}

/// Reference-based scores of a set of captions.
#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    pub bleu: [f64; 4],
    pub rouge_l: f64,
    pub cider_d: f64,
}

/// What each image contributes, so that a resample of images can be scored without tokenising or
/// counting again. CIDEr-D's document frequencies stay those of the whole set.
#[derive(Debug, Clone)]
pub struct PerImage {
    pub bleu: Vec<BleuCounts>,
    pub rouge_l: Vec<f64>,
    pub cider_d: Vec<f64>,
}

impl PerImage {
    /// Scores of the images at `rows` (repeats allowed: a bootstrap resample).
    pub fn scores(&self, rows: &[usize]) -> Scores {
        let mean = |v: &[f64]| rows.iter().map(|&i| v[i]).sum::<f64>() / rows.len().max(1) as f64;
        Scores {
            bleu: bleu::corpus(rows.iter().map(|&i| &self.bleu[i])),
            rouge_l: mean(&self.rouge_l),
            cider_d: mean(&self.cider_d),
        }
    }

    pub fn len(&self) -> usize {
        self.rouge_l.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rouge_l.is_empty()
    }

    /// Scores of all images.
    pub fn all(&self) -> Scores {
        self.scores(&(0..self.len()).collect::<Vec<_>>())
    }
}

/// Per-image metric values of `captions[i]` against `references[i]`, both tokenised as pycocoevalcap
/// does (PTB tokens, lower case, punctuation removed). Every image needs at least one reference.
pub fn per_image(captions: &[String], references: &[Vec<String>]) -> PerImage {
    assert_eq!(captions.len(), references.len(), "one set of references per caption");
    let refs: Vec<&[String]> = references.iter().map(Vec::as_slice).collect();
    let caps: Vec<&str> = captions.iter().map(String::as_str).collect();
    PerImage {
        bleu: captions
            .iter()
            .zip(references)
            .map(|(c, r)| bleu::counts(c, r))
            .collect(),
        rouge_l: captions
            .iter()
            .zip(references)
            .map(|(c, r)| rouge::score(c, r))
            .collect(),
        cider_d: cider::scores(&caps, &refs),
    }
}

/// Tokenises raw captions and references as pycocoevalcap does (references of all images in one
/// tokenizer call, then captions in another, as its `evaluate` does) and returns them.
pub fn tokenize(captions: &[&str], references: &[Vec<String>]) -> (Vec<String>, Vec<Vec<String>>) {
    let flat: Vec<&str> = references.iter().flatten().map(String::as_str).collect();
    let mut tokens = ptb::tokenize_captions(&flat).into_iter();
    let refs = references
        .iter()
        .map(|r| tokens.by_ref().take(r.len()).collect())
        .collect();
    (ptb::tokenize_captions(captions), refs)
}

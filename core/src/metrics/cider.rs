//! CIDEr-D as pycocoevalcap computes it: tf-idf vectors of 1- to 4-grams with document frequencies
//! taken from the references of the evaluated images, `log(max(1, df))`, cosine similarity per n
//! with clipping of the candidate's weights by the reference's, a Gaussian length penalty (sigma 6)
//! whose "length" is the number of bigrams (as in the reference code), averaged over references and
//! n, times 10.
//!
//! The idf comes from the evaluated set itself: with one image every n-gram has df = 1 = the number
//! of images, so every weight and the score are 0. Callers say so rather than print 0.

use std::collections::HashMap;

const SIGMA: f64 = 6.0;

type Gram = Vec<String>;

fn counts(sentence: &str) -> HashMap<Gram, f64> {
    let words: Vec<&str> = sentence.split_whitespace().collect();
    let mut out = HashMap::new();
    for n in 1..=4 {
        for gram in words.windows(n) {
            *out.entry(gram.iter().map(|w| w.to_string()).collect()).or_insert(0.0) += 1.0;
        }
    }
    out
}

struct Vector {
    weights: [HashMap<Gram, f64>; 4],
    norms: [f64; 4],
    /// The number of bigrams: the reference code's "length".
    length: f64,
}

/// Per-image CIDEr-D scores (in the order given) of `captions[i]` against `refs[i]`.
pub fn scores(captions: &[&str], refs: &[&[String]]) -> Vec<f64> {
    let cooked_refs: Vec<Vec<HashMap<Gram, f64>>> =
        refs.iter().map(|rs| rs.iter().map(|r| counts(r)).collect()).collect();
    let mut df: HashMap<&Gram, f64> = HashMap::new();
    for image in &cooked_refs {
        let mut seen: Vec<&Gram> = image.iter().flat_map(|r| r.keys()).collect();
        seen.sort();
        seen.dedup();
        for gram in seen {
            *df.entry(gram).or_insert(0.0) += 1.0;
        }
    }
    let log_images = (refs.len() as f64).ln();
    let vector = |cnts: &HashMap<Gram, f64>| -> Vector {
        let mut v = Vector {
            weights: Default::default(),
            norms: [0.0; 4],
            length: 0.0,
        };
        for (gram, &tf) in cnts {
            let idf = df.get(gram).copied().unwrap_or(0.0).max(1.0).ln();
            let n = gram.len() - 1;
            let w = tf * (log_images - idf);
            v.norms[n] += w * w;
            v.weights[n].insert(gram.clone(), w);
            if n == 1 {
                v.length += tf;
            }
        }
        v.norms = v.norms.map(f64::sqrt);
        v
    };
    captions
        .iter()
        .zip(&cooked_refs)
        .map(|(caption, image_refs)| {
            let hyp = vector(&counts(caption));
            let mut sum = [0.0; 4];
            for r in image_refs {
                let reference = vector(r);
                let delta = hyp.length - reference.length;
                for (n, total) in sum.iter_mut().enumerate() {
                    let mut val: f64 = hyp.weights[n]
                        .iter()
                        .map(|(gram, &w)| {
                            let rw = reference.weights[n].get(gram).copied().unwrap_or(0.0);
                            w.min(rw) * rw
                        })
                        .sum();
                    if hyp.norms[n] != 0.0 && reference.norms[n] != 0.0 {
                        val /= hyp.norms[n] * reference.norms[n];
                    }
                    *total += val * (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
                }
            }
            sum.iter().sum::<f64>() / 4.0 / image_refs.len() as f64 * 10.0
        })
        .collect()
}

//! BLEU-1..4 as pycocoevalcap computes it: n-gram counts clipped by the most frequent reference use,
//! summed over the corpus, with the brevity penalty of the "closest" reference length per image.

use std::collections::HashMap;

/// One image's counts: what corpus BLEU sums. Resampling images (the bootstrap) sums a resample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BleuCounts {
    pub test_len: usize,
    pub ref_len: usize,
    pub guess: [usize; 4],
    pub correct: [usize; 4],
}

fn ngrams(words: &[&str]) -> HashMap<Vec<String>, usize> {
    let mut counts = HashMap::new();
    for n in 1..=4 {
        for gram in words.windows(n) {
            *counts.entry(gram.iter().map(|w| w.to_string()).collect()).or_insert(0) += 1;
        }
    }
    counts
}

/// The counts of `test` against `refs` (tokenised, words separated by whitespace).
pub fn counts(test: &str, refs: &[String]) -> BleuCounts {
    let mut max_ref: HashMap<Vec<String>, usize> = HashMap::new();
    let mut ref_lens = Vec::with_capacity(refs.len());
    for r in refs {
        let words: Vec<&str> = r.split_whitespace().collect();
        ref_lens.push(words.len());
        for (gram, n) in ngrams(&words) {
            let m = max_ref.entry(gram).or_insert(0);
            *m = (*m).max(n);
        }
    }
    let words: Vec<&str> = test.split_whitespace().collect();
    let test_len = words.len();
    // "closest": the reference length nearest the test length, the shorter on a tie.
    let ref_len = ref_lens
        .iter()
        .copied()
        .min_by_key(|&l| (l.abs_diff(test_len), l))
        .unwrap_or(0);
    let mut c = BleuCounts {
        test_len,
        ref_len,
        ..BleuCounts::default()
    };
    for k in 0..4 {
        c.guess[k] = (test_len + 1).saturating_sub(k + 1);
    }
    for (gram, n) in ngrams(&words) {
        c.correct[gram.len() - 1] += n.min(max_ref.get(&gram).copied().unwrap_or(0));
    }
    c
}

/// Corpus BLEU-1..4 of summed counts (pycocoevalcap's `compute_score` with option "closest").
pub fn corpus<'a>(images: impl IntoIterator<Item = &'a BleuCounts>) -> [f64; 4] {
    const SMALL: f64 = 1e-9;
    const TINY: f64 = 1e-15;
    let mut total = BleuCounts::default();
    for c in images {
        total.test_len += c.test_len;
        total.ref_len += c.ref_len;
        for k in 0..4 {
            total.guess[k] += c.guess[k];
            total.correct[k] += c.correct[k];
        }
    }
    let mut bleus = [0.0; 4];
    let mut product = 1.0;
    for (k, b) in bleus.iter_mut().enumerate() {
        product *= (total.correct[k] as f64 + TINY) / (total.guess[k] as f64 + SMALL);
        *b = product.powf(1.0 / (k as f64 + 1.0));
    }
    let ratio = (total.test_len as f64 + TINY) / (total.ref_len as f64 + SMALL);
    if ratio < 1.0 {
        for b in &mut bleus {
            *b *= (1.0 - 1.0 / ratio).exp();
        }
    }
    bleus
}

//! What people read when comparing decoders besides the scores: how long the captions are, how varied
//! their words (distinct-n: distinct n-grams over all n-grams of all captions), how often one repeats
//! itself, and how many words they use. Captions are taken tokenised as the metrics take them.

use std::collections::HashSet;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Diversity {
    /// Mean words per caption.
    pub mean_length: f64,
    pub distinct_1: f64,
    pub distinct_2: f64,
    /// Share of captions in which some word bigram occurs twice (a decoder stuck in a loop).
    pub repetition: f64,
    /// Distinct words over all captions.
    pub vocabulary: usize,
}

pub fn diversity(captions: &[String]) -> Diversity {
    let mut unigrams: HashSet<&str> = HashSet::new();
    let mut bigrams: HashSet<(&str, &str)> = HashSet::new();
    let (mut words_total, mut bigrams_total, mut repeating) = (0usize, 0usize, 0usize);
    for c in captions {
        let words: Vec<&str> = c.split_whitespace().collect();
        words_total += words.len();
        unigrams.extend(&words);
        let mut own = HashSet::new();
        let mut repeats = false;
        for pair in words.windows(2) {
            bigrams_total += 1;
            bigrams.insert((pair[0], pair[1]));
            repeats |= !own.insert((pair[0], pair[1]));
        }
        repeating += repeats as usize;
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Diversity {
        mean_length: ratio(words_total, captions.len()),
        distinct_1: ratio(unigrams.len(), words_total),
        distinct_2: ratio(bigrams.len(), bigrams_total),
        repetition: ratio(repeating, captions.len()),
        vocabulary: unigrams.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_ngrams_and_loops() {
        let d = diversity(&["a dog on a dog on a mat".into(), "a cat".into()]);
        assert_eq!(d.vocabulary, 5);
        assert_eq!(d.mean_length, 5.0);
        assert_eq!(d.distinct_1, 5.0 / 10.0);
        assert_eq!(d.distinct_2, 5.0 / 8.0); // a-dog dog-on on-a a-mat a-cat
        assert_eq!(d.repetition, 0.5);
    }
}

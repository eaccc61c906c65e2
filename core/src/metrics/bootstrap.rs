//! Whether a difference between two systems (a bundle with a decoder) is real: the paired bootstrap.
//! The same images are resampled with replacement for both systems (1,000 draws, seeded), each
//! metric is computed on each resample for both, and the 2.5th and 97.5th percentiles of the
//! differences are the 95% interval. Corpus metrics (BLEU) are recomputed from the resample's counts;
//! CIDEr-D keeps the document frequencies of the whole set. Each system's own value gets its 95%
//! interval the same way ([`interval`]), so that a table and a plot can show it.

use std::collections::BTreeMap;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::PerImage;

/// One system's values, image by image (the same images, in the same order, for every system).
pub struct Measured {
    /// Reference-based metrics, when there are references.
    pub references: Option<PerImage>,
    /// Per-image values of other metrics (CLIPScore, length, ...), averaged over a resample.
    pub values: BTreeMap<&'static str, Vec<f64>>,
}

/// The metrics a [`Measured`] can give, reference-based first.
pub const REFERENCE_METRICS: [&str; 3] = ["BLEU-4", "ROUGE-L", "CIDEr-D"];

impl Measured {
    pub fn images(&self) -> usize {
        self.references
            .as_ref()
            .map(PerImage::len)
            .or_else(|| self.values.values().next().map(Vec::len))
            .unwrap_or(0)
    }

    /// The metrics this system has values for.
    pub fn metrics(&self) -> Vec<&'static str> {
        let reference = self.references.as_ref().map_or(&[][..], |_| &REFERENCE_METRICS[..]);
        reference.iter().copied().chain(self.values.keys().copied()).collect()
    }

    /// `metric` on the images at `rows`.
    pub fn value(&self, metric: &str, rows: &[usize]) -> Option<f64> {
        if let Some(per_image) = self.references.as_ref().filter(|_| REFERENCE_METRICS.contains(&metric)) {
            let s = per_image.scores(rows);
            return Some(match metric {
                "BLEU-4" => s.bleu[3],
                "ROUGE-L" => s.rouge_l,
                _ => s.cider_d,
            });
        }
        let v = self.values.get(metric)?;
        Some(rows.iter().map(|&i| v[i]).sum::<f64>() / rows.len().max(1) as f64)
    }
}

/// The difference `a - b` of one metric, with its 95% interval.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub metric: String,
    pub difference: f64,
    pub low: f64,
    pub high: f64,
}

impl Difference {
    /// Whether the interval excludes zero.
    pub fn significant(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// Paired-bootstrap differences `a - b` of every metric both systems have.
pub fn paired(a: &Measured, b: &Measured, draws: usize, seed: u64) -> Vec<Difference> {
    let n = a.images();
    assert_eq!(n, b.images(), "paired systems are measured on the same images");
    let metrics: Vec<&str> = a.metrics().into_iter().filter(|m| b.metrics().contains(m)).collect();
    let all: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut diffs: Vec<Vec<f64>> = vec![Vec::with_capacity(draws); metrics.len()];
    let mut rows = vec![0usize; n];
    for _ in 0..draws {
        rows.iter_mut().for_each(|r| *r = rng.random_range(0..n.max(1)));
        for (m, metric) in metrics.iter().enumerate() {
            if let (Some(x), Some(y)) = (a.value(metric, &rows), b.value(metric, &rows)) {
                diffs[m].push(x - y);
            }
        }
    }
    metrics
        .iter()
        .zip(diffs)
        .map(|(metric, mut d)| {
            d.sort_by(f64::total_cmp);
            let at = |q: f64| super::quantile(&d, q).unwrap_or(f64::NAN);
            Difference {
                metric: metric.to_string(),
                difference: a.value(metric, &all).unwrap_or(f64::NAN) - b.value(metric, &all).unwrap_or(f64::NAN),
                low: at(0.025),
                high: at(0.975),
            }
        })
        .collect()
}

/// A value with its 95% bootstrap interval.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Interval {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// The 95% interval of `statistic` (of the rows of a resample) over `draws` resamples of `n` images
/// with replacement; `value` is the statistic of all images. None where the statistic has no value.
pub fn interval(n: usize, draws: usize, seed: u64, statistic: impl Fn(&[usize]) -> Option<f64>) -> Option<Interval> {
    let all: Vec<usize> = (0..n).collect();
    let value = statistic(&all)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows = vec![0usize; n];
    let mut values: Vec<f64> = (0..draws)
        .filter_map(|_| {
            rows.iter_mut().for_each(|r| *r = rng.random_range(0..n.max(1)));
            statistic(&rows)
        })
        .collect();
    values.sort_by(f64::total_cmp);
    let at = |q: f64| super::quantile(&values, q).unwrap_or(value);
    Some(Interval {
        value,
        low: at(0.025),
        high: at(0.975),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(values: Vec<f64>) -> Measured {
        Measured {
            references: None,
            values: BTreeMap::from([("CLIPScore", values)]),
        }
    }

    #[test]
    fn the_interval_covers_a_known_difference_and_excludes_none() {
        // b = a - 0.05 + noise of mean 0: the true difference is 0.05.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let a: Vec<f64> = (0..400).map(|_| rng.random_range(0.3..0.9)).collect();
        let b: Vec<f64> = a.iter().map(|x| x - 0.05 + rng.random_range(-0.1..0.1)).collect();
        let d = &paired(&system(a.clone()), &system(b), 1000, 7)[0];
        assert!(d.low < 0.05 && 0.05 < d.high && d.significant(), "{d:?}");
        // Against itself: no difference, and the interval says so.
        let same = &paired(&system(a.clone()), &system(a), 1000, 7)[0];
        assert_eq!((same.difference, same.low, same.high), (0.0, 0.0, 0.0));
        assert!(!same.significant());
    }

    #[test]
    fn a_systems_interval_covers_its_true_mean_and_narrows_with_more_images() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let values: Vec<f64> = (0..1000).map(|_| rng.random_range(0.0..1.0)).collect();
        let s = system(values.clone());
        let mean_of = |n: usize| {
            interval(n, 1000, 5, |rows| {
                s.value("CLIPScore", rows).filter(|_| !rows.is_empty())
            })
        };
        let (few, many) = (mean_of(50).unwrap(), mean_of(1000).unwrap());
        assert!(many.low < 0.5 && 0.5 < many.high, "{many:?}");
        assert!(many.high - many.low < few.high - few.low, "{few:?} {many:?}");
        assert!(few.low <= few.value && few.value <= few.high);
    }

    #[test]
    fn the_same_seed_gives_the_same_interval() {
        let (a, b) = (system(vec![0.1, 0.5, 0.9, 0.3]), system(vec![0.2, 0.1, 0.4, 0.3]));
        let (x, y) = (&paired(&a, &b, 200, 3)[0], &paired(&a, &b, 200, 3)[0]);
        assert_eq!((x.low, x.high), (y.low, y.high));
    }
}

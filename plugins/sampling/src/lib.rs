//! Sampling: temperature, then top-k, top-p (nucleus), typical and min-p filters, each applied to the
//! distribution the previous one left (renormalised), then one draw from the host's seeded stream.
//!
//! - top-k: the k most likely tokens (0: off).
//! - top-p: the most likely tokens whose mass first reaches p (1: off).
//! - typical: tokens ordered by |-ln p - H| (H the entropy), the first whose mass reaches the value (1: off).
//! - min-p: tokens with p >= min_p x p_max (0: off).
//!
//! Only top-k, or a growing prefix of the ranking for top-p and typical, is ever sorted, never the
//! whole vocabulary.

use std::cmp::Ordering;
use std::ffi::CStr;

use clipcap_plugin_sdk::select::{softmax, top_k};
use clipcap_plugin_sdk::{Decoder, Host, Param, Params, export_plugin};

#[derive(Debug, Clone, Copy)]
pub struct Filters {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub typical_p: f32,
    pub min_p: f32,
}

/// (token, probability) pairs; the probabilities sum to one.
pub type Distribution = Vec<(u32, f32)>;

fn normalized(mut d: Distribution) -> Distribution {
    let total: f64 = d.iter().map(|x| x.1 as f64).sum();
    for x in &mut d {
        x.1 = (x.1 as f64 / total) as f32;
    }
    d
}

/// The smallest set of `d`'s entries, taken in descending order of `key`, whose probability mass
/// reaches `mass`; ranked by growing partial sorts (64, 256, ... entries) instead of a full sort.
fn smallest_set_reaching(d: &Distribution, mass: f32, key: impl Fn(&(u32, f32)) -> f32) -> Distribution {
    let order = |a: &(u32, f32), b: &(u32, f32)| {
        key(b)
            .partial_cmp(&key(a))
            .unwrap_or(Ordering::Equal)
            .then(a.0.cmp(&b.0))
    };
    let mut ranked = d.clone();
    // ranked[..done] is the top `done`, sorted; each round partitions the rest and sorts the next block.
    let (mut done, mut n) = (0, 64.min(d.len()));
    // f64 sums: thousands of tail probabilities would drift in f32 and move the boundary.
    let mut cumulative = 0.0f64;
    loop {
        if n < ranked.len() {
            ranked[done..].select_nth_unstable_by(n - 1 - done, order);
        }
        ranked[done..n].sort_unstable_by(order);
        for i in done..n {
            cumulative += ranked[i].1 as f64;
            if cumulative >= mass as f64 {
                ranked.truncate(i + 1);
                return normalized(ranked);
            }
        }
        if n == ranked.len() {
            return normalized(ranked); // rounding left the total just below `mass`: keep everything
        }
        (done, n) = (n, (n * 4).min(ranked.len()));
    }
}

/// The distribution the filters leave of `logits`.
pub fn filtered(logits: &[f32], f: &Filters) -> Distribution {
    let scaled: Vec<f32> = logits.iter().map(|x| x / f.temperature).collect();
    let probs = softmax(&scaled);
    let mut d: Distribution = if f.top_k > 0 {
        normalized(top_k(&probs, f.top_k))
    } else {
        probs.iter().enumerate().map(|(i, &p)| (i as u32, p)).collect()
    };
    if f.top_p < 1.0 {
        d = smallest_set_reaching(&d, f.top_p, |x| x.1);
    }
    if f.typical_p < 1.0 {
        let entropy: f32 = d.iter().filter(|x| x.1 > 0.0).map(|x| -x.1 * x.1.ln()).sum();
        d = smallest_set_reaching(&d, f.typical_p, |x| -(-x.1.ln() - entropy).abs());
    }
    if f.min_p > 0.0 {
        let max = d.iter().map(|x| x.1).fold(0.0, f32::max);
        d.retain(|x| x.1 >= f.min_p * max);
        d = normalized(d);
    }
    d
}

/// The token that `u` in [0, 1) selects from `d` by inverse transform over its cumulative mass.
pub fn draw(d: &Distribution, u: f64) -> u32 {
    let mut cumulative = 0.0f64;
    for &(token, p) in d {
        cumulative += p as f64;
        if u < cumulative {
            return token;
        }
    }
    d.last().expect("a filtered distribution is never empty").0
}

pub struct Sample(Filters);

impl Decoder for Sample {
    const NAME: &'static CStr = c"sample";
    const DESCRIPTION: &'static CStr = c"random sampling with temperature, top-k, top-p, typical and min-p filters";
    const PARAMS: &'static [Param] = &[
        Param::float(
            c"temperature",
            c"logits are divided by it before the softmax",
            1.0,
            0.01,
            100.0,
        ),
        Param::int(c"top_k", c"keep the k most likely tokens (0: off)", 0, 0, 1_000_000),
        Param::float(
            c"top_p",
            c"keep the most likely tokens reaching this mass (1: off)",
            1.0,
            0.0,
            1.0,
        ),
        Param::float(
            c"typical_p",
            c"keep the most typical tokens reaching this mass (1: off)",
            1.0,
            0.0,
            1.0,
        ),
        Param::float(
            c"min_p",
            c"drop tokens below min_p times the top probability (0: off)",
            0.0,
            0.0,
            1.0,
        ),
    ];

    fn new(p: &Params) -> Result<Self, String> {
        Ok(Sample(Filters {
            temperature: p.float("temperature") as f32,
            top_k: p.usize("top_k"),
            top_p: p.float("top_p") as f32,
            typical_p: p.float("typical_p") as f32,
            min_p: p.float("min_p") as f32,
        }))
    }

    fn decode(&mut self, host: &mut Host) -> Result<Vec<u32>, String> {
        let mut tokens = Vec::new();
        loop {
            let d = filtered(host.logits(0)?, &self.0);
            let token = draw(&d, host.random());
            tokens.push(token);
            if host.is_stop(token) || tokens.len() == host.max_tokens() {
                return Ok(tokens);
            }
            host.step(&[0], &[token])?;
        }
    }
}

export_plugin!(name: c"sampling", decoders: [Sample]);

#[cfg(test)]
mod tests {
    use super::*;

    /// The filters written the plain way: full sorts, for the statistical comparison.
    fn reference(logits: &[f32], f: &Filters) -> Vec<(u32, f64)> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut d: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &x)| (i as u32, ((x as f64 - max) / f.temperature as f64).exp()))
            .collect();
        let renorm = |d: &mut Vec<(u32, f64)>| {
            let t: f64 = d.iter().map(|x| x.1).sum();
            d.iter_mut().for_each(|x| x.1 /= t);
        };
        renorm(&mut d);
        let by_prob = |d: &mut Vec<(u32, f64)>| d.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
        let keep_mass = |d: &mut Vec<(u32, f64)>, mass: f64| {
            let mut c = 0.0;
            let n = d
                .iter()
                .position(|x| {
                    c += x.1;
                    c >= mass
                })
                .map_or(d.len(), |i| i + 1);
            d.truncate(n);
        };
        if f.top_k > 0 {
            by_prob(&mut d);
            d.truncate(f.top_k);
            renorm(&mut d);
        }
        if f.top_p < 1.0 {
            by_prob(&mut d);
            keep_mass(&mut d, f.top_p as f64);
            renorm(&mut d);
        }
        if f.typical_p < 1.0 {
            let h: f64 = d.iter().map(|x| -x.1 * x.1.ln()).sum();
            d.sort_by(|a, b| {
                (-a.1.ln() - h)
                    .abs()
                    .partial_cmp(&(-b.1.ln() - h).abs())
                    .unwrap()
                    .then(a.0.cmp(&b.0))
            });
            keep_mass(&mut d, f.typical_p as f64);
            renorm(&mut d);
        }
        if f.min_p > 0.0 {
            let m = d.iter().map(|x| x.1).fold(0.0, f64::max);
            d.retain(|x| x.1 >= f.min_p as f64 * m);
            renorm(&mut d);
        }
        d
    }

    /// A fixed pseudo-random stream (SplitMix64) so the test is the same on every run.
    struct Stream(u64);
    impl Stream {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn logits(n: usize, seed: u64) -> Vec<f32> {
        let mut s = Stream(seed);
        // Heavy-tailed logits, like a language model's: a few likely tokens, a long tail.
        (0..n)
            .map(|_| (4.0 * s.next() * s.next() * s.next()) as f32 * 3.0 - 2.0)
            .collect()
    }

    const OFF: Filters = Filters {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        typical_p: 1.0,
        min_p: 0.0,
    };

    #[test]
    fn filters_keep_the_same_tokens_as_the_plain_reference() {
        let l = logits(50_257, 1);
        for f in [
            Filters {
                temperature: 0.7,
                top_k: 40,
                ..OFF
            },
            Filters { top_p: 0.9, ..OFF },
            Filters { typical_p: 0.8, ..OFF },
            Filters { min_p: 0.05, ..OFF },
            Filters {
                temperature: 1.3,
                top_k: 500,
                top_p: 0.95,
                typical_p: 0.9,
                min_p: 0.01,
            },
        ] {
            let mut got: Vec<u32> = filtered(&l, &f).iter().map(|x| x.0).collect();
            let mut want: Vec<u32> = reference(&l, &f).iter().map(|x| x.0).collect();
            got.sort();
            want.sort();
            // The mass filters cut where a running sum of thousands of probabilities crosses a threshold;
            // f32 softmax (ours) and f64 (reference) may put that cut one token apart, never more.
            let differ: Vec<u32> = got
                .iter()
                .chain(&want)
                .copied()
                .filter(|t| got.contains(t) != want.contains(t))
                .collect();
            assert!(
                differ.len() <= 1,
                "{f:?}: {} vs {} tokens kept, differing {differ:?}",
                got.len(),
                want.len()
            );
            if let Some(t) = differ.first() {
                let p = reference(&l, &OFF).iter().find(|x| x.0 == *t).unwrap().1;
                assert!(p < 1e-4, "{f:?}: the boundary token {t} has probability {p}");
            }
        }
    }

    #[test]
    fn draws_follow_the_filtered_softmax() {
        // Chi-square goodness of fit at the 0.1% level, 200 000 draws from a fixed stream.
        let l = logits(2_000, 7);
        for f in [
            Filters {
                temperature: 0.8,
                top_k: 30,
                ..OFF
            },
            Filters { top_p: 0.5, ..OFF },
            Filters { typical_p: 0.5, ..OFF },
            Filters {
                temperature: 0.5,
                min_p: 0.1,
                ..OFF
            },
        ] {
            let want = reference(&l, &f);
            let d = filtered(&l, &f);
            let mut stream = Stream(42);
            let n = 200_000;
            let mut counts = std::collections::HashMap::new();
            for _ in 0..n {
                *counts.entry(draw(&d, stream.next())).or_insert(0u32) += 1;
            }
            assert!(
                counts.keys().all(|t| want.iter().any(|w| w.0 == *t)),
                "drew a filtered-out token: {f:?}"
            );
            let chi2: f64 = want
                .iter()
                .map(|&(t, p)| {
                    let expected = p * n as f64;
                    let observed = *counts.get(&t).unwrap_or(&0) as f64;
                    (observed - expected).powi(2) / expected
                })
                .sum();
            let df = (want.len() - 1) as f64;
            // Wilson-Hilferty: the 99.9% quantile of chi-square with df degrees of freedom.
            let z = 3.090;
            let critical = df * (1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt()).powi(3);
            assert!(
                chi2 < critical,
                "{f:?}: chi2 {chi2:.1} >= {critical:.1} with {df} degrees of freedom"
            );
        }
    }
}

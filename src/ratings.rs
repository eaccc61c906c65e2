//! People's votes as ratings: a Bradley–Terry model fitted to the pairwise outcomes of the votes
//! (a vote for one caption of a frame beats each other caption shown with it), on the Elo scale the
//! arenas that rank language models use (400 points: 10 to 1 odds; mean 1000), with 95% intervals
//! from a bootstrap over the votes, and for each pair of decoders the votes a difference of the size
//! seen needs to show at 95% confidence with 80% power.
//!
//! Written here: the fit is Hunter's (2004) minorise–maximise iteration, a dozen lines, which no
//! maintained crate offers.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// One vote: the decoder chosen, and the decoders it was chosen over (indices into the decoders).
#[derive(Debug, Clone)]
pub struct Vote {
    pub winner: usize,
    pub losers: Vec<usize>,
}

/// A decoder's rating with its 95% interval.
#[derive(Debug, Clone, Serialize)]
pub struct Rating {
    pub decoder: String,
    pub rating: f64,
    pub low: f64,
    pub high: f64,
    /// Votes on frames that showed it, and those it won.
    pub shown: usize,
    pub won: usize,
}

/// Two decoders' ratings compared: `a` is the higher rated.
#[derive(Debug, Clone, Serialize)]
pub struct Gap {
    pub a: String,
    pub b: String,
    /// The probability that a person prefers `a` to `b`, from the ratings.
    pub p_a: f64,
    /// Votes so far on frames that showed both.
    pub votes: usize,
    /// Votes on frames showing both that a preference of `p_a` needs to be told from a coin flip
    /// (two-sided 95%, power 80%); None where the ratings are equal.
    pub needed: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratings {
    pub ratings: Vec<Rating>,
    pub gaps: Vec<Gap>,
}

/// Elo points per natural-log unit of strength: 400 points are odds of 10 to 1.
const ELO: f64 = 400.0 / std::f64::consts::LN_10;

/// Bradley–Terry strengths (natural log, mean 0) of `k` players from `wins[i][j]`, the times `i`
/// beat `j`. Each player also has one win and one loss against a virtual player of strength 1 (a
/// weak prior), so that a player that never lost or never won still gets a finite strength.
pub fn fit(wins: &[Vec<f64>]) -> Vec<f64> {
    let k = wins.len();
    let mut p = vec![1.0; k];
    for _ in 0..10_000 {
        let mut next = vec![0.0; k];
        for i in 0..k {
            let won: f64 = wins[i].iter().sum::<f64>() + 1.0;
            let mut against = 2.0 / (p[i] + 1.0);
            for j in (0..k).filter(|&j| j != i) {
                against += (wins[i][j] + wins[j][i]) / (p[i] + p[j]);
            }
            next[i] = won / against;
        }
        let change = next.iter().zip(&p).map(|(a, b)| (a / b).ln().abs()).fold(0.0, f64::max);
        p = next;
        if change < 1e-10 {
            break;
        }
    }
    let logs: Vec<f64> = p.iter().map(|x| x.ln()).collect();
    let mean = logs.iter().sum::<f64>() / k.max(1) as f64;
    logs.iter().map(|x| x - mean).collect()
}

fn tally(k: usize, votes: impl Iterator<Item = usize>, all: &[Vote]) -> Vec<Vec<f64>> {
    let mut wins = vec![vec![0.0; k]; k];
    for v in votes.map(|i| &all[i]) {
        for &l in &v.losers {
            wins[v.winner][l] += 1.0;
        }
    }
    wins
}

/// The ratings of `decoders` from `votes`, intervals from `draws` resamples of the votes.
pub fn rate(decoders: &[String], votes: &[Vote], draws: usize, seed: u64) -> Ratings {
    let k = decoders.len();
    let n = votes.len();
    let elo = |strengths: Vec<f64>| strengths.into_iter().map(|s| 1000.0 + ELO * s).collect::<Vec<_>>();
    let rating = elo(fit(&tally(k, 0..n, votes)));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut drawn: Vec<Vec<f64>> = vec![Vec::with_capacity(draws); k];
    for _ in 0..draws {
        let sample: Vec<usize> = (0..n).map(|_| rng.random_range(0..n.max(1))).collect();
        for (i, r) in elo(fit(&tally(k, sample.into_iter(), votes))).into_iter().enumerate() {
            drawn[i].push(r);
        }
    }
    let mut ratings: Vec<Rating> = (0..k)
        .map(|i| {
            drawn[i].sort_by(f64::total_cmp);
            let at = |q: f64| clipcap_core::metrics::quantile(&drawn[i], q).unwrap_or(rating[i]);
            Rating {
                decoder: decoders[i].clone(),
                rating: rating[i],
                low: at(0.025),
                high: at(0.975),
                shown: votes.iter().filter(|v| v.winner == i || v.losers.contains(&i)).count(),
                won: votes.iter().filter(|v| v.winner == i).count(),
            }
        })
        .collect();
    let mut gaps = Vec::new();
    for a in 0..k {
        for b in (0..k).filter(|&b| b != a && (rating[a], a) > (rating[b], b)) {
            let p_a = 1.0 / (1.0 + (-(rating[a] - rating[b]) / ELO).exp());
            gaps.push(Gap {
                a: decoders[a].clone(),
                b: decoders[b].clone(),
                p_a,
                votes: votes
                    .iter()
                    .filter(|v| {
                        let shown = |x: usize| v.winner == x || v.losers.contains(&x);
                        shown(a) && shown(b)
                    })
                    .count(),
                needed: votes_needed(p_a),
            });
        }
    }
    ratings.sort_by(|x, y| y.rating.total_cmp(&x.rating));
    gaps.sort_by(|x, y| {
        let at = |d: &str| ratings.iter().position(|r| r.decoder == d);
        (at(&x.a), at(&x.b)).cmp(&(at(&y.a), at(&y.b)))
    });
    Ratings { ratings, gaps }
}

/// Votes between two decoders needed to tell a preference `p` from 0.5: a two-sided test at 95%
/// with 80% power, by the normal approximation to the binomial.
pub fn votes_needed(p: f64) -> Option<u64> {
    const Z_95: f64 = 1.959_964;
    const Z_80: f64 = 0.841_621;
    let gap = (p - 0.5).abs();
    (gap > 1e-9).then(|| (((Z_95 * 0.5 + Z_80 * (p * (1.0 - p)).sqrt()) / gap).powi(2)).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` votes between random pairs of players of the given log strengths.
    fn synthetic(strengths: &[f64], n: usize, rng: &mut ChaCha8Rng) -> Vec<Vote> {
        (0..n)
            .map(|_| {
                let a = rng.random_range(0..strengths.len());
                let b = (a + rng.random_range(1..strengths.len())) % strengths.len();
                let p_a = 1.0 / (1.0 + (strengths[b] - strengths[a]).exp());
                let (winner, loser) = if rng.random_range(0.0..1.0) < p_a {
                    (a, b)
                } else {
                    (b, a)
                };
                Vote {
                    winner,
                    losers: vec![loser],
                }
            })
            .collect()
    }

    #[test]
    fn ratings_recover_known_strengths_with_intervals_that_cover_them() {
        let strengths = [-1.0, -0.4, 0.0, 0.3, 1.1];
        let names: Vec<String> = (0..strengths.len()).map(|i| format!("d{i}")).collect();
        let mean = strengths.iter().sum::<f64>() / strengths.len() as f64;
        let truth = |i: usize| 1000.0 + ELO * (strengths[i] - mean);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (mut covered, mut intervals) = (0, 0);
        for set in 0..20 {
            let r = rate(&names, &synthetic(&strengths, 2000, &mut rng), 200, set);
            let order: Vec<&str> = r.ratings.iter().map(|x| x.decoder.as_str()).collect();
            assert_eq!(order, ["d4", "d3", "d2", "d1", "d0"], "set {set}: {r:?}");
            for x in &r.ratings {
                let i: usize = x.decoder[1..].parse().unwrap();
                intervals += 1;
                covered += usize::from(x.low <= truth(i) && truth(i) <= x.high);
                assert!(x.low <= x.rating && x.rating <= x.high, "{x:?}");
            }
        }
        // 95% intervals: of 100, about 95 cover the truth (binomial: 90 or fewer happens under 3%).
        assert!(covered > 90, "{covered} of {intervals} intervals cover the true rating");
    }

    #[test]
    fn a_player_that_never_lost_gets_a_finite_rating_and_the_gap_its_votes_needed() {
        let votes: Vec<Vote> = (0..10)
            .map(|_| Vote {
                winner: 0,
                losers: vec![1],
            })
            .collect();
        let r = rate(&["a".into(), "b".into()], &votes, 100, 1);
        assert!(r.ratings[0].rating.is_finite() && r.ratings[0].rating > r.ratings[1].rating);
        assert_eq!((r.gaps[0].a.as_str(), r.gaps[0].votes), ("a", 10));
        // 60% against 40% needs about 194 votes (normal approximation), a 75% preference about 29.
        assert_eq!(votes_needed(0.6), Some(194));
        assert_eq!(votes_needed(0.75), Some(29));
        assert_eq!(votes_needed(0.5), None);
    }
}

//! ROUGE-L as pycocoevalcap computes it: the longest common subsequence with each reference, the best
//! precision and the best recall (not necessarily of the same reference), F-measure with beta 1.2.

const BETA: f64 = 1.2;

fn lcs(a: &[&str], b: &[&str]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            row[j + 1] = if x == y { prev[j] + 1 } else { row[j].max(prev[j + 1]) };
        }
        std::mem::swap(&mut prev, &mut row);
    }
    prev[b.len()]
}

/// ROUGE-L of `candidate` against `refs`. Words are split on single spaces, as the reference code
/// does, so an empty caption is one empty word.
pub fn score(candidate: &str, refs: &[String]) -> f64 {
    let c: Vec<&str> = candidate.split(' ').collect();
    let (mut prec, mut rec) = (0.0f64, 0.0f64);
    for r in refs {
        let r: Vec<&str> = r.split(' ').collect();
        let l = lcs(&r, &c) as f64;
        prec = prec.max(l / c.len() as f64);
        rec = rec.max(l / r.len() as f64);
    }
    if prec != 0.0 && rec != 0.0 {
        (1.0 + BETA * BETA) * prec * rec / (rec + BETA * BETA * prec)
    } else {
        0.0
    }
}

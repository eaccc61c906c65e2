//! Numerical helpers decoders share: softmax and top-k selection that never sorts the whole
//! vocabulary (an O(V) partition, then a sort of the k winners).

use std::cmp::Ordering;

/// NaN ranks below everything.
fn key(v: f32) -> f32 {
    if v.is_nan() { f32::NEG_INFINITY } else { v }
}

/// Descending by value, NaN last, ties broken by the lower index (as `torch.argmax` prefers).
fn descending(values: &[f32]) -> impl Fn(&u32, &u32) -> Ordering + '_ {
    move |&a, &b| {
        let (x, y) = (values[a as usize], values[b as usize]);
        key(y).partial_cmp(&key(x)).unwrap_or(Ordering::Equal).then(a.cmp(&b))
    }
}

/// The `k` largest values with their indices, largest first (ties: lower index first).
pub fn top_k(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(values.len());
    if k == 0 {
        return Vec::new();
    }
    if k * 32 <= values.len() {
        return top_k_scan(values, k);
    }
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    let cmp = descending(values);
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, &cmp);
        idx.truncate(k);
    }
    idx.sort_unstable_by(&cmp);
    idx.into_iter().map(|i| (i, values[i as usize])).collect()
}

/// Small k: one pass keeping a sorted buffer of the best k; a value enters only if it beats the
/// worst kept one, which after the first few hundred values almost never happens.
fn top_k_scan(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in values.iter().enumerate() {
        if best.len() == k && key(v) <= key(best[k - 1].1) {
            continue;
        }
        // Equal values stay in index order: a later index goes after them.
        let at = best.partition_point(|b| key(b.1) >= key(v));
        best.insert(at, (i as u32, v));
        best.truncate(k);
    }
    best
}

/// Index of the first maximal value.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Softmax in f32 with the maximum subtracted first.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_equals_a_full_sort() {
        let mut state = 12345u64;
        let values: Vec<f32> = (0..50_257)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 20.0 - 10.0
            })
            .collect();
        let mut sorted: Vec<(u32, f32)> = values.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
        sorted.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
        for k in [1, 5, 64, 1000, 40_000] {
            assert_eq!(top_k(&values, k), sorted[..k]);
        }
    }

    #[test]
    fn ties_prefer_lower_indices_and_nan_sorts_last() {
        assert_eq!(
            top_k(&[1.0, 3.0, 3.0, f32::NAN, 2.0], 3),
            vec![(1, 3.0), (2, 3.0), (4, 2.0)]
        );
        assert_eq!(argmax(&[0.5, 2.0, 2.0]), 1);
    }

    #[test]
    fn softmax_sums_to_one() {
        let p = softmax(&[1000.0, 1000.0, 0.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6 && (p[0] - 0.5).abs() < 1e-6);
    }
}

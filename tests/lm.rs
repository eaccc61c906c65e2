//! The language-model session's step API: forks and reorders of the KV cache give the same logits as
//! running each sequence on its own, sessions of different lengths decoded in one call give what each
//! gives alone, and invalid steps are refused without harming the state.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Barrier, mpsc};
use std::time::Duration;

use clipcap_core::bundle::{Bundle, TokenizerSpec};
use clipcap_core::decoding::Generation;
use clipcap_core::{BatchedLm, Batching, LanguageModel, Padding};
use common::{runtime, tiny_bundle};

fn model_with(batching: Batching) -> BatchedLm {
    let lm = LanguageModel::load(&Bundle::open(tiny_bundle()).unwrap(), &runtime()).unwrap();
    BatchedLm::spawn(lm, batching).unwrap()
}

fn model() -> BatchedLm {
    model_with(Batching::default())
}

fn prefix() -> Vec<f32> {
    (0..10 * 32).map(|i| ((i * 7919 % 101) as f32 / 50.0) - 1.0).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Logits and hidden state after feeding `tokens` one at a time to a batch of one.
fn single(lm: &BatchedLm, prefix: &[f32], tokens: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let mut s = lm.session();
    s.start(prefix).unwrap();
    for &t in tokens {
        s.step(&[0], &[t]).unwrap();
    }
    (s.logits(0).to_vec(), s.hidden(0).to_vec())
}

#[test]
fn forked_and_reordered_sequences_match_single_runs() {
    let lm = model();
    let mut s = lm.session();
    s.start(&prefix()).unwrap();
    // Fork sequence 0 into three, then reorder and drop: [b, a] from [a, b, c].
    s.step(&[0, 0, 0], &[464, 3290, 13]).unwrap();
    s.step(&[1, 0], &[318, 2068]).unwrap();
    assert_eq!((s.batch(), s.len()), (2, 12));
    for (seq, path) in [(0, [3290, 318]), (1, [464, 2068])] {
        let (logits, hidden) = single(&lm, &prefix(), &path);
        assert!(max_diff(s.logits(seq), &logits) < 1e-4, "sequence {seq} logits");
        assert!(max_diff(s.hidden(seq), &hidden) < 1e-4, "sequence {seq} hidden state");
    }
}

#[test]
fn invalid_steps_are_refused_and_the_state_survives() {
    let lm = model();
    let mut s = lm.session();
    s.start(&prefix()).unwrap();
    s.step(&[0], &[464]).unwrap();
    let before = s.logits(0).to_vec();
    for (parents, tokens, why) in [
        (&[1usize][..], &[464u32][..], "parent 1 does not exist"),
        (&[0], &[50257], "outside the vocabulary"),
        (&[0, 0], &[1], "2 parents for 1 tokens"),
        (&[], &[], "0 parents"),
    ] {
        let err = s.step(parents, tokens).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    assert_eq!(s.logits(0), &before[..]);
    s.step(&[0], &[3290]).unwrap();
    assert!(max_diff(s.logits(0), &single(&lm, &prefix(), &[464, 3290]).0) < 1e-4);
}

#[test]
fn positions_beyond_the_model_are_refused() {
    let lm = model();
    let mut s = lm.session();
    s.start(&prefix()).unwrap();
    for _ in 10..128 {
        s.step(&[0], &[13]).unwrap();
    }
    let err = s.step(&[0], &[13]).unwrap_err().to_string();
    assert!(err.contains("128 positions"), "{err}");
}

#[test]
fn generation_enforces_the_step_budget_and_remembers_every_state() {
    let bundle = Bundle::open(tiny_bundle()).unwrap();
    let lm = model();
    let tokenizer = tokenizers::Tokenizer::from_file(bundle.file("tokenizer.json")).unwrap();
    let rules = TokenizerSpec {
        max_tokens: 3,
        ..bundle.manifest.tokenizer.clone()
    };
    let p = prefix();
    let mut g = Generation::new(&lm, &p, &tokenizer, &rules, None, 0).unwrap();
    assert_eq!(g.context(0).unwrap().len(), 10 * 32, "the prefix's states");
    g.step(&[0, 0], &[464, 3290]).unwrap();
    g.step(&[1], &[318]).unwrap();
    // Sequence 0 now is prefix + 3290 + 318: its context walks back through the fork.
    let context = g.context(0).unwrap();
    assert_eq!(context.len(), 12 * 32);
    assert_eq!(&context[11 * 32..], g.hidden(0).unwrap());
    g.step(&[0], &[13]).unwrap();
    let err = g.step(&[0], &[13]).unwrap_err().to_string();
    assert!(err.contains("budget of 3"), "{err}");
    assert!(g.context(1).is_none() && g.logits(1).is_none());
}

/// A prefix of the tiny model that differs by `seed`.
fn prefix_of(seed: usize) -> Vec<f32> {
    (0..10 * 32)
        .map(|i| (((i + 31 * seed) * 7919 % 101) as f32 / 50.0) - 1.0)
        .collect()
}

/// Three sessions decoded with `padding`: session 0 starts alone; session 1 opens after session 0's
/// third step, session 2 (two beams) after session 1's second, so the calls they share hold rows of
/// three lengths. Returns the largest difference of a logit or hidden state from the session alone.
fn decode_together(padding: Padding) -> f32 {
    let paths: [&[u32]; 3] = [
        &[464, 3290, 13, 318, 2068, 257, 1049, 3290, 13],
        &[318, 2068, 13, 464, 3290],
        &[2068, 257, 464],
    ];
    let lm = model_with(Batching {
        max_batch: 8,
        max_wait: Duration::from_secs(2),
        padding,
    });
    let (joined, join) = (Barrier::new(2), Barrier::new(2));
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        for (who, path) in paths.iter().enumerate() {
            let (lm, tx, joined, join) = (&lm, tx.clone(), &joined, &join);
            scope.spawn(move || {
                if who > 0 {
                    join.wait(); // until the previous session has taken its steps alone
                }
                let mut s = lm.session();
                s.start(&prefix_of(who)).unwrap();
                let beams = if who == 2 { 2 } else { 1 };
                for (i, &t) in path.iter().enumerate() {
                    let parents: Vec<usize> = if i == 0 { vec![0; beams] } else { (0..beams).collect() };
                    s.step(&parents, &vec![t; beams]).unwrap();
                    if (who, i) == (0, 2) || (who, i) == (1, 1) {
                        join.wait();
                        joined.wait();
                    }
                }
                let got: Vec<(Vec<f32>, Vec<f32>)> = (0..beams)
                    .map(|b| (s.logits(b).to_vec(), s.hidden(b).to_vec()))
                    .collect();
                tx.send((who, got)).unwrap();
            });
            if who > 0 {
                joined.wait(); // the session that let this one open goes on once it is spawned
            }
        }
    });
    drop(tx);
    let stats = lm.stats();
    let (calls, rows) = (stats.calls.load(Ordering::Relaxed), stats.rows.load(Ordering::Relaxed));
    let alone: u64 = paths.iter().map(|p| p.len() as u64 + 1).sum();
    assert!(
        calls < alone,
        "{calls} calls: the sessions never shared one ({alone} when alone)"
    );
    assert!(rows > calls, "{rows} rows in {calls} calls");
    let mut worst = 0f32;
    for (who, got) in rx {
        let (logits, hidden) = single(&lm, &prefix_of(who), paths[who]);
        for (l, h) in &got {
            worst = worst.max(max_diff(l, &logits)).max(max_diff(h, &hidden));
        }
    }
    worst
}

#[test]
fn sessions_of_different_lengths_share_calls_and_get_what_each_gets_alone() {
    assert_eq!(decode_together(Padding::Full), 0.0, "padded to the full length");
    let longest = decode_together(Padding::Longest);
    assert!(longest < 1e-5, "padded to the longest: differs by {longest}");
}

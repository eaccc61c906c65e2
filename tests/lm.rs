//! The language-model session's step API: forks and reorders of the KV cache give the same logits as
//! running each sequence on its own, and invalid steps are refused without harming the state.

mod common;

use clipcap_core::LanguageModel;
use clipcap_core::bundle::{Bundle, TokenizerSpec};
use clipcap_core::decoding::Generation;
use common::{runtime, tiny_bundle};

fn model() -> LanguageModel {
    LanguageModel::load(&Bundle::open(tiny_bundle()).unwrap(), &runtime()).unwrap()
}

fn prefix() -> Vec<f32> {
    (0..10 * 32).map(|i| ((i * 7919 % 101) as f32 / 50.0) - 1.0).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Logits and hidden state after feeding `tokens` one at a time to a batch of one.
fn single(lm: &mut LanguageModel, tokens: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let mut s = lm.start(&prefix()).unwrap();
    for &t in tokens {
        lm.step(&mut s, &[0], &[t]).unwrap();
    }
    (s.logits(0).to_vec(), s.hidden(0).to_vec())
}

#[test]
fn forked_and_reordered_sequences_match_single_runs() {
    let mut lm = model();
    let mut s = lm.start(&prefix()).unwrap();
    // Fork sequence 0 into three, then reorder and drop: [b, a] from [a, b, c].
    lm.step(&mut s, &[0, 0, 0], &[464, 3290, 13]).unwrap();
    lm.step(&mut s, &[1, 0], &[318, 2068]).unwrap();
    assert_eq!((s.batch(), s.len()), (2, 12));
    for (seq, path) in [(0, [3290, 318]), (1, [464, 2068])] {
        let (logits, hidden) = single(&mut lm, &path);
        assert!(max_diff(s.logits(seq), &logits) < 1e-4, "sequence {seq} logits");
        assert!(max_diff(s.hidden(seq), &hidden) < 1e-4, "sequence {seq} hidden state");
    }
}

#[test]
fn invalid_steps_are_refused_and_the_state_survives() {
    let mut lm = model();
    let mut s = lm.start(&prefix()).unwrap();
    lm.step(&mut s, &[0], &[464]).unwrap();
    let before = s.logits(0).to_vec();
    for (parents, tokens, why) in [
        (&[1usize][..], &[464u32][..], "parent 1 does not exist"),
        (&[0], &[50257], "outside the vocabulary"),
        (&[0, 0], &[1], "2 parents for 1 tokens"),
        (&[], &[], "0 parents"),
    ] {
        let err = lm.step(&mut s, parents, tokens).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    assert_eq!(s.logits(0), &before[..]);
    lm.step(&mut s, &[0], &[3290]).unwrap();
    assert!(max_diff(s.logits(0), &single(&mut lm, &[464, 3290]).0) < 1e-4);
}

#[test]
fn positions_beyond_the_model_are_refused() {
    let mut lm = model();
    let mut s = lm.start(&prefix()).unwrap();
    for _ in 10..128 {
        lm.step(&mut s, &[0], &[13]).unwrap();
    }
    let err = lm.step(&mut s, &[0], &[13]).unwrap_err().to_string();
    assert!(err.contains("128 positions"), "{err}");
}

#[test]
fn generation_enforces_the_step_budget_and_remembers_every_state() {
    let bundle = Bundle::open(tiny_bundle()).unwrap();
    let mut lm = LanguageModel::load(&bundle, &runtime()).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(bundle.file("tokenizer.json")).unwrap();
    let rules = TokenizerSpec {
        max_tokens: 3,
        ..bundle.manifest.tokenizer.clone()
    };
    let p = prefix();
    let mut g = Generation::new(&mut lm, &p, &tokenizer, &rules, None, 0).unwrap();
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

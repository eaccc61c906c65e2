//! Greedy and beam search, with ClipCap's semantics.
//!
//! Beam search follows ClipCap's `generate_beam`: log-probabilities are the log of the softmax of
//! logits / temperature; beams are ranked by cumulative log-probability divided by
//! length ** length_penalty; a beam that produced a stop token is extended with token 0 at no cost and
//! no length, so it keeps competing with its final score; the best beam, cut to its length, wins.

use std::ffi::CStr;

use clipcap_plugin_sdk::select::{argmax, top_k};
use clipcap_plugin_sdk::{Decoder, Host, Param, Params, export_plugin};

pub struct Greedy;

impl Decoder for Greedy {
    const NAME: &'static CStr = c"greedy";
    const DESCRIPTION: &'static CStr = c"the most likely next token at every step";
    const PARAMS: &'static [Param] = &[];

    fn new(_: &Params) -> Result<Self, String> {
        Ok(Greedy)
    }

    fn decode(&mut self, host: &mut Host) -> Result<Vec<u32>, String> {
        let mut tokens = Vec::new();
        loop {
            let token = argmax(host.logits(0)?);
            tokens.push(token);
            if host.is_stop(token) || tokens.len() == host.max_tokens() {
                return Ok(tokens);
            }
            host.step(&[0], &[token])?;
        }
    }
}

pub struct Beam {
    num_beams: usize,
    length_penalty: f32,
    temperature: f32,
}

/// The `k` most likely tokens with their log-probabilities, ln(softmax(logits / temperature)) computed
/// in that order as ClipCap does, but only for the winners: the log-softmax is monotonic in the logits,
/// so ranking by logits picks the same tokens, and the vocabulary costs one pass of exp for the sum.
fn top_log_probs(logits: &[f32], temperature: f32, k: usize) -> Vec<(u32, f32)> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x / temperature));
    let sum: f32 = logits.iter().map(|&x| (x / temperature - max).exp()).sum();
    top_k(logits, k)
        .into_iter()
        .map(|(t, x)| (t, ((x / temperature - max).exp() / sum).ln()))
        .collect()
}

impl Decoder for Beam {
    const NAME: &'static CStr = c"beam";
    const DESCRIPTION: &'static CStr =
        c"beam search ranked by length-normalised log-probability (ClipCap's generate_beam)";
    const PARAMS: &'static [Param] = &[
        Param::int(c"num_beams", c"beams kept at every step", 5, 1, 64),
        Param::float(
            c"length_penalty",
            c"scores are divided by length ** length_penalty",
            1.0,
            0.0,
            10.0,
        ),
        Param::float(
            c"temperature",
            c"logits are divided by it before the softmax",
            1.0,
            0.01,
            100.0,
        ),
    ];

    fn new(p: &Params) -> Result<Self, String> {
        Ok(Beam {
            num_beams: p.usize("num_beams"),
            length_penalty: p.float("length_penalty") as f32,
            temperature: p.float("temperature") as f32,
        })
    }

    fn decode(&mut self, host: &mut Host) -> Result<Vec<u32>, String> {
        let (beams, lp) = (self.num_beams, self.length_penalty);
        let vocab = host.vocab_size();
        let first = top_log_probs(host.logits(0)?, self.temperature, beams);
        let mut scores: Vec<f32> = first.iter().map(|c| c.1).collect();
        let mut tokens: Vec<Vec<u32>> = first.iter().map(|c| vec![c.0]).collect();
        let mut lengths = vec![1.0f32; beams];
        let mut stopped: Vec<bool> = first.iter().map(|c| host.is_stop(c.0)).collect();
        let (mut parents, mut next): (Vec<u32>, Vec<u32>) = (vec![0; beams], first.iter().map(|c| c.0).collect());
        for _ in 1..host.max_tokens() {
            if stopped.iter().all(|&s| s) {
                break;
            }
            host.step(&parents, &next)?;
            // Candidates (average score, flat index beam * vocab + token); each beam's best `beams`
            // contain the overall best `beams`, so the vocabulary is never sorted.
            let mut candidates: Vec<(f32, usize)> = Vec::with_capacity(beams * beams);
            let mut new_lengths = lengths.clone();
            for b in 0..beams {
                if stopped[b] {
                    candidates.push((scores[b] / lengths[b].powf(lp), b * vocab));
                    continue;
                }
                new_lengths[b] += 1.0;
                let norm = new_lengths[b].powf(lp);
                let best = top_log_probs(host.logits(b)?, self.temperature, beams);
                candidates.extend(
                    best.into_iter()
                        .map(|(t, l)| ((scores[b] + l) / norm, b * vocab + t as usize)),
                );
            }
            candidates.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
            candidates.truncate(beams);
            parents = candidates.iter().map(|c| (c.1 / vocab) as u32).collect();
            next = candidates.iter().map(|c| (c.1 % vocab) as u32).collect();
            lengths = parents.iter().map(|&p| new_lengths[p as usize]).collect();
            scores = candidates.iter().zip(&lengths).map(|(c, l)| c.0 * l.powf(lp)).collect();
            tokens = parents
                .iter()
                .zip(&next)
                .map(|(&p, &t)| [&tokens[p as usize][..], &[t]].concat())
                .collect();
            stopped = parents
                .iter()
                .zip(&next)
                .map(|(&p, &t)| stopped[p as usize] || host.is_stop(t))
                .collect();
        }
        let finals: Vec<f32> = scores.iter().zip(&lengths).map(|(s, l)| s / l.powf(lp)).collect();
        let winner = argmax(&finals) as usize;
        tokens[winner].truncate(lengths[winner] as usize);
        Ok(std::mem::take(&mut tokens[winner]))
    }
}

export_plugin!(name: c"search", decoders: [Greedy, Beam]);

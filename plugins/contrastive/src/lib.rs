//! Contrastive search (Su et al. 2022, "A Contrastive Framework for Neural Text Generation") and its
//! CLIP-guided form MAGIC (Su et al. 2022, "Language Models Can See").
//!
//! At every step the k most likely next tokens are run through the model as k forks of the current
//! sequence; each candidate v scores
//!   (1 - alpha) p(v) - alpha max_j cos(h_v, h_j) [+ beta softmax_k(logit_scale cos(CLIP(image), CLIP(text + v)))]
//! where h_v is the candidate's last-layer state and h_j the states of every earlier position, prefix
//! included. The best candidate's fork becomes the sequence.

use std::ffi::CStr;

use clipcap_plugin_sdk::select::{argmax, cosine, softmax, top_k};
use clipcap_plugin_sdk::{Decoder, Host, Param, Params, export_plugin};

fn search(host: &mut Host, k: usize, alpha: f32, beta: f32) -> Result<Vec<u32>, String> {
    let d = host.hidden_size();
    let scale = match (beta > 0.0, host.clip_logit_scale()) {
        (true, None) => return Err("needs a bundle with a CLIP text encoder (beta > 0)".into()),
        (_, scale) => scale.unwrap_or(0.0),
    };
    let mut tokens: Vec<u32> = Vec::new();
    let mut current = 0usize;
    loop {
        let candidates = top_k(&softmax(host.logits(current)?), k);
        let context = host.context(current)?.to_vec();
        let ids: Vec<u32> = candidates.iter().map(|c| c.0).collect();
        host.step(&vec![current as u32; ids.len()], &ids)?;
        let mut scores = Vec::with_capacity(ids.len());
        for (i, &(_, p)) in candidates.iter().enumerate() {
            let h = host.hidden(i)?;
            let penalty = context
                .chunks_exact(d)
                .map(|c| cosine(h, c))
                .fold(f32::NEG_INFINITY, f32::max);
            scores.push((1.0 - alpha) * p - alpha * penalty);
        }
        if beta > 0.0 {
            let texts: Vec<String> = ids
                .iter()
                .map(|&t| host.detokenize(&[&tokens[..], &[t]].concat()))
                .collect();
            let logits: Vec<f32> = host.image_text_similarity(&texts)?.iter().map(|s| scale * s).collect();
            for (score, g) in scores.iter_mut().zip(softmax(&logits)) {
                *score += beta * g;
            }
        }
        current = argmax(&scores) as usize;
        let token = ids[current];
        tokens.push(token);
        if host.is_stop(token) || tokens.len() == host.max_tokens() {
            return Ok(tokens);
        }
    }
}

const TOP_K: Param = Param::int(c"top_k", c"candidates considered at each step", 4, 1, 64);
const PENALTY_ALPHA: Param = Param::float(c"penalty_alpha", c"weight of the degeneration penalty", 0.6, 0.0, 1.0);

pub struct Contrastive {
    top_k: usize,
    alpha: f32,
}

impl Decoder for Contrastive {
    const NAME: &'static CStr = c"contrastive";
    const DESCRIPTION: &'static CStr = c"contrastive search: likelihood minus a degeneration penalty on hidden states";
    const PARAMS: &'static [Param] = &[TOP_K, PENALTY_ALPHA];

    fn new(p: &Params) -> Result<Self, String> {
        Ok(Contrastive {
            top_k: p.usize("top_k"),
            alpha: p.float("penalty_alpha") as f32,
        })
    }

    fn decode(&mut self, host: &mut Host) -> Result<Vec<u32>, String> {
        search(host, self.top_k, self.alpha, 0.0)
    }
}

/// Contrastive search plus the CLIP term.
pub struct Magic {
    contrastive: Contrastive,
    beta: f32,
}

impl Decoder for Magic {
    const NAME: &'static CStr = c"magic";
    const DESCRIPTION: &'static CStr =
        c"CLIP-guided contrastive search (MAGIC): adds beta x the image-text match of each candidate";
    const PARAMS: &'static [Param] = &[
        TOP_K,
        PENALTY_ALPHA,
        Param::float(c"beta", c"weight of the CLIP image-text score", 2.0, 0.0, 100.0),
    ];

    fn new(p: &Params) -> Result<Self, String> {
        Ok(Magic {
            contrastive: Contrastive::new(p)?,
            beta: p.float("beta") as f32,
        })
    }

    fn decode(&mut self, host: &mut Host) -> Result<Vec<u32>, String> {
        let Contrastive { top_k, alpha } = self.contrastive;
        search(host, top_k, alpha, self.beta)
    }
}

export_plugin!(name: c"contrastive", decoders: [Contrastive, Magic]);

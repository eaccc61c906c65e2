//! One caption being generated: the host-side state a decoder drives through the host table.
//!
//! It holds the caption's session with the language model (batch.rs, which keeps the KV cache and
//! shares model calls with the other captions in flight), remembers the hidden states of every position
//! of every live sequence (as a tree of steps, so forks cost nothing until a decoder asks), enforces
//! the step budget, and provides the seeded random stream and CLIP similarity.

use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

use crate::batch::{BatchedLm, LmSession};
use crate::bundle::TokenizerSpec;
use crate::clip_text::{TextEncoder, TextError};
use crate::lm::{LmError, StepError};

/// Why image-text similarity is not available to a decoder.
#[derive(Debug, thiserror::Error)]
pub enum SimilarityError {
    #[error("this bundle has no CLIP text encoder")]
    NoTextEncoder,
    #[error(transparent)]
    Text(#[from] TextError),
}

/// CLIP's text encoder (shared by the captions in flight) and the embedding of the image being
/// captioned.
pub struct ClipGuide<'a> {
    pub encoder: &'a TextEncoder,
    pub image_embeds: &'a [f32],
}

struct Step {
    parents: Vec<u32>,
    /// [batch, width]: the state each new sequence's new position got.
    hidden: Vec<f32>,
}

pub struct Generation<'a> {
    lm: LmSession<'a>,
    prefix: &'a [f32],
    tokenizer: &'a Tokenizer,
    clip: Option<ClipGuide<'a>>,
    rules: &'a TokenizerSpec,
    prefix_hidden: Vec<f32>,
    history: Vec<Step>,
    steps: usize,
    rng: ChaCha8Rng,
    model_time: Duration,
}

impl<'a> Generation<'a> {
    /// Runs the prefix pass. `rules`: the bundle's stop tokens, end-of-text and token budget.
    pub fn new(
        lm: &'a BatchedLm,
        prefix: &'a [f32],
        tokenizer: &'a Tokenizer,
        rules: &'a TokenizerSpec,
        clip: Option<ClipGuide<'a>>,
        seed: u64,
    ) -> Result<Self, LmError> {
        let t = Instant::now();
        let mut lm = lm.session();
        lm.start(prefix)?;
        let prefix_hidden = lm.added_hidden(0).to_vec();
        Ok(Generation {
            lm,
            prefix,
            tokenizer,
            clip,
            rules,
            prefix_hidden,
            history: Vec::new(),
            steps: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            model_time: t.elapsed(),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.lm.spec().vocab_size
    }
    pub fn hidden_size(&self) -> usize {
        self.lm.spec().width
    }
    pub fn stop_tokens(&self) -> &[u32] {
        &self.rules.stop_tokens
    }
    pub fn eos_token(&self) -> u32 {
        self.rules.eos_token
    }
    pub fn max_tokens(&self) -> usize {
        self.rules.max_tokens
    }
    /// The most positions a sequence can have: the prefix and a full caption.
    pub fn max_positions(&self) -> usize {
        self.prefix_hidden.len() / self.hidden_size() + self.max_tokens()
    }
    pub fn batch(&self) -> usize {
        self.lm.batch()
    }
    /// Model steps taken so far.
    pub fn steps(&self) -> usize {
        self.steps
    }
    /// Time spent running models on the decoder's behalf (prefix pass, steps, CLIP).
    pub fn model_time(&self) -> Duration {
        self.model_time
    }
    pub fn logit_scale(&self) -> Option<f32> {
        self.clip.as_ref().map(|c| c.encoder.logit_scale())
    }

    /// Back to the prefix alone (the cache is rebuilt, the step budget is not restored).
    pub fn start(&mut self) -> Result<(), LmError> {
        let t = Instant::now();
        self.lm.start(self.prefix)?;
        self.history.clear();
        self.model_time += t.elapsed();
        Ok(())
    }

    /// New sequence `i` continues `parents[i]` with `tokens[i]`; at most `max_tokens` steps a caption.
    pub fn step(&mut self, parents: &[u32], tokens: &[u32]) -> Result<(), LmError> {
        if self.steps >= self.max_tokens() {
            return Err(StepError::Budget(self.max_tokens()).into());
        }
        let parents_usize: Vec<usize> = parents.iter().map(|&p| p as usize).collect();
        let t = Instant::now();
        self.lm.step(&parents_usize, tokens)?;
        self.model_time += t.elapsed();
        self.steps += 1;
        let hidden = (0..self.lm.batch())
            .flat_map(|i| self.lm.hidden(i).iter().copied())
            .collect();
        self.history.push(Step {
            parents: parents.to_vec(),
            hidden,
        });
        Ok(())
    }

    pub fn logits(&self, seq: usize) -> Option<&[f32]> {
        (seq < self.batch()).then(|| self.lm.logits(seq))
    }

    pub fn hidden(&self, seq: usize) -> Option<&[f32]> {
        (seq < self.batch()).then(|| self.lm.hidden(seq))
    }

    /// States of every position of `seq`, prefix first, [positions, width] flattened.
    pub fn context(&self, seq: usize) -> Option<Vec<f32>> {
        if seq >= self.batch() {
            return None;
        }
        let d = self.hidden_size();
        let mut rows: Vec<&[f32]> = Vec::with_capacity(self.history.len());
        let mut index = seq;
        for step in self.history.iter().rev() {
            rows.push(&step.hidden[index * d..(index + 1) * d]);
            index = step.parents[index] as usize;
        }
        let mut out = self.prefix_hidden.clone();
        for row in rows.iter().rev() {
            out.extend_from_slice(row);
        }
        Some(out)
    }

    pub fn random(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    pub fn detokenize(&self, ids: &[u32]) -> tokenizers::Result<String> {
        self.tokenizer.decode(ids, true)
    }

    /// Cosine similarity of each text to the image, by CLIP's text encoder.
    pub fn similarity(&mut self, texts: &[&str]) -> Result<Vec<f32>, SimilarityError> {
        let Some(clip) = self.clip.as_mut() else {
            return Err(SimilarityError::NoTextEncoder);
        };
        let t = Instant::now();
        let result = clip
            .encoder
            .similarity(texts, clip.image_embeds)
            .map_err(SimilarityError::from);
        self.model_time += t.elapsed();
        result
    }
}

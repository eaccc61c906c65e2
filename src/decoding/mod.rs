//! Decoding strategies: how the next tokens are chosen from the language model's outputs.
//!
//! A decoder drives a [`Generation`] one step at a time: it reads logits (and hidden states) of the
//! live sequences and asks for the next step as (parent sequence, next token) pairs. The generation
//! owns the model and the KV cache, enforces the token budget, and checks every request, so a decoder
//! can only ever produce an error for its own caption.

mod greedy;

pub use greedy::Greedy;

use crate::lm::{LanguageModel, LmError, LmState};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Lm(#[from] LmError),
    #[error("decoder `{decoder}`: {message}")]
    Decoder { decoder: String, message: String },
}

/// One caption being generated: the model, its cache, and the rules the decoder must keep.
pub struct Generation<'a> {
    lm: &'a mut LanguageModel,
    state: LmState,
    stop_tokens: &'a [u32],
    max_tokens: usize,
    steps: usize,
}

impl<'a> Generation<'a> {
    /// Runs the prefix pass; the first logits are then available for sequence 0.
    pub fn start(
        lm: &'a mut LanguageModel,
        prefix: &[f32],
        stop_tokens: &'a [u32],
        max_tokens: usize,
    ) -> Result<Self, DecodeError> {
        let state = lm.start(prefix)?;
        Ok(Generation {
            lm,
            state,
            stop_tokens,
            max_tokens,
            steps: 0,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.lm.spec().vocab_size
    }

    /// Number of live sequences.
    pub fn batch(&self) -> usize {
        self.state.batch()
    }

    pub fn logits(&self, seq: usize) -> &[f32] {
        self.state.logits(seq)
    }

    pub fn hidden(&self, seq: usize) -> &[f32] {
        self.state.hidden(seq)
    }

    pub fn is_stop(&self, token: u32) -> bool {
        self.stop_tokens.contains(&token)
    }

    /// The most tokens a caption may have.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Extends the batch: new sequence `i` is `pairs[i].0` followed by token `pairs[i].1`.
    pub fn step(&mut self, pairs: &[(usize, u32)]) -> Result<(), DecodeError> {
        // Token t of a caption comes from the logits after t - 1 steps, so max_tokens - 1 steps suffice.
        if self.steps + 1 >= self.max_tokens {
            return Err(LmError::Step(format!("step budget of {} exhausted", self.max_tokens - 1)).into());
        }
        let (parents, tokens): (Vec<usize>, Vec<u32>) = pairs.iter().copied().unzip();
        self.lm.step(&mut self.state, &parents, &tokens)?;
        self.steps += 1;
        Ok(())
    }
}

pub trait Decoder {
    fn name(&self) -> &str;
    /// The token ids of one caption, stop token included when one was produced.
    fn decode(&mut self, generation: &mut Generation) -> Result<Vec<u32>, DecodeError>;
}

/// Index of the first maximal value (the same tie-break as `torch.argmax`).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

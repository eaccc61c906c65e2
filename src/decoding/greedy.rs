//! Greedy decoding: always the most likely next token (ClipCap's `generate2` without sampling).

use super::{DecodeError, Decoder, Generation, argmax};

pub struct Greedy;

impl Decoder for Greedy {
    fn name(&self) -> &str {
        "greedy"
    }

    fn decode(&mut self, g: &mut Generation) -> Result<Vec<u32>, DecodeError> {
        let mut tokens = Vec::new();
        loop {
            let token = argmax(g.logits(0)) as u32;
            tokens.push(token);
            if g.is_stop(token) || tokens.len() == g.max_tokens() {
                return Ok(tokens);
            }
            g.step(&[(0, token)])?;
        }
    }
}

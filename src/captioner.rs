//! The whole path for one image: preprocess, encode, map, decode, detokenise, with per-stage timings.

use std::time::Instant;

use image::RgbImage;
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::bundle::{Bundle, BundleError, MANIFEST};
use crate::decoding::{DecodeError, Decoder, Generation};
use crate::lm::{LanguageModel, LmError};
use crate::preprocess::Preprocessor;
use crate::runtime::{Runtime, RuntimeError};
use crate::vision::{ImageEncoder, Mapper, VisionError};

#[derive(Debug, thiserror::Error)]
pub enum CaptionError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Vision(#[from] VisionError),
    #[error(transparent)]
    Lm(#[from] LmError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// Milliseconds spent in each stage of one caption.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub preprocess: f64,
    pub encode: f64,
    pub map: f64,
    pub decode: f64,
    pub total: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Caption {
    pub caption: String,
    pub token_ids: Vec<u32>,
    pub ms: Timings,
    #[serde(skip)]
    pub image_embeds: Vec<f32>,
}

pub struct Captioner {
    preprocessor: Preprocessor,
    encoder: ImageEncoder,
    mapper: Mapper,
    lm: LanguageModel,
    tokenizer: Tokenizer,
    stop_tokens: Vec<u32>,
    max_tokens: usize,
}

impl Captioner {
    pub fn load(bundle: &Bundle, runtime: &Runtime) -> Result<Self, CaptionError> {
        let m = &bundle.manifest;
        Ok(Captioner {
            preprocessor: Preprocessor::new(&m.preprocess),
            encoder: ImageEncoder::load(bundle, runtime)?,
            mapper: Mapper::load(bundle, runtime)?,
            lm: LanguageModel::load(bundle, runtime)?,
            tokenizer: load_tokenizer(bundle)?,
            stop_tokens: m.tokenizer.stop_tokens.clone(),
            max_tokens: m.tokenizer.max_tokens,
        })
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }

    pub fn caption(&mut self, image: &RgbImage, decoder: &mut dyn Decoder) -> Result<Caption, CaptionError> {
        let start = Instant::now();
        let mut ms = Timings::default();
        let lap = |slot: &mut f64, since: &mut Instant| {
            *slot = since.elapsed().as_secs_f64() * 1e3;
            *since = Instant::now();
        };
        let mut t = Instant::now();
        let pixels = self.preprocessor.run(image);
        lap(&mut ms.preprocess, &mut t);
        let image_embeds = self.encoder.embed(&pixels)?;
        lap(&mut ms.encode, &mut t);
        let prefix = self.mapper.prefix(&image_embeds)?;
        lap(&mut ms.map, &mut t);
        let mut generation = Generation::start(&mut self.lm, &prefix, &self.stop_tokens, self.max_tokens)?;
        let token_ids = decoder.decode(&mut generation)?;
        lap(&mut ms.decode, &mut t);
        let caption = self.detokenize(&token_ids)?;
        ms.total = start.elapsed().as_secs_f64() * 1e3;
        Ok(Caption {
            caption,
            token_ids,
            ms,
            image_embeds,
        })
    }

    /// Caption text of `ids`: special tokens (end-of-text) dropped, surrounding spaces trimmed.
    pub fn detokenize(&self, ids: &[u32]) -> Result<String, CaptionError> {
        let text = self
            .tokenizer
            .decode(ids, true)
            .map_err(|e| CaptionError::Tokenizer(e.to_string()))?;
        Ok(text.trim().to_string())
    }
}

/// The bundle's tokenizer, refused unless its vocabulary and end-of-text token are what the manifest says.
fn load_tokenizer(bundle: &Bundle) -> Result<Tokenizer, CaptionError> {
    let m = &bundle.manifest;
    let path = bundle.file(&m.tokenizer.file);
    let bad = |message: String| BundleError::Manifest {
        path: path.clone(),
        message,
    };
    let tokenizer = Tokenizer::from_file(&path).map_err(|e| bad(format!("not a tokenizers JSON file: {e}")))?;
    let size = tokenizer.get_vocab_size(true);
    if size != m.language_model.vocab_size {
        return Err(bad(format!(
            "has {size} tokens, {MANIFEST} language_model.vocab_size says {}",
            m.language_model.vocab_size
        ))
        .into());
    }
    let eos = m.tokenizer.eos_token;
    let is_special = tokenizer
        .get_added_vocabulary()
        .get_added_tokens_decoder()
        .get(&eos)
        .is_some_and(|t| t.special);
    if !is_special {
        return Err(bad(format!(
            "token {eos} (tokenizer.eos_token) is not a special token of this tokenizer"
        ))
        .into());
    }
    Ok(tokenizer)
}

//! The whole path for one image: preprocess, encode, map, then decode with a plugin decoder (and its
//! fallback), detokenise, with per-stage timings.
//!
//! A captioner serves several threads at once: each caption in flight decodes on its caller's thread
//! and shares the language model's calls with the others (batch.rs); the image and text encoders
//! serve one caller at a time.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use image::RgbImage;
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::batch::{BatchStats, BatchedLm, Batching};
use crate::bundle::{Bundle, BundleError, MANIFEST, TokenizerSpec};
use crate::clip_text::{TextEncoder, TextError};
use crate::decoding::{ClipGuide, DecodeError, DecoderInstance, FaultKind, Generation};
use crate::lm::{LanguageModel, LmError};
use crate::metrics::clipscore;
use crate::preprocess::Preprocessor;
use crate::runtime::Runtime;
use crate::vision::{ImageEncoder, Mapper, VisionError};

#[derive(Debug, thiserror::Error)]
pub enum CaptionError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Vision(#[from] VisionError),
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Lm(#[from] LmError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("tokenizer: {0}")]
    Tokenizer(tokenizers::Error),
    #[error("cannot start the language model's thread: {0}")]
    Thread(std::io::Error),
}

impl CaptionError {
    /// The kind of a decoder's failure (`DecoderFault::kind`), or `Model` when the model path failed
    /// rather than the decoder.
    pub fn fault(&self) -> FaultKind {
        match self {
            CaptionError::Decode(DecodeError::Decoder { fault, .. }) => fault.kind(),
            _ => FaultKind::Model,
        }
    }
}

/// Milliseconds spent in each stage of one caption. `decoder` is the decoder's own share of `decode`
/// (`decode` minus the model steps it asked for).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub preprocess: f64,
    pub encode: f64,
    pub map: f64,
    pub decode: f64,
    pub decoder: f64,
    pub total: f64,
}

/// An image ready for decoding: its embedding and prefix.
pub struct Prepared {
    pub image_embeds: Vec<f32>,
    pub prefix: Vec<f32>,
    ms: Timings,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedDecoder {
    pub decoder: String,
    pub error: String,
    /// The kind of failure ([`CaptionError::fault`]).
    pub fault: FaultKind,
}

#[derive(Debug, Clone, Serialize)]
pub struct Caption {
    pub caption: String,
    pub token_ids: Vec<u32>,
    /// The decoder that produced the caption.
    pub decoder: String,
    /// Set when the requested decoder failed and the fallback produced the caption.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_from: Option<FailedDecoder>,
    /// Model steps the decoder asked for.
    pub steps: usize,
    pub ms: Timings,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

pub struct Captioner {
    preprocessor: Preprocessor,
    encoder: Mutex<ImageEncoder>,
    mapper: Mutex<Mapper>,
    lm: BatchedLm,
    text: Option<TextEncoder>,
    tokenizer: Tokenizer,
    rules: TokenizerSpec,
}

/// A scoped thread's result; its panic, if it panicked, goes on in this thread.
fn joined<T>(result: std::thread::Result<T>) -> T {
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The guarded value even if a thread panicked holding it: the encoders keep no state between calls.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Captioner {
    pub fn load(bundle: &Bundle, runtime: &Runtime, batching: Batching) -> Result<Self, CaptionError> {
        let m = &bundle.manifest;
        bundle.check_runtime(runtime.version())?;
        // Either way errors are reported in the order of the path, so that the first disagreement
        // reported is the first on it.
        let (encoder, mapper, lm) = if runtime.parallel_sessions() {
            let (encoder, mapper, lm) = std::thread::scope(|s| {
                let lm = s.spawn(|| LanguageModel::load(bundle, runtime));
                let mapper = s.spawn(|| Mapper::load(bundle, runtime));
                let encoder = ImageEncoder::load(bundle, runtime);
                (encoder, joined(mapper.join()), joined(lm.join()))
            });
            (encoder?, mapper?, lm?)
        } else {
            (
                ImageEncoder::load(bundle, runtime)?,
                Mapper::load(bundle, runtime)?,
                LanguageModel::load(bundle, runtime)?,
            )
        };
        let (encoder, mapper) = (Mutex::new(encoder), Mutex::new(mapper));
        Ok(Captioner {
            preprocessor: Preprocessor::new(&m.preprocess),
            encoder,
            mapper,
            lm: BatchedLm::spawn(lm, batching).map_err(CaptionError::Thread)?,
            text: TextEncoder::load(bundle, runtime)?,
            tokenizer: load_tokenizer(bundle)?,
            rules: m.tokenizer.clone(),
        })
    }

    /// The language model's calls so far and the rows they decoded.
    pub fn batch_stats(&self) -> &BatchStats {
        self.lm.stats()
    }

    /// Whether the bundle has CLIP's text encoder, which CLIPScore needs.
    pub fn has_text_encoder(&self) -> bool {
        self.text.is_some()
    }

    /// CLIP text embeddings of `texts` as CLIPScore takes them (each prefixed "A photo depicts "),
    /// or None when the bundle has no text encoder.
    pub fn caption_embeddings(&self, texts: &[&str]) -> Result<Option<Vec<Vec<f32>>>, CaptionError> {
        let Some(encoder) = self.text.as_ref() else {
            return Ok(None);
        };
        let prefixed: Vec<String> = texts.iter().map(|t| format!("{}{t}", clipscore::PREFIX)).collect();
        let refs: Vec<&str> = prefixed.iter().map(String::as_str).collect();
        Ok(Some(encoder.embed(&refs)?))
    }

    /// The CLIPScore of each caption of a prepared image, or None without a text encoder.
    pub fn clip_scores(&self, prepared: &Prepared, captions: &[&str]) -> Result<Option<Vec<f64>>, CaptionError> {
        Ok(self.caption_embeddings(captions)?.map(|embedded| {
            embedded
                .iter()
                .map(|t| clipscore::clip_score(&prepared.image_embeds, t))
                .collect()
        }))
    }

    /// Preprocessing, image encoder and mapper: everything before decoding.
    pub fn prepare(&self, image: &RgbImage) -> Result<Prepared, CaptionError> {
        let mut timings = Timings::default();
        let t = Instant::now();
        let pixels = self.preprocessor.run(image);
        timings.preprocess = ms(t);
        let t = Instant::now();
        let image_embeds = lock(&self.encoder).embed(&pixels)?;
        timings.encode = ms(t);
        let t = Instant::now();
        let prefix = lock(&self.mapper).prefix(&image_embeds)?;
        timings.map = ms(t);
        Ok(Prepared {
            image_embeds,
            prefix,
            ms: timings,
        })
    }

    /// Decodes a prepared image with `decoder`; if that fails and a `fallback` is given, with the
    /// fallback, and the caption records why. `seed` seeds the decoder's random stream.
    pub fn decode(
        &self,
        prepared: &Prepared,
        decoder: &mut DecoderInstance,
        fallback: Option<&mut DecoderInstance>,
        seed: u64,
    ) -> Result<Caption, CaptionError> {
        match self.decode_with(prepared, decoder, seed) {
            Ok(caption) => Ok(caption),
            Err(e) => {
                let Some(fallback) = fallback else { return Err(e) };
                tracing::warn!(
                    decoder = decoder.label(),
                    fallback = fallback.label(),
                    "decoder failed: {e}"
                );
                let mut caption = self.decode_with(prepared, fallback, seed)?;
                caption.fallback_from = Some(FailedDecoder {
                    decoder: decoder.label().into(),
                    error: e.to_string(),
                    fault: e.fault(),
                });
                Ok(caption)
            }
        }
    }

    fn decode_with(
        &self,
        prepared: &Prepared,
        decoder: &mut DecoderInstance,
        seed: u64,
    ) -> Result<Caption, CaptionError> {
        let t = Instant::now();
        let clip = self.text.as_ref().map(|encoder| ClipGuide {
            encoder,
            image_embeds: &prepared.image_embeds,
        });
        let mut generation = Generation::new(&self.lm, &prepared.prefix, &self.tokenizer, &self.rules, clip, seed)?;
        let token_ids = decoder.decode(&mut generation)?;
        let (steps, model_time) = (generation.steps(), generation.model_time());
        let mut timings = prepared.ms.clone();
        timings.decode = ms(t);
        timings.decoder = timings.decode - model_time.as_secs_f64() * 1e3;
        let caption = self.detokenize(&token_ids)?;
        timings.total = timings.preprocess + timings.encode + timings.map + ms(t);
        Ok(Caption {
            caption,
            token_ids,
            decoder: decoder.label().into(),
            fallback_from: None,
            steps,
            ms: timings,
        })
    }

    /// Caption text of `ids`: special tokens (end-of-text) dropped, surrounding spaces trimmed.
    pub fn detokenize(&self, ids: &[u32]) -> Result<String, CaptionError> {
        let text = self.tokenizer.decode(ids, true).map_err(CaptionError::Tokenizer)?;
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

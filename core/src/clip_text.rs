//! CLIP's text encoder: how well a text matches the image, for CLIP-guided decoding and CLIPScore.
//!
//! Texts are tokenised as OpenAI's `clip.tokenize(truncate=True)` does: start, text, end, zero
//! padding to the context length; a text too long is cut and still ends with end-of-text.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use ort::session::Session;
use ort::value::TensorRef;
use tokenizers::Tokenizer;

use crate::bundle::{Bundle, BundleError, Dim, TensorSpec, TextEncoderSpec};
use crate::cosine;
use crate::graph_io::{GraphIo, check_graph};
use crate::runtime::{Runtime, RuntimeError};

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("CLIP tokenizer: {0}")]
    Tokenizer(tokenizers::Error),
}

impl From<ort::Error> for TextError {
    fn from(e: ort::Error) -> Self {
        TextError::Runtime(RuntimeError::Ort(e))
    }
}

/// The bundle's CLIP text encoder. Its graph's declared inputs and outputs are checked when the
/// bundle loads, its session created when a text is first embedded: only CLIPScore and CLIP-guided
/// decoders (MAGIC) need it, and a session costs start-up time and memory (0.4 s and 250 MB for
/// ViT-B/32's on 2 cores) that captions without them need not pay.
pub struct TextEncoder {
    path: PathBuf,
    runtime: Runtime,
    /// None until a text is first embedded; held while it is created, so that two first uses
    /// create one.
    session: Mutex<Option<Session>>,
    tokenizer: Tokenizer,
    spec: TextEncoderSpec,
    eos: u32,
}

impl TextEncoder {
    /// The bundle's text encoder, or `None` when it has none.
    pub fn load(bundle: &Bundle, runtime: &Runtime) -> Result<Option<Self>, TextError> {
        let Some(spec) = bundle.manifest.text_encoder.clone() else {
            return Ok(None);
        };
        let tokenizer_path = bundle.file(&spec.tokenizer);
        let bad = |message: String| BundleError::Manifest {
            path: tokenizer_path.clone(),
            message,
        };
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| bad(format!("not a tokenizers JSON file: {e}")))?;
        let eos = tokenizer
            .token_to_id("<|endoftext|>")
            .ok_or_else(|| bad("has no <|endoftext|> token; not a CLIP tokenizer".into()))?;
        let path = bundle.file(&spec.file);
        check_graph(&path, &GraphIo::read(&path)?, &inputs(&spec), &outputs(&spec))?;
        Ok(Some(TextEncoder {
            path,
            runtime: runtime.clone(),
            session: Mutex::new(None),
            tokenizer,
            spec,
            eos,
        }))
    }

    pub fn logit_scale(&self) -> f32 {
        self.spec.logit_scale
    }

    /// The session, created for its first use (its declared inputs and outputs checked again, as the
    /// runtime sees them).
    fn create_session(&self) -> Result<Session, TextError> {
        let inputs = inputs(&self.spec);
        let (session, _) = self.runtime.session(&self.path, &inputs)?;
        check_graph(&self.path, &GraphIo::of(&session), &inputs, &outputs(&self.spec))?;
        Ok(session)
    }

    /// Token ids of `text` as the graph takes them, [context_length].
    pub fn ids(&self, text: &str) -> Result<Vec<i64>, TextError> {
        let context = self.spec.context_length;
        let encoding = self.tokenizer.encode(text, true).map_err(TextError::Tokenizer)?;
        let mut ids: Vec<i64> = encoding.get_ids().iter().map(|&i| i as i64).collect();
        if ids.len() > context {
            ids.truncate(context - 1);
            ids.push(self.eos as i64);
        }
        ids.resize(context, 0);
        Ok(ids)
    }

    /// Text embeddings, one row of `embedding_dim` per text.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, TextError> {
        if texts.is_empty() {
            return Ok(Vec::new()); // the graph's reshapes cannot take a batch of 0
        }
        let mut ids = Vec::with_capacity(texts.len() * self.spec.context_length);
        for t in texts {
            ids.extend(self.ids(t)?);
        }
        let input = TensorRef::from_array_view(([texts.len(), self.spec.context_length], ids.as_slice()))?;
        let mut slot = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let session = match &mut *slot {
            Some(session) => session,
            empty @ None => empty.insert(self.create_session()?),
        };
        let outputs = session.run(ort::inputs!["input_ids" => input])?;
        let (shape, data) = outputs["text_embeds"].try_extract_tensor::<f32>()?;
        let dim = self.spec.embedding_dim;
        if data.len() != texts.len() * dim {
            return Err(RuntimeError::Output {
                tensor: "text_embeds".into(),
                shape: shape.to_vec(),
                expected: format!("[{}, {dim}]", texts.len()),
            }
            .into());
        }
        Ok(data.chunks_exact(dim).map(<[f32]>::to_vec).collect())
    }

    /// Cosine similarity of each text to an image embedding.
    pub fn similarity(&self, texts: &[&str], image_embeds: &[f32]) -> Result<Vec<f32>, TextError> {
        Ok(self
            .embed(texts)?
            .iter()
            .map(|t| cosine(t, image_embeds) as f32)
            .collect())
    }
}

fn inputs(spec: &TextEncoderSpec) -> [TensorSpec; 1] {
    [TensorSpec::i64(
        "input_ids",
        vec![Dim::Dynamic, Dim::Fixed(spec.context_length)],
    )]
}

fn outputs(spec: &TextEncoderSpec) -> [TensorSpec; 1] {
    [TensorSpec::f32(
        "text_embeds",
        vec![Dim::Dynamic, Dim::Fixed(spec.embedding_dim)],
    )]
}

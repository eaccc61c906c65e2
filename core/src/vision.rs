//! Image side of the pipeline: CLIP image encoder (pixels -> embedding) and mapper (embedding -> prefix).

use ort::session::Session;
use ort::value::TensorRef;

use crate::bundle::{Bundle, BundleError, Dim, TensorSpec};
use crate::graph_io::{GraphIo, check_graph};
use crate::runtime::{Runtime, RuntimeError};

#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl From<ort::Error> for VisionError {
    fn from(e: ort::Error) -> Self {
        VisionError::Runtime(RuntimeError::Ort(e))
    }
}

pub struct ImageEncoder {
    session: Session,
    size: usize,
    dim: usize,
}

impl ImageEncoder {
    pub fn load(bundle: &Bundle, runtime: &Runtime) -> Result<Self, VisionError> {
        let m = &bundle.manifest;
        let (size, dim) = (m.preprocess.size as usize, m.image_encoder.embedding_dim);
        let path = bundle.file(&m.image_encoder.file);
        let inputs = [TensorSpec::f32(
            "pixel_values",
            vec![Dim::Dynamic, Dim::Fixed(3), Dim::Fixed(size), Dim::Fixed(size)],
        )];
        let (session, _) = runtime.session(&path, &inputs)?;
        check_graph(
            &path,
            &GraphIo::of(&session),
            &inputs,
            &[TensorSpec::f32("image_embeds", vec![Dim::Dynamic, Dim::Fixed(dim)])],
        )?;
        Ok(ImageEncoder { session, size, dim })
    }

    /// `pixels`: one preprocessed image, [3, size, size]. Returns the raw (unnormalised) embedding.
    pub fn embed(&mut self, pixels: &[f32]) -> Result<Vec<f32>, VisionError> {
        let input = TensorRef::from_array_view(([1, 3, self.size, self.size], pixels))?;
        let outputs = self.session.run(ort::inputs!["pixel_values" => input])?;
        single_row(&outputs["image_embeds"], self.dim, "image_embeds")
    }
}

pub struct Mapper {
    session: Session,
    embedding_dim: usize,
    normalize: bool,
    prefix_len: usize,
}

impl Mapper {
    pub fn load(bundle: &Bundle, runtime: &Runtime) -> Result<Self, VisionError> {
        let m = &bundle.manifest;
        let (dim, k, width) = (
            m.image_encoder.embedding_dim,
            m.mapper.prefix_length,
            m.language_model.width,
        );
        let path = bundle.file(&m.mapper.file);
        let inputs = [TensorSpec::f32("image_embeds", vec![Dim::Dynamic, Dim::Fixed(dim)])];
        let (session, _) = runtime.session(&path, &inputs)?;
        check_graph(
            &path,
            &GraphIo::of(&session),
            &inputs,
            &[TensorSpec::f32(
                "prefix",
                vec![Dim::Dynamic, Dim::Fixed(k), Dim::Fixed(width)],
            )],
        )?;
        Ok(Mapper {
            session,
            embedding_dim: dim,
            normalize: m.image_encoder.normalize,
            prefix_len: k * width,
        })
    }

    /// The GPT-2 prefix [K, D] (flattened) for one image embedding.
    pub fn prefix(&mut self, embedding: &[f32]) -> Result<Vec<f32>, VisionError> {
        let input: Vec<f32> = if self.normalize {
            l2_normalized(embedding)
        } else {
            embedding.to_vec()
        };
        let tensor = TensorRef::from_array_view(([1, self.embedding_dim], input.as_slice()))?;
        let outputs = self.session.run(ort::inputs!["image_embeds" => tensor])?;
        single_row(&outputs["prefix"], self.prefix_len, "prefix")
    }
}

pub fn l2_normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

/// The values of a batch-of-one output, checked to have `len` of them.
fn single_row(value: &ort::value::DynValue, len: usize, tensor: &str) -> Result<Vec<f32>, VisionError> {
    let (shape, data) = value.try_extract_tensor::<f32>()?;
    if shape.first() != Some(&1) || data.len() != len {
        return Err(RuntimeError::Output {
            tensor: tensor.into(),
            shape: shape.to_vec(),
            expected: format!("{len} values for one image"),
        }
        .into());
    }
    Ok(data.to_vec())
}

/// Cosine similarity of two embeddings (1 = same direction), summed in f64; 0 when either is zero.
/// The one cosine: scene change, CLIP-guided decoding and CLIPScore all use it.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na * nb) }
}

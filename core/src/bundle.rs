//! The model bundle: its manifest, and the check that the ONNX graphs agree with it.
//!
//! The schema is docs/bundle.md; this module is its reader. Everything that can be checked without
//! running a model is checked here, before any session runs, so a bad bundle fails at load with the
//! file and the key or tensor named, never later in the middle of a caption. A bundle opened with
//! trusted keys is also checked for who signed it and that its files are those it pins (trust.rs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ort::value::TensorElementType;
use serde::{Deserialize, Serialize};

use crate::trust::{self, FilePin, TrustError, TrustedKeys};

/// The format versions this reader loads; export writes the newest. Version 2 added the language
/// model's `attention_mask` and `position_ids`, which batching captions of different lengths needs;
/// a version-1 bundle still loads and decodes one caption per model call.
pub const FORMAT_VERSIONS: std::ops::RangeInclusive<u32> = 1..=2;
pub const MANIFEST: &str = "manifest.toml";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: cannot read: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Graph { path: PathBuf, message: String },
    #[error(transparent)]
    Trust(#[from] TrustError),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub provenance: Provenance,
    pub preprocess: PreprocessSpec,
    pub image_encoder: ImageEncoderSpec,
    pub mapper: MapperSpec,
    pub language_model: LanguageModelSpec,
    pub tokenizer: TokenizerSpec,
    pub text_encoder: Option<TextEncoderSpec>,
    /// Every file of the bundle, by name, with its size and SHA-256: what a signature of the manifest
    /// vouches for. Optional (bundles exported before it have none), required of a trusted bundle.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, FilePin>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    pub created: String,
    pub tool: String,
    pub image_encoder: String,
    pub language_model: String,
    pub mapper: String,
    pub training_data: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notes: String,
    pub evaluation: Option<Evaluation>,
    /// Training settings (optimizer, epochs, prefix length...), as the export tool recorded them.
    pub training: Option<BTreeMap<String, toml::Value>>,
    pub export_check: Option<BTreeMap<String, f64>>,
    /// How the weights were quantised after the fp32 export check (weights, method, graphs...).
    pub quantization: Option<BTreeMap<String, toml::Value>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    pub dataset: String,
    pub scores: BTreeMap<String, f64>,
    /// Share of captions right per attribute, on data sets that record them (the demo world).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, f64>,
    /// CLIP's zero-shot accuracy per attribute, on the same data.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub zero_shot: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    pub size: u32,
    pub resize: String,
    pub filter: String,
    pub crop: String,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEncoderSpec {
    pub file: String,
    pub embedding_dim: usize,
    pub normalize: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MapperSpec {
    pub file: String,
    pub kind: String,
    pub prefix_length: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageModelSpec {
    pub file: String,
    pub kind: String,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub vocab_size: usize,
    pub max_positions: usize,
}

impl LanguageModelSpec {
    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSpec {
    pub file: String,
    pub eos_token: u32,
    pub stop_tokens: Vec<u32>,
    pub max_tokens: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderSpec {
    pub file: String,
    pub tokenizer: String,
    pub context_length: usize,
    pub embedding_dim: usize,
    /// CLIP's learned temperature: image-text logits are logit_scale x cosine.
    pub logit_scale: f32,
}

/// A bundle whose manifest has been read and checked for internal consistency.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// SHA-256 of manifest.toml as read (lower-case hex): with the pins it lists, the identity of the
    /// bundle's contents, which every caption record carries.
    pub manifest_sha256: String,
    /// The ID of the trusted key that signed the manifest, when opened with [`Bundle::open_trusted`].
    pub signed_by: Option<String>,
}

/// Quantisations that need a newer ONNX Runtime than the oldest clipcap supports, as the manifest
/// records them (`provenance.quantization`: weights, method), with the oldest version that runs them
/// on the CPU. 8-bit MatMulNBits (int8 bundles of clipcap-export before MatMulInteger) is refused by
/// 1.19 to 1.21 as the graph loads ("Only 4b quantization is supported for MatMulNBits op").
const NEWER_RUNTIME: [(&str, &str, (u32, u32)); 1] = [("int8", "MatMulNBits", (1, 22))];

impl Manifest {
    /// Whether the language model takes what batching captions of different lengths needs
    /// (`attention_mask`, `position_ids`: format 2).
    pub fn batches_captions(&self) -> bool {
        self.format_version >= 2
    }

    /// The oldest ONNX Runtime (major, minor) that runs this bundle's quantisation, where that is
    /// newer than clipcap's oldest, with the quantisation's name ("int8 MatMulNBits").
    fn runtime_needed(&self) -> Option<((u32, u32), String)> {
        let q = self.provenance.quantization.as_ref()?;
        let field = |key: &str| q.get(key).and_then(toml::Value::as_str).unwrap_or_default();
        let (weights, method) = (field("weights"), field("method"));
        NEWER_RUNTIME
            .iter()
            .find(|(w, m, _)| *w == weights && *m == method)
            .map(|&(w, m, version)| (version, format!("{w} {m}")))
    }
}

impl Bundle {
    pub fn open(dir: impl AsRef<Path>) -> Result<Bundle, BundleError> {
        let dir = dir.as_ref().to_path_buf();
        let bytes = read_manifest(&dir)?;
        Bundle::parse(dir, &bytes, None)
    }

    /// Opens a bundle only if `keys` vouch for it: manifest.toml signed by one of them
    /// (manifest.toml.minisig), and every file the manifest names pinned in `[files]` and equal to
    /// its pin. The manifest is read once, and what is parsed is what was verified; each pinned file
    /// is read once, the files on parallel threads.
    pub fn open_trusted(dir: impl AsRef<Path>, keys: &TrustedKeys) -> Result<Bundle, BundleError> {
        let dir = dir.as_ref().to_path_buf();
        let bytes = read_manifest(&dir)?;
        let signer = keys.verify(&dir.join(MANIFEST), &bytes)?;
        let bundle = Bundle::parse(dir, &bytes, Some(signer))?;
        bundle.check_pins()?;
        Ok(bundle)
    }

    fn parse(dir: PathBuf, bytes: &[u8], signed_by: Option<String>) -> Result<Bundle, BundleError> {
        let path = dir.join(MANIFEST);
        let bad = |message: String| BundleError::Manifest {
            path: path.clone(),
            message,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8: {e}")))?;
        let manifest: Manifest = toml::from_str(text).map_err(|e| bad(e.to_string().trim_end().to_string()))?;
        let bundle = Bundle {
            dir,
            manifest,
            manifest_sha256: trust::sha256_hex(bytes),
            signed_by,
        };
        bundle.validate()?;
        Ok(bundle)
    }

    /// The bundle's name in records and logs: its folder's name.
    pub fn name(&self) -> String {
        let dir = self.dir.canonicalize().unwrap_or_else(|_| self.dir.clone());
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string())
    }

    /// Checks that every file the manifest names is pinned in `[files]`, and every pinned file equals
    /// its pin (size, then SHA-256), one thread per file.
    pub fn check_pins(&self) -> Result<(), BundleError> {
        let m = &self.manifest;
        if m.files.is_empty() {
            return Err(BundleError::Manifest {
                path: self.file(MANIFEST),
                message: "has no [files]: its files are not pinned, so its signature vouches for none of them; \
                          export it again with clipcap-export, which pins them"
                    .into(),
            });
        }
        if let Some((key, file)) = self.named_files().into_iter().find(|(_, f)| !m.files.contains_key(*f)) {
            return Err(BundleError::Manifest {
                path: self.file(MANIFEST),
                message: format!("{key} = {file:?} is not pinned in [files]"),
            });
        }
        std::thread::scope(|scope| {
            let checks: Vec<_> = m
                .files
                .iter()
                .map(|(name, pin)| scope.spawn(move || trust::check_pin(&self.file(name), pin)))
                .collect();
            checks
                .into_iter()
                .try_for_each(|c| c.join().expect("a pin check does not panic"))
        })?;
        Ok(())
    }

    /// Each file the manifest names, with its key.
    fn named_files(&self) -> Vec<(&'static str, &String)> {
        let m = &self.manifest;
        let mut files = vec![
            ("image_encoder.file", &m.image_encoder.file),
            ("mapper.file", &m.mapper.file),
            ("language_model.file", &m.language_model.file),
            ("tokenizer.file", &m.tokenizer.file),
        ];
        if let Some(te) = &m.text_encoder {
            files.push(("text_encoder.file", &te.file));
            files.push(("text_encoder.tokenizer", &te.tokenizer));
        }
        files
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Refuses a bundle whose quantisation the ONNX Runtime of `version` ("1.19.2") cannot run, before
    /// any of its graphs is loaded, naming the version it needs.
    pub fn check_runtime(&self, version: &str) -> Result<(), BundleError> {
        let Some(((major, minor), quantisation)) = self.manifest.runtime_needed() else {
            return Ok(());
        };
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let loaded = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if loaded >= (major, minor) {
            return Ok(());
        }
        Err(BundleError::Manifest {
            path: self.file(MANIFEST),
            message: format!(
                "the language model is quantised as {quantisation} (provenance.quantization), which ONNX Runtime \
                 runs from {major}.{minor} on; the loaded ONNX Runtime is {version}. Point runtime.onnxruntime_library \
                 at ONNX Runtime {major}.{minor} or newer, or quantise the fp32 bundle again with this clipcap-export \
                 (`clipcap-export quantize --precision int8` makes MatMulInteger, which every supported runtime runs)"
            ),
        })
    }

    fn validate(&self) -> Result<(), BundleError> {
        let m = &self.manifest;
        let bad = |message: String| BundleError::Manifest {
            path: self.file(MANIFEST),
            message,
        };
        if !FORMAT_VERSIONS.contains(&m.format_version) {
            return Err(bad(format!(
                "format_version {} is not supported; this clipcap reads versions {} to {}",
                m.format_version,
                FORMAT_VERSIONS.start(),
                FORMAT_VERSIONS.end()
            )));
        }
        let p = &m.preprocess;
        for (key, value, expected) in [
            ("preprocess.resize", &p.resize, "shorter-side"),
            ("preprocess.filter", &p.filter, "bicubic"),
            ("preprocess.crop", &p.crop, "center"),
        ] {
            if value != expected {
                return Err(bad(format!("{key} = {value:?} is not supported (only {expected:?})")));
            }
        }
        if p.size == 0 || !p.std.iter().all(|s| *s > 0.0) {
            return Err(bad("preprocess.size must be > 0 and preprocess.std positive".into()));
        }
        let lm = &m.language_model;
        if lm.kind != "gpt2" {
            return Err(bad(format!(
                "language_model.kind = {:?} is not supported (only \"gpt2\")",
                lm.kind
            )));
        }
        if lm.heads == 0 || !lm.width.is_multiple_of(lm.heads) {
            return Err(bad(format!(
                "language_model.width {} is not a multiple of heads {}",
                lm.width, lm.heads
            )));
        }
        if lm.layers == 0 || lm.vocab_size == 0 {
            return Err(bad("language_model.layers and vocab_size must be > 0".into()));
        }
        if m.mapper.prefix_length == 0 {
            return Err(bad("mapper.prefix_length must be > 0".into()));
        }
        let t = &m.tokenizer;
        if m.mapper.prefix_length + t.max_tokens > lm.max_positions {
            return Err(bad(format!(
                "mapper.prefix_length {} + tokenizer.max_tokens {} exceed language_model.max_positions {}",
                m.mapper.prefix_length, t.max_tokens, lm.max_positions
            )));
        }
        for (key, id) in std::iter::once(("tokenizer.eos_token", &t.eos_token))
            .chain(t.stop_tokens.iter().map(|id| ("tokenizer.stop_tokens", id)))
        {
            if *id as usize >= lm.vocab_size {
                return Err(bad(format!(
                    "{key}: token {id} is outside the vocabulary of {}",
                    lm.vocab_size
                )));
            }
        }
        if let Some(te) = &m.text_encoder
            && !(te.context_length >= 2 && te.logit_scale > 0.0)
        {
            return Err(bad(
                "text_encoder.context_length must be >= 2 and logit_scale > 0".into()
            ));
        }
        if let Some(te) = &m.text_encoder
            && te.embedding_dim != m.image_encoder.embedding_dim
        {
            return Err(bad(format!(
                "text_encoder.embedding_dim {} differs from image_encoder.embedding_dim {}",
                te.embedding_dim, m.image_encoder.embedding_dim
            )));
        }
        for (key, file) in self.named_files() {
            if !self.file(file).is_file() {
                return Err(bad(format!("{key}: {} does not exist", self.file(file).display())));
            }
        }
        Ok(())
    }
}

fn read_manifest(dir: &Path) -> Result<Vec<u8>, BundleError> {
    let path = dir.join(MANIFEST);
    std::fs::read(&path).map_err(|error| BundleError::Read { path, error })
}

/// One axis of a tensor as the bundle format declares it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dim {
    /// Must be dynamic in the graph; in an input, the batch (TensorRT's profile takes it from 1 to
    /// `runtime.tensorrt_max_batch`).
    Dynamic,
    /// Must be this size, or dynamic.
    Fixed(usize),
    /// Must be dynamic in the graph; the sizes the runtime feeds it, from `min` to `max` and most
    /// often `opt` (TensorRT's profile).
    Range { min: usize, opt: usize, max: usize },
}

/// What the format says one graph input or output is.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub ty: TensorElementType,
    pub dims: Vec<Dim>,
}

impl TensorSpec {
    pub fn f32(name: impl Into<String>, dims: Vec<Dim>) -> Self {
        TensorSpec {
            name: name.into(),
            ty: TensorElementType::Float32,
            dims,
        }
    }
    pub fn i64(name: impl Into<String>, dims: Vec<Dim>) -> Self {
        TensorSpec {
            name: name.into(),
            ty: TensorElementType::Int64,
            dims,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiny fixture bundle with its manifest's quantisation record set to `weights`, `method`.
    fn quantised(weights: &str, method: &str) -> Bundle {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-bundle");
        let mut bundle = Bundle::open(dir).unwrap();
        let record = [("weights", weights), ("method", method)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), toml::Value::String(v.to_string())))
            .collect();
        bundle.manifest.provenance.quantization = Some(record);
        bundle
    }

    #[test]
    fn a_quantisation_is_refused_below_the_runtime_it_needs() {
        let old_int8 = quantised("int8", "MatMulNBits");
        for version in ["1.19.2", "1.21.1"] {
            let err = old_int8.check_runtime(version).unwrap_err().to_string();
            assert!(
                err.contains("from 1.22 on") && err.contains(&format!("is {version}")),
                "{err}"
            );
        }
        for version in ["1.22.0", "1.23.2", "1.32.0", "2.0.0"] {
            old_int8.check_runtime(version).unwrap();
        }
        for (weights, method) in [("int8", "MatMulInteger"), ("int4", "MatMulNBits"), ("fp16", "float16")] {
            quantised(weights, method).check_runtime("1.19.2").unwrap();
        }
    }
}

//! Shared by the integration tests: fixture paths, the ONNX Runtime set-up, reference outputs.
#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};

use clipcap::config::{Provider, RuntimeConfig};
use clipcap::decoding::{DecoderInstance, DecoderRequest, Plugins};
use clipcap::runtime::Runtime;
use serde::Deserialize;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn tiny_bundle() -> PathBuf {
    fixtures().join("tiny-bundle")
}

/// ONNX Runtime on CPU from ORT_DYLIB_PATH (set by .cargo/config.toml after scripts/setup.sh).
pub fn runtime() -> Runtime {
    let config = RuntimeConfig {
        providers: vec![Provider::Cpu],
        intra_threads: 1,
        ..RuntimeConfig::default()
    };
    Runtime::init(&config).unwrap_or_else(|e| panic!("{e}\n(run scripts/setup.sh first)"))
}

/// Where cargo put the workspace's plugin libraries (target/<profile>, next to the test's deps/).
pub fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    assert!(
        dir.join("libclipcap_search.so").is_file(),
        "{}: plugins not built; run `cargo build --workspace` first",
        dir.display()
    );
    dir
}

/// The workspace's plugins. Ownership and mode checks are off here because the checkout may live in
/// a world-writable folder such as /tmp; tests/plugins.rs tests those checks on purpose.
pub fn plugins() -> Plugins {
    Plugins::load(&[plugin_dir()], true)
}

pub fn decoder(plugins: &Plugins, spec: &str) -> DecoderInstance {
    plugins
        .create(&DecoderRequest::parse(spec).unwrap())
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
}

/// One line of a tests/fixtures/reference/*.jsonl file, written by the PyTorch reference.
#[derive(Debug, Deserialize)]
pub struct Reference {
    pub image: PathBuf,
    pub decoder: String,
    pub caption: String,
    pub token_ids: Vec<u32>,
    pub image_embeds: Vec<f32>,
}

impl Reference {
    pub fn image_path(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(&self.image)
    }

    /// OpenAI CLIP's preprocessed tensor of this image, [3, 224, 224] flattened.
    pub fn pixels(&self) -> Vec<f32> {
        let name = self.image.file_name().unwrap().to_string_lossy();
        let path = fixtures().join("reference").join(format!("{name}.npy"));
        let array: ndarray::ArrayD<f32> =
            ndarray_npy::read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        array.iter().copied().collect()
    }
}

/// The reference outputs of one decoder: greedy, beam, beam-stops, contrastive, magic.
pub fn references(name: &str) -> Vec<Reference> {
    let path = fixtures().join(format!("reference/{name}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap();
    let refs: Vec<Reference> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        refs.len() >= 5,
        "{}: expected at least 5 reference images",
        path.display()
    );
    refs
}

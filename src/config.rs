//! Typed configuration: `config.toml` at the top of the repository documents every key.
//!
//! Sources, later ones winning: built-in defaults, the file given with `--config` (if any), and
//! environment variables `CLIPCAP__SECTION__KEY` (e.g. `CLIPCAP__RUNTIME__INTRA_THREADS=2`).
//! Unknown keys and bad values are errors that name the key and the file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub runtime: RuntimeConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Tensorrt,
    Cuda,
    Cpu,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Tensorrt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Path of `libonnxruntime.so`; empty means `ORT_DYLIB_PATH`, then the executable's folder, then the
    /// system's library search path.
    pub onnxruntime_library: PathBuf,
    /// Execution providers in order of preference; unavailable ones are skipped with a warning.
    pub providers: Vec<Provider>,
    /// Threads inside one operator; 0 lets ONNX Runtime choose (one per core).
    pub intra_threads: usize,
    /// Threads across independent operators; 1 runs the graph sequentially.
    pub inter_threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            onnxruntime_library: PathBuf::new(),
            providers: vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu],
            intra_threads: 0,
            inter_threads: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("configuration{}: {message}", .file.as_ref().map(|f| format!(" {}", f.display())).unwrap_or_default())]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub message: String,
}

impl Config {
    /// Defaults, then `file`, then `CLIPCAP__*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: file.map(Path::to_path_buf),
            message,
        };
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(err("file does not exist".into()));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("CLIPCAP")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("runtime.providers")
                .try_parsing(true),
        );
        let config: Config = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| err(e.to_string()))?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let r = &self.runtime;
        if r.providers.is_empty() {
            return Err("runtime.providers must name at least one provider (\"cpu\" always works)".into());
        }
        if r.inter_threads == 0 {
            return Err("runtime.inter_threads must be >= 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_toml_is_the_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        assert_eq!(Config::load(Some(&path)).unwrap(), Config::default());
    }
}

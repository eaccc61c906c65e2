//! Typed configuration: `config.toml` at the top of the repository documents every key. It is read
//! in three steps:
//! 1. parse: built-in defaults, then the file given with `--config` (if any), then the environment
//!    variables `CLIPCAP__SECTION__KEY` (env.rs), into [`Config`] (serde; unknown keys are errors);
//! 2. validate (validate.rs): every value checked, each refusal a [`ConfigError`] naming its key and
//!    where it was set; the parts that own a section (source, publish, ros2) check theirs;
//! 3. build: the parts are made from the validated configuration by their own constructors
//!    (`source::open`, `publish::Outbox::open`, `decoders::DecoderFactory`, the service's `assemble`).

mod env;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::publish::PublishConfig;
use crate::ros2::Ros2Config;
use crate::source::SourceConfig;
use clipcap_core::bundle::Bundle;
use clipcap_core::decoding::{IsolationOptions, ParamValue, PluginOptions, Vetting};
use clipcap_core::imageio::Budget;
use clipcap_core::runtime::RuntimeOptions;
use clipcap_core::trust::TrustedKeys;
use clipcap_core::{Batching, Padding};

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub runtime: RuntimeOptions,
    pub service: ServiceConfig,
    /// `[source]`: one source. Read it through [`Config::sources`].
    pub source: SourceConfig,
    /// `[[sources]]`: several named sources, instead of `[source]`.
    pub sources: Vec<SourceConfig>,
    pub captioning: CaptioningConfig,
    pub plugins: PluginsConfig,
    pub decoding: DecodingConfig,
    pub publish: PublishConfig,
    pub ros2: Ros2Config,
    pub security: SecurityConfig,
    /// Named decoder instances: `[decoders.NAME]` with `decoder = "..."` (default NAME) and parameters.
    pub decoders: BTreeMap<String, BTreeMap<String, ParamValue>>,
}

/// `clipcap serve`: the model, the HTTP API and the caption log.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Model bundle folder; `serve --bundle` overrides it.
    pub bundle: PathBuf,
    /// Address of the HTTP API and kiosk page.
    pub listen: String,
    /// Largest accepted upload (bytes); larger bodies get 413.
    pub max_upload_bytes: usize,
    /// Largest accepted image (pixels), for uploads, folder images and ROS 2 PNGs.
    pub max_image_pixels: u64,
    /// The most memory (MiB) one such image's decode may take.
    pub max_decode_mb: u64,
    /// Captions kept for GET /v1/captions.
    pub history: usize,
    /// JSON-lines caption log: "-" for standard output, a file path, or "" for none.
    pub caption_log: String,
    /// Upper bound for a graceful stop (finish the caption in flight, flush the log).
    pub shutdown_timeout_ms: u64,
    /// TLS certificate chain and private key (PEM); both empty: plain HTTP. Reloaded on SIGHUP.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// `TOKEN NAME [read-only]` lines; set: every endpoint but /healthz, /readyz and / needs a token.
    pub tokens_file: PathBuf,
    /// Host names the API answers to (the `Host` header, without port); "*": any.
    pub allowed_hosts: Vec<String>,
    /// Other origins whose web pages may call the API (CORS); none by default.
    pub cors_origins: Vec<String>,
    /// Uploads accepted per client (token name, or address) and minute; 0: no limit.
    pub uploads_per_minute: u32,
    /// Uploads one client may have in flight (waiting or being captioned).
    pub uploads_in_flight: usize,
    /// The most beams (num_beams) an upload's decoder may ask for.
    pub upload_max_beams: u32,
    /// A connection must send a request's headers within this (and an idle one closes after it).
    pub header_timeout_ms: u64,
    /// An upload's or vote's whole body must arrive within this; later: 408.
    pub body_timeout_ms: u64,
    /// Open connections at most (event streams included); more are closed as they arrive.
    pub max_connections: usize,
    /// Open connections one client address may hold.
    pub max_connections_per_client: usize,
    /// Of max_connections, those kept for loopback clients (the device's own probes).
    pub local_connections: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            bundle: PathBuf::new(),
            listen: "127.0.0.1:8080".into(),
            max_upload_bytes: 20 * 1024 * 1024,
            max_image_pixels: 16_000_000,
            max_decode_mb: 128,
            history: 100,
            caption_log: String::new(),
            shutdown_timeout_ms: 10_000,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tokens_file: PathBuf::new(),
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            cors_origins: Vec::new(),
            uploads_per_minute: 600,
            uploads_in_flight: 2,
            upload_max_beams: 8,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            max_connections: 256,
            max_connections_per_client: 32,
            local_connections: 16,
        }
    }
}

impl ServiceConfig {
    /// What decoding one image from outside (an upload, a folder's file, a ROS 2 PNG) may take.
    pub fn decode_budget(&self) -> Budget {
        Budget {
            pixels: self.max_image_pixels,
            memory: self.max_decode_mb << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptioningConfig {
    /// At most one camera caption every this many milliseconds.
    pub interval_ms: u64,
    /// Skip a frame whose CLIP embedding is closer than this cosine distance to the last captioned
    /// frame's (0 captions every frame); skips are counted.
    pub scene_change: f32,
    /// Extra decoders run on source captions' frames, compared with the primary one.
    pub compare: Vec<String>,
    /// Compare every Nth source caption.
    pub compare_every: u64,
    /// At most this many comparisons a minute; 0: no limit.
    pub compare_per_minute: u64,
    /// A candidate bundle that also captions each compared frame; empty: none.
    pub shadow_bundle: PathBuf,
    /// A folder where the JPEG of each compared frame is kept for `clipcap report`; empty: none.
    pub keep_compared_frames: PathBuf,
    /// The most megabytes of frames that folder holds; the oldest go first.
    pub keep_compared_frames_mb: u64,
    /// The kiosk page lets a person vote for the best caption of a compared frame.
    pub votes: bool,
    /// A vote records the voter's IP address; false: an anonymous per-run key stands for it.
    pub vote_addresses: bool,
    /// Votes accepted per client (IP address) and minute.
    pub votes_per_minute: u32,
    /// The most sequences one language-model call decodes together (every caption in flight,
    /// each beam a sequence).
    pub max_batch: usize,
    /// How long a language-model call waits for the captions in flight that have not asked yet.
    pub batch_wait_ms: u64,
    /// How the sequences of a call are padded to one length ("full" or "longest").
    pub batch_padding: Padding,
    /// Threads captioning uploads, each an upload in flight.
    pub upload_concurrency: usize,
}

impl CaptioningConfig {
    pub fn batching(&self) -> Batching {
        Batching {
            max_batch: self.max_batch,
            max_wait: Duration::from_millis(self.batch_wait_ms),
            padding: self.batch_padding,
        }
    }
}

impl Default for CaptioningConfig {
    fn default() -> Self {
        CaptioningConfig {
            interval_ms: 1000,
            scene_change: 0.0,
            compare: Vec::new(),
            compare_every: 1,
            compare_per_minute: 0,
            shadow_bundle: PathBuf::new(),
            keep_compared_frames: PathBuf::new(),
            keep_compared_frames_mb: 500,
            votes: false,
            vote_addresses: true,
            votes_per_minute: 20,
            max_batch: Batching::default().max_batch,
            batch_wait_ms: Batching::default().max_wait.as_millis() as u64,
            batch_padding: Batching::default().padding,
            upload_concurrency: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Folders searched for decoder plugins (`*.so`); relative ones are relative to the executable's folder.
    pub directories: Vec<PathBuf>,
    /// Load plugins even from files or folders that others could write (development only).
    pub allow_insecure: bool,
    /// Run decoders in their own process unless a decoder's `isolate` says otherwise.
    pub isolate: bool,
    /// The same for the decoders of captioning.compare.
    pub isolate_compare: bool,
    pub isolate_memory_mb: u64,
    pub isolate_cpu_seconds: u64,
    pub isolate_wait_ms: u64,
    pub isolate_restart_ms: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            directories: vec![PathBuf::from("plugins")],
            allow_insecure: false,
            isolate: false,
            isolate_compare: true,
            isolate_memory_mb: 1024,
            isolate_cpu_seconds: 10,
            isolate_wait_ms: 10000,
            isolate_restart_ms: 500,
        }
    }
}

impl Config {
    /// The plugin loader's options ([plugins], and [security]'s keys when plugins must be signed),
    /// relative folders resolved against the executable's folder.
    pub fn plugin_options(&self) -> PluginOptions {
        let p = &self.plugins;
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        PluginOptions {
            directories: p
                .directories
                .iter()
                .map(|d| if d.is_absolute() { d.clone() } else { exe_dir.join(d) })
                .collect(),
            vetting: Vetting {
                allow_insecure: p.allow_insecure,
                trusted_keys: self.security.required_keys().map(Path::to_path_buf),
            },
            isolation: IsolationOptions {
                program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("clipcap")),
                memory_mb: p.isolate_memory_mb,
                cpu_seconds: p.isolate_cpu_seconds,
                wait: Duration::from_millis(p.isolate_wait_ms),
                restart: Duration::from_millis(p.isolate_restart_ms),
            },
        }
    }
}

/// `[security]`: which signatures bundles and plugins must carry.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// minisign public keys (`.pub` format, one or more) that may sign bundles and plugins.
    pub trusted_keys_file: PathBuf,
    /// Refuse a bundle or plugin that is not signed by one of those keys, or differs from what was signed.
    pub require_signed: bool,
}

impl SecurityConfig {
    /// The keys every bundle and plugin must be signed by, when `require_signed`.
    pub fn required_keys(&self) -> Option<&Path> {
        self.require_signed.then_some(self.trusted_keys_file.as_path())
    }

    /// Opens the bundle in `dir`; with `require_signed`, only if a trusted key signed it and its files
    /// equal their pins, all checked before any graph is loaded.
    pub fn open_bundle(&self, dir: &Path) -> anyhow::Result<Bundle> {
        Ok(match self.required_keys() {
            Some(keys) => Bundle::open_trusted(dir, &TrustedKeys::load(keys)?)?,
            None => Bundle::open(dir)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodingConfig {
    /// The decoder used when none is named: a `[decoders.NAME]` or `name:key=value,...`.
    pub decoder: String,
    /// Used for a caption when the decoder fails on it; empty for none.
    pub fallback: String,
    /// Seed of every caption's random stream: the same seed gives the same caption.
    pub seed: u64,
}

impl Default for DecodingConfig {
    fn default() -> Self {
        DecodingConfig {
            decoder: "greedy".into(),
            fallback: String::new(),
            seed: 0,
        }
    }
}

/// A configuration that cannot be used, and where it came from (the file; the environment variables
/// name themselves in the message).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration {}: file does not exist", .0.display())]
    NoFile(PathBuf),
    /// The file or a variable does not parse as the configuration; the message names the key.
    #[error("configuration{}: {message}", in_file(.file))]
    Parse { file: Option<PathBuf>, message: String },
    /// A value is refused: `key`, and why (a sentence that names the key and the value).
    #[error("configuration{}: {reason}", in_file(.file))]
    Invalid {
        file: Option<PathBuf>,
        key: String,
        reason: String,
    },
}

fn in_file(file: &Option<PathBuf>) -> String {
    file.as_ref().map(|f| format!(" {}", f.display())).unwrap_or_default()
}

impl Config {
    /// The sources the daemon captions, each with its name: `[[sources]]`, else `[source]` (named
    /// after its kind's label, `camera`, `folder` or `ros2`, unless it has a name) when its kind is
    /// not `none`.
    pub fn sources(&self) -> Vec<SourceConfig> {
        if !self.sources.is_empty() {
            return self.sources.clone();
        }
        let Some(label) = self.source.kind.label() else {
            return Vec::new();
        };
        let mut single = self.source.clone();
        if single.name.is_empty() {
            single.name = label.as_str().into();
        }
        vec![single]
    }

    /// The bundle folder: `flag` (`--bundle`), else service.bundle.
    pub fn bundle_dir(&self, flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
        let bundle = flag.unwrap_or_else(|| self.service.bundle.clone());
        anyhow::ensure!(
            !bundle.as_os_str().is_empty(),
            "no bundle: pass --bundle or set service.bundle in the config"
        );
        Ok(bundle)
    }

    /// Defaults, then `file`, then `CLIPCAP__*` environment variables; then every value checked.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with(file, None)
    }

    /// `load` with `environment` in place of the process's variables when given (the fuzz harness's
    /// way to vary them without touching the process).
    pub fn load_with(
        file: Option<&Path>,
        environment: Option<BTreeMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let parse = |message: String| ConfigError::Parse {
            file: file.map(Path::to_path_buf),
            message,
        };
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::NoFile(path.to_path_buf()));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let builder = env::add(builder, environment.unwrap_or_else(env::of_process)).map_err(|e| match e {
            env::EnvError::Config(e) => parse(e.to_string()),
            env::EnvError::Array { key, reason } => ConfigError::Invalid {
                file: None,
                key,
                reason,
            },
        })?;
        let built = builder.build().map_err(|e| parse(e.to_string()))?;
        // Defaults are serde's, not the builder's: a `source` table here is one the user gave.
        let single = built.get_table("source").is_ok();
        let config: Config = built.try_deserialize().map_err(|e| parse(e.to_string()))?;
        if single && !config.sources.is_empty() {
            return Err(ConfigError::Invalid {
                file: file.map(Path::to_path_buf),
                key: "sources".into(),
                reason: "both [source] and [[sources]] are given: use [[sources]] (named) for several".into(),
            });
        }
        validate::validate(&config).map_err(|invalid| ConfigError::Invalid {
            file: file.map(Path::to_path_buf),
            key: invalid.key,
            reason: invalid.reason,
        })?;
        Ok(config)
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

    #[test]
    fn a_refused_value_names_its_key() {
        let vars = |pairs: &[(&str, &str)]| Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        let refused = Config::load_with(None, vars(&[("CLIPCAP__CAPTIONING__INTERVAL_MS", "0")])).unwrap_err();
        assert!(
            matches!(&refused, ConfigError::Invalid { key, .. } if key == "captioning.interval_ms"),
            "{refused:?}"
        );
        assert_eq!(refused.to_string(), "configuration: captioning.interval_ms must be > 0");
    }
}

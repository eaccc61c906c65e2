//! Typed configuration: `config.toml` at the top of the repository documents every key.
//!
//! Sources, later ones winning: built-in defaults, the file given with `--config` (if any), and
//! environment variables `CLIPCAP__SECTION__KEY` (e.g. `CLIPCAP__RUNTIME__INTRA_THREADS=2`).
//! Unknown keys and bad values are errors that name the key and the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use clipcap_core::decoding::{
    DecoderInstance, DecoderRequest, IsolationOptions, ParamValue, PluginOptions, Plugins, RequestError,
};
use clipcap_core::runtime::RuntimeOptions;

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub runtime: RuntimeOptions,
    pub service: ServiceConfig,
    pub source: SourceConfig,
    pub captioning: CaptioningConfig,
    pub plugins: PluginsConfig,
    pub decoding: DecodingConfig,
    pub publish: PublishConfig,
    pub ros2: Ros2Config,
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
    /// Largest accepted image (pixels), for uploads and folder images.
    pub max_image_pixels: u64,
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
    /// A connection must send a request's headers within this (and an idle one closes after it).
    pub header_timeout_ms: u64,
    /// An upload's or vote's whole body must arrive within this; later: 408.
    pub body_timeout_ms: u64,
    /// Open connections at most (event streams included); more are closed as they arrive.
    pub max_connections: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            bundle: PathBuf::new(),
            listen: "127.0.0.1:8080".into(),
            max_upload_bytes: 20 * 1024 * 1024,
            max_image_pixels: 40_000_000,
            history: 100,
            caption_log: String::new(),
            shutdown_timeout_ms: 10_000,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tokens_file: PathBuf::new(),
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            cors_origins: Vec::new(),
            uploads_per_minute: 600,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            max_connections: 256,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A V4L2 camera.
    V4l2,
    /// A folder watched for new image files.
    Folder,
    /// A ROS 2 image topic (`[ros2]`).
    Ros2,
    /// No source: only images POSTed to the API are captioned.
    None,
}

/// How a watched folder is used (capture/folder.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FolderMode {
    /// Like a camera: files that appear after start, latest frame wins.
    Camera,
    /// An inbox: every file captioned once, oldest first, across restarts.
    Queue,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    pub kind: SourceKind,
    pub device: PathBuf,
    pub width: u32,
    pub height: u32,
    /// Frames per second asked of the camera; 0 keeps the driver's.
    pub fps: u32,
    /// Pixel formats in order of preference: MJPG, YUYV, RGB3.
    pub formats: Vec<String>,
    pub folder: PathBuf,
    pub folder_mode: FolderMode,
    /// Queue mode: finished files are moved here; empty leaves them in the folder.
    pub done_folder: PathBuf,
    /// Queue mode: the journal of finished files; empty means `.clipcap-queue.jsonl` in the folder.
    pub queue_journal: PathBuf,
    pub poll_ms: u64,
    /// Reconnect backoff: first wait, doubling up to the maximum.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: SourceKind::V4l2,
            device: PathBuf::from("/dev/video0"),
            width: 640,
            height: 480,
            fps: 15,
            formats: vec!["MJPG".into(), "YUYV".into(), "RGB3".into()],
            folder: PathBuf::new(),
            folder_mode: FolderMode::Camera,
            done_folder: PathBuf::new(),
            queue_journal: PathBuf::new(),
            poll_ms: 200,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
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
    /// The kiosk page lets a person vote for the best caption of a compared frame.
    pub votes: bool,
    /// Votes accepted per client (IP address) and minute.
    pub votes_per_minute: u32,
}

impl Default for CaptioningConfig {
    fn default() -> Self {
        CaptioningConfig {
            interval_ms: 1000,
            scene_change: 0.0,
            compare: Vec::new(),
            compare_every: 1,
            compare_per_minute: 0,
            votes: false,
            votes_per_minute: 20,
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

impl PluginsConfig {
    /// The plugin loader's options, relative folders resolved against the executable's folder.
    pub fn options(&self) -> PluginOptions {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        PluginOptions {
            directories: self
                .directories
                .iter()
                .map(|d| if d.is_absolute() { d.clone() } else { exe_dir.join(d) })
                .collect(),
            allow_insecure: self.allow_insecure,
            isolation: IsolationOptions {
                program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("clipcap")),
                memory_mb: self.isolate_memory_mb,
                cpu_seconds: self.isolate_cpu_seconds,
                wait: Duration::from_millis(self.isolate_wait_ms),
                restart: Duration::from_millis(self.isolate_restart_ms),
            },
        }
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

/// A ROS 2 subscription's reliability QoS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reliability {
    /// The sensor-data profile: matches best-effort and reliable publishers.
    BestEffort,
    /// Matches reliable publishers only.
    Reliable,
}

/// `[ros2]`: the daemon as a ROS 2 node (src/ros2/, docs/ros2.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ros2Config {
    /// Join the ROS 2 graph to publish captions with any source; `source.kind = "ros2"` joins anyway.
    pub enabled: bool,
    /// The DDS domain (ROS_DOMAIN_ID), 0 to 232.
    pub domain_id: u16,
    /// The `sensor_msgs/Image` topic (`source.kind = "ros2"`).
    pub image_topic: String,
    /// Subscribe to `{image_topic}/compressed` (`sensor_msgs/CompressedImage`, JPEG or PNG) instead.
    pub compressed: bool,
    /// The image subscription's reliability.
    pub reliability: Reliability,
    /// The image subscription's history depth (keep last N).
    pub depth: u32,
    /// `std_msgs/String` topic of the caption texts; empty: not published.
    pub caption_topic: String,
    /// `std_msgs/String` topic of the caption events as JSON (as on HTTP); empty: not published.
    pub caption_json_topic: String,
}

impl Default for Ros2Config {
    fn default() -> Self {
        Ros2Config {
            enabled: false,
            domain_id: 0,
            image_topic: "/camera/image_raw".into(),
            compressed: false,
            reliability: Reliability::BestEffort,
            depth: 1,
            caption_topic: "/clipcap/caption".into(),
            caption_json_topic: "/clipcap/caption_json".into(),
        }
    }
}

/// `[publish]`: the caption-log records, status and comparisons to an MQTT 5 broker (docs/fleet.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// `mqtt://host:port` or `mqtts://host:port`; empty: publishing off.
    pub url: String,
    /// This device in topics, and the MQTT client id; empty: the host name.
    pub device_id: String,
    pub topic_prefix: String,
    /// Folder of the records waiting for the broker.
    pub spool: PathBuf,
    /// Beyond this many MiB of waiting records the oldest are dropped (and counted).
    pub spool_max_mb: u64,
    pub username: String,
    pub password_file: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// CA certificates that sign the broker's certificate (PEM); empty: the system's.
    pub ca_file: PathBuf,
    /// 1: each record until the broker acknowledges it; 0: sent once.
    pub qos: u8,
    /// Seconds between two publications of the comparison statistics.
    pub compare_interval_s: u64,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            url: String::new(),
            device_id: String::new(),
            topic_prefix: "clipcap".into(),
            spool: PathBuf::new(),
            spool_max_mb: 16,
            username: String::new(),
            password_file: PathBuf::new(),
            client_cert: PathBuf::new(),
            client_key: PathBuf::new(),
            ca_file: PathBuf::new(),
            qos: 1,
            compare_interval_s: 60,
        }
    }
}

impl PublishConfig {
    /// `device_id`, or the host name when it is empty.
    pub fn device(&self) -> Result<String, String> {
        if !self.device_id.is_empty() {
            return Ok(self.device_id.clone());
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .map_err(|e| format!("publish.device_id is empty and the host name cannot be read: {e}"))
    }

    fn validate(&self) -> Result<(), String> {
        if self.url.is_empty() {
            return Ok(());
        }
        let (tls, _, _) = crate::publish::parse_url(&self.url)?;
        let topic_safe = |s: &str| !s.is_empty() && !s.contains(['+', '#', '\0']);
        if !topic_safe(&self.topic_prefix) {
            return Err(format!(
                "publish.topic_prefix = {:?} must be a topic without + or #",
                self.topic_prefix
            ));
        }
        let device = self.device()?;
        if !topic_safe(&device) || device.contains('/') {
            return Err(format!(
                "publish.device_id = {device:?} must be a topic level: no /, + or #"
            ));
        }
        if self.spool.as_os_str().is_empty() {
            return Err("publish.spool must name a folder when publish.url is set".into());
        }
        if self.spool_max_mb == 0 || self.compare_interval_s == 0 {
            return Err("publish.spool_max_mb and compare_interval_s must be > 0".into());
        }
        if self.qos > 1 {
            return Err(format!(
                "publish.qos = {} is not 0 or 1 (records carry ids for de-duplication instead of QoS 2)",
                self.qos
            ));
        }
        if self.username.is_empty() != self.password_file.as_os_str().is_empty() {
            return Err("publish.username and password_file go together".into());
        }
        if self.client_cert.as_os_str().is_empty() != self.client_key.as_os_str().is_empty() {
            return Err("publish.client_cert and client_key go together".into());
        }
        let tls_files = !self.ca_file.as_os_str().is_empty() || !self.client_cert.as_os_str().is_empty();
        if tls_files && !tls {
            return Err("publish.ca_file and client_cert need an mqtts:// url".into());
        }
        Ok(())
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
        Config::load_with(file, None)
    }

    /// `load` with `environment` in place of the process's variables when given (the fuzz harness's
    /// way to vary them without touching the process).
    pub fn load_with(
        file: Option<&Path>,
        environment: Option<config::Map<String, String>>,
    ) -> Result<Config, ConfigError> {
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
                .with_list_parse_key("plugins.directories")
                .with_list_parse_key("source.formats")
                .with_list_parse_key("captioning.compare")
                .with_list_parse_key("service.allowed_hosts")
                .with_list_parse_key("service.cors_origins")
                .try_parsing(true)
                .source(environment),
        );
        let config: Config = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| err(e.to_string()))?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// The decoder `name` stands for (see `decoder_request`), created from `plugins`; in its own
    /// process if it says `isolate = true`, or says nothing and plugins.isolate is true.
    pub fn create_decoder(&self, plugins: &Plugins, name: &str) -> Result<DecoderInstance, RequestError> {
        plugins.create(&self.decoder_request(name)?, self.plugins.isolate)
    }

    /// As `create_decoder`, for captioning.compare: isolated by default (plugins.isolate_compare).
    pub fn create_compared(&self, plugins: &Plugins, name: &str) -> Result<DecoderInstance, RequestError> {
        plugins.create(&self.decoder_request(name)?, self.plugins.isolate_compare)
    }

    /// The request `name` stands for: a `[decoders.NAME]` table, else a `name:key=value,...` spec.
    fn decoder_request(&self, name: &str) -> Result<DecoderRequest, RequestError> {
        match self.decoders.get(name) {
            Some(table) => DecoderRequest::from_table(name, table),
            None => DecoderRequest::parse(name),
        }
    }

    fn validate(&self) -> Result<(), String> {
        let p = &self.plugins;
        if p.isolate_memory_mb == 0 || p.isolate_cpu_seconds == 0 || p.isolate_wait_ms == 0 {
            return Err("plugins.isolate_memory_mb, isolate_cpu_seconds and isolate_wait_ms must be > 0".into());
        }
        for (name, table) in &self.decoders {
            DecoderRequest::from_table(name, table).map_err(|e| e.to_string())?;
        }
        if self.decoding.decoder.is_empty() {
            return Err("decoding.decoder must name a decoder".into());
        }
        let (s, c, v) = (&self.service, &self.captioning, &self.source);
        let Ok(listen) = s.listen.parse::<std::net::SocketAddr>() else {
            return Err(format!(
                "service.listen = {:?} is not an address like 127.0.0.1:8080",
                s.listen
            ));
        };
        if !listen.ip().is_loopback() && s.tokens_file.as_os_str().is_empty() {
            return Err(format!(
                "service.listen = {:?} is off loopback: set service.tokens_file (and service.tls_cert and \
                 tls_key), or listen on 127.0.0.1",
                s.listen
            ));
        }
        if s.tls_cert.as_os_str().is_empty() != s.tls_key.as_os_str().is_empty() {
            return Err("service.tls_cert and tls_key go together".into());
        }
        if s.allowed_hosts.is_empty() {
            return Err("service.allowed_hosts must name a host (\"*\" for any)".into());
        }
        if let Some(o) = s
            .cors_origins
            .iter()
            .find(|o| !(o.starts_with("http://") || o.starts_with("https://")) || o.matches('/').count() != 2)
        {
            return Err(format!(
                "service.cors_origins: {o:?} is not an origin like https://ops.example.com"
            ));
        }
        if s.max_upload_bytes == 0 || s.max_image_pixels == 0 || s.history == 0 {
            return Err("service.max_upload_bytes, max_image_pixels and history must be > 0".into());
        }
        if s.header_timeout_ms == 0 || s.body_timeout_ms == 0 || s.max_connections == 0 {
            return Err("service.header_timeout_ms, body_timeout_ms and max_connections must be > 0".into());
        }
        if !(0.0..=2.0).contains(&c.scene_change) {
            return Err(format!(
                "captioning.scene_change = {} is outside [0, 2] (a cosine distance)",
                c.scene_change
            ));
        }
        if c.interval_ms == 0 {
            return Err("captioning.interval_ms must be > 0".into());
        }
        if c.compare_every == 0 || c.votes_per_minute == 0 {
            return Err("captioning.compare_every and votes_per_minute must be > 0".into());
        }
        if let Some(f) = v
            .formats
            .iter()
            .find(|f| !["MJPG", "YUYV", "RGB3"].contains(&f.as_str()))
        {
            return Err(format!("source.formats: {f:?} is not one of MJPG, YUYV, RGB3"));
        }
        if v.kind == SourceKind::V4l2 && (v.formats.is_empty() || v.width == 0 || v.height == 0) {
            return Err("source.formats must name a format, and source.width and height be > 0".into());
        }
        if v.kind == SourceKind::Folder && v.folder.as_os_str().is_empty() {
            return Err("source.folder must be set when source.kind = \"folder\"".into());
        }
        if v.kind == SourceKind::Folder && !v.done_folder.as_os_str().is_empty() && v.done_folder == v.folder {
            return Err("source.done_folder must be another folder than source.folder".into());
        }
        if v.reconnect_min_ms == 0 || v.reconnect_max_ms < v.reconnect_min_ms || v.poll_ms == 0 {
            return Err("source.poll_ms and reconnect_min_ms must be > 0, reconnect_max_ms >= reconnect_min_ms".into());
        }
        self.publish.validate()?;
        if v.kind == SourceKind::Ros2 || self.ros2.enabled {
            crate::ros2::validate(&self.ros2)?;
        }
        let r = &self.runtime;
        if r.inter_threads == 0 {
            return Err("runtime.inter_threads must be >= 1".into());
        }
        if r.tensorrt_max_batch == 0 {
            return Err("runtime.tensorrt_max_batch must be >= 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_tables_become_requests() {
        let dir = std::env::temp_dir().join(format!("clipcap-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[decoders.beam5]\ndecoder = \"beam\"\nnum_beams = 5\n[decoders.sample]\ntop_p = 0.9\n",
        )
        .unwrap();
        let config = Config::load(Some(&path)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let beam5 = config.decoder_request("beam5").unwrap();
        assert_eq!((beam5.label.as_str(), beam5.decoder.as_str()), ("beam5", "beam"));
        assert_eq!(beam5.params["num_beams"], ParamValue::Int(5));
        assert_eq!(
            config.decoder_request("sample").unwrap().params["top_p"],
            ParamValue::Float(0.9)
        );
        let spec = config.decoder_request("beam:num_beams=3").unwrap();
        assert_eq!(
            (spec.decoder.as_str(), &spec.params["num_beams"]),
            ("beam", &ParamValue::Text("3".into()))
        );
    }

    #[test]
    fn shipped_config_toml_is_the_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        assert_eq!(Config::load(Some(&path)).unwrap(), Config::default());
    }
}

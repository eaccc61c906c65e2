//! Step 2 of reading the configuration: every value checked, the first refusal returned with its key.
//! The sections that belong to a part are checked by that part (`source::validate`,
//! `PublishConfig::validate`, `Ros2Config::validate`); the others here.

use super::{CaptioningConfig, Config, SecurityConfig, ServiceConfig};
use crate::settings::{Invalid, check};
use crate::source::{self, SourceKind};
use clipcap_core::decoding::DecoderRequest;
use clipcap_core::runtime::RuntimeOptions;
use clipcap_core::trust::TrustedKeys;

pub(super) fn validate(config: &Config) -> Result<(), Invalid> {
    let p = &config.plugins;
    check(
        p.isolate_memory_mb > 0 && p.isolate_cpu_seconds > 0 && p.isolate_wait_ms > 0,
        "plugins.isolate_memory_mb",
        || "plugins.isolate_memory_mb, isolate_cpu_seconds and isolate_wait_ms must be > 0".into(),
    )?;
    for (name, table) in &config.decoders {
        DecoderRequest::from_table(name, table).map_err(|e| Invalid::new(format!("decoders.{name}"), e.to_string()))?;
    }
    check(!config.decoding.decoder.is_empty(), "decoding.decoder", || {
        "decoding.decoder must name a decoder".into()
    })?;
    service(&config.service)?;
    captioning(&config.captioning)?;
    let sources = config.sources();
    source::validate_all(&sources, !config.sources.is_empty())?;
    config.publish.validate()?;
    if sources.iter().any(|s| s.kind == SourceKind::Ros2) || config.ros2.enabled {
        config.ros2.validate()?;
        #[cfg(feature = "ros2")]
        if sources.len() > 1 {
            let names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
            config.ros2.validate_sources(&names)?;
        }
    }
    security(&config.security)?;
    runtime(&config.runtime)
}

fn security(s: &SecurityConfig) -> Result<(), Invalid> {
    if s.trusted_keys_file.as_os_str().is_empty() {
        return check(!s.require_signed, "security.require_signed", || {
            "security.require_signed = true needs security.trusted_keys_file: the minisign public keys \
             bundles and plugins must be signed by"
                .into()
        });
    }
    TrustedKeys::load(&s.trusted_keys_file)
        .map(drop)
        .map_err(|e| Invalid::new("security.trusted_keys_file", e.to_string()))
}

fn service(s: &ServiceConfig) -> Result<(), Invalid> {
    let listen = s.listen.parse::<std::net::SocketAddr>().map_err(|_| {
        Invalid::new(
            "service.listen",
            format!("service.listen = {:?} is not an address like 127.0.0.1:8080", s.listen),
        )
    })?;
    check(
        listen.ip().is_loopback() || !s.tokens_file.as_os_str().is_empty(),
        "service.listen",
        || {
            format!(
                "service.listen = {:?} is off loopback: set service.tokens_file (and service.tls_cert and \
                 tls_key), or listen on 127.0.0.1",
                s.listen
            )
        },
    )?;
    check(
        s.tls_cert.as_os_str().is_empty() == s.tls_key.as_os_str().is_empty(),
        "service.tls_cert",
        || "service.tls_cert and tls_key go together".into(),
    )?;
    check(!s.allowed_hosts.is_empty(), "service.allowed_hosts", || {
        "service.allowed_hosts must name a host (\"*\" for any)".into()
    })?;
    if let Some(o) = s
        .cors_origins
        .iter()
        .find(|o| !(o.starts_with("http://") || o.starts_with("https://")) || o.matches('/').count() != 2)
    {
        return Err(Invalid::new(
            "service.cors_origins",
            format!("service.cors_origins: {o:?} is not an origin like https://ops.example.com"),
        ));
    }
    check(
        s.max_upload_bytes > 0 && s.max_image_pixels > 0 && s.max_decode_mb > 0 && s.history > 0,
        "service.max_upload_bytes",
        || "service.max_upload_bytes, max_image_pixels, max_decode_mb and history must be > 0".into(),
    )?;
    check(
        s.header_timeout_ms > 0 && s.body_timeout_ms > 0 && s.max_connections > 0,
        "service.header_timeout_ms",
        || "service.header_timeout_ms, body_timeout_ms and max_connections must be > 0".into(),
    )?;
    check(
        s.uploads_in_flight > 0 && s.upload_max_beams > 0,
        "service.uploads_in_flight",
        || "service.uploads_in_flight and upload_max_beams must be > 0".into(),
    )?;
    check(
        s.max_connections_per_client > 0 && s.local_connections < s.max_connections,
        "service.max_connections_per_client",
        || {
            format!(
                "service.max_connections_per_client must be > 0 and local_connections ({}) fewer than \
                 max_connections ({})",
                s.local_connections, s.max_connections
            )
        },
    )
}

fn captioning(c: &CaptioningConfig) -> Result<(), Invalid> {
    check((0.0..=2.0).contains(&c.scene_change), "captioning.scene_change", || {
        format!(
            "captioning.scene_change = {} is outside [0, 2] (a cosine distance)",
            c.scene_change
        )
    })?;
    check(c.interval_ms > 0, "captioning.interval_ms", || {
        "captioning.interval_ms must be > 0".into()
    })?;
    check(
        c.compare_every > 0 && c.votes_per_minute > 0,
        "captioning.compare_every",
        || "captioning.compare_every and votes_per_minute must be > 0".into(),
    )?;
    check(
        c.keep_compared_frames_mb > 0,
        "captioning.keep_compared_frames_mb",
        || "captioning.keep_compared_frames_mb must be >= 1 (leave keep_compared_frames empty to keep none)".into(),
    )?;
    check(c.max_batch > 0, "captioning.max_batch", || {
        "captioning.max_batch must be >= 1".into()
    })?;
    check(
        (1..=64).contains(&c.upload_concurrency),
        "captioning.upload_concurrency",
        || {
            format!(
                "captioning.upload_concurrency = {} is outside 1 to 64",
                c.upload_concurrency
            )
        },
    )?;
    check(c.batch_wait_ms <= 1000, "captioning.batch_wait_ms", || {
        format!("captioning.batch_wait_ms = {} is over 1000", c.batch_wait_ms)
    })
}

fn runtime(r: &RuntimeOptions) -> Result<(), Invalid> {
    check(r.inter_threads > 0, "runtime.inter_threads", || {
        "runtime.inter_threads must be >= 1".into()
    })?;
    check(r.tensorrt_max_batch > 0, "runtime.tensorrt_max_batch", || {
        "runtime.tensorrt_max_batch must be >= 1".into()
    })
}

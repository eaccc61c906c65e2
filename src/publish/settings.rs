//! `[publish]`: the broker, the device's topics, the spool and the credentials (docs/fleet.md), and
//! their checks.

use std::path::PathBuf;

use serde::Deserialize;

use crate::settings::{Invalid, check};

/// `[publish]`: the caption-log records, status and comparisons to an MQTT 5 broker.
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

/// Where the broker is, from `publish.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl PublishConfig {
    /// `device_id`, or the host name when it is empty.
    pub fn device(&self) -> Result<String, Invalid> {
        if !self.device_id.is_empty() {
            return Ok(self.device_id.clone());
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .map_err(|e| {
                Invalid::new(
                    "publish.device_id",
                    format!("publish.device_id is empty and the host name cannot be read: {e}"),
                )
            })
    }

    /// `mqtt://host[:port]` (default 1883) or `mqtts://host[:port]` (8883).
    pub fn broker(&self) -> Result<Broker, Invalid> {
        let url = &self.url;
        let bad = |why: &str| Invalid::new("publish.url", format!("publish.url = {url:?}: {why}"));
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(bad("must start with mqtt:// or mqtts://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('@') || rest.contains('?') {
            return Err(bad(
                "only a host and a port (credentials go in username and password_file)",
            ));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (
                host,
                port.parse::<u16>()
                    .map_err(|_| bad(&format!("{port:?} is not a port")))?,
            ),
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Broker {
            tls,
            host: host.to_string(),
            port,
        })
    }

    /// Checks the table when publishing is on (`url` set).
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.url.is_empty() {
            return Ok(());
        }
        let tls = self.broker()?.tls;
        let topic_safe = |s: &str| !s.is_empty() && !s.contains(['+', '#', '\0']);
        check(topic_safe(&self.topic_prefix), "publish.topic_prefix", || {
            format!(
                "publish.topic_prefix = {:?} must be a topic without + or #",
                self.topic_prefix
            )
        })?;
        let device = self.device()?;
        check(
            topic_safe(&device) && !device.contains('/'),
            "publish.device_id",
            || format!("publish.device_id = {device:?} must be a topic level: no /, + or #"),
        )?;
        check(!self.spool.as_os_str().is_empty(), "publish.spool", || {
            "publish.spool must name a folder when publish.url is set".into()
        })?;
        check(
            self.spool_max_mb > 0 && self.compare_interval_s > 0,
            "publish.spool_max_mb",
            || "publish.spool_max_mb and compare_interval_s must be > 0".into(),
        )?;
        check(self.qos <= 1, "publish.qos", || {
            format!(
                "publish.qos = {} is not 0 or 1 (records carry ids for de-duplication instead of QoS 2)",
                self.qos
            )
        })?;
        check(
            self.username.is_empty() == self.password_file.as_os_str().is_empty(),
            "publish.username",
            || "publish.username and password_file go together".into(),
        )?;
        check(
            self.client_cert.as_os_str().is_empty() == self.client_key.as_os_str().is_empty(),
            "publish.client_cert",
            || "publish.client_cert and client_key go together".into(),
        )?;
        let tls_files = !self.ca_file.as_os_str().is_empty() || !self.client_cert.as_os_str().is_empty();
        check(!tls_files || tls, "publish.ca_file", || {
            "publish.ca_file and client_cert need an mqtts:// url".into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let broker = |url: &str| {
            PublishConfig {
                url: url.into(),
                ..PublishConfig::default()
            }
            .broker()
        };
        let at = |tls, host: &str, port| Broker {
            tls,
            host: host.into(),
            port,
        };
        assert_eq!(broker("mqtt://broker"), Ok(at(false, "broker", 1883)));
        assert_eq!(broker("mqtts://broker:8884/"), Ok(at(true, "broker", 8884)));
        assert_eq!(broker("mqtt://[::1]:1884"), Ok(at(false, "::1", 1884)));
        assert_eq!(broker("mqtt://[::1]"), Ok(at(false, "::1", 1883)));
        for bad in [
            "tcp://broker",
            "mqtt://",
            "mqtt://u:p@broker",
            "mqtt://broker:x",
            "mqtt://b/topic",
        ] {
            let refused = broker(bad).unwrap_err();
            assert_eq!(refused.key, "publish.url", "{bad}");
            assert!(refused.reason.contains("publish.url"), "{bad}");
        }
    }
}

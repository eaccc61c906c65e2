//! Who may use the daemon's API: bearer tokens (and read-only ones), browsers from other origins and
//! other Host names, CORS, upload rate limits, TLS with a certificate made here and reloaded on
//! SIGHUP, and the configurations the daemon refuses to start with. Requests are written by hand
//! where a header must be exactly what a browser or an attacker sends.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use common::{Daemon, demo_image, metric};

const FULL: &str = "0123456789abcdef0123456789abcdef";
const READ_ONLY: &str = "fedcba9876543210fedcba9876543210";

fn png() -> Vec<u8> {
    std::fs::read(demo_image("08200.png")).unwrap()
}

fn wait_model(daemon: &Daemon, token: Option<&str>) {
    let auth = token
        .map(|t| format!("\r\nAuthorization: Bearer {t}"))
        .unwrap_or_default();
    daemon.wait_until(
        || {
            !daemon
                .raw(&format!("GET /readyz HTTP/1.1\r\nHost: {{host}}{auth}"), b"")
                .1
                .contains("loading the model")
        },
        "the model to load",
    );
}

fn write_tokens(dir: &Path, mode: u32) -> std::path::PathBuf {
    let path = dir.join("tokens");
    std::fs::write(
        &path,
        format!("# clients\n{FULL} operator\n{READ_ONLY} kiosk-screen read-only\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn tokens_guard_every_endpoint_but_health_and_read_only_ones_cannot_post() {
    let daemon = Daemon::start_with("tokens_file = \"{dir}/tokens\"\n", &[], |dir| {
        write_tokens(dir, 0o600);
    });
    wait_model(&daemon, Some(FULL));
    for open in ["/healthz", "/readyz", "/"] {
        let (status, _) = daemon.raw(&format!("GET {open} HTTP/1.1\r\nHost: {{host}}"), b"");
        assert_eq!(status, 200, "{open} stays open");
    }
    let (status, response) = daemon.raw("GET /v1/captions HTTP/1.1\r\nHost: {host}", b"");
    assert_eq!(status, 401, "{response}");
    assert!(
        response.to_ascii_lowercase().contains("www-authenticate: bearer"),
        "{response}"
    );
    let wrong = "GET /v1/captions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer 0123456789abcdef0123456789abcdeX";
    assert_eq!(daemon.raw(wrong, b"").0, 401);
    let upload = |token: &str| {
        daemon.raw(
            &format!("POST /v1/caption HTTP/1.1\r\nHost: {{host}}\r\nAuthorization: Bearer {token}"),
            &png(),
        )
    };
    let (status, response) = upload(FULL);
    assert_eq!(status, 200, "{response}");
    assert_eq!(upload(READ_ONLY).0, 403, "a read-only token cannot upload");
    let read = |query: &str| daemon.raw(&format!("GET /v1/captions{query} HTTP/1.1\r\nHost: {{host}}"), b"");
    assert_eq!(
        read(&format!("?access_token={READ_ONLY}")).0,
        200,
        "reads may pass the token in the query"
    );
    let (status, metrics) = daemon.raw(
        &format!("GET /metrics HTTP/1.1\r\nHost: {{host}}\r\nAuthorization: Bearer {READ_ONLY}"),
        b"",
    );
    assert_eq!(status, 200);
    assert_eq!(
        metric(&metrics, "clipcap_errors_total{kind=\"auth\"}"),
        3.0,
        "two 401s and a 403"
    );
    assert_eq!(daemon.logged().len(), 1, "only the authorised upload was captioned");
}

/// `clipcap serve` with this configuration must refuse to start, saying `says`.
fn refuses_to_start(extra: &str, prepare: impl FnOnce(&Path), says: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path());
    let config = dir.path().join("clipcap.toml");
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/bundle");
    std::fs::write(
        &config,
        format!(
            "[service]\nbundle = {bundle:?}\n{}\n[source]\nkind = \"none\"\n\
             [plugins]\ndirectories = [{plugins:?}]\nallow_insecure = true\n",
            extra.replace("{dir}", dir.path().to_str().unwrap()),
            plugins = common::plugin_dir(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clipcap"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for s in says {
        assert!(stderr.contains(s), "{s:?} in:\n{stderr}");
    }
}

#[test]
fn unsafe_configurations_are_refused_at_start() {
    refuses_to_start(
        "listen = \"0.0.0.0:0\"",
        |_| {},
        &["service.listen", "off loopback", "service.tokens_file"],
    );
    refuses_to_start(
        "tokens_file = \"{dir}/tokens\"",
        |dir| {
            write_tokens(dir, 0o644);
        },
        &["service.tokens_file", "mode 0600", "644"],
    );
    refuses_to_start(
        "tokens_file = \"{dir}/tokens\"",
        |dir| {
            std::fs::write(dir.join("tokens"), "short name\n").unwrap();
            std::fs::set_permissions(dir.join("tokens"), std::fs::Permissions::from_mode(0o600)).unwrap();
        },
        &["tokens:1", "at least 32 characters"],
    );
}

#[test]
fn browsers_from_other_origins_and_other_host_names_are_refused() {
    let daemon = Daemon::start("uploads_per_minute = 3\n", &[]);
    wait_model(&daemon, None);
    let post = |headers: &str| {
        daemon.raw(
            &format!("POST /v1/caption HTTP/1.1\r\nHost: {{host}}\r\nContent-Type: text/plain{headers}"),
            &png(),
        )
    };
    // A web page elsewhere posting a "simple" request (no preflight): refused before it is read.
    assert_eq!(post("\r\nOrigin: http://evil.example").0, 403);
    assert_eq!(post("\r\nSec-Fetch-Site: cross-site").0, 403);
    // The kiosk page's own origin, and curl (no Origin), are fine.
    let own = format!("\r\nOrigin: {}", daemon.url);
    let (status, response) = post(&own);
    assert_eq!(status, 200, "{response}");
    assert!(
        !response.to_ascii_lowercase().contains("access-control-allow-origin"),
        "no CORS by default"
    );
    assert_eq!(post("").0, 200);
    assert_eq!(post("").0, 200);
    // DNS rebinding: a name that is not ours reaches us; it is not answered.
    let (status, _) = daemon.raw("GET /v1/captions HTTP/1.1\r\nHost: attacker.example:8080", b"");
    assert_eq!(status, 421);
    assert_eq!(
        daemon.raw("GET /v1/captions HTTP/1.1\r\nHost: localhost:8080", b"").0,
        200
    );
    // Three uploads a minute: the fourth waits.
    let (status, response) = post("");
    assert_eq!(status, 429, "{response}");
    let retry: u64 = response
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("Retry-After");
    assert!((1..=20).contains(&retry), "{retry}");
    assert_eq!(daemon.logged().len(), 3, "refused requests are not captioned");
    let metrics = daemon.metrics();
    assert_eq!(metric(&metrics, "clipcap_errors_total{kind=\"origin\"}"), 2.0);
    assert_eq!(metric(&metrics, "clipcap_errors_total{kind=\"host\"}"), 1.0);
}

#[test]
fn cors_origins_get_cors_headers_and_may_post() {
    let daemon = Daemon::start("cors_origins = [\"https://ops.example\"]\n", &[]);
    wait_model(&daemon, None);
    let preflight = "OPTIONS /v1/caption HTTP/1.1\r\nHost: {host}\r\nOrigin: https://ops.example\r\n\
                     Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type";
    let (status, response) = daemon.raw(preflight, b"");
    assert_eq!(status, 200, "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: https://ops.example"),
        "{response}"
    );
    let post = |origin: &str| {
        daemon.raw(
            &format!("POST /v1/caption HTTP/1.1\r\nHost: {{host}}\r\nContent-Type: image/png\r\nOrigin: {origin}"),
            &png(),
        )
    };
    assert_eq!(post("https://ops.example").0, 200);
    assert_eq!(post("https://other.example").0, 403);
}

/// A CA and a certificate for "localhost" signed by it: (CA PEM, certificate PEM, key PEM).
fn certificate() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

fn https_agent(ca: &str) -> ureq::Agent {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let roots = RootCerts::Specific(Arc::new(vec![Certificate::from_pem(ca.as_bytes()).unwrap()]));
    ureq::Agent::config_builder()
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .http_status_as_error(false)
        .build()
        .into()
}

#[test]
fn tls_serves_https_reloads_on_sighup_and_plain_http_fails_cleanly() {
    let (ca, cert, key) = certificate();
    let mut daemon = Daemon::start_with(
        "tls_cert = \"{dir}/cert.pem\"\ntls_key = \"{dir}/key.pem\"\n",
        &[("RUST_LOG", "info")],
        |dir| {
            std::fs::write(dir.join("cert.pem"), &cert).unwrap();
            std::fs::write(dir.join("key.pem"), &key).unwrap();
        },
    );
    let port = daemon.url.rsplit(':').next().unwrap().to_string();
    let url = |path: &str| format!("https://localhost:{port}{path}");
    let agent = https_agent(&ca);
    let response = agent.get(&url("/healthz")).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // Plain HTTP to the TLS port: an error at once, not a hang.
    let start = std::time::Instant::now();
    let plain = ureq::get(&format!("http://127.0.0.1:{port}/healthz")).call();
    assert!(plain.is_err() && start.elapsed().as_secs() < 10, "{plain:?}");

    // A renewed certificate from another CA: SIGHUP, and new connections present it.
    let (new_ca, new_cert, new_key) = certificate();
    std::fs::write(daemon.dir.path().join("cert.pem"), &new_cert).unwrap();
    std::fs::write(daemon.dir.path().join("key.pem"), &new_key).unwrap();
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    daemon.wait_until(
        || daemon.stderr().contains("reloaded the TLS certificate"),
        "the reload",
    );
    assert!(https_agent(&new_ca).get(&url("/healthz")).call().is_ok());
    assert!(
        https_agent(&ca).get(&url("/healthz")).call().is_err(),
        "the old CA no longer matches"
    );
    // A broken pair on SIGHUP keeps the certificate in use.
    std::fs::write(daemon.dir.path().join("key.pem"), "not a key").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    daemon.wait_until(
        || daemon.stderr().contains("keeping the certificate in use"),
        "the refusal",
    );
    assert!(https_agent(&new_ca).get(&url("/healthz")).call().is_ok());
    assert_eq!(daemon.terminate().code(), Some(0));
}

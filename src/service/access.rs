//! Who may use the API (docs/api.md, "Access"): a middleware in front of every route that answers
//! only the configured `Host` names (no DNS rebinding), refuses state-changing requests from other
//! origins (a web page's cross-origin "simple" POST), and, with `service.tokens_file`, wants a bearer
//! token on everything but `/healthz`, `/readyz` and the kiosk page's HTML; a read-only token may only
//! read. Tokens are compared in constant time (`subtle`).

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use subtle::ConstantTimeEq;

use super::metrics::{ErrorKind, Metrics};
use crate::config::ServiceConfig;

/// One line of the tokens file.
struct Token {
    secret: Vec<u8>,
    name: String,
    read_only: bool,
}

/// Who made a request, for the handlers (request extension): the token's name, or the address.
#[derive(Clone, Debug)]
pub struct Client {
    pub name: String,
    /// Whether `name` is a token's.
    pub token: bool,
}

/// The rules, from `[service]`.
pub struct Access {
    tokens: Option<Vec<Token>>,
    /// Lower-case host names without port; "*" answers any.
    allowed_hosts: Vec<String>,
    cors_origins: Vec<String>,
    scheme: &'static str,
    /// Counts `host`, `origin` and `auth` refusals (clipcap_errors_total).
    metrics: Arc<Metrics>,
}

/// Paths anyone may read, with tokens too: liveness, readiness, and the kiosk page's HTML (which then
/// asks for a token to read the captions).
const OPEN: &[&str] = &["/healthz", "/readyz", "/"];

/// The shortest token accepted: 128 bits as hex.
const MIN_TOKEN: usize = 32;

/// Reads `TOKEN NAME [read-only]` lines (blank lines and `#` comments skipped). The file must be the
/// daemon user's and readable by nobody else (mode 0600 or stricter).
fn read_tokens(path: &Path) -> anyhow::Result<Vec<Token>> {
    let meta = std::fs::metadata(path).with_context(|| format!("service.tokens_file {}", path.display()))?;
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    anyhow::ensure!(
        meta.uid() == uid && meta.mode() & 0o077 == 0,
        "service.tokens_file {}: must belong to the daemon's user (uid {uid}) and have mode 0600 or stricter \
         (it has uid {} and mode {:o})",
        path.display(),
        meta.uid(),
        meta.mode() & 0o777
    );
    let text = std::fs::read_to_string(path).with_context(|| format!("service.tokens_file {}", path.display()))?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("service.tokens_file {}:{}", path.display(), n + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let read_only = match fields.get(2..) {
            Some([]) => false,
            Some(["read-only"]) => true,
            _ => anyhow::bail!("{}: expected `TOKEN NAME` or `TOKEN NAME read-only`", at()),
        };
        anyhow::ensure!(
            fields[0].len() >= MIN_TOKEN
                && fields[0]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
            "{}: a token is at least {MIN_TOKEN} characters of A-Z a-z 0-9 - . _ ~ (e.g. `openssl rand -hex 16`)",
            at()
        );
        anyhow::ensure!(
            tokens.iter().all(|t: &Token| t.secret != fields[0].as_bytes()),
            "{}: the same token twice",
            at()
        );
        tokens.push(Token {
            secret: fields[0].as_bytes().to_vec(),
            name: fields[1].to_string(),
            read_only,
        });
    }
    anyhow::ensure!(
        !tokens.is_empty(),
        "service.tokens_file {}: holds no token",
        path.display()
    );
    Ok(tokens)
}

impl Access {
    pub fn new(config: &ServiceConfig, metrics: Arc<Metrics>) -> anyhow::Result<Access> {
        let tokens = if config.tokens_file.as_os_str().is_empty() {
            None
        } else {
            Some(read_tokens(&config.tokens_file)?)
        };
        Ok(Access {
            tokens,
            allowed_hosts: config.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            cors_origins: config.cors_origins.clone(),
            scheme: if config.tls_cert.as_os_str().is_empty() {
                "http"
            } else {
                "https"
            },
            metrics,
        })
    }

    /// The token presented, checked against every line (each compared in constant time).
    fn token(&self, presented: &[u8]) -> Option<&Token> {
        let tokens = self.tokens.as_deref()?;
        let mut found = None;
        for t in tokens {
            if bool::from(t.secret.ct_eq(presented)) {
                found = Some(t);
            }
        }
        found
    }

    /// Whether `host` (as `requested_host` read it) names an allowed host.
    fn host_allowed(&self, host: &str) -> bool {
        let name = strip_port(host).to_ascii_lowercase();
        self.allowed_hosts.iter().any(|h| h == "*" || *h == name)
    }

    /// Whether a state-changing request may come from where the browser says it comes from: no
    /// `Origin` (not a browser, e.g. curl) or this origin or a `cors_origins` one; and no
    /// `Sec-Fetch-Site` saying another site.
    /// A header that is there but not text is refused, as no browser sends one.
    fn origin_allowed(&self, headers: &HeaderMap, host: &str) -> bool {
        let text = |name| headers.get(name).map(|v: &header::HeaderValue| v.to_str().ok());
        match text(header::ORIGIN) {
            Some(Some(origin)) => {
                return origin == format!("{}://{host}", self.scheme) || self.cors_origins.iter().any(|o| o == origin);
            }
            Some(None) => return false,
            None => {}
        }
        match text(header::HeaderName::from_static("sec-fetch-site")) {
            None => true,
            Some(site) => matches!(site, Some("same-origin") | Some("none")),
        }
    }
}

/// A request's host that cannot be read.
#[derive(Debug, thiserror::Error)]
enum BadHost {
    #[error("more than one Host header")]
    Several,
    #[error("the Host is not host[:port]")]
    Malformed,
    #[error("no Host")]
    Missing,
}

/// The host a request asks for: its absolute URI's authority (RFC 9112: then the Host header is
/// ignored), else its one Host header, as `host[:port]` with a numeric port.
fn requested_host(headers: &HeaderMap, request: &Request) -> Result<String, BadHost> {
    let host = match request.uri().authority() {
        Some(authority) => authority.as_str().to_string(),
        None => {
            let mut hosts = headers.get_all(header::HOST).iter();
            let host = hosts.next().ok_or(BadHost::Missing)?;
            if hosts.next().is_some() {
                return Err(BadHost::Several);
            }
            host.to_str().map_err(|_| BadHost::Malformed)?.to_string()
        }
    };
    // What follows the name: nothing, or ":PORT".
    let after = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').ok_or(BadHost::Malformed)?.1,
        None => host.find(':').map_or("", |at| &host[at..]),
    };
    let port_ok = after.is_empty()
        || after
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok());
    if host.contains('@') || !port_ok {
        return Err(BadHost::Malformed);
    }
    Ok(host)
}

/// "host:port", "[v6]:port", "host" -> the host name.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// The middleware: host, origin, token, in that order.
pub async fn guard(
    State(access): State<Arc<Access>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers().clone();
    let host = match requested_host(&headers, &request) {
        Ok(host) => Some(host),
        Err(BadHost::Missing) => None,
        Err(bad) => {
            access.metrics.error(ErrorKind::Host);
            return refuse(StatusCode::BAD_REQUEST, &bad.to_string());
        }
    };
    let Some(host) = host.filter(|h| access.host_allowed(h)) else {
        access.metrics.error(ErrorKind::Host);
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "this Host is not served here (service.allowed_hosts)",
        );
    };
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if changes && !access.origin_allowed(&headers, &host) {
        access.metrics.error(ErrorKind::Origin);
        return refuse(
            StatusCode::FORBIDDEN,
            "cross-origin request refused (service.cors_origins)",
        );
    }
    let mut client = Client {
        name: peer.ip().to_string(),
        token: false,
    };
    if access.tokens.is_some() && !OPEN.contains(&request.uri().path()) {
        let presented = bearer(&headers).or_else(|| (!changes).then(|| query_token(&request)).flatten());
        let Some(token) = presented.and_then(|p| access.token(p.as_bytes())) else {
            access.metrics.error(ErrorKind::Auth);
            let mut response = refuse(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is needed (service.tokens_file)",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return response;
        };
        if changes && token.read_only {
            access.metrics.error(ErrorKind::Auth);
            return refuse(StatusCode::FORBIDDEN, "this token is read-only");
        }
        client.name = token.name.clone();
        client.token = true;
    }
    request.extensions_mut().insert(client);
    next.run(request).await
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_string())
}

/// `access_token=` of the query (reads only: an `<img>` or `EventSource` cannot send a header).
fn query_token(request: &Request) -> Option<String> {
    request
        .uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token="))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_one_header_or_the_absolute_uri_with_a_numeric_port() {
        let host = |uri: &str, hosts: &[&str]| {
            let mut request = axum::http::Request::builder().uri(uri);
            for h in hosts {
                request = request.header(header::HOST, *h);
            }
            let request = request.body(axum::body::Body::empty()).unwrap();
            requested_host(&request.headers().clone(), &request).map_err(|e| e.to_string())
        };
        assert_eq!(host("/", &["localhost:8080"]).unwrap(), "localhost:8080");
        assert_eq!(host("/", &["[::1]:8080"]).unwrap(), "[::1]:8080");
        assert_eq!(host("http://evil.example/x", &["localhost"]).unwrap(), "evil.example");
        assert_eq!(
            host("/", &["localhost", "evil.example"]).unwrap_err(),
            "more than one Host header"
        );
        for bad in [
            "localhost:evil.example",
            "localhost:",
            "[::1]x",
            "user@localhost",
            "localhost:123456",
        ] {
            assert_eq!(host("/", &[bad]).unwrap_err(), "the Host is not host[:port]", "{bad}");
        }
        assert_eq!(host("/", &[]).unwrap_err(), "no Host");
    }

    #[test]
    fn host_names() {
        assert_eq!(strip_port("localhost:8080"), "localhost");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
        assert_eq!(strip_port("127.0.0.1"), "127.0.0.1");
    }
}

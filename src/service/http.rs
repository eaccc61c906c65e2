//! The HTTP API (docs/api.md): versioned JSON endpoints, Server-Sent Events, the latest frame, uploads,
//! health, readiness, Prometheus metrics, and the kiosk page. Handlers never block: decoding an upload
//! runs on the blocking pool, captioning on the pipeline thread.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, State as Extract};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_stream::wrappers::BroadcastStream;

use super::access::{self, Access, Client};
use super::live::Live;
use super::metrics::{ErrorKind, Metrics};
use super::ratelimit::RateLimit;
use super::state::State;
use super::uploads::{NotQueued, Upload, UploadSender};
use crate::config::{CaptioningConfig, DecodingConfig, ServiceConfig};
use crate::decoders::DecoderFactory;
use crate::records::{CaptionEvent, Published, Vote, captioned};
use crate::shutdown::Shutdown;
use crate::source::Pixels;
use clipcap_core::imageio;

pub struct Api {
    pub state: Arc<State>,
    pub metrics: Arc<Metrics>,
    /// The sections the API reads.
    pub service: ServiceConfig,
    pub captioning: CaptioningConfig,
    pub decoding: DecodingConfig,
    /// Makes the decoders uploads name.
    pub decoders: DecoderFactory,
    /// The live bundle (`GET /v1/bundle`).
    pub live: Arc<Live>,
    pub uploads: UploadSender,
    /// Per-client budget of votes.
    pub votes: RateLimit,
    /// This run's random key that stands for a voter's address when captioning.vote_addresses is
    /// off: one vote per address still holds, and the log cannot tell the address.
    pub voter_key: std::hash::RandomState,
    /// Per-client budget of uploads (service.uploads_per_minute), if any.
    pub upload_limit: Option<RateLimit>,
    /// Hosts, origins and tokens (access.rs).
    pub access: Arc<Access>,
    /// Ends the event streams, so that the server can drain.
    pub shutdown: Shutdown,
    /// Uploads being decoded at once (MAX_DECODES).
    pub decodes: tokio::sync::Semaphore,
}

/// Uploads decoded at once; each may allocate up to imageio::MAX_ALLOC, and the pipeline captions one
/// image at a time anyway.
pub const MAX_DECODES: usize = 2;

/// Most bytes of a vote's body (`{"decoder": LABEL}`).
const MAX_VOTE_BYTES: usize = 64 * 1024;

impl Api {
    fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.service.body_timeout_ms)
    }
}

type Shared = Arc<Api>;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// 429 with `Retry-After`: a client over its budget.
fn too_many(wait: std::time::Duration, what: &str) -> Response {
    let seconds = wait.as_secs().max(1);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, seconds.to_string())],
        Json(json!({"error": format!("{what}; try again in {seconds} s")})),
    )
        .into_response()
}

/// A request body of at most `limit` bytes that arrives within `deadline`: 413 beyond the limit, 400
/// when its framing is broken (a bad chunk, a body shorter than its Content-Length), 408 when the
/// client stops sending.
async fn read_body(body: Body, limit: usize, deadline: Duration) -> Result<Bytes, (StatusCode, String)> {
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let e = e.into_inner();
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over the {limit} bytes allowed"),
                ))
            } else {
                Err((StatusCode::BAD_REQUEST, format!("could not read the body: {e}")))
            }
        }
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {} ms", deadline.as_millis()),
        )),
    }
}

/// A query parameter given more than once.
#[derive(Debug, thiserror::Error)]
#[error("query parameter `{0}` is given more than once")]
struct Repeated(String);

/// A query's parameters by name.
type Params = HashMap<String, String>;

/// A query's parameters, each at most once: a repeated one is refused (400) rather than one of its
/// values silently chosen.
fn single(pairs: Vec<(String, String)>) -> Result<Params, Repeated> {
    let mut params = HashMap::with_capacity(pairs.len());
    for (key, value) in pairs {
        if params.contains_key(&key) {
            return Err(Repeated(key));
        }
        params.insert(key, value);
    }
    Ok(params)
}

pub fn router(api: Api) -> Router {
    let guard = axum::middleware::from_fn_with_state(api.access.clone(), access::guard);
    let cors = cors(&api.service.cors_origins);
    let router = Router::new()
        .route("/", get(page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/caption/latest", get(latest))
        .route("/v1/captions", get(recent))
        .route("/v1/captions/stream", get(stream))
        .route("/v1/frame/latest.jpg", get(frame))
        .route("/v1/sources", get(sources))
        .route("/v1/caption", post(upload))
        .route("/v1/decoders", get(decoders))
        .route("/v1/compare", get(compare))
        .route("/v1/captions/{id}/vote", post(vote))
        .route("/v1/bundle", get(bundle))
        .with_state(Arc::new(api))
        .layer(guard);
    // Outermost, so that a preflight is answered before the guard asks for a token.
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// CORS for `service.cors_origins`; none (no CORS headers at all) when it is empty.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<header::HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    (!origins.is_empty()).then(|| {
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
    })
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn ready(Extract(api): Extract<Shared>) -> Response {
    match api.state.readiness() {
        Ok(()) => Json(json!({"ready": true})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason.to_string()})),
        )
            .into_response(),
    }
}

async fn metrics(Extract(api): Extract<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        api.metrics
            .render(api.state.sources().iter().map(|s| (s.name.as_str(), &*s.status))),
    )
        .into_response()
}

async fn latest(Extract(api): Extract<Shared>) -> Response {
    match api.state.latest() {
        Some(event) => Json(event).into_response(),
        None => error(StatusCode::NOT_FOUND, "no caption yet"),
    }
}

async fn recent(Extract(api): Extract<Shared>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let q = match single(q) {
        Ok(q) => q,
        Err(repeated) => return error(StatusCode::BAD_REQUEST, repeated.to_string()),
    };
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => api.service.history,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => return error(StatusCode::BAD_REQUEST, "limit must be a positive integer"),
    };
    Json(api.state.recent(limit)).into_response()
}

/// Server-Sent Events: one `caption` event per caption, with the id "RUN:ID", and a `comparison` event
/// (same id) when the decoders were compared on its frame. A client that reconnects with
/// `Last-Event-ID` first gets what it missed from the history: the captions after that id (with
/// their comparisons attached), or all of them if the daemon restarted since (a new run).
async fn stream(
    Extract(api): Extract<Shared>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let state = &api.state;
    let live = BroadcastStream::new(state.subscribe()); // before reading the history: nothing falls between
    let seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok()?.split_once(':'))
        .and_then(|(run, id)| Some((run.parse::<u64>().ok()?, id.parse::<u64>().ok()?)));
    let missed: Vec<Arc<CaptionEvent>> = match seen {
        None => Vec::new(),
        Some((run, id)) => {
            let after = if run == state.run() { id } else { 0 };
            let mut missed: Vec<_> = state.recent(usize::MAX).into_iter().filter(|e| e.id > after).collect();
            missed.reverse();
            missed
        }
    };
    let replayed = missed.last().map_or(0, |e| e.id);
    // A client too slow to keep up skips captions (Lagged) rather than stalling the others.
    let live = live.filter_map(move |e| async move {
        e.ok().filter(|e| match e {
            Published::Caption(c) => c.id > replayed,
            Published::Comparison(c) => c.id > replayed,
        })
    });
    let run = state.run();
    let events = futures_util::stream::iter(missed.into_iter().map(Published::Caption))
        .chain(live)
        .filter_map(move |published| async move {
            // The event and id lines come before the data, as a reader expects them.
            let (name, id) = match &published {
                Published::Caption(c) => ("caption", c.id),
                Published::Comparison(c) => ("comparison", c.id),
            };
            let event = Event::default().event(name).id(format!("{run}:{id}"));
            let event = match &published {
                Published::Caption(c) => event.json_data(&**c),
                Published::Comparison(c) => event.json_data(&**c),
            };
            Some(Ok(event.ok()?))
        });
    let shutdown = api.shutdown.clone();
    let stop = async move { shutdown.wait().await };
    Sse::new(events.take_until(stop)).keep_alive(KeepAlive::default())
}

/// Each source: its name, kind, readiness (with the reason when not ready), whether it delivers,
/// seconds since its last frame, and its last error.
async fn sources(Extract(api): Extract<Shared>) -> Response {
    let list: Vec<Value> = api
        .state
        .sources()
        .iter()
        .map(|s| {
            let ready = s.kind.readiness(&s.status);
            json!({
                "name": s.name,
                "kind": s.label,
                "ready": ready.is_ok(),
                "reason": ready.err().map(|r| r.to_string()),
                "up": s.status.is_up(),
                "since_last_frame_s": s.status.since_last_frame(),
                "last_error": s.status.last_error(),
            })
        })
        .collect();
    Json(list).into_response()
}

/// The newest frame of `?source=NAME` (default: the first source) as a JPEG.
async fn frame(Extract(api): Extract<Shared>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let q = match single(q) {
        Ok(q) => q,
        Err(repeated) => return error(StatusCode::BAD_REQUEST, repeated.to_string()),
    };
    let sources = api.state.sources();
    let source = match q.get("source") {
        Some(name) => match sources.iter().find(|s| &s.name == name) {
            Some(s) => s,
            None => return error(StatusCode::NOT_FOUND, format!("no source named {name:?}")),
        },
        None => match sources.first() {
            Some(s) => s,
            None => return error(StatusCode::NOT_FOUND, "no frame yet"),
        },
    };
    let Some(frame) = source.frames.latest() else {
        return error(StatusCode::NOT_FOUND, "no frame yet");
    };
    // The camera's own JPEG when it sent one; anything else is converted and encoded here.
    let encoded = tokio::task::spawn_blocking(move || match &frame.pixels {
        Pixels::Jpeg(jpeg) => Some(jpeg.clone()),
        pixels => imageio::encode_jpeg(&*pixels.to_rgb().ok()?, 85).ok(),
    })
    .await;
    match encoded {
        Ok(Some(jpeg)) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            jpeg,
        )
            .into_response(),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "could not encode the frame"),
    }
}

async fn upload(
    Extract(api): Extract<Shared>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    axum::Extension(client): axum::Extension<Client>,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let q = match single(q) {
        Ok(q) => q,
        Err(repeated) => {
            api.metrics.error(ErrorKind::Upload);
            return error(StatusCode::BAD_REQUEST, repeated.to_string());
        }
    };
    if let Some(Err(wait)) = api.upload_limit.as_ref().map(|limit| limit.take(&client.name)) {
        api.metrics.error(ErrorKind::Upload);
        return too_many(wait, "too many uploads (service.uploads_per_minute)");
    }
    // Held until the answer: a client's uploads in flight, decoding or waiting, are capped.
    let Some(_in_flight) = api.uploads.admit(&client.name) else {
        api.metrics.error(ErrorKind::Upload);
        return too_many(
            Duration::from_secs(1),
            &format!(
                "{} uploads of {} are in flight already (service.uploads_in_flight)",
                api.service.uploads_in_flight, client.name
            ),
        );
    };
    match caption_upload(&api, peer, &client, q.get("decoder"), &headers, body).await {
        Ok(event) => Json(event).into_response(),
        Err((status, message)) => {
            api.metrics.error(ErrorKind::Upload);
            error(status, message)
        }
    }
}

/// The caption event of an uploaded image, or the status and message saying why there is none.
async fn caption_upload(
    api: &Api,
    peer: std::net::SocketAddr,
    client: &Client,
    decoder: Option<&String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Arc<CaptionEvent>, (StatusCode, String)> {
    let received = SystemTime::now();
    let unavailable = |why: &str| (StatusCode::SERVICE_UNAVAILABLE, why.to_string());
    if !api.state.model_ready() {
        return Err(unavailable("loading the model; try again shortly"));
    }
    let limit = api.service.max_upload_bytes;
    // Refuse a declared length before reading anything, so a client that sent `Expect: 100-continue`
    // (curl does for large bodies) gets the answer without uploading; chunked bodies are cut at the limit.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(length) = declared.filter(|&n| n > limit as u64) {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is {length} bytes (uploads are limited to {limit} bytes)"),
        ));
    }
    let body = read_body(body, limit, api.body_timeout()).await?;
    let decoder = decoder
        .map(|name| api.decoders.create_for_upload(name, api.service.upload_max_beams))
        .transpose()
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let budget = api.service.decode_budget();
    let image = {
        // Each decode may take up to service.max_decode_mb: only a few at once.
        let _permit = api.decodes.acquire().await.map_err(|_| unavailable("shutting down"))?;
        tokio::task::spawn_blocking(move || imageio::decode_limited(&body, budget))
            .await
            .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "image decoding failed".to_string()))?
            .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?
    };
    let (reply, answer) = oneshot::channel();
    let job = Upload {
        image,
        decoder,
        client: client.name.clone(),
        origin: peer.to_string(),
        received,
        reply,
    };
    api.uploads.try_send(job).map_err(|e| match e {
        NotQueued::Busy => unavailable("busy: too many uploads waiting"),
        NotQueued::Stopping => unavailable("shutting down"),
    })?;
    match answer.await {
        Ok(result) => result.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(_) => Err(unavailable("shutting down")),
    }
}

async fn decoders(Extract(api): Extract<Shared>) -> Json<Value> {
    Json(json!({
        "decoders": api.decoders.plugins().decoders(),
        "default": api.decoding.decoder,
        "fallback": api.decoding.fallback,
        "compare": api.captioning.compare,
        "configured": api.decoders.configured().collect::<Vec<_>>(),
    }))
}

/// Running statistics of the compared decoders.
async fn compare(Extract(api): Extract<Shared>) -> Json<Value> {
    let c = &api.captioning;
    Json(json!({
        "decoders": api.state.compare_snapshot(),
        "compare": c.compare,
        "compare_every": c.compare_every,
        "compare_per_minute": c.compare_per_minute,
        "votes": c.votes,
    }))
}

#[derive(serde::Deserialize)]
struct VoteRequest {
    decoder: String,
}

/// A person's vote for the best caption of a compared frame: the decoder, among those that captioned it.
async fn vote(
    Extract(api): Extract<Shared>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    axum::Extension(client): axum::Extension<Client>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: Body,
) -> Response {
    let refuse = |status: StatusCode, message: String| {
        api.metrics.error(ErrorKind::Vote);
        error(status, message)
    };
    if !api.captioning.votes {
        return refuse(StatusCode::FORBIDDEN, "votes are off (captioning.votes)".into());
    }
    let Ok(id) = id.parse::<u64>() else {
        return refuse(StatusCode::BAD_REQUEST, format!("caption id {id:?} is not a number"));
    };
    let body = match read_body(body, MAX_VOTE_BYTES, api.body_timeout()).await {
        Ok(body) => body,
        Err((status, message)) => return refuse(status, message),
    };
    let request: VoteRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("expected {{\"decoder\": NAME}}: {e}")),
    };
    let Some(event) = api.state.caption(id) else {
        return refuse(StatusCode::NOT_FOUND, format!("no caption {id} in this run's history"));
    };
    let candidates: Vec<&str> = captioned(&event.caption.decoder, &event.compare).collect();
    if event.compare.is_empty() || !candidates.contains(&request.decoder.as_str()) {
        return refuse(
            StatusCode::BAD_REQUEST,
            if event.compare.is_empty() {
                format!("caption {id} was not compared: there is nothing to vote between")
            } else {
                format!(
                    "decoder {:?} did not caption {id}; its decoders are {}",
                    request.decoder,
                    candidates.join(", ")
                )
            },
        );
    }
    if let Err(wait) = api.votes.take(&client.name) {
        api.metrics.error(ErrorKind::Vote);
        return too_many(wait, &format!("too many votes from {}", client.name));
    }
    // One vote per person and caption: a person is a token, or an address (the client's name).
    let voter = if client.token {
        format!("token:{}", client.name)
    } else if api.captioning.vote_addresses {
        format!("address:{}", client.name)
    } else {
        format!(
            "anonymous:{:016x}",
            std::hash::BuildHasher::hash_one(&api.voter_key, &client.name)
        )
    };
    if !api.state.claim_vote(id, &voter) {
        return refuse(
            StatusCode::CONFLICT,
            format!("{voter} voted for caption {id} already; the first vote counts"),
        );
    }
    api.metrics.vote(&request.decoder);
    let vote = Vote {
        id,
        decoder: request.decoder,
        client: if api.captioning.vote_addresses {
            peer.ip().to_string()
        } else {
            String::new()
        },
        voter,
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    };
    // The log and the MQTT spool write (and sync) files: not on the runtime's threads.
    let state = api.state.clone();
    match tokio::task::spawn_blocking(move || state.record_vote(&vote)).await {
        Ok(()) => Json(json!({"recorded": true})).into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "recording the vote failed"),
    }
}

async fn bundle(Extract(api): Extract<Shared>) -> Json<Value> {
    Json(api.live.describe())
}

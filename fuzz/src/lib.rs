//! The fuzz harnesses: one function per parser of outside input, each taking arbitrary bytes. A
//! harness returns normally when the input is handled (accepted, or refused with an error) and panics
//! when it finds a defect: a panic in clipcap itself, or a broken property it checks on the result.
//! src/bin/ holds their AFL++ entry points (scripts/fuzz.sh runs them); tests/corpus.rs replays every
//! committed input through them under `cargo test`.
//!
//! The HTTP harnesses (`http`, `last_event_id`) drive the daemon's router in the process on the demo
//! bundle, with the captioning thread and the release build's decoder plugins, as `serve` runs them
//! but without a socket.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use clipcap::config::Config;
use clipcap::service::Offline;
use clipcap::source::{Layout, Pixels};
use clipcap_core::bundle::Bundle;
use clipcap_core::decoding::DecoderRequest;
use clipcap_core::imageio::{self, Budget};
use clipcap_core::metrics::coco;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// The repository: the demo bundle, the release build's plugins and ONNX Runtime are found from it.
fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A scratch file of this process that a harness rewrites with each input (parsers that read files).
fn scratch(name: &str, data: &[u8]) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let path = DIR
        .get_or_init(|| tempfile::tempdir().expect("a scratch folder"))
        .path()
        .join(name);
    let mut file = std::fs::File::create(&path).expect("a scratch file");
    file.write_all(data).expect("scratch written");
    path
}

/// A bundle manifest (manifest.toml), read and validated as `Bundle::open` does.
pub fn manifest(data: &[u8]) {
    let path = scratch("manifest.toml", data);
    let _ = Bundle::open(path.parent().unwrap());
}

/// A configuration file, then after the first NUL byte `CLIPCAP__*` variables, one `NAME=VALUE` a
/// line: loaded and validated as the daemon loads its configuration.
pub fn config(data: &[u8]) {
    let (file, variables) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let environment = String::from_utf8_lossy(variables)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let path = scratch("config.toml", file);
    if let Ok(config) = Config::load_with(Some(&path), Some(environment)) {
        // What `serve` derives from a loaded configuration must not fail on it either.
        let _ = config.plugin_options();
    }
}

/// What an image may take in `image` (as service.max_image_pixels and max_decode_mb set it for the
/// daemon's; smaller here, so that the fuzzer reaches the bounds).
const BUDGET: Budget = Budget {
    pixels: 4 << 20,
    memory: 16 << 20,
};

/// An image file (any format the daemon accepts), decoded within the limits of an upload: what is
/// accepted has pixels, no more than the budget allows, and fits its memory as RGB8.
pub fn image(data: &[u8]) {
    if let Ok(image) = imageio::decode_limited(data, BUDGET) {
        let pixels = u64::from(image.width()) * u64::from(image.height());
        assert!(
            pixels > 0 && pixels <= BUDGET.pixels && pixels * 3 <= BUDGET.memory,
            "{}x{} decoded",
            image.width(),
            image.height()
        );
    }
}

/// A frame: a layout byte (0 YUYV, 1 UYVY, 2 RGB, 3 BGR, 4 RGBA, 5 BGRA, 6 mono, else MJPEG), width, height and stride as
/// little-endian u16, then the frame's bytes; converted to RGB as the capture thread does.
pub fn frame(data: &[u8]) {
    let Some((head, bytes)) = data.split_first_chunk::<7>() else {
        return;
    };
    let u16_at = |i: usize| u32::from(u16::from_le_bytes([head[i], head[i + 1]]));
    let (width, height, stride) = (u16_at(1), u16_at(3), u16_at(5));
    let data = bytes.to_vec();
    let layout = [
        Layout::Yuyv,
        Layout::Uyvy,
        Layout::Rgb,
        Layout::Bgr,
        Layout::Rgba,
        Layout::Bgra,
        Layout::Mono,
    ];
    let pixels = match layout.get(head[0] as usize) {
        Some(&layout) => Pixels::Raw {
            layout,
            data,
            width,
            height,
            stride,
        },
        None => Pixels::Jpeg(data),
    };
    if let Ok(rgb) = pixels.to_rgb()
        && !matches!(pixels, Pixels::Jpeg(_))
    {
        assert_eq!((rgb.width(), rgb.height()), (width, height), "converted size");
    }
}

/// A decoder specification (`name:key=value,...`, from a query string or the command line). One
/// that parses has a canonical label that parses to the same request.
pub fn decoder_spec(data: &[u8]) {
    let Ok(spec) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(request) = DecoderRequest::parse(spec) {
        let again = DecoderRequest::parse(&request.label)
            .unwrap_or_else(|e| panic!("label {:?} of {spec:?} does not parse: {e}", request.label));
        assert_eq!(again, request, "the label of {spec:?} is not canonical");
    }
}

/// A caption log, read as `clipcap report` reads it, and reported on when it is one, grouped by
/// source, bundle or decoder as its length says.
pub fn caption_log(data: &[u8]) {
    use clipcap::report::{GroupBy, Options};
    let path = scratch("captions.jsonl", data);
    if let Ok(logs) = clipcap::report::read(&[path]) {
        let options = Options {
            draws: 20,
            seed: 0,
            group_by: Some([GroupBy::Source, GroupBy::Bundle, GroupBy::Decoder][data.len() % 3]),
            frames: None,
        };
        let _ = clipcap::report::report(&logs, &options);
    }
}

/// A COCO file: annotations when the first byte is even, results otherwise (`clipcap eval`).
pub fn coco(data: &[u8]) {
    let Some((kind, json)) = data.split_first() else {
        return;
    };
    let path = scratch("coco.json", json);
    if kind % 2 == 0 {
        let _ = coco::read_annotations(&path);
    } else {
        let _ = coco::read_results(&path);
    }
}

/// A daemon of the HTTP harnesses, started once per process and harness, with the captions uploaded
/// at start.
struct Daemon {
    runtime: tokio::runtime::Runtime,
    /// In a mutex only to be shareable (its captioning thread's handle is not `Sync`).
    offline: Mutex<Offline>,
    /// The daemon's run (the first half of an event id).
    run: u64,
}

/// Demo images uploaded when the daemon starts: the history a `Last-Event-ID` resumes from.
const HISTORY: u64 = 3;

/// The `http` harness's daemon.
static HTTP: OnceLock<Daemon> = OnceLock::new();
/// The `last_event_id` harness's own daemon: the `http` harness's uploads would lengthen the history it
/// replays (fuzz/tests/corpus.rs runs both harnesses at once in one process).
static REPLAY: OnceLock<Daemon> = OnceLock::new();

fn daemon(cell: &'static OnceLock<Daemon>) -> &'static Daemon {
    cell.get_or_init(|| {
        let repo = repo();
        let release = repo.join("target/release");
        let environment = BTreeMap::from([
            ("source.kind", "none".to_string()),
            ("service.caption_log", String::new()),
            ("service.uploads_per_minute", "0".into()),
            ("service.cors_origins", "http://a.example".into()),
            ("captioning.votes", "true".into()),
            ("plugins.directories", release.join("plugins").display().to_string()),
            // As in tests/common: the checkout may live in a world-writable folder such as /tmp,
            // whose plugins the ownership and mode checks would refuse.
            ("plugins.allow_insecure", "true".into()),
            (
                "runtime.onnxruntime_library",
                repo.join(".cache/onnxruntime/libonnxruntime.so").display().to_string(),
            ),
        ])
        .into_iter()
        .map(|(key, value)| (format!("CLIPCAP__{}", key.replace('.', "__").to_uppercase()), value))
        .collect();
        let config = Config::load_with(None, Some(environment)).expect("the harness's configuration");
        let mut plugins = config.plugin_options();
        plugins.isolation.program = release.join("clipcap");
        let offline = Offline::start(&config, &repo.join("demo/bundle"), &plugins)
            .unwrap_or_else(|e| panic!("the demo daemon does not start (scripts/setup.sh run?): {e:#}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut daemon = Daemon {
            runtime,
            offline: Mutex::new(offline),
            run: 0,
        };
        for n in 0..HISTORY {
            let image = std::fs::read(repo.join(format!("demo/images/0820{n}.png"))).unwrap();
            let (status, body) = daemon.send(request(Method::POST, "/v1/caption", &[], image));
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        }
        // A run that is not the daemon's replays the whole history, each id saying the run.
        let (_, replay) = daemon.send(request(
            Method::GET,
            "/v1/captions/stream",
            &[("last-event-id", "0:0")],
            vec![],
        ));
        daemon.run = event_ids(&replay).first().expect("the history replayed").0;
        daemon
    })
}

impl Daemon {
    /// The response's status and the body it has ready: all of it, or of an event stream the events
    /// available at once (the replayed history; the live ones never end).
    fn send(&self, request: Request<Body>) -> (StatusCode, Vec<u8>) {
        let router = self.offline.lock().unwrap().router.clone();
        let response = self
            .runtime
            .block_on(router.oneshot(request))
            .expect("the router is infallible");
        let status = response.status();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        let _context = self.runtime.enter();
        loop {
            let frame = match body.frame().now_or_never() {
                Some(Some(Ok(frame))) => frame,
                Some(Some(Err(e))) => panic!("body of a {status} response failed: {e}"),
                Some(None) | None => break,
            };
            if let Some(data) = frame.data_ref() {
                bytes.extend_from_slice(data);
            }
        }
        (status, bytes)
    }
}

/// A request from loopback to the daemon's default host, with `headers` and `body`.
fn request(method: Method, uri: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "127.0.0.1:8080")
        .extension(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 40000))));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(body)).expect("a valid request")
}

/// The `id: RUN:ID` lines of an event stream.
fn event_ids(stream: &[u8]) -> Vec<(u64, u64)> {
    String::from_utf8_lossy(stream)
        .lines()
        .filter_map(|line| line.strip_prefix("id: ")?.split_once(':'))
        .map(|(run, id)| (run.parse().expect("run"), id.parse().expect("id")))
        .collect()
}

/// A request to the daemon, written as HTTP/1.1 writes one: `METHOD TARGET`, header lines, an empty
/// line, the body (lines end in "\n"; a line that is no header is skipped). Nothing the router
/// answers may be a server error other than 503 (busy), and an accepted upload returns a caption.
pub fn http(data: &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(end) => (&data[..end], &data[end + 2..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let (method, target) = lines.next().unwrap_or_default().split_once(' ').unwrap_or(("GET", "/"));
    let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
    let target = target.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    let mut request = request(method.clone(), "/", &[], body.to_vec());
    *request.uri_mut() = target.clone();
    for (name, value) in lines.filter_map(|line| line.split_once(':')) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            request.headers_mut().insert(name, value);
        }
    }
    let (status, body) = daemon(&HTTP).send(request);
    assert!(
        !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
        "{status} for {method} {target}: {}",
        String::from_utf8_lossy(&body)
    );
    if method == Method::POST && target.path() == "/v1/caption" && status == StatusCode::OK {
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("\"caption\""),
            "an accepted upload without a caption: {text}"
        );
    }
}

/// A `Last-Event-ID` header ("{run}" in it stands for the daemon's run) on the event stream: the
/// captions replayed are those after the id when it names the daemon's run, all of them when it names
/// another run, none when it is no event id; in order, each once.
pub fn last_event_id(data: &[u8]) {
    let daemon = daemon(&REPLAY);
    let text = String::from_utf8_lossy(data).replace("{run}", &daemon.run.to_string());
    let Ok(value) = HeaderValue::from_str(&text) else {
        return;
    };
    let mut request = request(Method::GET, "/v1/captions/stream", &[], vec![]);
    request.headers_mut().insert("last-event-id", value);
    let (status, body) = daemon.send(request);
    assert_eq!(status, StatusCode::OK);
    let replayed: Vec<u64> = event_ids(&body).into_iter().map(|(_, id)| id).collect();
    let after = match text
        .split_once(':')
        .map(|(run, id)| (run.parse::<u64>(), id.parse::<u64>()))
    {
        Some((Ok(run), Ok(id))) => Some(if run == daemon.run { id } else { 0 }),
        _ => None,
    };
    let expected: Vec<u64> = match after {
        Some(after) => (after.saturating_add(1)..=HISTORY).collect(),
        None => Vec::new(),
    };
    assert_eq!(replayed, expected, "replayed after Last-Event-ID {text:?}");
}

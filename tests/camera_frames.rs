//! A camera that sends corrupt MJPEG frames. The daemon runs in this process (service::Offline on the
//! demo bundle, with the release build's decoders) and its source slot gets frames as the V4L2 thread
//! puts an MJPEG camera's: the JPEG bytes as the driver handed them over. vivid, the kernel's virtual
//! camera that tests/vivid.rs drives, has no MJPEG format, hence this test of the same path.

mod common;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use clipcap::config::Config;
use clipcap::service::Offline;
use clipcap::source::{Origin, Pixels, SourceLabel};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Where the V4L2 thread says a camera's frame comes from.
fn camera() -> Origin {
    Origin {
        source: SourceLabel::Camera,
        name: "/dev/video0".into(),
        header: None,
    }
}

/// The daemon's answer to a request from loopback: status and body.
fn send(daemon: &Offline, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "127.0.0.1:8080")
        .extension(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 40000))))
        .body(Body::from(body))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = daemon.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    })
}

fn source_errors(daemon: &Offline) -> f64 {
    let (_, metrics) = send(daemon, Method::GET, "/metrics", vec![]);
    common::metric(&metrics, "clipcap_errors_total{kind=\"source\"}")
}

fn jpeg(image: &image::RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(image)
        .unwrap();
    bytes
}

#[test]
fn corrupt_mjpeg_frames_are_counted_and_the_camera_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let environment = [
        ("SOURCE__KIND", "v4l2".to_string()),
        (
            "SERVICE__CAPTION_LOG",
            dir.path().join("captions.jsonl").display().to_string(),
        ),
        ("CAPTIONING__INTERVAL_MS", "100".into()),
        (
            "RUNTIME__ONNXRUNTIME_LIBRARY",
            std::env::var("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH (set in .cargo/config.toml)"),
        ),
    ]
    .into_iter()
    .map(|(key, value)| (format!("CLIPCAP__{key}"), value))
    .collect();
    let config = Config::load_with(None, Some(environment)).unwrap();
    let plugins = common::options(vec![common::plugin_dir()], true);
    let daemon = Offline::start(&config, &root.join("demo/bundle"), &plugins).unwrap();

    let photo = image::open(common::demo_image("08200.png")).unwrap().to_rgb8();
    let good = jpeg(&photo);
    // A frame whose header claims the camera's 640x480 but whose data is a 64x64 image's.
    let mut lying = jpeg(&image::imageops::crop_imm(&photo, 0, 0, 64, 64).to_image());
    let sof = lying
        .windows(2)
        .position(|m| m == [0xff, 0xc0])
        .expect("a baseline JPEG");
    lying[sof + 5..sof + 9].copy_from_slice(&[0x01, 0xe0, 0x02, 0x80]);
    let corrupt = [
        ("cut off in the middle", good[..good.len() / 3].to_vec()),
        (
            "noise after the start marker",
            [&[0xff, 0xd8][..], &[0x5a; 4096]].concat(),
        ),
        ("a header that lies about the size", lying),
        ("no bytes", vec![]),
    ];
    for (n, (what, frame)) in corrupt.into_iter().enumerate() {
        daemon.frames.put(Pixels::Jpeg(frame), camera());
        let counted = || source_errors(&daemon) == (n + 1) as f64;
        common::poll(&format!("frame {what} counted"), counted, String::new);
    }
    let (status, _) = send(&daemon, Method::GET, "/v1/caption/latest", vec![]);
    assert_eq!(status, StatusCode::NOT_FOUND, "a corrupt frame was captioned");

    // The next good frame is captioned, as an upload of the same JPEG is.
    daemon.frames.put(Pixels::Jpeg(good.clone()), camera());
    let mut latest = serde_json::Value::Null;
    let captioned = || {
        let (status, body) = send(&daemon, Method::GET, "/v1/caption/latest", vec![]);
        latest = serde_json::from_str(&body).unwrap_or_default();
        status == StatusCode::OK
    };
    common::poll("the good frame captioned", captioned, String::new);
    let (status, body) = send(&daemon, Method::POST, "/v1/caption", good);
    assert_eq!(status, StatusCode::OK, "{body}");
    let upload: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(latest["source"], "camera");
    assert_eq!(latest["origin"], "/dev/video0");
    assert_eq!(latest["caption"], upload["caption"]);
    assert_eq!(source_errors(&daemon), 4.0, "the good frame is no error");
}

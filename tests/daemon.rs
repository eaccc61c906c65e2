//! `clipcap serve` as systemd runs it: the real binary with a watched folder and the demo bundle,
//! driven over HTTP (latest, history, SSE, upload, frame, metrics), fed bad input, and stopped with
//! SIGTERM, while a NOTIFY_SOCKET owned by the test records READY, WATCHDOG and STOPPING.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use common::{Daemon, demo_image, metric, truth};
use serde_json::{Value, json};

/// The value of the next `field:` line of a Server-Sent Events stream.
fn sse_field(lines: &mut impl Iterator<Item = std::io::Result<String>>, field: &str) -> String {
    let prefix = format!("{field}:");
    let line = lines.map(|l| l.unwrap()).find(|l| l.starts_with(&prefix)).unwrap();
    line[prefix.len()..].trim().to_string()
}

fn post(daemon: &Daemon, query: &str, body: Vec<u8>) -> (u16, Value) {
    let response = ureq::post(&format!("{}/v1/caption{query}", daemon.url))
        .config()
        .http_status_as_error(false)
        .build()
        .send(&body[..])
        .unwrap();
    let status = response.status().as_u16();
    (status, response.into_body().read_json().unwrap())
}

/// Announces an upload of `length` bytes the way curl does for large bodies (`Expect: 100-continue`)
/// and returns the whole response: the daemon must refuse it before the body is sent.
fn oversized_upload(daemon: &Daemon, length: usize) -> String {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(daemon.url.trim_start_matches("http://")).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        tcp,
        "POST /v1/caption HTTP/1.1\r\nHost: localhost\r\nContent-Length: {length}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn serves_captions_survives_bad_input_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let socket_path = tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let socket_env = socket_path.to_str().unwrap();
    let mut daemon = Daemon::start(
        "max_upload_bytes = 2000000\nmax_image_pixels = 40000000\n[captioning]\ninterval_ms = 100\ncompare = [\"beam:num_beams=2\"]",
        &[("NOTIFY_SOCKET", socket_env), ("WATCHDOG_USEC", "400000")],
    );
    let mut notes = Vec::new();
    let receive = |until: &str, notes: &mut Vec<String>| loop {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification within 60 s");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        notes.push(text.clone());
        if text.contains(until) {
            return text;
        }
    };
    assert!(receive("READY=1", &mut notes).contains("STATUS=serving on"));
    receive("WATCHDOG=1", &mut notes);
    daemon.wait_until(
        || ureq::get(&format!("{}/readyz", daemon.url)).call().is_ok(),
        "readiness",
    );

    // Subscribe to the event stream, then let the folder deliver a frame.
    let stream = ureq::get(&format!("{}/v1/captions/stream", daemon.url)).call().unwrap();
    let mut lines = BufReader::new(stream.into_body().into_reader()).lines();
    daemon.drop_image("08202.png");
    let sse_id = sse_field(&mut lines, "id");
    let event: Value = serde_json::from_str(&sse_field(&mut lines, "data")).unwrap();
    assert_eq!(event["source"], "folder", "{event}");
    assert!(event["origin"].as_str().unwrap().ends_with("08202.png"));
    assert!(
        truth("08202.png").contains(&event["caption"].as_str().unwrap().to_string()),
        "{event}"
    );
    assert_eq!(event["decoder"], "greedy");
    assert!(event["ms"]["total"].as_f64().unwrap() > 0.0);
    // The comparison follows the caption, as its own event with the caption's id.
    assert_eq!(sse_field(&mut lines, "event"), "comparison");
    assert_eq!(sse_field(&mut lines, "id"), sse_id);
    let comparison: Value = serde_json::from_str(&sse_field(&mut lines, "data")).unwrap();
    assert_eq!(comparison["id"], event["id"]);
    assert_eq!(comparison["compare"][0]["decoder"], "beam:num_beams=2");
    assert!(comparison["compare"][0]["ms"].as_f64().unwrap() > 0.0, "{comparison}");
    for clip in [&comparison["clip_score"], &comparison["compare"][0]["clip_score"]] {
        assert!((0.0..=2.5).contains(&clip.as_f64().unwrap()), "{comparison}");
    }
    let latest = daemon.get_json("/v1/caption/latest");
    assert_eq!(latest["id"], event["id"]);
    assert_eq!(
        latest["compare"], comparison["compare"],
        "the comparison is attached to its caption"
    );

    // Upload an image, with a decoder named in the request.
    let (status, uploaded) = post(
        &daemon,
        "?decoder=beam:num_beams=3",
        std::fs::read(demo_image("08209.png")).unwrap(),
    );
    assert_eq!(status, 200, "{uploaded}");
    assert_eq!(
        (uploaded["source"].as_str(), uploaded["decoder"].as_str()),
        (Some("upload"), Some("beam:num_beams=3"))
    );
    assert!(
        truth("08209.png").contains(&uploaded["caption"].as_str().unwrap().to_string()),
        "{uploaded}"
    );
    let history = daemon.get_json("/v1/captions?limit=5");
    assert_eq!(history.as_array().unwrap().len(), 2);
    assert_eq!(history[0]["id"], uploaded["id"], "newest first");
    // A stream client that reconnects gets what it missed: after its last id in this run, or
    // everything kept if the daemon restarted since (another run).
    let resumed = |last: &str| -> Value {
        let stream = ureq::get(&format!("{}/v1/captions/stream", daemon.url))
            .header("Last-Event-ID", last)
            .call()
            .unwrap();
        let mut lines = BufReader::new(stream.into_body().into_reader()).lines();
        serde_json::from_str(&sse_field(&mut lines, "data")).unwrap()
    };
    assert!(sse_id.ends_with(&format!(":{}", event["id"])), "{sse_id}");
    assert_eq!(resumed(&sse_id)["id"], uploaded["id"]);
    assert_eq!(resumed("1:999")["id"], event["id"]);

    // Bad input: each is refused with a clear error, and the daemon keeps serving.
    let jpeg = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/rocket.jpg")).unwrap();
    let mut huge = Vec::new();
    image::GrayImage::new(10_000, 10_000)
        .write_to(&mut std::io::Cursor::new(&mut huge), image::ImageFormat::Png)
        .unwrap();
    for (query, body, want_status, want) in [
        ("", b"definitely not an image".to_vec(), 400, "not an image"),
        ("", jpeg[..jpeg.len() / 2].to_vec(), 400, "cannot decode JPEG"),
        (
            "",
            huge,
            400,
            "10000x10000 = 100000000 pixels, more than the 40000000 allowed",
        ),
        (
            "?decoder=nucleus",
            std::fs::read(demo_image("08200.png")).unwrap(),
            400,
            "available: ",
        ),
        (
            "?decoder=beam:num_beams=0",
            std::fs::read(demo_image("08200.png")).unwrap(),
            400,
            "out of range [1, 64]",
        ),
    ] {
        let (status, body) = post(&daemon, query, body);
        let error = body["error"].as_str().unwrap_or_default();
        assert_eq!(status, want_status, "{query}: {body}");
        assert!(error.contains(want), "{query}: {error}");
    }
    let too_big = oversized_upload(&daemon, 3_000_000);
    assert!(too_big.starts_with("HTTP/1.1 413"), "{too_big}");
    assert!(too_big.contains("uploads are limited to 2000000 bytes"), "{too_big}");
    let (status, _) = post(&daemon, "", std::fs::read(demo_image("08211.png")).unwrap());
    assert_eq!(status, 200, "still serving after bad input");

    let frame = ureq::get(&format!("{}/v1/frame/latest.jpg", daemon.url))
        .call()
        .unwrap();
    assert_eq!(frame.headers()["content-type"], "image/jpeg");
    let frame = image::load_from_memory(&frame.into_body().read_to_vec().unwrap()).unwrap();
    assert_eq!((frame.width(), frame.height()), (224, 224));
    let bundle = daemon.get_json("/v1/bundle");
    assert!(
        bundle["manifest"]["provenance"]["evaluation"]["scores"]["bleu4"]
            .as_f64()
            .unwrap()
            > 0.6
    );
    let decoders = daemon.get_json("/v1/decoders");
    assert_eq!(decoders["default"], "greedy");
    assert!(
        decoders["decoders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "magic")
    );

    let metrics = daemon.metrics();
    assert_eq!(metric(&metrics, "clipcap_captions_total{source=\"folder\"}"), 1.0);
    assert_eq!(metric(&metrics, "clipcap_captions_total{source=\"upload\"}"), 2.0);
    assert_eq!(metric(&metrics, "clipcap_errors_total{kind=\"upload\"}"), 6.0);
    assert_eq!(
        metric(&metrics, "clipcap_frames_captured_total{source=\"folder\"}"),
        1.0
    );
    assert_eq!(metric(&metrics, "clipcap_source_up{source=\"folder\"}"), 1.0);
    assert_eq!(metric(&metrics, "clipcap_stage_seconds_count{stage=\"encode\"}"), 3.0);
    assert!(metrics.contains("clipcap_decoder_seconds_bucket{decoder=\"beam:num_beams=3\""));
    assert_eq!(
        metric(&metrics, "clipcap_decoder_seconds_count{decoder=\"beam:num_beams=2\"}"),
        1.0,
        "comparisons are timed"
    );

    let log_path = daemon.dir.path().join("captions.jsonl");
    let status = daemon.terminate();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    receive("STOPPING=1", &mut notes);
    assert!(notes.iter().filter(|n| n.contains("WATCHDOG=1")).count() >= 1);
    let logged: Vec<Value> = std::fs::read_to_string(&log_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = logged.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["caption", "comparison", "caption", "caption"],
        "every caption is in the log"
    );
    assert_eq!(logged[2]["id"], uploaded["id"]);
    assert!(logged.iter().all(|l| l["run"] == logged[0]["run"]));
}

#[test]
fn latest_frame_wins_and_unchanged_scenes_are_skipped() {
    let daemon = Daemon::start("[captioning]\ninterval_ms = 5000\nscene_change = 0.02", &[]);
    // The first frame is captioned at once; the next caption is due 5 s later. Four frames written
    // meanwhile (in a few milliseconds; read within a poll and the 150 ms settle time) replace each
    // other in the slot, and only the newest is captioned when the caption is due.
    daemon.drop_image("08200.png");
    daemon.wait_until(|| daemon.logged().len() == 1, "the first caption");
    for name in ["08201.png", "08203.png", "08204.png", "08205.png"] {
        daemon.drop_image(name);
    }
    daemon.wait_until(|| daemon.logged().len() == 2, "the second caption");
    assert!(origins(&daemon.logged())[1] == "08205.png", "{:?}", daemon.logged());
    // Every frame is accounted for: captured = captioned + dropped, so none is left waiting to be
    // captioned late.
    let m = daemon.metrics();
    assert_eq!(
        metric(&m, "clipcap_frames_captured_total{source=\"folder\"}"),
        5.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "clipcap_frames_dropped_total{source=\"folder\"}"),
        3.0,
        "{m}"
    );
    // The same picture again is an unchanged scene: skipped, counted.
    daemon.drop_image_as("08205.png", "again.png");
    daemon.wait_until(
        || metric(&daemon.metrics(), "clipcap_frames_skipped_total{source=\"folder\"}") == 1.0,
        "a skipped frame",
    );
    let m = daemon.metrics();
    assert_eq!(metric(&m, "clipcap_frames_captured_total{source=\"folder\"}"), 6.0);
    assert_eq!(
        metric(&m, "clipcap_frames_dropped_total{source=\"folder\"}"),
        3.0,
        "{m}"
    );
    assert_eq!(daemon.logged().len(), 2);
    assert_eq!(daemon.get_json("/v1/captions").as_array().unwrap().len(), 2);
}

#[test]
fn a_missing_camera_is_reported_and_the_api_keeps_serving() {
    let daemon = Daemon::start(
        "[source]\nkind = \"v4l2\"\ndevice = \"/dev/video-missing\"\nreconnect_min_ms = 100\nreconnect_max_ms = 400",
        &[],
    );
    let readyz = || {
        let ready = ureq::get(&format!("{}/readyz", daemon.url))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap();
        (ready.status().as_u16(), ready.into_body().read_json::<Value>().unwrap())
    };
    // First "loading the model" (the API serves while the models load), then the camera's problem.
    daemon.wait_until(|| readyz().1["reason"] != "loading the model", "the model to load");
    let (status, reason) = readyz();
    assert_eq!(status, 503);
    assert!(
        reason["reason"].as_str().unwrap().contains("/dev/video-missing"),
        "{reason}"
    );
    daemon.wait_until(
        || metric(&daemon.metrics(), "clipcap_errors_total{kind=\"source\"}") >= 3.0,
        "retries with backoff",
    );
    assert_eq!(metric(&daemon.metrics(), "clipcap_source_up{source=\"camera\"}"), 0.0);
    let (status, event) = post(&daemon, "", std::fs::read(demo_image("08202.png")).unwrap());
    assert_eq!(
        (status, event["source"].as_str()),
        (200, Some("upload")),
        "uploads still work"
    );
    assert!(daemon.stderr().contains("camera /dev/video-missing: cannot open"));
}

#[test]
fn a_model_that_cannot_load_stops_the_daemon_with_the_reason() {
    // The API comes up while the models load; a broken graph must end the process (systemd then
    // restarts it, Restart=on-failure), naming the file, without ever announcing READY.
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/bundle")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, bundle.join(path.file_name().unwrap())).unwrap();
    }
    let lm = std::fs::read(bundle.join("lm.onnx")).unwrap();
    std::fs::write(bundle.join("lm.onnx"), &lm[..lm.len() / 3]).unwrap();
    let socket_path = tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clipcap"))
        .args(["serve", "--bundle", bundle.to_str().unwrap()])
        .env("CLIPCAP__SERVICE__LISTEN", format!("127.0.0.1:{}", common::free_port()))
        .env("CLIPCAP__SOURCE__KIND", "none")
        .env("CLIPCAP__PLUGINS__DIRECTORIES", common::plugin_dir())
        .env("CLIPCAP__PLUGINS__ALLOW_INSECURE", "true")
        .env("NOTIFY_SOCKET", &socket_path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot load the models") && err.contains("lm.onnx"),
        "{err}"
    );
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a STOPPING notification");
    let note = String::from_utf8_lossy(&buf[..n]);
    assert!(note.contains("STOPPING=1") && !note.contains("READY=1"), "{note}");
}

#[test]
fn a_folder_camera_reads_what_appears_after_start_and_not_what_was_there() {
    // A file there before the daemon starts is never read; one written right after it answers
    // (while the models may still be loading) always is.
    let daemon = Daemon::start_with("", &[], |dir| {
        std::fs::copy(demo_image("08200.png"), dir.join("in/old.png")).unwrap();
    });
    daemon.drop_image("08202.png");
    daemon.wait_until(|| daemon.logged().len() == 1, "a caption");
    // The scan that found the new file listed the old one too, long settled.
    let m = daemon.metrics();
    assert_eq!(
        metric(&m, "clipcap_frames_captured_total{source=\"folder\"}"),
        1.0,
        "{m}"
    );
    assert!(daemon.logged()[0]["origin"].as_str().unwrap().ends_with("08202.png"));
}

/// Copies the demo image `name` to `path` with the modification time `age_s` seconds ago.
fn aged_copy(name: &str, path: &Path, age_s: u64) {
    std::fs::copy(demo_image(name), path).unwrap();
    let time = std::time::SystemTime::now() - Duration::from_secs(age_s);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(time)
        .unwrap();
}

fn origins(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let origin = Path::new(e["origin"].as_str().unwrap());
            origin.file_name().unwrap().to_string_lossy().into_owned()
        })
        .collect()
}

#[test]
fn a_folder_queue_captions_every_file_once_oldest_first_across_a_restart() {
    // 30 images already waiting, oldest first in the reverse of their names' order, and one broken
    // file among them. The cadence (a minute) and the scene rule (2.0 skips every frame of a camera)
    // must not hold back a queue; beam search makes each caption slow enough to stop the daemon in
    // the middle.
    let names: Vec<String> = (0..30).map(|i| format!("q{i:02}.png")).collect();
    let demo: Vec<String> = (0..12).map(|i| format!("082{i:02}.png")).collect();
    let mut daemon = Daemon::start_with(
        "[captioning]\ninterval_ms = 60000\nscene_change = 2.0\n[decoding]\ndecoder = \"beam:num_beams=4\"\n\
         [source]\nkind = \"folder\"\nfolder = \"{dir}/in\"\nfolder_mode = \"queue\"\n\
         done_folder = \"{dir}/done\"\npoll_ms = 50",
        &[],
        |dir| {
            for (i, name) in names.iter().enumerate() {
                aged_copy(&demo[i % demo.len()], &dir.join("in").join(name), 970 + i as u64);
            }
            std::fs::write(dir.join("in/broken.png"), b"not an image").unwrap();
            let half_way = std::time::SystemTime::now() - Duration::from_secs(985);
            let broken = std::fs::File::options()
                .write(true)
                .open(dir.join("in/broken.png"))
                .unwrap();
            broken.set_modified(half_way).unwrap();
        },
    );
    daemon.wait_until(|| daemon.logged().len() >= 3, "three captions");
    daemon.restart();
    let first_run = daemon.logged().len();
    assert!(
        first_run < 30,
        "the restart came in the middle of the queue ({first_run} done)"
    );
    daemon.wait_until(|| daemon.logged().len() >= 30, "every queued file captioned");

    // A file that arrives later joins the queue.
    daemon.drop_image("08205.png");
    daemon.wait_until(|| daemon.logged().len() >= 31, "the late file");
    let logged = daemon.logged();
    let mut want: Vec<String> = names.iter().rev().cloned().collect();
    want.push("08205.png".into());
    assert_eq!(origins(&logged), want, "each file once, oldest first");
    // Copies of one picture, captioned in either run, get the same caption.
    let mut by_picture = std::collections::HashMap::new();
    for (event, name) in logged.iter().zip(&names.iter().rev().collect::<Vec<_>>()) {
        let picture = &demo[names.iter().position(|n| n == *name).unwrap() % demo.len()];
        let caption = event["caption"].as_str().unwrap();
        assert_eq!(*by_picture.entry(picture).or_insert(caption), caption, "{name}");
    }
    assert_eq!(
        metric(&daemon.metrics(), "clipcap_frames_skipped_total{source=\"folder\"}"),
        0.0
    );

    // Finished files, the broken one included, were moved out; only the journal stays.
    let listing = |folder: &str| -> Vec<String> {
        let mut files: Vec<String> = std::fs::read_dir(daemon.dir.path().join(folder))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        files
    };
    // A file is moved after its caption is published, so the last move may still be under way.
    daemon.wait_until(
        || listing("in") == [".clipcap-queue.jsonl"],
        "the finished files moved out",
    );
    assert_eq!(listing("done").len(), 32, "{:?}", listing("done"));
    assert!(
        daemon.stderr().contains("broken.png: not an image"),
        "{}",
        daemon.stderr()
    );
}

#[test]
fn a_folder_queue_remembers_finished_files_that_stay() {
    // Without a done folder, the journal alone keeps a restarted daemon from captioning files again.
    let mut daemon = Daemon::start_with(
        "[source]\nkind = \"folder\"\nfolder = \"{dir}/in\"\nfolder_mode = \"queue\"\npoll_ms = 50",
        &[],
        |dir| {
            for (i, name) in ["08200.png", "08201.png", "08202.png"].iter().enumerate() {
                aged_copy(name, &dir.join("in").join(name), 100 - i as u64);
            }
        },
    );
    daemon.wait_until(|| daemon.logged().len() == 3, "three captions");
    daemon.restart();
    daemon.drop_image("08203.png");
    daemon.wait_until(|| daemon.logged().len() >= 4, "the new file");
    assert_eq!(
        origins(&daemon.logged()),
        ["08200.png", "08201.png", "08202.png", "08203.png"]
    );
    let m = daemon.metrics();
    assert_eq!(metric(&m, "clipcap_captions_total{source=\"folder\"}"), 1.0, "{m}");
}

fn vote(daemon: &Daemon, id: &Value, body: &str) -> (u16, Value, Option<String>) {
    let response = ureq::post(&format!("{}/v1/captions/{id}/vote", daemon.url))
        .config()
        .http_status_as_error(false)
        .build()
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let status = response.status().as_u16();
    (status, response.into_body().read_json().unwrap(), retry)
}

#[test]
fn compares_decoders_live_takes_votes_and_reports_them() {
    let mut daemon = Daemon::start(
        "[captioning]\ninterval_ms = 100\ncompare = [\"beam:num_beams=3\", \"sample:top_k=5\"]\nvotes = true\n\
         votes_per_minute = 3",
        &[],
    );
    for (n, name) in ["08200.png", "08203.png", "08208.png"].iter().enumerate() {
        daemon.drop_image(name);
        daemon.wait_until(|| daemon.log_records("comparison").len() == n + 1, "a comparison");
    }
    let stats = daemon.get_json("/v1/compare");
    let decoders = stats["decoders"].as_array().unwrap();
    let names: Vec<&str> = decoders.iter().map(|d| d["decoder"].as_str().unwrap()).collect();
    assert_eq!(names, ["beam:num_beams=3", "greedy", "sample:top_k=5"], "{stats}");
    for d in decoders {
        assert_eq!(d["captions"], 3, "{d}");
        let clip = &d["clip_score"];
        assert!(clip["low"].as_f64() <= clip["mean"].as_f64() && clip["mean"].as_f64() <= clip["high"].as_f64());
        assert!(
            d["ms_p50"].as_f64().unwrap() > 0.0 && d["mean_words"].as_f64().unwrap() > 3.0,
            "{d}"
        );
        assert_eq!(d["primary"], d["decoder"] == "greedy");
        assert_eq!(d["win_rate"].is_null(), d["decoder"] == "greedy", "{d}");
    }
    let m = daemon.metrics();
    assert!(m.contains("clipcap_compare_clip_score{decoder=\"greedy\"}"), "{m}");
    assert!(
        m.contains("clipcap_compare_win_rate{decoder=\"sample:top_k=5\"}"),
        "{m}"
    );
    assert_eq!(
        metric(&m, "clipcap_compare_captions_total{decoder=\"beam:num_beams=3\"}"),
        3.0
    );

    // Votes: for a decoder that captioned the frame; else a clear refusal.
    let captions = daemon.logged();
    let (first, last) = (&captions[0]["id"], &captions[2]["id"]);
    assert_eq!(vote(&daemon, first, r#"{"decoder": "beam:num_beams=3"}"#).0, 200);
    assert_eq!(vote(&daemon, last, r#"{"decoder": "beam:num_beams=3"}"#).0, 200);
    let (status, body, _) = vote(&daemon, first, r#"{"decoder": "magic"}"#);
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("its decoders are greedy, beam:num_beams=3, sample:top_k=5"),
        "{body}"
    );
    let (status, body, _) = vote(&daemon, &json!(999), r#"{"decoder": "greedy"}"#);
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (404, "no caption 999 in this run's history")
    );
    let (status, body, _) = vote(&daemon, first, "greedy");
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("expected {\"decoder\": NAME}"),
        "{body}"
    );
    assert_eq!(vote(&daemon, &captions[1]["id"], r#"{"decoder": "greedy"}"#).0, 200);
    // The fourth accepted vote within a minute is one too many for votes_per_minute = 3.
    let (status, body, retry) = vote(&daemon, last, r#"{"decoder": "greedy"}"#);
    assert_eq!(status, 429, "{body}");
    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
    let m = daemon.metrics();
    assert_eq!(metric(&m, "clipcap_votes_total{decoder=\"beam:num_beams=3\"}"), 2.0);
    assert_eq!(metric(&m, "clipcap_errors_total{kind=\"vote\"}"), 4.0);

    // The log holds the captions, comparisons and votes; `clipcap report` turns them into the table.
    assert_eq!(daemon.terminate().code(), Some(0));
    assert_eq!(daemon.log_records("vote").len(), 3);
    let out = daemon.dir.path().join("report");
    let report = std::process::Command::new(env!("CARGO_BIN_EXE_clipcap"))
        .arg("report")
        .arg(daemon.log_path())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        report.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&report.stderr)
    );
    assert!(text.starts_with("3 captions logged, 3 frames compared"), "{text}");
    for decoder in ["| greedy | 3 |", "| beam:num_beams=3 | 3 |", "| sample:top_k=5 | 3 |"] {
        assert!(text.contains(decoder), "{decoder} in:\n{text}");
    }
    assert!(text.contains("3 votes."), "{text}");
    assert!(text.contains("| greedy | beam:num_beams=3 | 1 | 2 | 33% |"), "{text}");
    for file in [
        "report.md",
        "report.csv",
        "report.json",
        "report-clipscore.svg",
        "report.html",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }

    // A log copied while the daemon wrote it ends in a torn line: skipped with a warning. A broken
    // line anywhere else is an error naming the file and the line.
    let log = std::fs::read_to_string(daemon.log_path()).unwrap();
    let lines = log.lines().count();
    let run_report = |text: &str| {
        let path = daemon.dir.path().join("copied.jsonl");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_clipcap"))
            .arg("report")
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            path,
        )
    };
    let (code, stderr, _) = run_report(&format!("{log}{{\"event\":\"capt"));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("torn last line"), "{stderr}");
    let (code, stderr, path) = run_report(&format!("{log}not json\n{log}"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:{}", path.display(), lines + 1)),
        "{stderr}"
    );
}

#[test]
fn comparisons_are_sampled_and_rate_limited_and_counted() {
    // compare_every = 2 compares captions 1 and 3; compare_per_minute = 1 leaves caption 3 out too.
    let daemon = Daemon::start(
        "[captioning]\ninterval_ms = 100\ncompare = [\"beam:num_beams=2\"]\ncompare_every = 2\ncompare_per_minute = 1",
        &[],
    );
    let decided = |m: &str| {
        let at = |reason: &str| {
            m.lines()
                .find(|l| l.starts_with(&format!("clipcap_compare_skipped_total{{reason=\"{reason}\"}} ")))
                .map_or(0.0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
        };
        (at("sampled"), at("rate"), at("busy"))
    };
    for (n, name) in ["08200.png", "08203.png", "08208.png", "08210.png"].iter().enumerate() {
        daemon.drop_image(name);
        // The next file only once this caption's comparison was decided: no frame waits meanwhile.
        daemon.wait_until(
            || {
                let (sampled, rate, busy) = decided(&daemon.metrics());
                daemon.log_records("comparison").len() + (sampled + rate + busy) as usize == n + 1
            },
            "the comparison decided",
        );
    }
    assert_eq!(daemon.log_records("comparison").len(), 1);
    assert_eq!(decided(&daemon.metrics()), (2.0, 1.0, 0.0));
}

#[test]
fn an_isolated_decoder_that_crashes_costs_one_caption_and_is_counted() {
    // `segv` crashes on every caption, in its own process (isolate = true); the comparison decoder is
    // isolated by default (plugins.isolate_compare) and crashes on the second caption of its process.
    let daemon = Daemon::start(
        "[captioning]\ninterval_ms = 100\ncompare = [\"crash:after=2,kind=0\"]\n\
         [decoding]\nfallback = \"greedy\"\n\
         [decoders.segv]\ndecoder = \"crash\"\nisolate = true\nkind = 0",
        &[("CLIPCAP__PLUGINS__ISOLATE_RESTART_MS", "0")],
    );
    daemon.wait_until(
        || ureq::get(&format!("{}/readyz", daemon.url)).call().is_ok(),
        "readiness",
    );
    let (status, uploaded) = post(
        &daemon,
        "?decoder=segv",
        std::fs::read(demo_image("08209.png")).unwrap(),
    );
    assert_eq!(status, 200, "{uploaded}");
    assert_eq!(uploaded["decoder"], "greedy", "the fallback captions: {uploaded}");
    assert!(truth("08209.png").contains(&uploaded["caption"].as_str().unwrap().to_string()));
    let failed = &uploaded["fallback_from"];
    assert_eq!(
        (failed["decoder"].as_str(), failed["fault"].as_str()),
        (Some("segv"), Some("crashed"))
    );
    assert!(failed["error"].as_str().unwrap().contains("SIGSEGV"), "{failed}");

    for (n, name) in ["08200.png", "08203.png", "08208.png"].iter().enumerate() {
        daemon.drop_image(name);
        daemon.wait_until(|| daemon.log_records("comparison").len() == n + 1, "the comparison");
    }
    let compared: Vec<Value> = daemon
        .log_records("comparison")
        .iter()
        .map(|c| c["compare"][0].clone())
        .collect();
    assert!(
        compared[0]["error"].is_null(),
        "first caption of the process: {}",
        compared[0]
    );
    let error = compared[1]["error"].as_str().unwrap();
    assert!(
        error.contains("decoder `crash:after=2,kind=0`: its process crashed: killed by signal 11"),
        "{error}"
    );
    assert!(compared[2]["error"].is_null(), "restarted: {}", compared[2]);
    // Every source frame still got its caption, and the failures are counted by decoder and fault.
    assert_eq!(daemon.log_records("caption").len(), 4);
    let m = daemon.metrics();
    assert_eq!(
        metric(&m, "clipcap_decoder_failures_total{decoder=\"segv\",fault=\"crashed\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "clipcap_decoder_failures_total{decoder=\"crash:after=2,kind=0\",fault=\"crashed\"}"
        ),
        1.0
    );
    assert!(ureq::get(&format!("{}/readyz", daemon.url)).call().is_ok());
}

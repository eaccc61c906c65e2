//! `clipcap serve` on a real V4L2 driver: Debian's kernel boots in qemu (software emulation) with the
//! vivid virtual camera (tests/vivid/run.sh). The camera is missing when the daemon starts and
//! appears later, then is unplugged (vivid's simulated USB disconnect); the daemon must pick it up
//! each time, caption its frames in YUYV and in RGB24, and stop cleanly on SIGTERM. Then the faults:
//! frames the driver flags corrupt, a stall without an error, and a hundred unplugs at random
//! intervals, some by reloading the driver. vivid draws 75%
//! colour bars, so the frames' colours are known.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

/// The VM's findings: "CLIPCAP-VM <what> <value>" lines from its serial console.
fn boot(dir: &Path) -> HashMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ort = std::env::var("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH (set in .cargo/config.toml)");
    let mut vm = Command::new(root.join("tests/vivid/run.sh"))
        .arg(dir)
        .arg(env!("CARGO_BIN_EXE_clipcap"))
        .arg(common::plugin_dir())
        .arg(root.join("demo/bundle"))
        .arg(ort)
        .stdout(std::fs::File::create(dir.join("console.log")).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = vm.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(1200) {
            let _ = vm.kill();
            panic!("the VM ran for 20 minutes; console:\n{}", console(dir));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "tests/vivid/run.sh failed ({status}); console:\n{}",
        console(dir)
    );
    let mut found = HashMap::new();
    for line in console(dir).lines() {
        if let Some(rest) = line.strip_prefix("CLIPCAP-VM ") {
            let (what, value) = rest.split_once(' ').unwrap_or((rest, ""));
            found
                .entry(what.to_string())
                .or_insert_with(String::new)
                .push_str(value);
        }
    }
    found
}

/// The numbers of a finding of `name=number` words.
fn fields(finding: &str) -> HashMap<&str, u64> {
    finding
        .split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(name, value)| {
            (
                name,
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={value} in {finding:?}")),
            )
        })
        .collect()
}

fn console(dir: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(dir.join("console.log")).unwrap_or_default()).into_owned()
}

/// The value of a metric in "name value name value ..." text.
fn metric(text: &str, name: &str) -> f64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == name)
        .unwrap_or_else(|| panic!("{name} not in {text}"));
    words[at + 1].parse().unwrap()
}

/// Mean colour of each of the eight bars, below vivid's text overlay.
fn bar_colours(frame: &image::RgbImage) -> Vec<[f64; 3]> {
    let (w, h) = frame.dimensions();
    (0..8)
        .map(|bar| {
            let (x0, x1) = (bar * w / 8 + w / 32, (bar + 1) * w / 8 - w / 32);
            let mut sum = [0.0; 3];
            let mut n = 0.0;
            for y in h / 2..h - 8 {
                for x in x0..x1 {
                    let p = frame.get_pixel(x, y);
                    (0..3).for_each(|c| sum[c] += p[c] as f64);
                    n += 1.0;
                }
            }
            sum.map(|s| s / n)
        })
        .collect()
}

#[test]
fn captions_a_v4l2_camera_that_appears_late_and_is_unplugged() {
    let dir = tempfile::tempdir().unwrap();
    let found = boot(dir.path());
    let context = || console(dir.path());
    assert!(!found.contains_key("error"), "{}", context());
    assert_eq!(found.get("done").map(String::as_str), Some(""), "{}", context());
    assert_eq!(found["readyz-before-camera"], "not-ready");

    // White, yellow, cyan, green, magenta, red, blue, black at 75%: 191 of 255.
    let bars = [
        [1, 1, 1],
        [1, 1, 0],
        [0, 1, 1],
        [0, 1, 0],
        [1, 0, 1],
        [1, 0, 0],
        [0, 0, 1],
        [0, 0, 0],
    ];
    let mut frames = Vec::new();
    for format in ["YUYV", "RGB3"] {
        let event: Value = serde_json::from_str(&found[&format!("caption-{format}")]).unwrap();
        assert_eq!(
            (event["source"].as_str(), event["origin"].as_str()),
            (Some("camera"), Some("/dev/video0"))
        );
        let caption = event["caption"].as_str().unwrap();
        assert!(caption.len() > 5 && caption.ends_with('.'), "{format}: {event}");
        assert!(!event["token_ids"].as_array().unwrap().is_empty());
        assert_eq!(found[&format!("exit-{format}")], "0", "exit status after SIGTERM");
        let metrics = &found[&format!("metrics-{format}")];
        assert!(metrics.contains("clipcap_source_up{source=\"camera\"} 1"), "{metrics}");
        assert!(
            !metrics.contains("clipcap_frames_captured_total{source=\"camera\"} 0 "),
            "{metrics}"
        );

        let response = base64::engine::general_purpose::STANDARD
            .decode(&found[&format!("frame-{format}")])
            .unwrap();
        let body = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP response")
            + 4;
        assert!(
            response.starts_with(b"HTTP/1.0 200"),
            "{}",
            String::from_utf8_lossy(&response[..body])
        );
        let frame = image::load_from_memory(&response[body..]).unwrap().to_rgb8();
        assert_eq!(frame.dimensions(), (640, 480), "{format}");
        let colours = bar_colours(&frame);
        for (bar, (got, want)) in colours.iter().zip(bars).enumerate() {
            for c in 0..3 {
                let want = want[c] as f64 * 191.0;
                assert!(
                    (got[c] - want).abs() < 8.0,
                    "{format} bar {bar}: {got:?}, want 75% bars"
                );
            }
        }
        frames.push(colours);
    }
    // Unplugged while streaming: the failure is logged, the camera reopened, and frames flow again.
    let (before, after) = found["unplug-metrics"]
        .trim_start_matches("before: ")
        .split_once(" after: ")
        .unwrap();
    assert_eq!(
        metric(before, "clipcap_source_reconnects_total{source=\"camera\"}"),
        0.0
    );
    assert_eq!(
        metric(after, "clipcap_source_reconnects_total{source=\"camera\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(metric(after, "clipcap_source_up{source=\"camera\"}"), 1.0, "{after}");
    let captured = |m| metric(m, "clipcap_frames_captured_total{source=\"camera\"}");
    assert!(
        captured(after) > captured(before),
        "no frames after the reconnect: {before} / {after}"
    );
    assert!(
        found["log-YUYV"].contains("capture failed: No such device"),
        "{}",
        found["log-YUYV"]
    );

    // Frames the driver flags as corrupt: each dropped and counted, the camera streaming on.
    let flagged = fields(&found["flagged"]);
    assert_eq!(
        (flagged["presses"], flagged["errors"], flagged["reconnects"]),
        (5, 5, 0),
        "{flagged:?}"
    );
    assert!(found["log-YUYV"].contains("frames flagged corrupt by the driver"));
    // A stall without an error: the capture timeout reports it (source down, not ready), then captions
    // resume.
    let stall = fields(&found["stall"]);
    assert!(stall["errors"] >= 1 && stall["up"] == 1, "{stall:?}");
    assert_eq!(found["stall-readyz"], "not-ready");
    assert!(found["log-YUYV"].contains("no frame for a second"));
    // A hundred unplugs at random intervals (every twentieth a driver unbind and module reload):
    // each one reconnected with frames flowing again, a new frame captioned after each reload, and
    // no descriptor leaked.
    let replug = fields(&found["replug"]);
    assert_eq!(
        (replug["unplugs"], replug["reconnects"], replug["captioned"]),
        (100, 100, 5),
        "{replug:?}"
    );
    assert!(replug["fds_after"] <= replug["fds_before"], "{replug:?}");

    // The same pattern through either conversion (JPEG-compressed by the daemon in both cases).
    for (a, b) in frames[0].iter().zip(&frames[1]) {
        assert!((0..3).all(|c| (a[c] - b[c]).abs() < 4.0), "YUYV {a:?} vs RGB24 {b:?}");
    }
}

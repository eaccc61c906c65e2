//! Several named sources in one daemon (`[[sources]]`): each caption says which source it came
//! from on every output, a source that fails holds up no other, and busy sources share the captioning
//! fairly. The real binary, watched folders and the demo bundle.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use common::{Daemon, demo_image, metric};
use serde_json::Value;

/// `[[sources]]` tables: a watched folder `<dir>/NAME` (made before the daemon starts) for each name.
fn folders(names: &[&str], mode: &str) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "[[sources]]\nname = \"{n}\"\nkind = \"folder\"\nfolder = \"{{dir}}/{n}\"\nfolder_mode = \"{mode}\"\npoll_ms = 50\n"
            )
        })
        .collect()
}

fn make_folders(dir: &Path, names: &[&str]) {
    for n in names {
        std::fs::create_dir(dir.join(n)).unwrap();
    }
}

#[test]
fn every_output_names_the_source_of_its_caption() {
    let names = ["front", "rear-left"];
    let daemon = Daemon::start_with(
        &format!("[captioning]\ninterval_ms = 50\n{}", folders(&names, "camera")),
        &[],
        |dir| make_folders(dir, &names),
    );
    daemon.wait_ready();
    let sources = daemon.get_json("/v1/sources");
    let listed: Vec<(&str, &str, bool)> = sources
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["kind"].as_str().unwrap(),
                s["ready"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, [("front", "folder", true), ("rear-left", "folder", true)]);

    let stream = ureq::get(&format!("{}/v1/captions/stream", daemon.url)).call().unwrap();
    let mut lines = BufReader::new(stream.into_body().into_reader()).lines();
    // One frame each, and an upload, all at once.
    daemon.drop_image_into("front", "08202.png", "a.png");
    daemon.drop_image_into("rear-left", "08203.png", "b.png");
    let upload = ureq::post(&format!("{}/v1/caption", daemon.url))
        .send(&std::fs::read(demo_image("08208.png")).unwrap()[..])
        .unwrap()
        .into_body()
        .read_json::<Value>()
        .unwrap();
    assert_eq!(
        (upload["source"].as_str(), upload["kind"].as_str()),
        (Some("upload"), Some("upload"))
    );

    let want: BTreeMap<&str, (&str, &str)> = [
        ("front", ("folder", "08202.png")),
        ("rear-left", ("folder", "08203.png")),
        ("upload", ("upload", "08208.png")),
    ]
    .into();
    let mut streamed = BTreeMap::new();
    while streamed.len() < 3 {
        let line = lines.next().unwrap().unwrap();
        if let Some(data) = line.strip_prefix("data:") {
            let event: Value = serde_json::from_str(data.trim()).unwrap();
            streamed.insert(event["source"].as_str().unwrap().to_string(), event);
        }
    }
    let logged = daemon.log_records("caption");
    for (source, (kind, image)) in &want {
        let truth = common::truth(image);
        for (place, event) in [
            ("stream", streamed.get(*source)),
            ("log", logged.iter().find(|e| e["source"] == *source)),
        ] {
            let event = event.unwrap_or_else(|| panic!("no caption of {source} in the {place}"));
            assert_eq!(event["kind"], *kind, "{place}: {event}");
            assert!(
                truth.contains(&event["caption"].as_str().unwrap().to_string()),
                "{place}: {event}"
            );
        }
    }
    let history = daemon.get_json("/v1/captions");
    let mut sources: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["source"].as_str().unwrap())
        .collect();
    sources.sort();
    assert_eq!(sources, ["front", "rear-left", "upload"]);

    // Each source's newest frame, by name; an unknown name is refused with it.
    let frame = ureq::get(&format!("{}/v1/frame/latest.jpg?source=rear-left", daemon.url))
        .call()
        .unwrap();
    let jpeg = frame.into_body().read_to_vec().unwrap();
    let shown = image::load_from_memory(&jpeg).unwrap().to_rgb8();
    let sent = image::open(demo_image("08203.png")).unwrap().to_rgb8();
    assert_eq!(shown.dimensions(), sent.dimensions());
    let (status, body) = daemon.raw("GET /v1/frame/latest.jpg?source=side HTTP/1.1\r\nHost: {host}", b"");
    assert_eq!(status, 404);
    assert!(body.contains("no source named \\\"side\\\""), "{body}");

    let m = daemon.metrics();
    for source in ["front", "rear-left", "upload"] {
        assert_eq!(
            metric(&m, &format!("clipcap_captions_total{{source=\"{source}\"}}")),
            1.0,
            "{m}"
        );
    }
    for source in ["front", "rear-left"] {
        assert_eq!(
            metric(&m, &format!("clipcap_frames_captured_total{{source=\"{source}\"}}")),
            1.0,
            "{m}"
        );
        assert_eq!(
            metric(&m, &format!("clipcap_source_up{{source=\"{source}\"}}")),
            1.0,
            "{m}"
        );
    }
}

#[test]
fn a_source_that_fails_holds_up_no_other() {
    let daemon = Daemon::start_with(
        "[captioning]\ninterval_ms = 50\n\
         [[sources]]\nname = \"arm\"\nkind = \"v4l2\"\ndevice = \"/dev/video-missing\"\n\
         reconnect_min_ms = 100\nreconnect_max_ms = 400\n\
         [[sources]]\nname = \"door\"\nkind = \"folder\"\nfolder = \"{dir}/door\"\npoll_ms = 50\n",
        &[],
        |dir| make_folders(dir, &["door"]),
    );
    // Not ready, and the reason names the source.
    daemon.wait_until(
        || {
            let (status, body) = daemon.raw("GET /readyz HTTP/1.1\r\nHost: {host}", b"");
            status == 503 && body.contains("source arm:") && body.contains("/dev/video-missing")
        },
        "readiness to name the failed source",
    );
    for (i, image) in ["08200.png", "08203.png", "08208.png"].iter().enumerate() {
        daemon.drop_image_into("door", image, &format!("{i}.png"));
        daemon.wait_until(
            || {
                daemon
                    .log_records("caption")
                    .iter()
                    .filter(|e| e["source"] == "door")
                    .count()
                    == i + 1
            },
            "the folder's caption while the camera is missing",
        );
    }
    let sources = daemon.get_json("/v1/sources");
    assert_eq!(sources[0]["name"], "arm");
    assert_eq!(sources[0]["ready"], false);
    assert!(
        sources[0]["reason"].as_str().unwrap().contains("/dev/video-missing"),
        "{sources}"
    );
    assert_eq!(
        (sources[1]["name"].as_str(), sources[1]["ready"].as_bool()),
        (Some("door"), Some(true))
    );
    let m = daemon.metrics();
    assert_eq!(metric(&m, "clipcap_source_up{source=\"arm\"}"), 0.0, "{m}");
    assert_eq!(metric(&m, "clipcap_captions_total{source=\"door\"}"), 3.0, "{m}");
}

#[test]
fn busy_sources_get_equal_shares_of_the_captions() {
    // Four inboxes with the same image over and over: every source always has work and every caption
    // costs the same. Sources start their captions in turns (within one of each other); a caption
    // may finish after the next one of another source, so when the first source is through, each
    // other has published all but two at most.
    let names = ["a", "b", "c", "d"];
    let files = 6;
    let daemon = Daemon::start_with(
        &format!("[captioning]\ninterval_ms = 1\n{}", folders(&names, "queue")),
        &[],
        |dir| {
            make_folders(dir, &names);
            for n in names {
                for i in 0..files {
                    std::fs::copy(demo_image("08202.png"), dir.join(n).join(format!("{i}.png"))).unwrap();
                }
            }
        },
    );
    daemon.wait_until(
        || daemon.log_records("caption").len() == names.len() * files,
        "every file captioned",
    );
    let order: Vec<String> = daemon
        .log_records("caption")
        .iter()
        .map(|e| e["source"].as_str().unwrap().to_string())
        .collect();
    let mut counts: BTreeMap<&str, usize> = names.iter().map(|n| (*n, 0)).collect();
    for source in &order {
        *counts.get_mut(source.as_str()).unwrap() += 1;
        if counts.values().any(|&c| c == files) {
            break;
        }
    }
    assert!(
        counts.values().all(|&c| c + 2 >= files),
        "when the first source was through: {counts:?} (log order: {order:?})"
    );
}

#[test]
fn clipcap_report_groups_the_comparisons_by_source() {
    let names = ["front", "rear"];
    let daemon = Daemon::start_with(
        &format!(
            "[captioning]\ninterval_ms = 50\ncompare = [\"beam:num_beams=2\"]\n{}",
            folders(&names, "camera")
        ),
        &[],
        |dir| make_folders(dir, &names),
    );
    daemon.wait_ready();
    // One frame at a time: a comparison is skipped while another frame waits.
    let sent = [("front", "08200.png"), ("front", "08203.png"), ("rear", "08202.png")];
    for (i, (source, image)) in sent.iter().enumerate() {
        daemon.drop_image_into(source, image, &format!("{i}.png"));
        daemon.wait_until(|| daemon.log_records("comparison").len() == i + 1, "the frame compared");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clipcap"))
        .args(["report", "--group-by", "source", "--json"])
        .arg(daemon.log_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["captions"].as_u64(), report["compared_frames"].as_u64()),
        (Some(3), Some(3))
    );
    let groups: Vec<(&str, u64, u64)> = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g[0].as_str().unwrap(),
                g[1]["captions"].as_u64().unwrap(),
                g[1]["compared_frames"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut groups = groups;
    groups.sort();
    assert_eq!(groups, [("front", 2, 2), ("rear", 1, 1)]);
}

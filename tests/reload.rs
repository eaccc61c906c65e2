//! Bundles changed while the daemon runs. Swapped (SIGHUP): under a queued folder and a stream of
//! uploads, with signed bundles and plugins, every upload is answered, every file captioned once, each
//! caption names the bundle that made it (the old one, then the new), and a tampered replacement is
//! refused while the live bundle keeps serving. Tried in the shadow: a quantised copy of the demo
//! bundle captions the compared frames, and `clipcap report` compares the two bundles.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::{Daemon, copy_dir, demo_image, keypair, metric, plugin_dir, quantise, sign, signed_plugins, tiny_bundle};
use serde_json::Value;

/// Sends SIGHUP to the daemon.
fn hangup(daemon: &Daemon) {
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) }, 0);
}

/// Points the daemon's configuration at `bundle`.
fn configure(daemon: &Daemon, from: &Path, to: &Path) {
    let file = daemon.dir.path().join("clipcap.toml");
    let config = std::fs::read_to_string(&file).unwrap();
    let (from, to) = (format!("bundle = {from:?}"), format!("bundle = {to:?}"));
    assert!(config.contains(&from), "{config}");
    std::fs::write(&file, config.replace(&from, &to)).unwrap();
}

fn bundle_name(event: &Value) -> String {
    event["bundle"]["name"].as_str().unwrap_or_default().to_string()
}

/// The names in `names`, each repeat dropped: `[a, a, b]` is `[a, b]`.
fn runs(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        if out.last() != Some(&name) {
            out.push(name);
        }
    }
    out
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_reload_swaps_the_bundle_between_captions_and_a_tampered_one_is_refused() {
    let files: Vec<String> = (0..40).map(|i| format!("q{i:02}.png")).collect();
    let demo: Vec<PathBuf> = (0..12).map(|i| demo_image(&format!("082{i:02}.png"))).collect();
    let [old, new, tampered] = ["model-a", "model-b", "model-c"];
    let daemon = Daemon::start_with(
        "[captioning]\nupload_concurrency = 1\n[decoding]\ndecoder = \"beam:num_beams=4\"\n\
         [source]\nkind = \"folder\"\nfolder = \"{dir}/in\"\nfolder_mode = \"queue\"\npoll_ms = 50\n\
         [security]\ntrusted_keys_file = \"{dir}/fleet.pub\"\nrequire_signed = true",
        &[],
        |dir| {
            let (_, secret) = keypair(dir, "fleet");
            // The demo bundle live at start; the tiny one next; a copy of the tiny one with one byte of
            // its language model changed after signing.
            for (name, from) in [
                (old, Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/bundle")),
                (new, tiny_bundle()),
            ] {
                copy_dir(&from, &dir.join(name));
                sign(&secret, &dir.join(name).join("manifest.toml"));
            }
            copy_dir(&dir.join(new), &dir.join(tampered));
            let lm = dir.join(tampered).join("lm.onnx");
            let mut bytes = std::fs::read(&lm).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 1;
            std::fs::write(&lm, bytes).unwrap();
            // Signed plugins, which require_signed asks for too.
            let plugins = signed_plugins(dir, &secret);
            let file = dir.join("clipcap.toml");
            let config = std::fs::read_to_string(&file).unwrap();
            let demo_bundle = format!("{:?}", Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/bundle"));
            let config = config
                .replace(&demo_bundle, &format!("{:?}", dir.join(old)))
                .replace(&format!("{:?}", plugin_dir()), &format!("{plugins:?}"));
            std::fs::write(&file, config).unwrap();
            for (i, name) in files.iter().enumerate() {
                std::fs::copy(&demo[i % demo.len()], dir.join("in").join(name)).unwrap();
            }
        },
    );
    let dir = daemon.dir.path().to_path_buf();
    daemon.wait_until(|| !daemon.logged().is_empty(), "the first caption");
    assert_eq!(daemon.get_json("/v1/bundle")["name"], old);

    // Uploads one after another, from the start of the swap to its end.
    let (stop, answered) = (AtomicBool::new(false), AtomicUsize::new(0));
    let png = std::fs::read(&demo[0]).unwrap();
    let uploads: Vec<(u16, String)> = std::thread::scope(|scope| {
        let uploading = scope.spawn(|| {
            let mut answers = Vec::new();
            while !stop.load(Ordering::SeqCst) || answers.len() < 4 {
                answers.push(daemon.raw("POST /v1/caption HTTP/1.1\r\nHost: {host}", &png));
                answered.fetch_add(1, Ordering::SeqCst);
            }
            answers
        });
        // However this thread ends, the uploads stop (a failed assertion must not leave them running).
        let stopping = StopOnDrop(&stop);
        daemon.wait_until(
            || daemon.logged().len() >= 3 && answered.load(Ordering::SeqCst) >= 1,
            "three captions and an upload of the old bundle",
        );
        configure(&daemon, &dir.join(old), &dir.join(new));
        hangup(&daemon);
        daemon.wait_until(|| daemon.get_json("/v1/bundle")["name"] == new, "the new bundle live");
        let queued = || daemon.logged().iter().filter(|e| e["kind"] == "folder").count();
        let swapped_at = queued();
        assert!(
            swapped_at < files.len(),
            "the swap came after the queue's end ({swapped_at})"
        );
        daemon.wait_until(|| queued() == files.len(), "every queued file captioned");
        drop(stopping);
        uploading.join().unwrap()
    });

    // Every upload answered 200, the old bundle's answers first, then the new one's.
    for (status, response) in &uploads {
        assert_eq!(*status, 200, "{response}");
    }
    let answered = uploads.iter().map(|(_, response)| {
        let body = response.split("\r\n\r\n").nth(1).unwrap();
        bundle_name(&serde_json::from_str(body).unwrap())
    });
    assert_eq!(runs(answered), [old, new], "uploads: the old bundle, then the new");
    // Every file captioned once; in the queue's order, the old bundle's captions, then the new one's.
    let logged = daemon.logged();
    let queued: Vec<&Value> = logged.iter().filter(|e| e["kind"] == "folder").collect();
    let mut origins: Vec<String> = queued
        .iter()
        .map(|e| {
            Path::new(e["origin"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    origins.sort();
    assert_eq!(origins, files, "each queued file captioned once");
    assert_eq!(runs(queued.iter().map(|e| bundle_name(e))), [old, new]);
    // The two bundles' records tell them apart by their manifests' SHA-256 too.
    let sha = |name: &str| {
        let event = logged.iter().find(|e| bundle_name(e) == name).unwrap();
        event["bundle"]["sha256"].as_str().unwrap().to_string()
    };
    assert_ne!(sha(old), sha(new));
    assert_eq!(sha(new), daemon.get_json("/v1/bundle")["sha256"].as_str().unwrap());

    // The tampered copy is refused with its file and reason; the new bundle keeps serving.
    configure(&daemon, &dir.join(new), &dir.join(tampered));
    hangup(&daemon);
    daemon.wait_until(
        || !daemon.get_json("/v1/bundle")["last_refused"].is_null(),
        "the tampered bundle refused",
    );
    let live = daemon.get_json("/v1/bundle");
    assert_eq!(live["name"], new);
    let reason = live["last_refused"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&dir.join(tampered).join("lm.onnx").display().to_string())
            && reason.contains("the file was changed after it was signed"),
        "{reason}"
    );
    assert!(
        daemon.stderr().contains("the live bundle keeps serving"),
        "{}",
        daemon.stderr()
    );
    let (status, response) = daemon.raw("POST /v1/caption HTTP/1.1\r\nHost: {host}", &png);
    assert_eq!(status, 200, "{response}");
    assert!(response.contains(&format!("\"name\":\"{new}\"")), "{response}");
    // Asking again for the live bundle changes nothing.
    configure(&daemon, &dir.join(tampered), &dir.join(new));
    hangup(&daemon);
    daemon.wait_until(
        || metric(&daemon.metrics(), "clipcap_reloads_total{result=\"unchanged\"}") == 1.0,
        "the unchanged reload counted",
    );
    let metrics = daemon.metrics();
    assert_eq!(metric(&metrics, "clipcap_reloads_total{result=\"swapped\"}"), 1.0);
    assert_eq!(metric(&metrics, "clipcap_reloads_total{result=\"refused\"}"), 1.0);
}

#[test]
fn a_shadow_bundle_captions_the_compared_frames_and_the_report_compares_the_bundles() {
    let demo_bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/bundle");
    let daemon = Daemon::start_with(
        "[captioning]\ninterval_ms = 50\ncompare = [\"beam:num_beams=3\"]\nshadow_bundle = \"{dir}/int8\"",
        &[],
        |dir| quantise(&demo_bundle, &dir.join("int8"), "int8"),
    );
    daemon.wait_ready();
    let frames = 6;
    for i in 0..frames {
        daemon.drop_image(&format!("082{i:02}.png"));
        daemon.wait_until(|| daemon.log_records("comparison").len() > i, "the frame's comparison");
    }
    let comparisons = daemon.log_records("comparison");
    let shadow = "greedy@int8";
    for c in &comparisons {
        assert_eq!(c["bundle"]["name"], "bundle", "{c}");
        let labels: Vec<&str> = c["compare"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["decoder"].as_str().unwrap())
            .collect();
        assert_eq!(labels, ["beam:num_beams=3", shadow], "{c}");
        let candidate = &c["compare"][1];
        assert_eq!(candidate["bundle"]["name"], "int8", "{c}");
        assert_ne!(candidate["bundle"]["sha256"], c["bundle"]["sha256"], "{c}");
        assert!(candidate["caption"].as_str().is_some_and(|t| !t.is_empty()), "{c}");
        assert!(candidate["clip_score"].as_f64().is_some(), "{c}");
    }
    // The live statistics: the candidate's CLIPScore, latency, win rate and agreement.
    let summary = daemon.get_json("/v1/compare");
    let candidate = summary["decoders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["decoder"] == shadow)
        .unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(candidate["captions"], frames as u64, "{summary}");
    for key in ["clip_score", "win_rate", "agreement", "ms_p50"] {
        assert!(!candidate[key].is_null(), "{key}: {summary}");
    }

    // `clipcap report` on the log: the two bundles (with greedy) side by side, and the difference
    // with its paired interval.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clipcap"))
        .arg("report")
        .arg(daemon.log_path())
        .args(["--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["compared_frames"], frames as u64, "{report}");
    let systems: Vec<&str> = report["comparison"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["system"].as_str().unwrap())
        .collect();
    assert_eq!(systems, ["greedy", "beam:num_beams=3", shadow], "{report}");
    let pair = report["comparison"]["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p.to_string().contains(shadow) && p.to_string().contains("\"greedy\""))
        .unwrap_or_else(|| panic!("no greedy against {shadow}: {report}"));
    let clip = pair["differences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["metric"] == "CLIPScore")
        .unwrap_or_else(|| panic!("{pair}"));
    let (low, difference, high) = (
        clip["low"].as_f64().unwrap(),
        clip["difference"].as_f64().unwrap(),
        clip["high"].as_f64().unwrap(),
    );
    assert!(low <= difference && difference <= high, "{pair}");
}

//! `clipcap caption` as a user runs it: real images in, captions out; bad images, bundles and a
//! missing ONNX Runtime give clear errors and the right exit status.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixtures, plugin_dir, quantised_tiny_bundle, references, tiny_bundle};

/// The CLI with the workspace's plugins (see common::plugins for why insecure folders are allowed).
fn command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_clipcap"));
    c.env("CLIPCAP__PLUGINS__DIRECTORIES", plugin_dir())
        .env("CLIPCAP__PLUGINS__ALLOW_INSECURE", "true");
    c
}

fn clipcap(args: &[&str]) -> Output {
    command().args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn json_lines_carry_caption_ids_and_timings() {
    let refs = references("greedy");
    let bundle = tiny_bundle();
    let mut args = vec!["caption", "--json", "--bundle", bundle.to_str().unwrap()];
    let paths: Vec<String> = refs
        .iter()
        .take(3)
        .map(|r| r.image_path().display().to_string())
        .collect();
    args.extend(paths.iter().map(String::as_str));
    let out = clipcap(&args);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (line, r) in lines.iter().zip(&refs) {
        assert_eq!(line["image"].as_str().unwrap(), r.image_path().display().to_string());
        assert_eq!(line["caption"].as_str().unwrap(), r.caption);
        let ids: Vec<u32> = serde_json::from_value(line["token_ids"].clone()).unwrap();
        assert_eq!(ids, r.token_ids);
        assert_eq!(line["decoder"], "greedy");
        for stage in ["preprocess", "encode", "map", "decode", "total"] {
            assert!(
                line["ms"][stage].as_f64().unwrap() > 0.0,
                "{stage} time missing in {line}"
            );
        }
    }
}

#[test]
fn bad_images_are_reported_and_the_rest_still_captioned() {
    let tmp = tempfile::tempdir().unwrap();
    let jpeg = std::fs::read(fixtures().join("images/rocket.jpg")).unwrap();
    let truncated = tmp.path().join("truncated.jpg");
    std::fs::write(&truncated, &jpeg[..jpeg.len() / 3]).unwrap();
    let not_image = tmp.path().join("notes.png");
    std::fs::write(&not_image, "this is text").unwrap();
    let missing = tmp.path().join("missing.jpg");
    let good = fixtures().join("images/chelsea.png");
    let bundle = tiny_bundle();
    let out = clipcap(&[
        "caption",
        "--bundle",
        bundle.to_str().unwrap(),
        truncated.to_str().unwrap(),
        not_image.to_str().unwrap(),
        missing.to_str().unwrap(),
        good.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "some images failed");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stdout.starts_with(&format!("{} [greedy]: ", good.display())),
        "good image captioned: {stdout}"
    );
    assert_eq!(stdout.lines().count(), 1);
    for (path, why) in [
        (&truncated, "cannot decode JPEG"),
        (&not_image, "not an image"),
        (&missing, "cannot read"),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(path.to_str().unwrap()))
            .unwrap_or_else(|| panic!("{stderr}"));
        assert!(line.contains(why), "{line}");
    }
}

#[test]
fn bad_bundle_exits_2_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let image = fixtures().join("images/coins.png");
    let out = clipcap(&[
        "caption",
        "--bundle",
        tmp.path().to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&tmp.path().join("manifest.toml").display().to_string()),
        "{err}"
    );
}

#[test]
fn missing_onnx_runtime_says_how_to_install_it() {
    let image = fixtures().join("images/coins.png");
    let bundle = tiny_bundle();
    let out = command()
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .args(["caption", "--bundle", bundle.to_str().unwrap(), image.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("/nonexistent/libonnxruntime.so") && err.contains("pip install onnxruntime=="),
        "{err}"
    );
}

#[test]
fn config_errors_name_the_key_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("clipcap.toml");
    std::fs::write(&config, "[runtime]\nintra_thread = 2\n").unwrap();
    let bundle = tiny_bundle();
    let image = fixtures().join("images/coins.png");
    let out = clipcap(&[
        "caption",
        "--config",
        config.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("intra_thread") && err.contains(config.to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn check_config_refuses_bad_daemon_settings_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("clipcap.toml");
    let path = config.to_str().unwrap();
    let bundle = tiny_bundle();
    for (toml, wanted) in [
        ("[service]\nlisen = \"127.0.0.1:1\"", "unknown field `lisen`"),
        ("[source]\nkind = \"webcam\"", "source.kind"),
        ("[source]\nwidth = -5", "source.width"),
        (
            "[source]\nformats = [\"H264\"]",
            "\"H264\" is not one of MJPG, YUYV, RGB3",
        ),
        ("[source]\nkind = \"folder\"", "source.folder must be set"),
        (
            "[captioning]\nscene_change = 3.0",
            "captioning.scene_change = 3 is outside [0, 2]",
        ),
        ("[service]\nlisten = \"everywhere\"", "service.listen = \"everywhere\""),
        ("[captioning]\ncompare = [\"beam:num_beams=0\"]", "out of range [1, 64]"),
    ] {
        std::fs::write(&config, toml).unwrap();
        let out = clipcap(&["check-config", "--config", path, "--bundle", bundle.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {err}");
        assert!(err.contains(wanted), "{toml}: {err}");
        // Decoders are checked against the plugins after loading: named by key, not file.
        let named = if toml.contains("compare") {
            "captioning.compare = "
        } else {
            path
        };
        assert!(err.contains(named), "{toml}: {named} is not named: {err}");
    }
    let out = command()
        .args(["check-config", "--bundle", bundle.to_str().unwrap()])
        .env("CLIPCAP__CAPTIONING__INTERVAL_MS", "soon")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(
        err.contains("captioning.interval_ms") && err.contains("environment"),
        "{err}"
    );
    // Compared decoders run in their own process by default; the report says where each runs.
    let out = command()
        .args(["check-config", "--bundle", bundle.to_str().unwrap()])
        .env("CLIPCAP__CAPTIONING__COMPARE", "beam:num_beams=2")
        .env("CLIPCAP__DECODING__FALLBACK", "greedy:isolate=true")
        .output()
        .unwrap();
    let said = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        said.starts_with("configuration ok")
            && said.contains("decoder greedy (in process), fallback greedy:isolate=true (own process), compared beam:num_beams=2 (own process)"),
        "{said}"
    );
}

#[test]
fn a_cpu_build_is_the_quiet_default_and_only_a_provider_asked_for_is_warned_about() {
    let image = fixtures().join("images/coffee.png");
    let bundle = tiny_bundle();
    let caption = |providers: Option<&str>, verbose: bool| {
        let mut c = command();
        if let Some(p) = providers {
            c.env("CLIPCAP__RUNTIME__PROVIDERS", p);
        }
        c.args(["caption", "--bundle", bundle.to_str().unwrap(), image.to_str().unwrap()])
            .args(verbose.then_some("-v"));
        let out = c.env_remove("RUST_LOG").output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        // The runtime's lines (the workspace's plugin folder also holds ONNX Runtime's libraries,
        // which the plugin loader refuses with a warning of its own).
        let said = text(&out.stderr);
        said.lines()
            .filter(|l| l.contains("clipcap_core::runtime"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // The wheel's library is a CPU build: by default that is the expected path, not a warning.
    assert_eq!(caption(None, false), Vec::<String>::new());
    let noted = caption(None, true);
    assert_eq!(noted.len(), 1, "{noted:?}");
    assert!(noted[0].contains("INFO") && noted[0].contains("has no tensorrt or cuda provider; using cpu"));
    // Asked for by name, a missing provider is a warning.
    let warned = caption(Some("cuda,cpu"), false);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains("WARN") && warned[0].contains("execution provider cuda is not in this ONNX Runtime build"),
        "{warned:?}"
    );
}

/// The oldest ONNX Runtime clipcap is tested with (scripts/setup-lab.sh puts it there).
fn oldest_runtime() -> std::path::PathBuf {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/onnxruntime-1.19.2/libonnxruntime.so");
    assert!(lib.is_file(), "{} missing: run scripts/setup-lab.sh", lib.display());
    lib
}

/// `clipcap caption --json` of `image` with `bundle` on the ONNX Runtime at `lib` (None: the pinned one).
fn caption_on(lib: Option<&Path>, bundle: &Path, image: &Path) -> Output {
    let mut c = command();
    if let Some(lib) = lib {
        c.env("ORT_DYLIB_PATH", lib);
    }
    c.args([
        "caption",
        "--json",
        "--bundle",
        bundle.to_str().unwrap(),
        image.to_str().unwrap(),
    ])
    .output()
    .unwrap()
}

fn token_ids(out: &Output) -> Vec<u32> {
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    serde_json::from_value(line["token_ids"].clone()).unwrap()
}

#[test]
fn the_same_binary_runs_on_an_older_onnx_runtime() {
    // api-17 asks ONNX Runtime for nothing newer than 1.17, so older builds (as Jetson images ship) work.
    let r = &references("greedy")[0];
    let out = caption_on(Some(&oldest_runtime()), &tiny_bundle(), &r.image_path());
    assert_eq!(token_ids(&out), r.token_ids);
}

#[test]
fn quantised_bundles_caption_on_the_oldest_and_the_pinned_onnx_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let image = references("greedy")[0].image_path();
    for precision in ["int8", "int4"] {
        let bundle = quantised_tiny_bundle(tmp.path(), precision);
        let pinned = token_ids(&caption_on(None, &bundle, &image));
        assert!(!pinned.is_empty());
        // The same kernels (MatMulInteger, 4-bit MatMulNBits) in both releases: the same tokens.
        assert_eq!(
            token_ids(&caption_on(Some(&oldest_runtime()), &bundle, &image)),
            pinned,
            "{precision}"
        );
    }
    // An int8 bundle of the export tool before MatMulInteger (8-bit MatMulNBits, which ONNX Runtime
    // runs from 1.22 on) is refused on 1.19 before its graphs load, naming both versions.
    let manifest = tmp.path().join("int8/manifest.toml");
    let recorded = std::fs::read_to_string(&manifest).unwrap();
    let old = recorded.replacen("method = \"MatMulInteger\"", "method = \"MatMulNBits\"", 1);
    assert_ne!(old, recorded);
    std::fs::write(&manifest, old).unwrap();
    let out = caption_on(Some(&oldest_runtime()), &tmp.path().join("int8"), &image);
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(
        said.contains("manifest.toml")
            && said.contains("int8 MatMulNBits")
            && said.contains("from 1.22 on")
            && said.contains("the loaded ONNX Runtime is 1.19.2"),
        "{said}"
    );
}

#[test]
fn decoders_from_the_config_and_the_command_line_are_compared_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("clipcap.toml");
    std::fs::write(&config, "[decoders.wide]\ndecoder = \"beam\"\nnum_beams = 3\n").unwrap();
    let r = &references("beam")[0];
    let bundle = tiny_bundle();
    let out = clipcap(&[
        "caption",
        "--json",
        "--config",
        config.to_str().unwrap(),
        "--decoder",
        "greedy",
        "--decoder",
        "wide",
        "--bundle",
        bundle.to_str().unwrap(),
        r.image_path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.iter().map(|l| l["decoder"].as_str().unwrap()).collect::<Vec<_>>(),
        ["greedy", "wide"]
    );
    let ids: Vec<u32> = serde_json::from_value(lines[1]["token_ids"].clone()).unwrap();
    assert_eq!(
        ids, r.token_ids,
        "the config's beam search equals the reference beam:num_beams=3"
    );
    assert!(lines[1]["steps"].as_u64().unwrap() > 0);
}

#[test]
fn unknown_decoders_and_parameters_stop_before_any_work() {
    let bundle = tiny_bundle();
    let image = fixtures().join("images/coins.png");
    for (decoder, why) in [
        ("beam:beams=2", "unknown parameter `beams`"),
        ("nope", "no decoder `nope`"),
    ] {
        let out = clipcap(&[
            "caption",
            "--decoder",
            decoder,
            "--bundle",
            bundle.to_str().unwrap(),
            image.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out.stderr).contains(why), "{}", text(&out.stderr));
    }
}

#[test]
fn plugins_list_shows_decoders_parameters_and_refusals() {
    let tmp = tempfile::tempdir_in(plugin_dir()).unwrap();
    std::fs::write(tmp.path().join("libbroken.so"), "not a library").unwrap();
    let dirs = format!("{},{}", plugin_dir().display(), tmp.path().display());
    let out = command()
        .env("CLIPCAP__PLUGINS__DIRECTORIES", &dirs)
        .args(["plugins", "list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    let beam = list["decoders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "beam")
        .unwrap();
    assert_eq!(
        (beam["plugin"].as_str(), beam["abi"].as_str()),
        (Some("search"), Some("2.1"))
    );
    assert_eq!(beam["params"][0]["name"], "num_beams");
    assert_eq!(beam["params"][0]["default"], 5.0);
    let names: Vec<&str> = list["decoders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    for want in ["greedy", "beam", "sample", "contrastive", "magic"] {
        assert!(names.contains(&want), "{names:?}");
    }
    // The plugin folder may hold other libraries (setup.sh puts libonnxruntime.so next to
    // the binary), so look for this test's refusal by name.
    let refused = list["refused"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"].as_str().unwrap().ends_with("libbroken.so"))
        .unwrap_or_else(|| panic!("libbroken.so not refused: {list}"));
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("not an ELF shared library"),
        "{refused}"
    );
    let plain = command()
        .env("CLIPCAP__PLUGINS__DIRECTORIES", &dirs)
        .args(["plugins", "list"])
        .output()
        .unwrap();
    let plain = text(&plain.stdout);
    assert!(
        plain.contains("num_beams (int, default 5, range [1, 64])") && plain.contains("refused "),
        "{plain}"
    );
}

#[test]
fn a_plugin_logs_through_the_hosts_extension() {
    let bundle = tiny_bundle();
    let image = references("greedy")[0].image_path();
    let out = command()
        .env("RUST_LOG", "info")
        .args(["caption", "--json", "--decoder", "logs", "--bundle"])
        .arg(&bundle)
        .arg(&image)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The message reaches the daemon's log, attributed to the decoder instance.
    let line = stderr
        .lines()
        .find(|l| l.contains("logs: hello from the SDK"))
        .unwrap_or_else(|| panic!("no plugin log line in: {stderr}"));
    assert!(line.contains("INFO") && line.contains("decoder=\"logs\""), "{line}");
    let caption: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(caption["token_ids"], serde_json::json!([50256]));
}

#[test]
fn bench_reports_stages_latency_the_memory_bound_and_the_process() {
    let bundle = tiny_bundle();
    let image = fixtures().join("images/coffee.png");
    let out = clipcap(&[
        "bench",
        "--json",
        "--runs",
        "2",
        "--bundle",
        bundle.to_str().unwrap(),
        "--decoder",
        "greedy",
        "--decoder",
        "beam:num_beams=2,isolate=true",
        image.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let number = |v: &serde_json::Value, key: &str| {
        v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
    };
    let m = &report["machine"];
    let lm_bytes = std::fs::metadata(bundle.join("lm.onnx")).unwrap().len() as f64;
    assert_eq!(number(m, "lm_weight_bytes"), lm_bytes);
    for key in [
        "read_gb_per_s",
        "step_bound_ms",
        "first_caption_ms",
        "peak_rss_mb",
        "threads",
    ] {
        assert!(number(m, key) > 0.0, "{key}: {m}");
    }
    let bound = lm_bytes / (number(m, "read_gb_per_s") * 1e9) * 1e3;
    assert!(
        (number(m, "step_bound_ms") - bound).abs() < 1e-9 * bound.max(1.0),
        "{m}"
    );
    let decoders = report["decoders"].as_array().unwrap();
    let labels: Vec<&str> = decoders.iter().map(|d| d["decoder"].as_str().unwrap()).collect();
    assert_eq!(labels, ["greedy", "beam:isolate=true,num_beams=2"]);
    for d in decoders {
        assert_eq!(number(d, "captions"), 2.0, "{d}");
        for key in [
            "encode_ms",
            "decode_ms",
            "steps",
            "model_ms_per_step",
            "p50_ms",
            "captions_per_s",
        ] {
            assert!(number(d, key) > 0.0, "{key}: {d}");
        }
        assert!(number(d, "p95_ms") >= number(d, "p50_ms"), "{d}");
        let ratio = number(d, "model_ms_per_step") / number(m, "step_bound_ms");
        assert!((number(d, "bound_ratio") - ratio).abs() < 1e-9 * ratio, "{d}");
    }
    assert_eq!(number(&decoders[0], "decode_ratio"), 1.0);
}

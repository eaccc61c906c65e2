//! `clipcap caption` as a user runs it: real images in, captions out; bad images, bundles and a
//! missing ONNX Runtime give clear errors and the right exit status.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixtures, references, tiny_bundle};

fn clipcap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clipcap")).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn json_lines_carry_caption_ids_and_timings() {
    let refs = references();
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
        stdout.starts_with(&format!("{}: ", good.display())),
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
    let out = Command::new(env!("CARGO_BIN_EXE_clipcap"))
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
fn the_same_binary_runs_on_an_older_onnx_runtime() {
    // api-17 asks ONNX Runtime for nothing newer than 1.17, so older builds (as Jetson images ship) work.
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/onnxruntime-1.19.2/libonnxruntime.so");
    assert!(lib.is_file(), "{} missing: run scripts/setup.sh", lib.display());
    let r = &references()[0];
    let bundle = tiny_bundle();
    let out = Command::new(env!("CARGO_BIN_EXE_clipcap"))
        .env("ORT_DYLIB_PATH", &lib)
        .args([
            "caption",
            "--json",
            "--bundle",
            bundle.to_str().unwrap(),
            r.image_path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    let ids: Vec<u32> = serde_json::from_value(line["token_ids"].clone()).unwrap();
    assert_eq!(ids, r.token_ids);
}

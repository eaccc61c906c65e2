//! The aarch64 build (`scripts/cross.sh --test`, the cross-test profile) run under qemu-user with the aarch64 onnxruntime wheel's
//! library: the same captions and token ids as this x86-64 build, on the tiny and the demo bundle,
//! greedy and beam search (both from a decoder plugin), and on the oldest ONNX Runtime the project
//! supports (api-17; the oldest wheel with the C library), fp32 and the int8 and int4 bundles.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{demo_image, fixtures, plugin_dir, quantised_tiny_bundle, tiny_bundle};

const TARGET: &str = "aarch64-unknown-linux-gnu";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `clipcap` for aarch64, run by qemu-user on `library` (a folder of .cache), with the plugins
/// cross.sh built next to it.
fn aarch64(library: &str) -> Command {
    let build = root().join("target").join(TARGET).join("cross-test");
    let binary = build.join("clipcap");
    assert!(
        binary.is_file(),
        "{} missing: run scripts/cross.sh --test",
        binary.display()
    );
    let library = root().join(".cache").join(library).join("libonnxruntime.so");
    assert!(
        library.is_file(),
        "{} missing: run scripts/cross.sh and scripts/setup-lab.sh",
        library.display()
    );
    let mut command = Command::new("qemu-aarch64");
    // The sysroot as an argument and in the environment: clipcap starts processes of its own program
    // (plugin listing, isolated decoders), which a kernel with qemu registered in binfmt_misc runs
    // under qemu too, finding the aarch64 loader through QEMU_LD_PREFIX. Without binfmt_misc, clipcap
    // lists plugins in its own process (docs/plugins.md).
    command
        .args(["-L", "/usr/aarch64-linux-gnu"])
        .arg(binary)
        .env("QEMU_LD_PREFIX", "/usr/aarch64-linux-gnu")
        .env("ORT_DYLIB_PATH", library);
    with_plugins(command, build)
}

fn x86_64() -> Command {
    with_plugins(Command::new(env!("CARGO_BIN_EXE_clipcap")), plugin_dir())
}

/// The plugins of one build; ownership checks off, as the checkout may be in a world-writable folder
/// such as /tmp (see common::plugins).
fn with_plugins(mut command: Command, folder: PathBuf) -> Command {
    command
        .env("CLIPCAP__PLUGINS__DIRECTORIES", folder)
        .env("CLIPCAP__PLUGINS__ALLOW_INSECURE", "true");
    command
}

/// Each image's caption and token ids, from `clipcap caption --json`.
fn captions(mut command: Command, bundle: &Path, decoder: &str, images: &[PathBuf]) -> Vec<(String, Vec<u64>)> {
    let out = command
        .args(["caption", "--json", "--decoder", decoder, "--bundle"])
        .arg(bundle)
        .args(images)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{command:?}: {stderr}");
    let lines: Vec<(String, Vec<u64>)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let ids = v["token_ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap());
            (v["caption"].as_str().unwrap().to_owned(), ids.collect())
        })
        .collect();
    assert_eq!(lines.len(), images.len(), "{stderr}");
    lines
}

fn photographs() -> Vec<PathBuf> {
    ["astronaut.png", "coffee.png", "rocket.jpg"]
        .iter()
        .map(|name| fixtures().join("images").join(name))
        .collect()
}

#[test]
fn the_aarch64_build_captions_like_the_x86_64_build() {
    let demo = root().join("demo/bundle");
    let demo_images: Vec<PathBuf> = ["08200.png", "08203.png", "08207.png"]
        .iter()
        .map(|n| demo_image(n))
        .collect();
    for (bundle, images, decoder) in [
        (tiny_bundle(), photographs(), "greedy"),
        (tiny_bundle(), photographs(), "beam:num_beams=3"),
        (demo.clone(), demo_images.clone(), "greedy"),
        (demo, demo_images, "beam:num_beams=3"),
    ] {
        let expected = captions(x86_64(), &bundle, decoder, &images);
        let got = captions(aarch64("onnxruntime-aarch64"), &bundle, decoder, &images);
        assert_eq!(got, expected, "{} with {decoder}", bundle.display());
        assert!(expected.iter().all(|(text, ids)| !text.is_empty() && !ids.is_empty()));
    }
}

#[test]
fn the_aarch64_build_runs_on_the_oldest_onnx_runtime_and_lists_the_same_plugins() {
    let images = &photographs()[..1];
    let expected = captions(x86_64(), &tiny_bundle(), "greedy", images);
    let got = captions(aarch64("onnxruntime-aarch64-1.19.2"), &tiny_bundle(), "greedy", images);
    assert_eq!(got, expected);

    let listed = |mut command: Command| {
        let out = command.args(["plugins", "list"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // The paths differ (each build's own folder); the decoders and versions must not. Other
        // libraries in a folder (x86-64's has ONNX Runtime's) are listed as refused: left aside.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| !line.starts_with("refused "))
            .map(|line| line.replace(&format!("target/{TARGET}/cross-test"), "target/release"))
            .collect::<Vec<_>>()
    };
    let x86 = listed(x86_64());
    assert!(x86.iter().any(|l| l.contains("beam")), "{x86:?}");
    assert_eq!(listed(aarch64("onnxruntime-aarch64")), x86);
}

#[test]
fn quantised_bundles_caption_on_aarch64_on_the_oldest_and_the_pinned_onnx_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let images = &photographs()[..1];
    for precision in ["int8", "int4"] {
        let bundle = quantised_tiny_bundle(tmp.path(), precision);
        let pinned = captions(aarch64("onnxruntime-aarch64"), &bundle, "greedy", images);
        assert!(pinned.iter().all(|(text, ids)| !text.is_empty() && !ids.is_empty()));
        let oldest = captions(aarch64("onnxruntime-aarch64-1.19.2"), &bundle, "greedy", images);
        assert_eq!(oldest, pinned, "{precision}");
    }
}

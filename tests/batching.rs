//! Captions decoded together: a caption's tokens do not depend on what else shared its model calls
//! (greedy, beam search and seeded sampling, in process and isolated, at concurrency 1 to 8, on the
//! tiny and the demo bundle), the calls really are shared, and a bundle of format 1 still captions,
//! one caption a call.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use clipcap::jobs;
use clipcap_core::Batching;
use clipcap_core::bundle::Bundle;
use clipcap_core::captioner::{Captioner, Prepared};
use clipcap_core::decoding::DecoderInstance;
use clipcap_core::imageio;
use common::{decoder, fixtures, plugins, runtime, tiny_bundle};

fn images(dir: &Path) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png" || x == "jpg"))
        .collect();
    all.sort();
    all
}

/// Token ids of every image, `concurrency` captions in flight, and the rows per model call.
fn caption_all(captioner: &Captioner, prepared: &[Prepared], spec: &str, concurrency: usize) -> (Vec<Vec<u32>>, f64) {
    let plugins = plugins();
    let mut lanes: Vec<DecoderInstance> = (0..concurrency).map(|_| decoder(&plugins, spec)).collect();
    let stats = captioner.batch_stats();
    let (calls, rows) = (stats.calls.load(Ordering::Relaxed), stats.rows.load(Ordering::Relaxed));
    let mut tokens = Vec::new();
    jobs::run(
        &mut lanes,
        prepared.len(),
        |d, i| captioner.decode(&prepared[i], d, None, 7).unwrap().token_ids,
        |_, t| tokens.push(t),
    );
    let calls = stats.calls.load(Ordering::Relaxed) - calls;
    let rows = stats.rows.load(Ordering::Relaxed) - rows;
    (tokens, rows as f64 / calls as f64)
}

fn prepare(captioner: &Captioner, paths: &[PathBuf]) -> Vec<Prepared> {
    paths
        .iter()
        .map(|p| captioner.prepare(&imageio::load_file(p).unwrap()).unwrap())
        .collect()
}

#[test]
fn a_captions_tokens_do_not_depend_on_what_shared_its_calls() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
    for (bundle, dir) in [
        (tiny_bundle(), fixtures().join("images")),
        (demo.join("bundle"), demo.join("images")),
    ] {
        let captioner = Captioner::load(&Bundle::open(&bundle).unwrap(), &runtime(), Batching::default()).unwrap();
        let prepared = prepare(&captioner, &images(&dir));
        for spec in ["greedy", "beam:num_beams=3", "sample:top_p=0.9", "greedy:isolate=true"] {
            let (alone, per_call) = caption_all(&captioner, &prepared, spec, 1);
            assert!(
                per_call <= 3.0,
                "{spec}: {per_call} rows a call with one caption in flight"
            );
            for concurrency in [2, 4, 8] {
                let (together, per_call) = caption_all(&captioner, &prepared, spec, concurrency);
                for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
                    assert_eq!(
                        a,
                        t,
                        "{} image {i}, {spec}, concurrency {concurrency}: tokens differ from decoding alone",
                        bundle.display()
                    );
                }
                if concurrency == 4 {
                    assert!(per_call > 1.5, "{spec}: {per_call} rows a call at concurrency 4");
                }
            }
        }
    }
}

/// The tiny bundle as format 1 wrote it: its language model without `attention_mask` and
/// `position_ids` (tests/fixtures/format-1/lm.onnx, the graph before the upgrade).
fn format_1_bundle(dir: &Path) -> PathBuf {
    let out = dir.join("format-1");
    std::fs::create_dir(&out).unwrap();
    for entry in std::fs::read_dir(tiny_bundle()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, out.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::copy(fixtures().join("format-1/lm.onnx"), out.join("lm.onnx")).unwrap();
    let manifest = std::fs::read_to_string(out.join("manifest.toml")).unwrap();
    std::fs::write(
        out.join("manifest.toml"),
        manifest.replace("format_version = 2", "format_version = 1"),
    )
    .unwrap();
    out
}

#[test]
fn a_format_1_bundle_captions_the_same_one_caption_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let old = format_1_bundle(dir.path());
    let paths = images(&fixtures().join("images"));
    let load = |b: &Path| Captioner::load(&Bundle::open(b).unwrap(), &runtime(), Batching::default()).unwrap();
    let (old, new) = (load(&old), load(&tiny_bundle()));
    let (old_images, new_images) = (prepare(&old, &paths), prepare(&new, &paths));
    for spec in ["greedy", "beam:num_beams=3"] {
        let (want, _) = caption_all(&new, &new_images, spec, 1);
        let (got, per_call) = caption_all(&old, &old_images, spec, 4);
        assert_eq!(got, want, "{spec}");
        let beams = if spec == "greedy" { 1.0 } else { 3.0 };
        // Prefix passes may share a call (every row has the same length); steps may not.
        assert!(
            per_call <= beams + 0.5,
            "{spec}: {per_call} rows a call on a format-1 bundle"
        );
    }
}

//! The daemon's side of the bundle contract (docs/bundle.md): the fixture bundle loads, and every kind
//! of disagreement between manifest, graphs and tokenizer is refused with the file and the key or
//! tensor named, before anything runs.

mod common;

use std::path::{Path, PathBuf};

use clipcap_core::Batching;
use clipcap_core::bundle::Bundle;
use clipcap_core::captioner::Captioner;
use clipcap_core::graph_io::GraphIo;
use clipcap_core::runtime::{Provider, Runtime, RuntimeOptions};
use common::{references, runtime, tiny_bundle};

/// A copy of the tiny bundle with `edit` applied to it.
fn broken(edit: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(tiny_bundle()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    edit(&dir);
    (tmp, dir)
}

fn edit_file(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{}: {from:?} not found", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

fn manifest_edit(from: &'static str, to: &'static str) -> impl FnOnce(&Path) {
    move |dir| edit_file(&dir.join("manifest.toml"), from, to)
}

/// The error of loading the edited bundle all the way (manifest, graphs, tokenizer).
fn load_error(edit: impl FnOnce(&Path)) -> String {
    let (_tmp, dir) = broken(edit);
    let rt = runtime();
    let err = match Bundle::open(&dir) {
        Err(e) => e.to_string(),
        Ok(bundle) => match Captioner::load(&bundle, &rt, Batching::default()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("the broken bundle loaded"),
        },
    };
    // The process is unharmed: the intact bundle still loads.
    Captioner::load(&Bundle::open(tiny_bundle()).unwrap(), &rt, Batching::default()).unwrap();
    err
}

fn assert_mentions(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error {err:?} does not mention {p:?}");
    }
}

#[test]
fn fixture_bundle_loads() {
    let bundle = Bundle::open(tiny_bundle()).unwrap();
    let m = &bundle.manifest;
    assert_eq!((m.language_model.vocab_size, m.mapper.prefix_length), (50257, 10));
    assert_eq!(m.tokenizer.stop_tokens, vec![13, 50256]);
    Captioner::load(&bundle, &runtime(), Batching::default()).unwrap();
}

#[test]
fn refuses_unknown_format_version() {
    let err = load_error(manifest_edit("format_version = 2", "format_version = 3"));
    assert_mentions(
        &err,
        &["manifest.toml", "format_version 3 is not supported", "versions 1 to 2"],
    );
}

#[test]
fn refuses_a_format_2_manifest_over_a_format_1_language_model() {
    let err = load_error(|dir| {
        std::fs::copy(common::fixtures().join("format-1/lm.onnx"), dir.join("lm.onnx")).unwrap();
    });
    assert_mentions(&err, &["lm.onnx", "attention_mask"]);
}

#[test]
fn refuses_unknown_keys() {
    let err = load_error(manifest_edit("prefix_length = 10", "prefix_len = 10"));
    assert_mentions(&err, &["manifest.toml", "prefix_len"]);
}

#[test]
fn refuses_missing_manifest() {
    let err = load_error(|dir| std::fs::remove_file(dir.join("manifest.toml")).unwrap());
    assert_mentions(&err, &["manifest.toml", "cannot read"]);
}

#[test]
fn refuses_missing_graph_file() {
    let err = load_error(|dir| std::fs::remove_file(dir.join("lm.onnx")).unwrap());
    assert_mentions(&err, &["language_model.file", "lm.onnx", "does not exist"]);
}

#[test]
fn refuses_corrupt_graph() {
    let err = load_error(|dir| {
        let bytes = std::fs::read(dir.join("mapper.onnx")).unwrap();
        std::fs::write(dir.join("mapper.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    });
    assert_mentions(&err, &["mapper.onnx", "cannot load the ONNX graph"]);
}

#[test]
fn refuses_width_that_disagrees_with_the_graphs() {
    let err = load_error(manifest_edit("width = 32", "width = 64"));
    assert_mentions(&err, &["mapper.onnx", "tensor `prefix`", "axis 2 is 32", "says 64"]);
}

#[test]
fn refuses_embedding_dim_that_disagrees_with_the_encoder() {
    let err = load_error(|dir| {
        let path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("embedding_dim = 32", "embedding_dim = 512")).unwrap();
    });
    assert_mentions(&err, &["image_encoder.onnx", "tensor `image_embeds`", "says 512"]);
    let err = load_error(manifest_edit("embedding_dim = 32", "embedding_dim = 512"));
    assert_mentions(
        &err,
        &[
            "manifest.toml",
            "text_encoder.embedding_dim 32 differs from image_encoder.embedding_dim 512",
        ],
    );
}

#[test]
fn refuses_a_text_encoder_that_disagrees_with_the_manifest() {
    let err = load_error(manifest_edit("context_length = 77", "context_length = 76"));
    assert_mentions(
        &err,
        &[
            "text_encoder.onnx",
            "tensor `input_ids`",
            "axis 1 is 77, the manifest says 76",
        ],
    );
    let err = load_error(|dir| std::fs::write(dir.join("clip_tokenizer.json"), "{}").unwrap());
    assert_mentions(&err, &["clip_tokenizer.json", "not a tokenizers JSON file"]);
}

#[test]
fn graphs_are_read_as_onnx_runtime_reads_them_and_the_text_encoder_is_created_on_first_use() {
    // What a file declares, read without a session, is what ONNX Runtime declares for it; only output
    // axes the file leaves dynamic may be fixed by ONNX Runtime's shape inference.
    for name in ["image_encoder.onnx", "mapper.onnx", "lm.onnx", "text_encoder.onnx"] {
        let path = tiny_bundle().join(name);
        let (session, _) = runtime().session(&path, &[]).unwrap();
        let (read, seen) = (GraphIo::read(&path).unwrap(), GraphIo::of(&session));
        assert_eq!(read.inputs, seen.inputs, "{name}");
        assert_eq!(read.outputs.len(), seen.outputs.len(), "{name}");
        for (r, s) in read.outputs.iter().zip(&seen.outputs) {
            assert_eq!((&r.name, r.ty, r.shape.len()), (&s.name, s.ty, s.shape.len()), "{name}");
            assert!(
                r.shape.iter().zip(&s.shape).all(|(a, b)| a == b || *a == -1),
                "{name}: {r:?} {s:?}"
            );
        }
    }
    // A text encoder that is not a whole ONNX file is refused at start, with the others.
    let err = load_error(|dir| {
        let bytes = std::fs::read(dir.join("text_encoder.onnx")).unwrap();
        std::fs::write(dir.join("text_encoder.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    });
    assert_mentions(&err, &["text_encoder.onnx", "not an ONNX model"]);
    // Its session is created when first needed, and checked then as well: replaced after the load by
    // another graph, it fails CLIPScore with the file and tensor named, and captions are unharmed.
    let (_tmp, dir) = broken(|_| {});
    let captioner = Captioner::load(&Bundle::open(&dir).unwrap(), &runtime(), Batching::default()).unwrap();
    std::fs::copy(dir.join("mapper.onnx"), dir.join("text_encoder.onnx")).unwrap();
    let image = image::open(references("greedy")[0].image_path()).unwrap().to_rgb8();
    let prepared = captioner.prepare(&image).unwrap();
    let err = captioner.clip_scores(&prepared, &["a photo"]).unwrap_err().to_string();
    assert_mentions(&err, &["text_encoder.onnx", "tensor `image_embeds`", "does not define"]);
    assert!(captioner.has_text_encoder());
}

#[test]
fn sessions_created_at_once_compute_alike_and_report_the_first_disagreement_on_the_path() {
    let parallel = Runtime::init(&RuntimeOptions {
        providers: vec![Provider::Cpu],
        intra_threads: 1,
        parallel_sessions: true,
        ..RuntimeOptions::default()
    })
    .unwrap();
    let bundle = Bundle::open(tiny_bundle()).unwrap();
    let image = image::open(references("greedy")[0].image_path()).unwrap().to_rgb8();
    let embeds = |rt: &Runtime| {
        let captioner = Captioner::load(&bundle, rt, Batching::default()).unwrap();
        let prepared = captioner.prepare(&image).unwrap();
        (prepared.image_embeds, prepared.prefix)
    };
    assert_eq!(embeds(&parallel), embeds(&runtime()));
    // A width that disagrees with the mapper and the language model: the mapper, first on the path,
    // is named, as when they load one after another (refuses_width_that_disagrees_with_the_graphs).
    let (_tmp, dir) = broken(manifest_edit("width = 32", "width = 64"));
    let err = Captioner::load(&Bundle::open(&dir).unwrap(), &parallel, Batching::default())
        .err()
        .unwrap()
        .to_string();
    assert_mentions(&err, &["mapper.onnx", "tensor `prefix`", "says 64"]);
}

#[test]
fn refuses_vocabulary_that_disagrees_with_the_lm() {
    let err = load_error(manifest_edit("vocab_size = 50257", "vocab_size = 50258"));
    assert_mentions(&err, &["lm.onnx", "tensor `logits`", "50257", "50258"]);
}

#[test]
fn refuses_layer_count_that_disagrees_with_the_lm() {
    let err = load_error(manifest_edit("layers = 2", "layers = 3"));
    assert_mentions(&err, &["lm.onnx", "past_key_values.2.key", "missing input"]);
    let err = load_error(manifest_edit("layers = 2", "layers = 1"));
    assert_mentions(&err, &["lm.onnx", "past_key_values.1.key", "does not define"]);
}

#[test]
fn refuses_a_graph_in_the_wrong_slot() {
    let err = load_error(manifest_edit("file = \"mapper.onnx\"", "file = \"image_encoder.onnx\""));
    assert_mentions(
        &err,
        &["image_encoder.onnx", "tensor `pixel_values`", "does not define"],
    );
}

#[test]
fn refuses_tokens_outside_the_vocabulary() {
    let err = load_error(manifest_edit("stop_tokens = [", "stop_tokens = [\n    60000,"));
    assert_mentions(&err, &["manifest.toml", "tokenizer.stop_tokens", "60000"]);
}

#[test]
fn refuses_prefix_longer_than_the_positions() {
    let err = load_error(manifest_edit("max_tokens = 67", "max_tokens = 200"));
    assert_mentions(&err, &["manifest.toml", "max_positions 128"]);
}

#[test]
fn refuses_tokenizer_without_special_end_of_text() {
    let err = load_error(|dir| {
        edit_file(
            &dir.join("tokenizer.json"),
            r#""content":"<|endoftext|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true"#,
            r#""content":"<|endoftext|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":false"#,
        )
    });
    assert_mentions(&err, &["tokenizer.json", "50256", "not a special token"]);
}

#[test]
fn refuses_tokenizer_of_another_vocabulary() {
    let err = load_error(|dir| std::fs::write(dir.join("tokenizer.json"), "{\"not\": \"a tokenizer\"}").unwrap());
    assert_mentions(&err, &["tokenizer.json", "not a tokenizers JSON file"]);
}

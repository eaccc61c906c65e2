//! The committed demo bundle (`clipcap-export demo`: CLIP and ClipCap trained on the synthetic shapes
//! world): the Rust runtime captions the held-out demo images exactly as the PyTorch model does, and
//! the captions describe the scenes. Regenerate with demo/regenerate.sh.

mod common;

use std::path::{Path, PathBuf};

use clipcap_core::Batching;
use clipcap_core::bundle::Bundle;
use clipcap_core::captioner::Captioner;
use clipcap_core::imageio;
use common::{decoder, plugins, runtime, truth};
use serde::Deserialize;

/// Measured on the committed bundle, which is deterministic: 10 of the 12 captions are exactly one of
/// the image's five true captions (184 of the 200 test images, demo/evaluation.md); both misses here
/// say three shapes where there are two (08207, 08210), and every caption names the right background.
const MIN_EXACT: usize = 10;
const MIN_BACKGROUND: usize = 12;

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("demo")
}

#[derive(Deserialize)]
struct Reference {
    image: PathBuf,
    caption: String,
    token_ids: Vec<u32>,
}

#[test]
fn demo_bundle_captions_like_pytorch_and_describes_the_scenes() {
    let bundle = Bundle::open(demo().join("bundle")).unwrap();
    let scores = &bundle
        .manifest
        .provenance
        .evaluation
        .as_ref()
        .expect("the demo bundle carries its scores")
        .scores;
    assert!(
        scores["bleu4"] > 0.6,
        "BLEU-4 recorded in the manifest: {}",
        scores["bleu4"]
    );
    let refs: Vec<Reference> = std::fs::read_to_string(demo().join("reference.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(refs.len(), 12);
    let captioner = Captioner::load(&bundle, &runtime(), Batching::default()).unwrap();
    let plugins = plugins();
    let mut greedy = decoder(&plugins, "greedy");
    let (mut exact, mut background) = (0, 0);
    for r in &refs {
        let name = r.image.file_name().unwrap().to_str().unwrap();
        let image = imageio::load_file(&demo().join("images").join(name)).unwrap();
        let prepared = captioner.prepare(&image).unwrap();
        let c = captioner.decode(&prepared, &mut greedy, None, 0).unwrap();
        assert_eq!(c.token_ids, r.token_ids, "{name}: Rust and PyTorch differ");
        assert_eq!(c.caption, r.caption);
        let truths = &truth(name);
        exact += truths.contains(&c.caption) as usize;
        // The background phrase ("a blue background") is in every one of the image's captions.
        let phrase = truths[0]
            .split(" on ")
            .last()
            .unwrap()
            .trim_end_matches('.')
            .to_string();
        background += c.caption.contains(&phrase) as usize;
        println!("{name}: {:?} (truth: {:?})", c.caption, truths[0]);
    }
    println!("{exact} of 12 exactly one of the five true captions, {background} of 12 name the background");
    // Measured on the committed bundle (deterministic): see demo/evaluation.md for the whole test split.
    assert!(
        exact >= MIN_EXACT && background >= MIN_BACKGROUND,
        "{exact} exact, {background} backgrounds"
    );
}

//! The Rust runtime against the PyTorch reference on real photographs (tests/fixtures/images, from
//! scikit-image): preprocessing against OpenAI CLIP's, image embeddings, and greedy token ids.
//! Fixtures: tests/fixtures/regenerate.sh.

mod common;

use clipcap_core::Batching;
use clipcap_core::bundle::Bundle;
use clipcap_core::captioner::Captioner;
use clipcap_core::cosine;
use clipcap_core::imageio;
use common::{decoder, plugins, references, runtime, tiny_bundle};

#[test]
fn preprocessing_matches_openai_clip() {
    let bundle = Bundle::open(tiny_bundle()).unwrap();
    let pre = clipcap_core::preprocess::Preprocessor::new(&bundle.manifest.preprocess);
    for r in references("greedy") {
        let image = imageio::load_file(&r.image_path()).unwrap();
        let got = pre.run(&image);
        let want = r.pixels();
        assert_eq!(got.len(), want.len());
        let max = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        println!(
            "{}: max |rust - pil| = {max:e}, {differing} of {} values differ",
            r.image.display(),
            got.len()
        );
        // PNGs decode to the same pixels and the resampling reproduces Pillow's, so the tensors are
        // equal. JPEG decoders (zune-jpeg here, libjpeg-turbo under PIL) round some pixels differently:
        // allow one 8-bit level, 1 / 255 / std, at most.
        let level = 1.0 / 255.0 / bundle.manifest.preprocess.std.iter().fold(f32::MAX, |a, &b| a.min(b));
        let bound = if r.image.extension().unwrap() == "jpg" {
            level * 1.001
        } else {
            0.0
        };
        assert!(
            max <= bound,
            "{}: max difference {max} exceeds {bound}",
            r.image.display()
        );
    }
}

#[test]
fn embeddings_and_greedy_tokens_match_pytorch() {
    let rt = runtime();
    let bundle = Bundle::open(tiny_bundle()).unwrap();
    let captioner = Captioner::load(&bundle, &rt, Batching::default()).unwrap();
    let plugins = plugins();
    let mut greedy = decoder(&plugins, "greedy");
    for r in references("greedy") {
        let image = imageio::load_file(&r.image_path()).unwrap();
        let prepared = captioner.prepare(&image).unwrap();
        let c = captioner.decode(&prepared, &mut greedy, None, 0).unwrap();
        let cos = cosine(&prepared.image_embeds, &r.image_embeds);
        println!("{}: cosine {cos:.7}, {} tokens", r.image.display(), c.token_ids.len());
        assert!(cos >= 0.999, "{}: embedding cosine {cos} < 0.999", r.image.display());
        assert_eq!(
            c.token_ids,
            r.token_ids,
            "{}: token ids differ from PyTorch",
            r.image.display()
        );
        assert_eq!(c.caption, r.caption, "{}", r.image.display());
    }
}

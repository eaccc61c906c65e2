//! Every committed input of every fuzz target, replayed through its harness: the seed corpora
//! (fuzz/corpus/TARGET/) and the inputs that once found a defect (fuzz/regressions/TARGET/, named for
//! what they found).

use std::path::Path;

fn replay(target: &str, harness: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut inputs = Vec::new();
    for folder in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(folder).join(target)) else {
            continue;
        };
        inputs.extend(entries.map(|e| e.unwrap().path()));
    }
    inputs.sort();
    assert!(!inputs.is_empty(), "no inputs for {target} in fuzz/corpus/{target}");
    let failed: Vec<String> = inputs
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).unwrap();
            std::panic::catch_unwind(|| harness(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail: {failed:#?}",
        failed.len(),
        inputs.len()
    );
}

#[test]
fn manifest() {
    replay("manifest", clipcap_fuzz::manifest);
}

#[test]
fn config() {
    replay("config", clipcap_fuzz::config);
}

#[test]
fn image() {
    replay("image", clipcap_fuzz::image);
}

#[test]
fn frame() {
    replay("frame", clipcap_fuzz::frame);
}

#[test]
fn decoder_spec() {
    replay("decoder_spec", clipcap_fuzz::decoder_spec);
}

#[test]
fn caption_log() {
    replay("caption_log", clipcap_fuzz::caption_log);
}

#[test]
fn coco() {
    replay("coco", clipcap_fuzz::coco);
}

#[test]
fn last_event_id() {
    replay("last_event_id", clipcap_fuzz::last_event_id);
}

#[test]
fn http() {
    replay("http", clipcap_fuzz::http);
}

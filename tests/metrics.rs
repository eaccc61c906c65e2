//! The caption metrics against their references: the PTB tokenizer port against the real Stanford
//! PTBTokenizer (the jar pycocoevalcap ships, run on Java), and `clipcap score` against pycocoevalcap
//! itself (export/.venv), on captions generated to hit the tokenizer's nasty cases.

use std::path::{Path, PathBuf};
use std::process::Command;

use clipcap_core::metrics::{self, ptb};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

const WORDS: &[&str] = &[
    "a", "an", "the", "dog", "man", "woman", "cat", "sitting", "standing", "on", "with", "red", "blue", "ball", "two",
    "people", "street", "table", "pizza", "in", "of", "and", "is", "are", "near", "field", "grass", "bench", "top",
    "next", "to", "plate", "car", "bus", "train", "holding", "white", "large", "small",
];

/// Fragments the tokenizer treats specially: case, contractions, hyphens, slashes, ellipses, brackets,
/// quotes, numbers, URLs, unicode, abbreviations, punctuation, entities, smileys.
const NASTY: &[&str] = &[
    "Dog",
    "DOG",
    "The",
    "A",
    "He",
    "Two",
    "don't",
    "Don't",
    "DON'T",
    "can't",
    "won't",
    "it's",
    "they're",
    "we've",
    "I'm",
    "kids'",
    "James'",
    "dog's",
    "'90s",
    "'80s",
    "'90",
    "y'all",
    "o'clock",
    "rock'n'roll",
    "gonna",
    "cannot",
    "Cannot",
    "'tis",
    "ain't",
    "don’t",
    "it’s",
    "can‘t",
    "well-known",
    "x-ray",
    "5-year-old",
    "T-shirt",
    "state-of-the-art",
    "a--b",
    "-",
    "--",
    "---",
    "----",
    "-----",
    "and/or",
    "a/b/c/d",
    "w/",
    "1/2",
    "2 1/2",
    "...",
    "..",
    "…",
    ". . .",
    "....",
    "(with a hat)",
    "[playing]",
    "{in}",
    "(",
    ")",
    "\"hello\"",
    "\"",
    "'bye'",
    "'",
    "“curly”",
    "‘single’",
    "``x''",
    "«guillemets»",
    "1,000",
    "1,000,000",
    "3.5",
    ".5",
    "$5",
    "$1,000.50",
    "US$5",
    "us$5",
    "10:30",
    "10:30pm",
    "1990s",
    "21st",
    "50%",
    "555-1234",
    "(555) 123-4567",
    "10 100 1000",
    "1/2/2003",
    "2003/01/02",
    "12-25-2010",
    "http://example.com/a?b=1&c=2",
    "https://x.org/path.",
    "www.foo.org",
    "google.com",
    "Google.com/search",
    "john@example.com",
    "@john",
    "#tag",
    "#1",
    "café",
    "naïve",
    "日本語",
    "😀",
    "über",
    "straße",
    "İstanbul",
    "Ωmega",
    "ΟΔΟΣ",
    "—",
    "–",
    "−",
    "Mr.",
    "Mrs.",
    "Dr.",
    "U.S.",
    "U.S.A.",
    "etc.",
    "Calif.",
    "Inc.",
    "St.",
    "a.m.",
    "e.g.",
    "i.e.",
    "Ph.D.",
    "fig. 3",
    "no.",
    "art.",
    "vs.",
    "Jan.",
    "!",
    "?",
    ",",
    ";",
    ":",
    "!!!",
    "?!",
    "&",
    "&&",
    "AT&T",
    "at&t",
    "&amp;",
    "&quot;",
    "C++",
    "C#",
    "<b>",
    "</p>",
    "x²",
    "½",
    "¼",
    "€",
    "£5",
    "¢",
    "°",
    "5°C",
    "colour",
    "5'10\"",
    ":)",
    ":-(",
    ";)",
    "^_^",
    "<3",
    "*",
    "***",
    "a*b",
    "ＡＢＣ",
    "\u{200B}",
    "co\u{AD}op",
    "\u{AD}",
    "\t",
    "  ",
    "\u{A0}",
    "dog.cat",
    "wow!great",
    "what?!no",
    "IMG_1234.jpg",
    "photo.png",
    "file.tar.gz",
    "Sept.",
    "May.",
    "sq.",
    "'em",
    "'cause",
    "li'l",
    "c'mon",
    "O'Brien",
    "somethin'",
    "goin'",
    "don'ts",
    "he'd've",
    "+5",
    "-5",
    "+-1",
    "1e5",
    "0x1F",
];

/// A seeded generator of captions that mix ordinary words with the nasty fragments.
struct Captions(ChaCha8Rng);

impl Captions {
    fn word(&mut self) -> String {
        let w = WORDS[self.0.random_range(0..WORDS.len())];
        match self.0.random_range(0..20) {
            0 => w.to_uppercase(),
            1 | 2 => w[..1].to_uppercase() + &w[1..],
            _ => w.to_string(),
        }
    }

    fn caption(&mut self) -> String {
        match self.0.random_range(0..100) {
            0 | 1 => return String::new(),
            2..=4 => return self.word(),
            _ => {}
        }
        let n = self.0.random_range(2..14);
        let mut parts: Vec<String> = Vec::with_capacity(n);
        for _ in 0..n {
            parts.push(if self.0.random_range(0..100) < 35 {
                NASTY[self.0.random_range(0..NASTY.len())].to_string()
            } else {
                self.word()
            });
        }
        let mut text = String::new();
        for p in parts {
            // Mostly spaces between parts; sometimes none (punctuation glued to a word).
            if !text.is_empty() && self.0.random_range(0..10) > 0 {
                text.push(' ');
            }
            text.push_str(&p);
        }
        text.push_str(["", ".", ".", ".", "!", " .", "?", "..."][self.0.random_range(0..8)]);
        text
    }

    /// Like `base`, with some words replaced or dropped and maybe a nasty fragment added.
    fn variant(&mut self, base: &[String]) -> String {
        let mut out: Vec<String> = Vec::new();
        for w in base {
            match self.0.random_range(0..10) {
                0 => {}
                1 => out.push(self.word()),
                2 => out.push(NASTY[self.0.random_range(0..NASTY.len())].into()),
                _ => out.push(w.clone()),
            }
        }
        out.join(" ") + [".", "", " ."][self.0.random_range(0..3)]
    }
}

fn jar() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let found = glob_one(
        &root.join("export/.venv/lib"),
        "pycocoevalcap/tokenizer/stanford-corenlp-3.4.1.jar",
    );
    found.unwrap_or_else(|| {
        panic!("pycocoevalcap's PTBTokenizer jar not found in export/.venv (run scripts/setup-lab.sh)")
    })
}

/// `lib/python3.X/site-packages/<tail>` under `lib`.
fn glob_one(lib: &Path, tail: &str) -> Option<PathBuf> {
    std::fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages").join(tail))
        .find(|p| p.is_file())
}

#[test]
fn the_tokenizer_equals_stanfords_ptbtokenizer() {
    let mut generator = Captions(ChaCha8Rng::seed_from_u64(7));
    let captions: Vec<String> = (0..3000).map(|_| generator.caption()).collect();
    let text = captions.join("\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("captions.txt");
    std::fs::write(&file, &text).unwrap();
    let out = Command::new("java")
        .arg("-cp")
        .arg(jar())
        .args(["edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"])
        .arg(&file)
        .output()
        .expect("java (Debian default-jre-headless; scripts/setup-lab.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = String::from_utf8(out.stdout).unwrap();
    let got = ptb::tokenize(&text);
    let (want_lines, got_lines): (Vec<&str>, Vec<&str>) = (want.split('\n').collect(), got.split('\n').collect());
    assert_eq!(want_lines.len(), got_lines.len(), "line counts differ");
    let differ: Vec<String> = want_lines
        .iter()
        .zip(&got_lines)
        .enumerate()
        .filter(|(_, (w, g))| w != g)
        .map(|(i, (w, g))| format!("caption {i}: {:?}\n  jar:  {w:?}\n  rust: {g:?}", captions[i]))
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {} captions differ:\n{}",
        differ.len(),
        captions.len(),
        differ.join("\n")
    );
    // The generator reached the cases it was written for.
    for token in [
        "n't",
        "-lrb-",
        "``",
        "''",
        "...",
        "--",
        "u.s.",
        "1,000",
        "café",
        "http://example.com/a?b=1&c=2",
    ] {
        assert!(got.split([' ', '\n']).any(|t| t == token), "no {token:?} in the corpus");
    }
}

/// A data set of `images` images with five references each and one caption, written as COCO files.
fn dataset(dir: &Path, images: usize, seed: u64) -> (PathBuf, PathBuf) {
    let mut g = Captions(ChaCha8Rng::seed_from_u64(seed));
    let mut annotations = Vec::new();
    let mut results = Vec::new();
    let mut order: Vec<usize> = (0..images).collect();
    for id in 0..images {
        let base: Vec<String> = (0..g.0.random_range(5..11)).map(|_| g.word()).collect();
        for _ in 0..5 {
            let caption = if g.0.random_range(0..5) == 0 {
                g.caption()
            } else {
                g.variant(&base)
            };
            annotations.push(json!({"image_id": id, "caption": caption}));
        }
        let caption = if g.0.random_range(0..4) == 0 {
            g.caption()
        } else {
            g.variant(&base)
        };
        results.push(json!({"image_id": id, "caption": caption}));
        let j = g.0.random_range(0..=id);
        order.swap(id, j);
    }
    let images: Vec<Value> = order.iter().map(|&i| json!({"id": i})).collect();
    let (r, a) = (dir.join("results.json"), dir.join("annotations.json"));
    std::fs::write(&r, serde_json::to_string(&results).unwrap()).unwrap();
    std::fs::write(&a, json!({"images": images, "annotations": annotations}).to_string()).unwrap();
    (r, a)
}

fn pycocoevalcap(results: &Path, annotations: &Path) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("export/.venv/bin/python"))
        .arg(root.join("tests/metrics/pycocoevalcap_scores.py"))
        .args([results, annotations])
        .output()
        .expect("export/.venv (scripts/setup-lab.sh)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-6,
        "{what}: clipcap {got}, pycocoevalcap {want}"
    );
}

#[test]
fn scores_equal_pycocoevalcaps() {
    let dir = tempfile::tempdir().unwrap();
    let (results, annotations) = dataset(dir.path(), 1000, 11);
    let want = pycocoevalcap(&results, &annotations);

    // The command a user runs.
    let out = Command::new(env!("CARGO_BIN_EXE_clipcap"))
        .args(["score", "--json", "--results"])
        .arg(&results)
        .arg("--annotations")
        .arg(&annotations)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    for n in 0..4 {
        close(
            &format!("BLEU-{}", n + 1),
            got["bleu"][n].as_f64().unwrap(),
            want["bleu"][n].as_f64().unwrap(),
        );
    }
    close(
        "ROUGE-L",
        got["rouge_l"].as_f64().unwrap(),
        want["rouge_l"].as_f64().unwrap(),
    );
    close(
        "CIDEr-D",
        got["cider_d"].as_f64().unwrap(),
        want["cider_d"].as_f64().unwrap(),
    );
    assert!(got["notes"][0].as_str().unwrap().contains("METEOR and SPICE"));
    assert!(
        want["cider_d"].as_f64().unwrap() > 0.1,
        "a data set that scores something: {want}"
    );

    // Image by image: the same tokens, and the same ROUGE-L and CIDEr-D.
    let metrics::coco::Paired {
        ids,
        captions,
        references,
    } = metrics::coco::pair(
        metrics::coco::read_results(&results).unwrap(),
        &results,
        metrics::coco::read_annotations(&annotations).unwrap(),
        &annotations,
    )
    .unwrap();
    assert_eq!(ids.len(), 1000);
    let raw: Vec<&str> = captions.iter().map(String::as_str).collect();
    let (captions, references) = metrics::tokenize(&raw, &references);
    for (i, caption) in captions.iter().enumerate() {
        assert_eq!(caption, &want["captions"][i], "caption of image {}", ids[i]);
        assert_eq!(
            json!(references[i]),
            want["references"][i],
            "references of image {}",
            ids[i]
        );
    }
    let each = metrics::per_image(&captions, &references);
    for i in 0..1000 {
        close(
            "ROUGE-L of one image",
            each.rouge_l[i],
            want["rouge_each"][i].as_f64().unwrap(),
        );
        close(
            "CIDEr-D of one image",
            each.cider_d[i],
            want["cider_each"][i].as_f64().unwrap(),
        );
    }
}

fn score_error(results: &str, annotations: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (r, a) = (dir.path().join("results.json"), dir.path().join("captions.json"));
    std::fs::write(&r, results).unwrap();
    std::fs::write(&a, annotations).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_clipcap"))
        .args(["score", "--results"])
        .arg(&r)
        .arg("--annotations")
        .arg(&a)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn bad_score_input_is_a_clear_error() {
    let annotations =
        r#"{"annotations": [{"image_id": 1, "caption": "a dog."}, {"image_id": 2, "caption": "a cat."}]}"#;
    let error = score_error(
        "[{\"image_id\": 1, \"caption\": \"a dog.\"},\n{\"image_id\": 2 \"caption\": 1}]",
        annotations,
    );
    assert!(error.contains("results.json") && error.contains("line 2"), "{error}");
    let error = score_error(r#"[{"image_id": 1, "caption": "a dog."}]"#, annotations);
    assert!(error.contains("results.json: image 2: has references"), "{error}");
    let error = score_error(
        r#"[{"image_id": 1, "caption": "a"}, {"image_id": 2, "caption": "b"}, {"image_id": 3, "caption": "c"}]"#,
        annotations,
    );
    assert!(error.contains("captions.json: image 3: has a caption"), "{error}");
    let error = score_error("[]", annotations);
    assert!(error.contains("results.json: no results"), "{error}");
    let error = score_error(r#"[{"image_id": 1, "caption": "a"}]"#, r#"{"images": []}"#);
    assert!(error.contains("captions.json: not COCO annotations"), "{error}");
}

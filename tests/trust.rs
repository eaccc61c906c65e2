//! Signed bundles and plugins (`[security]`), with keys and signatures made by the reference tool,
//! Debian's `minisign`: what is signed loads; a changed weight file, a missing signature, another
//! key's signature, an unsigned or changed plugin are each refused with the file and the reason, by
//! every command that loads a bundle, before anything of it runs; unsigned bundles still load when
//! signatures are not required.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{build_c_plugin, copy_dir, fixtures, keypair, plugin_dir, sign, signed_plugins, tiny_bundle};

fn clipcap(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clipcap"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The setup: a signed copy of the tiny bundle and signed copies of the shipped plugins, a config
/// that requires signatures of `trusted`, and a foreign key.
struct Lab {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    bundle: PathBuf,
    plugins: PathBuf,
    secret: PathBuf,
    foreign: PathBuf,
    required: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let tmp = tempfile::tempdir_in(plugin_dir()).unwrap();
        let dir = tmp.path().to_path_buf();
        let (public, secret) = keypair(&dir, "fleet");
        let (_, foreign) = keypair(&dir, "stranger");
        let bundle = dir.join("bundle");
        copy_dir(&tiny_bundle(), &bundle);
        sign(&secret, &bundle.join("manifest.toml"));
        let plugins = signed_plugins(&dir, &secret);
        let required = dir.join("required.toml");
        std::fs::write(
            &required,
            format!(
                "[security]\ntrusted_keys_file = {public:?}\nrequire_signed = true\n\
                 [plugins]\ndirectories = [{plugins:?}]\nallow_insecure = true\n"
            ),
        )
        .unwrap();
        Lab {
            _tmp: tmp,
            dir,
            bundle,
            plugins,
            secret,
            foreign,
            required,
        }
    }

    fn caption(&self, config: &Path, bundle: &Path, decoder: &str) -> Output {
        let image = fixtures().join("images/coffee.png");
        clipcap(
            config,
            &[
                "caption",
                "--decoder",
                decoder,
                "--bundle",
                bundle.to_str().unwrap(),
                image.to_str().unwrap(),
            ],
        )
    }

    /// A copy of the signed bundle, changed by `change`.
    fn changed_bundle(&self, name: &str, change: impl FnOnce(&Path)) -> PathBuf {
        let copy = self.dir.join(name);
        copy_dir(&self.bundle, &copy);
        change(&copy);
        copy
    }
}

/// Every command that loads a bundle refuses it, with the file and the reason, and exits 2.
fn refused_everywhere(lab: &Lab, bundle: &Path, file: &str, why: &str) {
    let b = bundle.to_str().unwrap();
    let images = fixtures().join("images");
    let image = images.join("coffee.png");
    let commands: [Vec<&str>; 5] = [
        vec!["caption", "--bundle", b, image.to_str().unwrap()],
        vec!["bench", "--runs", "1", "--bundle", b, image.to_str().unwrap()],
        vec!["eval", "--bundle", b, "--images", images.to_str().unwrap()],
        vec!["check-config", "--bundle", b],
        vec!["serve", "--bundle", b],
    ];
    for args in commands {
        let out = clipcap(&lab.required, &args);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(
            said.contains(&bundle.join(file).display().to_string()) && said.contains(why),
            "{args:?}: expected {file} and {why:?} in\n{said}"
        );
    }
}

#[test]
fn signed_bundles_and_plugins_load_and_anything_else_is_refused() {
    let lab = Lab::new();

    // Signed: captions, and `clipcap verify` names the key.
    let out = lab.caption(&lab.required, &lab.bundle, "greedy");
    assert!(
        out.status.success() && text(&out).contains("coffee.png [greedy]: "),
        "{}",
        text(&out)
    );
    let out = clipcap(&lab.required, &["verify", lab.bundle.to_str().unwrap()]);
    assert!(
        out.status.success() && text(&out).contains("signed by key "),
        "{}",
        text(&out)
    );
    let sampling = lab.plugins.join("libclipcap_sampling.so");
    let out = clipcap(&lab.required, &["verify", sampling.to_str().unwrap()]);
    assert!(
        out.status.success() && text(&out).contains("signed by key "),
        "{}",
        text(&out)
    );

    // One byte of a weight file changed after signing.
    let flipped = lab.changed_bundle("flipped", |b| {
        let path = b.join("lm.onnx");
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(path, bytes).unwrap();
    });
    refused_everywhere(&lab, &flipped, "lm.onnx", "the file was changed after it was signed");
    // A file cut short is named by its size, before hashing.
    let cut = lab.changed_bundle("cut", |b| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(b.join("mapper.onnx"))
            .unwrap();
        file.set_len(1000).unwrap();
    });
    refused_everywhere(&lab, &cut, "mapper.onnx", "is 1000 bytes, the manifest pins");
    // No signature.
    let unsigned = lab.changed_bundle("unsigned", |b| {
        std::fs::remove_file(b.join("manifest.toml.minisig")).unwrap()
    });
    refused_everywhere(&lab, &unsigned, "manifest.toml", "not signed");
    // Signed by a key the fleet does not trust.
    let stranger = lab.changed_bundle("stranger", |b| sign(&lab.foreign, &b.join("manifest.toml")));
    refused_everywhere(&lab, &stranger, "manifest.toml", "which is not one of the trusted keys");
    // The manifest itself changed after signing (a pin edited to match a new file, say).
    let edited = lab.changed_bundle("edited", |b| {
        let path = b.join("manifest.toml");
        let manifest = std::fs::read_to_string(&path).unwrap();
        std::fs::write(path, manifest.replace("max_tokens = ", "max_tokens = 1")).unwrap();
    });
    refused_everywhere(&lab, &edited, "manifest.toml", "it was changed after it was signed");

    // Without require_signed, an unsigned bundle still loads as before.
    let relaxed = lab.dir.join("relaxed.toml");
    std::fs::write(
        &relaxed,
        format!("[plugins]\ndirectories = [{:?}]\nallow_insecure = true\n", lab.plugins),
    )
    .unwrap();
    let out = lab.caption(&relaxed, &unsigned, "greedy");
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn unsigned_and_changed_plugins_are_refused_before_they_are_loaded() {
    let lab = Lab::new();
    // Unsigned, and with a constructor that crashes: refused for its signature, so never loaded
    // (it is not listed as having crashed).
    let crash = "__attribute__((constructor)) static void crash(void) { *(volatile int *)0 = 1; }\n";
    let crashing = build_c_plugin(&lab.plugins, "crashing", None, Some(crash));
    std::fs::remove_file(lab.plugins.join("crashing-extra.c")).unwrap();
    // Signed, then changed.
    let changed = lab.plugins.join("libclipcap_contrastive.so");
    std::fs::copy(plugin_dir().join("libclipcap_contrastive.so"), &changed).unwrap();
    sign(&lab.secret, &changed);
    let mut bytes = std::fs::read(&changed).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&changed, bytes).unwrap();

    let out = clipcap(&lab.required, &["plugins", "list"]);
    let said = text(&out);
    assert!(said.contains("greedy") && said.contains("sample"), "{said}");
    for (lib, why) in [
        (&crashing, "not signed: "),
        (&changed, "it was changed after it was signed"),
    ] {
        let line = said
            .lines()
            .find(|l| l.contains(&lib.display().to_string()) && l.contains(why))
            .unwrap_or_else(|| panic!("{} not refused for {why:?}:\n{said}", lib.display()));
        assert!(!line.contains("crashed"), "{line}");
    }
    // Their decoders do not exist; the signed ones caption, in process and isolated.
    let out = lab.caption(&lab.required, &lab.bundle, "contrastive");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no decoder `contrastive`"), "{}", text(&out));
    for decoder in ["greedy", "greedy:isolate=true"] {
        let out = lab.caption(&lab.required, &lab.bundle, decoder);
        assert!(out.status.success(), "{decoder}: {}", text(&out));
    }
}

//! Decoder plugins end to end: each decoder against its PyTorch reference on the fixture bundle and
//! real photographs, seeded sampling, the C ABI (a plugin written in C, and libraries that break the
//! ABI), misbehaving decoders, fallbacks, parameter checks and the ownership/mode rules for loading.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clipcap_core::Batching;
use clipcap_core::bundle::Bundle;
use clipcap_core::captioner::Captioner;
use clipcap_core::decoding::{DecoderRequest, Plugins};
use clipcap_core::imageio;
use common::{
    RULE_BREAKERS, Reference, build_c_plugin, decoder, options, plugin_dir, plugins, references, runtime, tiny_bundle,
};

fn captioner(bundle: &Path) -> Captioner {
    Captioner::load(&Bundle::open(bundle).unwrap(), &runtime(), Batching::default()).unwrap()
}

fn check_references(captioner: &Captioner, plugins: &Plugins, refs: &[Reference]) {
    for r in refs {
        let mut d = decoder(plugins, &r.decoder);
        let prepared = captioner
            .prepare(&imageio::load_file(&r.image_path()).unwrap())
            .unwrap();
        let c = captioner.decode(&prepared, &mut d, None, 0).unwrap();
        assert_eq!(
            c.token_ids,
            r.token_ids,
            "{} with {}: token ids differ from PyTorch",
            r.image.display(),
            r.decoder
        );
        assert_eq!(c.caption, r.caption);
    }
}

#[test]
fn decoders_match_their_pytorch_references() {
    let (plugins, captioner) = (plugins(), captioner(&tiny_bundle()));
    for name in ["greedy", "beam", "contrastive", "magic"] {
        check_references(&captioner, &plugins, &references(name));
    }
}

#[test]
fn beams_that_stop_at_different_lengths_match_the_reference() {
    // The reference ran with extra stop tokens (see regenerate.sh); give the bundle the same.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(tiny_bundle()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let manifest = std::fs::read_to_string(dir.join("manifest.toml")).unwrap();
    let edited = manifest.replace(
        "stop_tokens = [\n    13,\n    50256,\n]",
        "stop_tokens = [13, 50256, 46234, 18912]",
    );
    assert_ne!(manifest, edited);
    std::fs::write(dir.join("manifest.toml"), edited).unwrap();
    check_references(&captioner(&dir), &plugins(), &references("beam-stops"));
}

#[test]
fn sampling_is_reproducible_by_seed() {
    let (plugins, captioner) = (plugins(), captioner(&tiny_bundle()));
    let mut sample = decoder(&plugins, "sample:temperature=0.8,top_k=40,top_p=0.95");
    let image = imageio::load_file(&common::fixtures().join("images/coffee.png")).unwrap();
    let prepared = captioner.prepare(&image).unwrap();
    let mut run = |seed| captioner.decode(&prepared, &mut sample, None, seed).unwrap().token_ids;
    let first = run(7);
    assert_eq!(first, run(7), "same seed, same caption");
    let others: std::collections::HashSet<Vec<u32>> = (0..5).map(&mut run).collect();
    assert!(
        others.len() >= 4,
        "different seeds should give different captions: {} distinct of 5",
        others.len()
    );
}

#[test]
fn misbehaving_decoders_fail_only_their_caption() {
    let (plugins, captioner) = (plugins(), captioner(&tiny_bundle()));
    let r = &references("greedy")[0];
    let prepared = captioner
        .prepare(&imageio::load_file(&r.image_path()).unwrap())
        .unwrap();
    let mut greedy = decoder(&plugins, "greedy");
    for (spec, why) in RULE_BREAKERS {
        let mut bad = decoder(&plugins, spec);
        for attempt in 0..2 {
            let err = captioner.decode(&prepared, &mut bad, None, 0).unwrap_err().to_string();
            assert!(
                err.contains(&format!("decoder `{spec}`")) && err.contains(why),
                "{spec} (attempt {attempt}): {err}"
            );
        }
        // The process, the model and its cache are unharmed.
        assert_eq!(
            captioner.decode(&prepared, &mut greedy, None, 0).unwrap().token_ids,
            r.token_ids,
            "after {spec}"
        );
    }
}

#[test]
fn a_fallback_decoder_takes_over_a_failed_caption() {
    let (plugins, captioner) = (plugins(), captioner(&tiny_bundle()));
    let r = &references("greedy")[1];
    let prepared = captioner
        .prepare(&imageio::load_file(&r.image_path()).unwrap())
        .unwrap();
    let (mut panic, mut greedy) = (decoder(&plugins, "panic"), decoder(&plugins, "greedy"));
    let c = captioner.decode(&prepared, &mut panic, Some(&mut greedy), 0).unwrap();
    assert_eq!((c.decoder.as_str(), &c.token_ids), ("greedy", &r.token_ids));
    let failed = c.fallback_from.unwrap();
    assert_eq!(failed.decoder, "panic");
    assert!(failed.error.contains("panicked"), "{}", failed.error);
}

#[test]
fn decoder_parameters_are_checked_by_name() {
    let plugins = plugins();
    for (spec, why) in [
        (
            "beam:num_beam=3",
            "unknown parameter `num_beam`; it takes num_beams, length_penalty, temperature",
        ),
        ("beam:num_beams=0", "parameter `num_beams` = 0: out of range [1, 64]"),
        ("beam:num_beams=2.5", "parameter `num_beams` = 2.5: expected an integer"),
        ("sample:top_p=lots", "parameter `top_p` = lots: expected a number"),
        ("picky:fail=maybe", "parameter `fail` = maybe: expected true or false"),
        ("picky:fail=true", "picky refuses to be created"),
        ("greedy:beams=2", "unknown parameter `beams`; it takes none"),
        ("nucleus", "no decoder `nucleus`"),
        ("beam:num_beams", "is not key=value"),
    ] {
        let err = DecoderRequest::parse(spec)
            .and_then(|r| plugins.create(&r, false).map(|_| ()))
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{spec}: {err}");
    }
    let err = plugins
        .create(&DecoderRequest::parse("nucleus").unwrap(), false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("available: ") && err.contains("beam") && err.contains("magic"),
        "{err}"
    );
}

#[test]
fn a_plugin_written_in_c_captions_like_the_rust_one() {
    let tmp = tempfile::tempdir_in(plugin_dir()).unwrap();
    build_c_plugin(tmp.path(), "c_example", None, None);
    let plugins = Plugins::load(&options(vec![tmp.path().to_path_buf()], true));
    assert!(plugins.refused().is_empty(), "{:?}", plugins.refused());
    let info = plugins.decoders().iter().find(|d| d.name == "c_greedy").unwrap();
    assert_eq!(
        (
            info.plugin.as_str(),
            info.plugin_version.as_str(),
            info.abi_version.as_str()
        ),
        ("c-example", "1.0.0", "2.1")
    );
    // The same source built against the older minor (2.0: no extensions, smaller structs) loads in
    // this host and captions alike; its minor-1 decoder is not there.
    let older = tempfile::tempdir_in(plugin_dir()).unwrap();
    build_c_plugin(
        older.path(),
        "c_older",
        Some("CLIPCAP_DECODER_ABI_TARGET_MINOR=0"),
        None,
    );
    let older = Plugins::load(&options(vec![older.path().to_path_buf()], true));
    assert!(older.refused().is_empty(), "{:?}", older.refused());
    let names: Vec<(&str, &str)> = older
        .decoders()
        .iter()
        .map(|d| (d.name.as_str(), d.abi_version.as_str()))
        .collect();
    assert_eq!(names, [("c_greedy", "2.0"), ("c_overflow", "2.0")]);
    let captioner = captioner(&tiny_bundle());
    for plugins in [&plugins, &older] {
        let mut c_greedy = decoder(plugins, "c_greedy");
        for r in references("greedy").iter().take(3) {
            let prepared = captioner
                .prepare(&imageio::load_file(&r.image_path()).unwrap())
                .unwrap();
            assert_eq!(
                captioner.decode(&prepared, &mut c_greedy, None, 0).unwrap().token_ids,
                r.token_ids
            );
        }
    }
    let prepared = captioner
        .prepare(&imageio::load_file(&references("greedy")[0].image_path()).unwrap())
        .unwrap();
    // Minor 1's extensions: "clipcap.log" is offered, an unknown id is not (the decoder checks both).
    let caption = captioner
        .decode(&prepared, &mut decoder(&plugins, "c_extensions"), None, 0)
        .unwrap();
    assert_eq!(caption.token_ids, [50256]);
    let err = captioner
        .decode(&prepared, &mut decoder(&plugins, "c_overflow"), None, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("reported 68 tokens; at most 67"), "{err}");
}

#[test]
fn libraries_that_break_the_abi_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir_in(plugin_dir()).unwrap();
    let cases = [
        (
            Some("CLIPCAP_TEST_WRONG_ABI"),
            "built for decoder ABI 3.0, this clipcap speaks 2.1: a different major version",
        ),
        (
            Some("CLIPCAP_TEST_WRONG_SIZE"),
            "struct clipcap_decoder is 16 bytes in the plugin, less than ABI 2.0's",
        ),
        (
            Some("CLIPCAP_TEST_NEEDS_EXTENSION"),
            "needs extension `clipcap.test.absent`, which this clipcap does not offer (it offers clipcap.log)",
        ),
        (Some("CLIPCAP_TEST_NO_ENTRY"), "no `clipcap_plugin_entry` symbol"),
        (
            Some("CLIPCAP_TEST_NULL_DECODE"),
            "decoder `c_greedy` lacks create, decode or destroy",
        ),
    ];
    let mut expected: Vec<(PathBuf, &str)> = cases
        .iter()
        .enumerate()
        .map(|(i, (define, why))| (build_c_plugin(tmp.path(), &format!("broken{i}"), *define, None), *why))
        .collect();
    let garbage = tmp.path().join("libgarbage.so");
    std::fs::write(&garbage, "not a shared library").unwrap();
    expected.push((garbage, "not an ELF shared library"));
    // A library built for another machine: a real plugin with its ELF header's e_machine set to
    // aarch64 (183), as a cross-build for a Jetson has it.
    let mut elf = std::fs::read(plugin_dir().join("libclipcap_search.so")).unwrap();
    elf[18..20].copy_from_slice(&183u16.to_le_bytes());
    let foreign = tmp.path().join("libforeign.so");
    std::fs::write(&foreign, elf).unwrap();
    expected.push((foreign, "built for aarch64; this clipcap runs on x86_64"));
    // A symbolic link: what it points to was not what the folder listed.
    let link = tmp.path().join("liblink.so");
    std::os::unix::fs::symlink(plugin_dir().join("libclipcap_search.so"), &link).unwrap();
    expected.push((link, "is a symbolic link"));
    let plugins = Plugins::load(&options(vec![tmp.path().to_path_buf()], true));
    assert!(plugins.decoders().is_empty());
    for (path, why) in expected {
        let refusal = plugins
            .refused()
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("{path:?} not refused"));
        assert!(refusal.reason.to_string().contains(why), "{refusal}");
    }
}

#[test]
fn a_decoder_name_is_served_by_one_library_only() {
    let tmp = tempfile::tempdir_in(plugin_dir()).unwrap();
    for name in ["liba.so", "libb.so"] {
        std::fs::copy(plugin_dir().join("libclipcap_search.so"), tmp.path().join(name)).unwrap();
    }
    let plugins = Plugins::load(&options(vec![tmp.path().to_path_buf()], true));
    assert_eq!(plugins.decoders().iter().filter(|d| d.name == "beam").count(), 1);
    assert!(
        plugins.refused()[0]
            .reason
            .to_string()
            .contains("decoder `greedy` is already provided by"),
        "{:?}",
        plugins.refused()
    );
}

#[test]
fn plugins_others_could_replace_are_refused() {
    let tmp = tempfile::tempdir_in(plugin_dir()).unwrap();
    let dir = tmp.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    let lib = dir.join("libclipcap_search.so");
    std::fs::copy(plugin_dir().join("libclipcap_search.so"), &lib).unwrap();
    let chmod = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();

    chmod(&lib, 0o666);
    let plugins = Plugins::load(&options(vec![dir.clone()], false));
    assert!(plugins.decoders().is_empty());
    let reason = plugins.refused()[0].reason.to_string();
    assert!(
        reason.contains(&format!("{} is writable by group or others (mode 666)", lib.display())),
        "{reason}"
    );
    assert_eq!(
        Plugins::load(&options(vec![dir.clone()], true)).decoders().len(),
        2,
        "allow_insecure loads it"
    );

    chmod(&lib, 0o755);
    chmod(&dir, 0o777);
    let reason = Plugins::load(&options(vec![dir.clone()], false)).refused()[0]
        .reason
        .to_string();
    assert!(
        reason.contains(&format!("{} is writable by group or others (mode 777)", dir.display())),
        "{reason}"
    );
    chmod(&dir, 0o755);

    // A folder nobody else can write, all the way up: $HOME (root's, mode 700, where tests run).
    let home = PathBuf::from(std::env::var("HOME").unwrap());
    let safe = tempfile::tempdir_in(&home).unwrap();
    std::fs::set_permissions(safe.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(&lib, safe.path().join("libclipcap_search.so")).unwrap();
    let plugins = Plugins::load(&options(vec![safe.path().to_path_buf()], false));
    assert!(
        plugins.refused().is_empty(),
        "{:?} (is {} writable by others?)",
        plugins.refused(),
        home.display()
    );
    assert_eq!(plugins.decoders().len(), 2);
}

/// What the issue tried: a copy of plugins/c/greedy.c whose constructor writes through a null
/// pointer, beside the shipped plugins. Each library is read by a process of its own, so that one is
/// refused with the reason, and every other decoder captions, in this process and isolated: nothing
/// of the crashing library ever ran in clipcap's own process (it would have died of SIGSEGV).
#[test]
fn a_library_whose_constructor_crashes_costs_that_plugin_only() {
    let tmp = tempfile::tempdir_in(plugin_dir()).unwrap();
    let dir = tmp.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    for lib in ["libclipcap_search.so", "libclipcap_sampling.so"] {
        std::fs::copy(plugin_dir().join(lib), dir.join(lib)).unwrap();
    }
    let crash = "__attribute__((constructor)) static void crash(void) { *(volatile int *)0 = 1; }\n";
    let crashing = build_c_plugin(&dir, "crashing", None, Some(crash));
    std::fs::remove_file(dir.join("crashing-extra.c")).unwrap();

    let plugins = Plugins::load(&options(vec![dir.clone()], true));
    let refused: Vec<String> = plugins.refused().iter().map(ToString::to_string).collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].starts_with(&crashing.display().to_string())
            && refused[0].contains("crashed the process that read its descriptor")
            && refused[0].contains("SIGSEGV"),
        "{refused:?}"
    );
    let names: Vec<&str> = plugins.decoders().iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["sample", "greedy", "beam"]);

    let image = common::fixtures().join("images/coffee.png");
    for isolate in [false, true] {
        let config = tmp.path().join("clipcap.toml");
        std::fs::write(
            &config,
            format!("[plugins]\ndirectories = [{dir:?}]\nallow_insecure = true\nisolate = {isolate}\n"),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_clipcap"))
            .arg("--config")
            .arg(&config)
            .args(["caption", "--decoder", "greedy", "--bundle"])
            .arg(tiny_bundle())
            .arg(&image)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "isolate = {isolate}: {:?}\n{stderr}", out.status);
        assert!(stdout.contains("coffee.png [greedy]: "), "{stdout}");
        assert!(
            stderr.contains("plugin refused") && stderr.contains("libcrashing.so") && stderr.contains("SIGSEGV"),
            "{stderr}"
        );
    }
}

//! `clipcap verify`: checks a bundle or a plugin as `security.require_signed` would before loading
//! it, and says what vouches for it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clipcap::config::Config;
use clipcap_core::bundle::{Bundle, MANIFEST};
use clipcap_core::trust::TrustedKeys;

/// Check a bundle's signature and pinned files, or a plugin's signature.
#[derive(clap::Args)]
pub struct Args {
    /// A bundle folder, or a plugin library (`libX.so`, signed as `libX.so.minisig`).
    path: PathBuf,
    /// minisign public keys; default: security.trusted_keys_file of the config. Without keys, a
    /// bundle's files are checked against its pins, and its signature is not.
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
}

pub fn run(args: Args, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let keys = args
        .keys
        .or_else(|| Some(config.security.trusted_keys_file.clone()).filter(|k| !k.as_os_str().is_empty()))
        .map(|k| TrustedKeys::load(&k))
        .transpose()?;
    if args.path.join(MANIFEST).is_file() {
        let bundle = match &keys {
            Some(keys) => Bundle::open_trusted(&args.path, keys)?,
            None => {
                let bundle = Bundle::open(&args.path)?;
                bundle.check_pins()?;
                bundle
            }
        };
        let files = &bundle.manifest.files;
        let bytes: u64 = files.values().map(|p| p.size).sum();
        let signed = match &bundle.signed_by {
            Some(id) => format!("signed by key {id}"),
            None => "signature not checked (no trusted keys: --keys or security.trusted_keys_file)".into(),
        };
        println!(
            "bundle {}: {signed}; {} files, {bytes} bytes, equal to their pins; manifest SHA-256 {}",
            args.path.display(),
            files.len(),
            bundle.manifest_sha256
        );
    } else {
        let keys =
            keys.context("a plugin is checked by its signature alone: pass --keys or set security.trusted_keys_file")?;
        let bytes = std::fs::read(&args.path).with_context(|| format!("{}: cannot read", args.path.display()))?;
        let id = keys.verify(&args.path, &bytes)?;
        println!("plugin {}: signed by key {id}", args.path.display());
    }
    Ok(ExitCode::SUCCESS)
}

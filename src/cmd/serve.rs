//! `clipcap serve`, the daemon, and `clipcap check-config`, which loads what it would and stops.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clipcap::config::Config;
use clipcap::service;
use clipcap_core::captioner::Captioner;
use clipcap_core::decoding::DecoderInstance;
use clipcap_core::runtime::Runtime;

/// The captioning daemon: camera or folder in, captions out over HTTP (docs/api.md).
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Model bundle folder; default: service.bundle of the config.
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
}

/// Check a configuration, and the bundle, plugins and decoders it names, without starting.
#[derive(clap::Args)]
pub struct CheckArgs {
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
}

pub fn serve(args: ServeArgs, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    service::run(Config::load(config)?, config, args.bundle)?;
    Ok(ExitCode::SUCCESS)
}

pub fn check(args: CheckArgs, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let bundle = config.bundle_dir(args.bundle)?;
    let loaded = service::load(&config, &bundle, &config.plugin_options())?;
    Captioner::load(
        &loaded.bundle,
        &Runtime::init(&config.runtime)?,
        config.captioning.batching(),
    )?;
    let d = &loaded.decoders;
    // Each decoder as it will run: isolated ones have started their process to get here.
    let named = |d: &DecoderInstance| {
        let place = if d.isolated() { "own process" } else { "in process" };
        format!("{} ({place})", d.label())
    };
    let fallback = d
        .fallback
        .as_ref()
        .map(|f| format!(", fallback {}", named(f)))
        .unwrap_or_default();
    let compared: Vec<String> = d.compare.iter().map(named).collect();
    let compared = if compared.is_empty() {
        String::new()
    } else {
        format!(", compared {}", compared.join(", "))
    };
    println!(
        "configuration ok: bundle {}, decoder {}{fallback}{compared}; {} decoders available",
        bundle.display(),
        named(&d.default),
        loaded.factory.plugins().decoders().len()
    );
    Ok(ExitCode::SUCCESS)
}

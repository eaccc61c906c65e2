//! `clipcap decoder-host` (hidden): the process an isolated decoder runs in. clipcap starts it itself,
//! with its socket and shared memory on descriptors 3 and 4; it reads no configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clipcap_core::decoding::{HostArgs, decoder_host};

/// The process an isolated decoder runs in (plugins.isolate).
#[derive(clap::Args)]
pub struct Args {
    plugin: PathBuf,
    decoder: String,
    #[arg(long)]
    label: String,
    #[arg(long)]
    memory_mb: u64,
    #[arg(long)]
    allow_insecure: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let args = HostArgs {
        plugin: args.plugin,
        decoder: args.decoder,
        label: args.label,
        allow_insecure: args.allow_insecure,
        memory_mb: args.memory_mb,
    };
    decoder_host(&args).map_err(|e| anyhow::anyhow!("decoder-host {}: {e}", args.label))?;
    Ok(ExitCode::SUCCESS)
}

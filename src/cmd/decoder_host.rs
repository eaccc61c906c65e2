//! `clipcap decoder-host` (hidden): the process an isolated decoder runs in. clipcap starts it itself,
//! with its socket and shared memory on descriptors 3 and 4; it reads no configuration. And
//! `clipcap describe-plugin` (hidden): the process that reads one plugin library's descriptor.

use std::path::PathBuf;
use std::process::ExitCode;

use clipcap_core::decoding::{HostArgs, ListingArgs, Vetting, decoder_host, describe_plugin};

/// The process an isolated decoder runs in (plugins.isolate).
#[derive(clap::Args)]
pub struct Args {
    plugin: PathBuf,
    decoder: String,
    #[arg(long)]
    label: String,
    #[arg(long)]
    memory_mb: u64,
    #[command(flatten)]
    vetting: VettingArgs,
}

/// The process that reads a plugin library's descriptor and prints its decoders as JSON.
#[derive(clap::Args)]
pub struct DescribeArgs {
    plugin: PathBuf,
    #[arg(long)]
    memory_mb: u64,
    #[command(flatten)]
    vetting: VettingArgs,
}

/// What the plugin file must pass (plugins.allow_insecure, security.trusted_keys_file).
#[derive(clap::Args)]
struct VettingArgs {
    #[arg(long)]
    allow_insecure: bool,
    /// minisign public keys the plugin must be signed by.
    #[arg(long, value_name = "FILE")]
    trusted_keys: Option<PathBuf>,
}

impl From<VettingArgs> for Vetting {
    fn from(v: VettingArgs) -> Vetting {
        Vetting {
            allow_insecure: v.allow_insecure,
            trusted_keys: v.trusted_keys,
        }
    }
}

pub fn describe(args: DescribeArgs) -> anyhow::Result<ExitCode> {
    let args = ListingArgs {
        plugin: args.plugin,
        vetting: args.vetting.into(),
        memory_mb: args.memory_mb,
    };
    describe_plugin(&args).map_err(|e| anyhow::anyhow!("describe-plugin {}: {e}", args.plugin.display()))?;
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let args = HostArgs {
        plugin: args.plugin,
        decoder: args.decoder,
        label: args.label,
        vetting: args.vetting.into(),
        memory_mb: args.memory_mb,
    };
    decoder_host(&args).map_err(|e| anyhow::anyhow!("decoder-host {}: {e}", args.label))?;
    Ok(ExitCode::SUCCESS)
}

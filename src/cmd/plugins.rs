//! `clipcap plugins`: the decoder plugins found, and those refused.

use std::path::Path;
use std::process::ExitCode;

use clipcap::config::Config;
use clipcap_core::decoding::Plugins;

/// Decoder plugins.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Every decoder found (plugin, version, ABI, parameters) and every library refused, with why.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: Args, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let Command::List { json } = args.command;
    let plugins = Plugins::load(&Config::load(config)?.plugin_options());
    list(&plugins, json);
    Ok(ExitCode::SUCCESS)
}

fn list(plugins: &Plugins, json: bool) {
    if json {
        println!("{}", serde_json::to_string(plugins).expect("plugins serialise"));
        return;
    }
    for d in plugins.decoders() {
        println!(
            "{}  ({} {}, ABI {}, {})",
            d.name,
            d.plugin,
            d.plugin_version,
            d.abi_version,
            d.path.display()
        );
        println!("    {}", d.description);
        for p in &d.params {
            println!(
                "    {} ({}, default {}, range [{}, {}]): {}",
                p.name,
                p.kind.name(),
                p.default,
                p.min,
                p.max,
                p.description
            );
        }
    }
    for r in plugins.refused() {
        println!("refused {r}");
    }
    if plugins.decoders().is_empty() {
        println!("no decoders found; check plugins.directories in the config");
    }
}

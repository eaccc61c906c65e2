//! The `clipcap` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clipcap::bundle::Bundle;
use clipcap::captioner::Captioner;
use clipcap::config::Config;
use clipcap::decoding::Greedy;
use clipcap::imageio;
use clipcap::runtime::Runtime;

#[derive(Parser)]
#[command(
    name = "clipcap",
    version,
    about = "Image captioning with CLIP, a mapping network and GPT-2"
)]
struct Cli {
    /// Configuration file (TOML; see config.toml for every key). Environment variables
    /// CLIPCAP__SECTION__KEY override it.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Caption image files, one line per image.
    Caption {
        /// Model bundle folder (docs/bundle.md).
        #[arg(long, value_name = "DIR")]
        bundle: PathBuf,
        /// JSON lines: image, caption, token_ids, per-stage milliseconds (or image and error).
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<PathBuf>,
    },
}

/// Exit status when some images could not be captioned; the others still were.
const EXIT_SOME_FAILED: u8 = 1;
/// Exit status when nothing could run (bad configuration, bundle or ONNX Runtime).
const EXIT_SETUP: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = ["warn", "info", "debug"][verbose.min(2) as usize];
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Caption { bundle, json, images } => {
            let bundle = Bundle::open(&bundle)?;
            let runtime = Runtime::init(&config.runtime)?;
            let mut captioner = Captioner::load(&bundle, &runtime)?;
            let mut failed = false;
            for path in &images {
                let result = imageio::load_file(path)
                    .map_err(anyhow::Error::from)
                    .and_then(|img| Ok(captioner.caption(&img, &mut Greedy)?));
                match result {
                    Ok(c) if json => println!(
                        "{}",
                        serde_json::json!({"image": path, "caption": c.caption, "token_ids": c.token_ids, "ms": c.ms})
                    ),
                    Ok(c) => println!("{}: {}", path.display(), c.caption),
                    Err(e) => {
                        failed = true;
                        eprintln!("error: {e:#}");
                        if json {
                            println!("{}", serde_json::json!({"image": path, "error": format!("{e:#}")}));
                        }
                    }
                }
            }
            Ok(if failed {
                ExitCode::from(EXIT_SOME_FAILED)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

//! The `clipcap` command line: parses the arguments and hands each command to its module (src/cmd/),
//! which loads what it needs and runs the library (src/lib.rs); `serve` is the daemon.

mod cmd;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use cmd::{bench, caption, decoder_host, eval, plugins, report, score, serve, verify};

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
    Caption(caption::Args),
    Bench(bench::Args),
    Eval(eval::Args),
    Report(report::Args),
    Score(score::Args),
    Serve(serve::ServeArgs),
    CheckConfig(serve::CheckArgs),
    Plugins(plugins::Args),
    Verify(verify::Args),
    #[command(hide = true)]
    DecoderHost(decoder_host::Args),
    #[command(hide = true)]
    DescribePlugin(decoder_host::DescribeArgs),
}

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let config = cli.config.as_deref();
    let ran = match cli.command {
        Command::Caption(args) => caption::run(args, config),
        Command::Bench(args) => bench::run(args, config, started),
        Command::Eval(args) => eval::run(args, config),
        Command::Report(args) => report::run(args, config),
        Command::Score(args) => score::run(args),
        Command::Serve(args) => serve::serve(args, config),
        Command::CheckConfig(args) => serve::check(args, config),
        Command::Plugins(args) => plugins::run(args, config),
        Command::Verify(args) => verify::run(args, config),
        Command::DecoderHost(args) => decoder_host::run(args),
        Command::DescribePlugin(args) => decoder_host::describe(args),
    };
    ran.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(cmd::EXIT_SETUP)
    })
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

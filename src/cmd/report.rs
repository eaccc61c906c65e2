//! `clipcap report`: the daemons' caption logs (files, or a broker's topics) as the comparison table.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clipcap::config::Config;
use clipcap::report;

/// The decoder comparison of daemons' caption logs (captioning.compare), reference-free, with the
/// people's votes (captioning.votes) as pairwise win rates.
#[derive(clap::Args)]
pub struct Args {
    /// Caption logs (service.caption_log), one per device or run.
    #[arg(required_unless_present = "mqtt", value_name = "LOG")]
    logs: Vec<PathBuf>,
    /// Instead of logs: subscribe to this broker (mqtt:// or mqtts://; the credentials and
    /// certificates of [publish] in the config) and report what the fleet publishes.
    #[arg(long, value_name = "URL", conflicts_with = "logs")]
    mqtt: Option<String>,
    /// With --mqtt: the topic filter of the devices' records.
    #[arg(long, value_name = "FILTER", default_value = "clipcap/+/captions", requires = "mqtt")]
    topic: String,
    /// With --mqtt: how long to collect before reporting (e.g. 30s, 10m, 2h).
    #[arg(long, value_name = "DURATION", default_value = "60s", requires = "mqtt")]
    listen: humantime::Duration,
    /// Folder for report.md, report.csv, report.json and report.svg.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Also a report for each group of frames: `source`, by the source's name.
    #[arg(long, value_name = "GROUP")]
    group_by: Option<report::GroupBy>,
    #[arg(long, default_value_t = 1000)]
    draws: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

/// Reads the configuration only to subscribe (its `[publish]` credentials).
pub fn run(args: Args, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let logs = match args.mqtt {
        Some(url) => {
            let mut broker = Config::load(config)?.publish;
            broker.url = url;
            report::subscribe(&broker, &args.topic, args.listen.into())?
        }
        None => report::read(&args.logs)?,
    };
    super::emit(
        &report::report(&logs, args.draws, args.seed, args.group_by),
        args.json,
        args.out,
    )?;
    Ok(ExitCode::SUCCESS)
}

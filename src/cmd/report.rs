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
    /// Folder for report.md, report.csv, report.json, the plots (report-cider-d.svg,
    /// report-clipscore.svg) and report.html, the page with the frames and their captions.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Also a report for each group of frames: by `source` name, live `bundle`, or primary `decoder`.
    #[arg(long, value_name = "GROUP")]
    group_by: Option<report::GroupBy>,
    /// Where the kept frames (captioning.keep_compared_frames) are, when copied off the device:
    /// looked up here by file name instead of at the path the daemon logged.
    #[arg(long, value_name = "DIR")]
    frames: Option<PathBuf>,
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
    let options = report::Options {
        draws: args.draws,
        seed: args.seed,
        group_by: args.group_by,
        frames: args.frames,
    };
    super::emit(&report::report(&logs, &options), args.json, args.out)?;
    Ok(ExitCode::SUCCESS)
}

//! `clipcap bench`: each stage and each decoder timed on the same images, in one process.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clipcap::bench;
use clipcap::config::Config;
use clipcap_core::imageio;

use super::DecoderArgs;

/// Time each stage and each decoder on the same images, in one process.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_name = "DIR")]
    bundle: PathBuf,
    #[command(flatten)]
    decoding: DecoderArgs,
    /// Measured rounds over the images, after one warm-up round.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Captions in flight at once, sharing the model's calls (captioning.max_batch).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    #[arg(long)]
    json: bool,
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

/// `started`: when the process started (the time to the first caption is measured from it).
pub fn run(args: Args, config: Option<&Path>, started: Instant) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let factory = super::factory(&config);
    let (mut lanes, seed) = args.decoding.create_lanes(&config, &factory, args.concurrency.into())?;
    let (opened, captioner) = super::load_captioner(&config, &args.bundle)?;
    let prepared = args
        .images
        .iter()
        .map(|p| Ok(captioner.prepare(&imageio::load_file(p)?)?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let lm_file = opened.file(&opened.manifest.language_model.file);
    let setup = bench::Setup {
        images: &prepared,
        runs: args.runs,
        seed,
        started,
        threads: match config.runtime.intra_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        },
        lm_weight_bytes: std::fs::metadata(&lm_file)
            .with_context(|| lm_file.display().to_string())?
            .len(),
    };
    let report = bench::run(&captioner, &mut lanes, &setup)?;
    print(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

fn print(report: &bench::Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!(
        "{:<30} {:>9} {:>10} {:>7} {:>6} {:>11} {:>7} {:>13} {:>6} {:>9} {:>9} {:>7}",
        "decoder (medians)",
        "encode",
        "decode",
        "x base",
        "steps",
        "model/step",
        "x bound",
        "decoder/step",
        "share",
        "p50",
        "p95",
        "capt/s"
    );
    for r in &report.decoders {
        println!(
            "{:<30} {:>7.1}ms {:>8.1}ms {:>7.2} {:>6.0} {:>9.2}ms {:>7.2} {:>11.3}ms {:>5.1}% {:>7.1}ms {:>7.1}ms {:>7.2}",
            r.decoder,
            r.encode_ms,
            r.decode_ms,
            r.decode_ratio,
            r.steps,
            r.model_ms_per_step,
            r.bound_ratio,
            r.decoder_ms_per_step,
            100.0 * r.decoder_ms_per_step / (r.model_ms_per_step + r.decoder_ms_per_step),
            r.p50_ms,
            r.p95_ms,
            r.captions_per_s,
        );
    }
    let m = &report.machine;
    println!("{} captions in flight at once", report.concurrency);
    println!(
        "memory bound: {:.1} MB of LM weights / {:.1} GB/s read (best of {} and twice as many threads) = {:.2} ms a step; \
         first caption {:.0} ms after start; peak RSS {:.0} MB",
        m.lm_weight_bytes as f64 / 1e6,
        m.read_gb_per_s,
        m.threads,
        m.step_bound_ms,
        m.first_caption_ms,
        m.peak_rss_mb
    );
    Ok(())
}

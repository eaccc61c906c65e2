//! `clipcap eval`: decoders (and bundles) compared on a folder of images, Ctrl-C ending it early with
//! what was captioned so far.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clipcap::config::Config;
use clipcap::eval;
use clipcap_core::runtime::Runtime;

use super::DecoderArgs;

/// Compare decoders (and bundles) on a folder of images: metrics, CLIPScore, diversity, latency,
/// and paired-bootstrap intervals; Markdown on stdout, and with --out also CSV, JSON, plots
/// and an HTML page with the images.
#[derive(clap::Args)]
pub struct Args {
    /// Model bundle folder; repeat to compare bundles (the prefix-length study).
    #[arg(long = "bundle", value_name = "DIR", required = true)]
    bundles: Vec<PathBuf>,
    /// Folder of the images.
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// COCO annotations (images with file_name, and captions) for the reference-based metrics;
    /// without them, the reference-free columns only.
    #[arg(long, value_name = "FILE")]
    annotations: Option<PathBuf>,
    #[command(flatten)]
    decoding: DecoderArgs,
    /// Folder for eval.md, eval.csv, eval.json, the plots (eval-cider-d.svg, eval-clipscore.svg) and
    /// eval.html, the page with every image and its captions.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Bootstrap resamples for the intervals.
    #[arg(long, default_value_t = 1000)]
    draws: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let (mut decoders, seed) = args.decoding.create(&config, &super::factory(&config))?;
    let images = eval::images(&args.images, args.annotations.as_deref())?;
    let runtime = Runtime::init(&config.runtime)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed)).context("Ctrl-C handler")?;
    let progress = indicatif::ProgressBar::new((args.bundles.len() * images.len() * decoders.len()) as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} captions, ETA {eta}").expect("a valid template"),
    );
    let bundles = args
        .bundles
        .iter()
        .map(|b| config.security.open_bundle(b))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let plan = eval::Plan {
        bundles: &bundles,
        images: &images,
        decoders: &mut decoders,
        runtime: &runtime,
        batching: config.captioning.batching(),
        seed,
        draws: args.draws,
    };
    let report = eval::run(plan, &stop, &progress)?;
    progress.finish_and_clear();
    super::emit(&report, args.json, args.out)?;
    Ok(super::status(report.interrupted))
}

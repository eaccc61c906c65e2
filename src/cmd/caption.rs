//! `clipcap caption`: image files in, one caption per image and decoder out.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clipcap::config::Config;
use clipcap::jobs;
use clipcap_core::captioner::{Caption, Captioner};
use clipcap_core::decoding::DecoderInstance;
use clipcap_core::imageio;

use super::DecoderArgs;

/// Caption image files, one line per image and decoder.
#[derive(clap::Args)]
pub struct Args {
    /// Model bundle folder (docs/bundle.md).
    #[arg(long, value_name = "DIR")]
    bundle: PathBuf,
    #[command(flatten)]
    decoding: DecoderArgs,
    /// Decoder used for an image when the chosen one fails on it. Default: decoding.fallback.
    #[arg(long, value_name = "DECODER")]
    fallback: Option<String>,
    /// JSON lines: image, decoder, caption, token_ids, steps, per-stage milliseconds (or image and error).
    #[arg(long)]
    json: bool,
    /// Images captioned at once, sharing the model's calls (captioning.max_batch); output stays in
    /// the order of the images.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

pub fn run(args: Args, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let factory = super::factory(&config);
    let fallback = args.fallback.unwrap_or_else(|| config.decoding.fallback.clone());
    let (sets, seed) = args.decoding.create_lanes(&config, &factory, args.concurrency.into())?;
    let mut lanes = sets
        .into_iter()
        .map(|decoders| {
            let fallback = (!fallback.is_empty())
                .then(|| super::create(&factory, &fallback))
                .transpose()?;
            Ok(Lane { decoders, fallback })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (_, captioner) = super::load_captioner(&config, &args.bundle)?;
    let mut failed = false;
    jobs::run(
        &mut lanes,
        args.images.len(),
        |lane, i| caption(&captioner, lane, seed, &args.images[i]),
        |i, results| {
            for result in results {
                failed |= print(&args.images[i], result, args.json);
            }
        },
    );
    Ok(super::status(failed))
}

/// What one thread captions with.
struct Lane {
    decoders: Vec<DecoderInstance>,
    fallback: Option<DecoderInstance>,
}

/// One image with every decoder of the lane: each decoder's label and caption or error.
fn caption(captioner: &Captioner, lane: &mut Lane, seed: u64, path: &Path) -> Vec<(String, anyhow::Result<Caption>)> {
    let prepared = imageio::load_file(path)
        .map_err(anyhow::Error::from)
        .and_then(|img| Ok(captioner.prepare(&img)?));
    lane.decoders
        .iter_mut()
        .map(|decoder| {
            let result = prepared
                .as_ref()
                .map_err(|e| anyhow::anyhow!("{e:#}"))
                .and_then(|p| Ok(captioner.decode(p, decoder, lane.fallback.as_mut(), seed)?));
            (decoder.label().to_string(), result)
        })
        .collect()
}

/// Prints one caption (or its error); true when it failed.
fn print(path: &Path, (decoder, result): (String, anyhow::Result<Caption>), json: bool) -> bool {
    match result {
        Ok(c) if json => {
            let mut line = serde_json::to_value(&c).expect("a caption serialises");
            line["image"] = serde_json::json!(path);
            println!("{line}");
            false
        }
        // One line per caption, even when a model emits line breaks.
        Ok(c) => {
            println!(
                "{} [{}]: {}",
                path.display(),
                c.decoder,
                c.caption.replace(['\n', '\r'], " ")
            );
            false
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            if json {
                println!(
                    "{}",
                    serde_json::json!({"image": path, "decoder": decoder, "error": format!("{e:#}")})
                );
            }
            true
        }
    }
}

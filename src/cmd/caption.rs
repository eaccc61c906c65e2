//! `clipcap caption`: image files in, one caption per image and decoder out.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clipcap::config::Config;
use clipcap_core::captioner::Captioner;
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
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

pub fn run(args: Args, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let factory = super::factory(&config);
    let (mut decoders, seed) = args.decoding.create(&config, &factory)?;
    let fallback = args.fallback.unwrap_or_else(|| config.decoding.fallback.clone());
    let mut fallback = (!fallback.is_empty())
        .then(|| super::create(&factory, &fallback))
        .transpose()?;
    let mut captioner = super::load_captioner(&config, &args.bundle)?;
    let failed = caption(
        &mut captioner,
        &mut decoders,
        fallback.as_mut(),
        seed,
        args.json,
        &args.images,
    )?;
    Ok(super::status(failed))
}

/// Captions every image with every decoder; true when some failed.
fn caption(
    captioner: &mut Captioner,
    decoders: &mut [DecoderInstance],
    mut fallback: Option<&mut DecoderInstance>,
    seed: u64,
    json: bool,
    images: &[PathBuf],
) -> anyhow::Result<bool> {
    let mut failed = false;
    for path in images {
        let prepared = imageio::load_file(path)
            .map_err(anyhow::Error::from)
            .and_then(|img| Ok(captioner.prepare(&img)?));
        for decoder in decoders.iter_mut() {
            let result = prepared
                .as_ref()
                .map_err(|e| anyhow::anyhow!("{e:#}"))
                .and_then(|p| Ok(captioner.decode(p, decoder, fallback.as_deref_mut(), seed)?));
            match result {
                Ok(c) if json => {
                    let mut line = serde_json::to_value(&c)?;
                    line["image"] = serde_json::json!(path);
                    println!("{line}");
                }
                // One line per caption, even when a model emits line breaks.
                Ok(c) => println!(
                    "{} [{}]: {}",
                    path.display(),
                    c.decoder,
                    c.caption.replace(['\n', '\r'], " ")
                ),
                Err(e) => {
                    failed = true;
                    eprintln!("error: {e:#}");
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"image": path, "decoder": decoder.label(), "error": format!("{e:#}")})
                        );
                    }
                }
            }
        }
    }
    Ok(failed)
}

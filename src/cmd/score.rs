//! `clipcap score`: a COCO results file scored against COCO references as pycocoevalcap scores it;
//! no model and no configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clipcap_core::metrics::{self, coco};

/// Score captions against references as pycocoevalcap does (BLEU-1..4, ROUGE-L, CIDEr-D); no model.
#[derive(clap::Args)]
pub struct Args {
    /// COCO results file: [{"image_id": ..., "caption": ...}, ...], one caption per image.
    #[arg(long, value_name = "FILE")]
    results: PathBuf,
    /// COCO annotations file: {"annotations": [{"image_id": ..., "caption": ...}, ...], ...}.
    #[arg(long, value_name = "FILE")]
    annotations: PathBuf,
    #[arg(long)]
    json: bool,
}

/// Why METEOR and SPICE are not among the scores.
const NOT_SCORED: &str = "METEOR and SPICE are not computed here (they need Java and model downloads); \
                          `clipcap-export evaluate` computes them with pycocoevalcap";

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let coco::Paired {
        ids,
        captions,
        references,
    } = coco::pair(
        coco::read_results(&args.results)?,
        &args.results,
        coco::read_annotations(&args.annotations)?,
        &args.annotations,
    )?;
    let raw: Vec<&str> = captions.iter().map(String::as_str).collect();
    let (captions, references) = metrics::tokenize(&raw, &references);
    let scores = metrics::per_image(&captions, &references).all();
    let cider_note = (ids.len() == 1).then_some(
        "CIDEr-D takes its document frequencies from the evaluated images; with one image it is 0 by definition",
    );
    if args.json {
        let mut out = serde_json::to_value(&scores)?;
        out["images"] = ids.len().into();
        out["notes"] = serde_json::json!([NOT_SCORED].iter().chain(&cider_note).collect::<Vec<_>>());
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} images", ids.len());
    println!("| BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | ROUGE-L | CIDEr-D |\n|---|---|---|---|---|---|");
    let b = scores.bleu;
    println!(
        "| {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} |",
        b[0], b[1], b[2], b[3], scores.rouge_l, scores.cider_d
    );
    for note in [NOT_SCORED].iter().chain(&cider_note) {
        println!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

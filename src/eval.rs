//! `clipcap eval`: the field comparison of decoding methods. Every image of a folder is captioned once
//! per (bundle, decoder), then each of those "systems" gets a row of metrics (BLEU, ROUGE-L and CIDEr-D
//! against the references when there are any; CLIPScore and RefCLIPScore with the bundle's CLIP;
//! length and diversity; latency), and every pair of systems the paired-bootstrap differences that
//! say whether the gap is real. Written as Markdown, CSV, JSON and a quality-against-latency plot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use serde::Serialize;

use clipcap_core::Batching;
use clipcap_core::bundle::Bundle;
use clipcap_core::captioner::Captioner;
use clipcap_core::decoding::DecoderInstance;
use clipcap_core::imageio;
use clipcap_core::metrics::bootstrap::{self, Difference, Measured};
use clipcap_core::metrics::clipscore;
use clipcap_core::metrics::{self, Diversity, coco};
use clipcap_core::runtime::Runtime;

/// One image to caption, and its references when the annotations have them.
pub struct Image {
    pub id: String,
    pub path: PathBuf,
    pub references: Option<Vec<String>>,
}

/// The images of `folder`: those the annotations name (file names from their `images` list, or
/// `<id>.*` files), else every image file of the folder, named by file.
pub fn images(folder: &Path, annotations: Option<&Path>) -> anyhow::Result<Vec<Image>> {
    let Some(annotations) = annotations else {
        let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
            .with_context(|| format!("--images {}", folder.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| {
                    ["png", "jpg", "jpeg", "bmp", "webp", "gif", "tif", "tiff"]
                        .contains(&x.to_string_lossy().to_lowercase().as_str())
                })
            })
            .collect();
        files.sort();
        anyhow::ensure!(!files.is_empty(), "{}: no image files", folder.display());
        return Ok(files
            .into_iter()
            .map(|path| Image {
                id: path.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                path,
                references: None,
            })
            .collect());
    };
    coco::read_annotations(annotations)?
        .into_iter()
        .map(|a| {
            let name = a.file_name.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: image {}: no file_name in the `images` list, so its file is unknown",
                    annotations.display(),
                    a.id
                )
            })?;
            let path = folder.join(&name);
            anyhow::ensure!(
                path.is_file(),
                "{}: image {}: {} does not exist",
                annotations.display(),
                a.id,
                path.display()
            );
            Ok(Image {
                id: a.id.to_string(),
                path,
                references: Some(a.references),
            })
        })
        .collect()
}

/// What one system (bundle and decoder) produced, image by image.
pub(crate) struct System {
    pub bundle: String,
    pub decoder: String,
    pub captions: Vec<String>,
    pub clip_score: Vec<f64>,
    pub ref_clip_score: Vec<f64>,
    pub caption_ms: Vec<f64>,
    /// Empty where token counts are unknown (the daemon's comparisons).
    pub token_ms: Vec<f64>,
    pub failed: usize,
}

impl System {
    /// A system with nothing measured yet.
    pub fn new(bundle: String, decoder: String) -> Self {
        System {
            bundle,
            decoder,
            captions: Vec::new(),
            clip_score: Vec::new(),
            ref_clip_score: Vec::new(),
            caption_ms: Vec::new(),
            token_ms: Vec::new(),
            failed: 0,
        }
    }

    fn name(&self, several_bundles: bool) -> String {
        if several_bundles {
            format!("{} {}", self.bundle, self.decoder)
        } else {
            self.decoder.clone()
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
}

fn percentiles(values: &[f64]) -> Percentiles {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| metrics::quantile(&v, q).unwrap_or(f64::NAN);
    Percentiles {
        p50: at(0.5),
        p95: at(0.95),
    }
}

/// A system's row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub system: String,
    pub bundle: String,
    pub decoder: String,
    pub images: usize,
    /// Captions that failed (scored as empty captions).
    pub failed: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<metrics::Scores>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ref_clip_score: Option<f64>,
    pub diversity: Diversity,
    pub ms_per_caption: Percentiles,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms_per_token: Option<Percentiles>,
}

/// The bootstrap differences between two systems: `a` minus `b`.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub a: String,
    pub b: String,
    pub differences: Vec<Difference>,
}

/// One caption of a system, with its scores.
#[derive(Debug, Clone, Serialize)]
pub struct Captioned {
    pub image: String,
    pub caption: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ref_clip_score: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub images: usize,
    /// Set when Ctrl-C stopped the run: the rows cover the images done by then.
    pub interrupted: bool,
    pub rows: Vec<Row>,
    pub pairs: Vec<Pair>,
    pub notes: Vec<String>,
    /// Every caption of every system (JSON output only).
    pub captions: std::collections::BTreeMap<String, Vec<Captioned>>,
}

/// What to compare, on what.
pub struct Plan<'a> {
    pub bundles: &'a [Bundle],
    pub images: &'a [Image],
    pub decoders: &'a mut [DecoderInstance],
    pub runtime: &'a Runtime,
    pub batching: Batching,
    pub seed: u64,
    pub draws: usize,
}

/// Captions every image with every (bundle, decoder) and measures the systems. Stops early, with
/// what it has, when `stop` is set (Ctrl-C).
pub fn run(plan: Plan, stop: &Arc<AtomicBool>, progress: &indicatif::ProgressBar) -> anyhow::Result<Report> {
    let mut systems: Vec<System> = Vec::new();
    let mut interrupted = false;
    'bundles: for bundle in plan.bundles {
        let captioner = Captioner::load(bundle, plan.runtime, plan.batching.clone())?;
        let name = bundle.name();
        let first = systems.len();
        let scored = captioner.has_text_encoder();
        for d in plan.decoders.iter() {
            systems.push(System::new(name.clone(), d.label().to_string()));
        }
        for image in plan.images {
            if stop.load(Ordering::Relaxed) {
                interrupted = true;
                break 'bundles;
            }
            let rgb = imageio::load_file(&image.path)?;
            let prepared = captioner
                .prepare(&rgb)
                .with_context(|| image.path.display().to_string())?;
            let references = match &image.references {
                Some(refs) => captioner.caption_embeddings(&refs.iter().map(String::as_str).collect::<Vec<_>>())?,
                None => None,
            };
            for (decoder, system) in plan.decoders.iter_mut().zip(&mut systems[first..]) {
                let caption = match captioner.decode(&prepared, decoder, None, plan.seed) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("{}: {}: {e}", image.path.display(), decoder.label());
                        system.failed += 1;
                        system.captions.push(String::new());
                        if scored {
                            system.clip_score.push(0.0);
                        }
                        if references.is_some() {
                            system.ref_clip_score.push(0.0);
                        }
                        progress.inc(1);
                        continue;
                    }
                };
                if let Some(mut embedded) = captioner.caption_embeddings(&[&caption.caption])? {
                    let embedded = embedded.remove(0);
                    let clip = clipscore::clip_score(&prepared.image_embeds, &embedded);
                    system.clip_score.push(clip);
                    if let Some(refs) = &references {
                        system
                            .ref_clip_score
                            .push(clipscore::ref_clip_score(clip, &embedded, refs));
                    }
                }
                system.caption_ms.push(caption.ms.total);
                system
                    .token_ms
                    .push(caption.ms.decode / caption.token_ids.len().max(1) as f64);
                system.captions.push(caption.caption);
                progress.inc(1);
            }
        }
    }
    Ok(measure(
        systems,
        plan.images,
        plan.bundles.len() > 1,
        interrupted,
        plan.draws,
        plan.seed,
    ))
}

pub(crate) fn measure(
    systems: Vec<System>,
    images: &[Image],
    several_bundles: bool,
    interrupted: bool,
    draws: usize,
    seed: u64,
) -> Report {
    let mut rows = Vec::new();
    let mut measured: Vec<(String, Measured)> = Vec::new();
    let mut notes = Vec::new();
    let mut captions = std::collections::BTreeMap::new();
    for s in systems.iter().filter(|s| !s.captions.is_empty()) {
        let n = s.captions.len();
        let raw: Vec<&str> = s.captions.iter().map(String::as_str).collect();
        let references: Option<Vec<Vec<String>>> = images[..n].iter().map(|i| i.references.clone()).collect();
        let (tokenised, per_image) = match &references {
            Some(refs) => {
                let (caps, refs) = metrics::tokenize(&raw, refs);
                let per_image = metrics::per_image(&caps, &refs);
                (caps, Some(per_image))
            }
            None => (metrics::ptb::tokenize_captions(&raw), None),
        };
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let system = s.name(several_bundles);
        let listed = s
            .captions
            .iter()
            .enumerate()
            .map(|(i, caption)| Captioned {
                image: images[i].id.clone(),
                caption: caption.clone(),
                clip_score: s.clip_score.get(i).copied(),
                ref_clip_score: s.ref_clip_score.get(i).copied(),
            })
            .collect();
        captions.insert(system.clone(), listed);
        rows.push(Row {
            system: system.clone(),
            bundle: s.bundle.clone(),
            decoder: s.decoder.clone(),
            images: n,
            failed: s.failed,
            scores: per_image.as_ref().map(metrics::PerImage::all),
            clip_score: mean(&s.clip_score),
            ref_clip_score: mean(&s.ref_clip_score),
            diversity: metrics::diversity(&tokenised),
            ms_per_caption: percentiles(&s.caption_ms),
            ms_per_token: (!s.token_ms.is_empty()).then(|| percentiles(&s.token_ms)),
        });
        let mut values = std::collections::BTreeMap::new();
        if !s.clip_score.is_empty() {
            values.insert("CLIPScore", s.clip_score.clone());
        }
        if !s.ref_clip_score.is_empty() {
            values.insert("RefCLIPScore", s.ref_clip_score.clone());
        }
        values.insert(
            "length",
            tokenised.iter().map(|c| c.split_whitespace().count() as f64).collect(),
        );
        measured.push((
            system,
            Measured {
                references: per_image,
                values,
            },
        ));
    }
    if rows.iter().any(|r| r.images == 1) && images.first().is_some_and(|i| i.references.is_some()) {
        notes.push(
            "CIDEr-D takes its document frequencies from the evaluated images; with one image it is 0 by definition"
                .into(),
        );
    }
    if images.first().is_some_and(|i| i.references.is_some()) {
        notes.push(
            "METEOR and SPICE are not computed here (they need Java and model downloads); \
             `clipcap-export evaluate` computes them with pycocoevalcap"
                .into(),
        );
    }
    let mut pairs = Vec::new();
    for (i, (a_name, a)) in measured.iter().enumerate() {
        for (b_name, b) in &measured[i + 1..] {
            // Only systems measured on the same images pair up (an interrupted run may leave some short).
            if a.images() == b.images() && a.images() > 1 {
                pairs.push(Pair {
                    a: a_name.clone(),
                    b: b_name.clone(),
                    differences: bootstrap::paired(a, b, draws, seed),
                });
            }
        }
    }
    Report {
        images: images.len(),
        interrupted,
        rows,
        pairs,
        notes,
        captions,
    }
}

/// What `clipcap eval` and `clipcap report` produce: printed as Markdown (or JSON), and written as
/// `STEM.md`, `STEM.csv`, `STEM.json` and `STEM.svg` into `--out`.
pub trait Table: Serialize {
    /// The files' name in `--out`.
    const STEM: &'static str;
    fn markdown(&self) -> String;
    fn csv(&self) -> String;
    fn plot(&self, path: &Path) -> anyhow::Result<()>;

    fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("--out {}", dir.display()))?;
        let file = |ext: &str| dir.join(format!("{}.{ext}", Self::STEM));
        let write =
            |ext: &str, text: String| std::fs::write(file(ext), text).with_context(|| file(ext).display().to_string());
        write("md", self.markdown())?;
        write("csv", self.csv())?;
        write("json", serde_json::to_string_pretty(self)?)?;
        self.plot(&file("svg"))
    }
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

impl Table for Report {
    const STEM: &'static str = "eval";

    fn markdown(&self) -> String {
        let mut out = String::new();
        let done = self.rows.iter().map(|r| r.images).max().unwrap_or(0);
        out += &format!("{} images", self.images);
        if self.interrupted {
            out += &format!(" (interrupted: the rows cover the first {done})");
        }
        out += "\n\n| system | images | BLEU-4 | ROUGE-L | CIDEr-D | CLIPScore | RefCLIPScore | words | distinct-1 | distinct-2 | repetition | vocabulary | ms/caption p50 | p95 | ms/token p50 | p95 |\n";
        out += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        for r in &self.rows {
            let s = r.scores.as_ref();
            let d = &r.diversity;
            out += &format!(
                "| {} | {}{} | {} | {} | {} | {} | {} | {:.2} | {:.3} | {:.3} | {:.3} | {} | {:.1} | {:.1} | {} | {} |\n",
                r.system,
                r.images,
                if r.failed > 0 {
                    format!(" ({} failed)", r.failed)
                } else {
                    String::new()
                },
                cell(s.map(|s| s.bleu[3]), 4),
                cell(s.map(|s| s.rouge_l), 4),
                cell(s.map(|s| s.cider_d), 4),
                cell(r.clip_score, 4),
                cell(r.ref_clip_score, 4),
                d.mean_length,
                d.distinct_1,
                d.distinct_2,
                d.repetition,
                d.vocabulary,
                r.ms_per_caption.p50,
                r.ms_per_caption.p95,
                cell(r.ms_per_token.as_ref().map(|p| p.p50), 2),
                cell(r.ms_per_token.as_ref().map(|p| p.p95), 2),
            );
        }
        if !self.pairs.is_empty() {
            out += "\nDifferences, paired bootstrap over the images (A − B, 95% interval; * where the interval excludes 0):\n\n";
            out += "| A | B | metric | A − B | 95% interval |\n|---|---|---|---|---|\n";
            for p in &self.pairs {
                for d in &p.differences {
                    out += &format!(
                        "| {} | {} | {} | {:+.4}{} | [{:+.4}, {:+.4}] |\n",
                        p.a,
                        p.b,
                        d.metric,
                        d.difference,
                        if d.significant() { " *" } else { "" },
                        d.low,
                        d.high
                    );
                }
            }
            let sentences: Vec<String> = self
                .pairs
                .iter()
                .flat_map(|p| p.differences.iter().map(move |d| (p, d)))
                .filter(|(_, d)| d.significant() && d.metric != "length")
                .map(|(p, d)| {
                    let (winner, loser) = if d.difference > 0.0 { (&p.a, &p.b) } else { (&p.b, &p.a) };
                    let (low, high) = if d.difference > 0.0 {
                        (d.low, d.high)
                    } else {
                        (-d.high, -d.low)
                    };
                    format!(
                        "- {winner} beats {loser} by {:.4} {} [{low:.4}, {high:.4}]",
                        d.difference.abs(),
                        d.metric
                    )
                })
                .collect();
            if !sentences.is_empty() {
                out += "\nDifferences whose interval excludes 0:\n\n";
                out += &sentences.join("\n");
                out += "\n";
            }
        }
        for note in &self.notes {
            out += &format!("\nNote: {note}\n");
        }
        out
    }

    fn csv(&self) -> String {
        let mut out = String::from(
            "system,bundle,decoder,images,failed,bleu1,bleu2,bleu3,bleu4,rouge_l,cider_d,clip_score,ref_clip_score,\
             mean_length,distinct_1,distinct_2,repetition,vocabulary,ms_caption_p50,ms_caption_p95,ms_token_p50,ms_token_p95\n",
        );
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
        for r in &self.rows {
            let s = r.scores.as_ref();
            let d = &r.diversity;
            let quote = |t: &str| format!("\"{}\"", t.replace('"', "\"\""));
            out += &[
                quote(&r.system),
                quote(&r.bundle),
                quote(&r.decoder),
                r.images.to_string(),
                r.failed.to_string(),
                opt(s.map(|s| s.bleu[0])),
                opt(s.map(|s| s.bleu[1])),
                opt(s.map(|s| s.bleu[2])),
                opt(s.map(|s| s.bleu[3])),
                opt(s.map(|s| s.rouge_l)),
                opt(s.map(|s| s.cider_d)),
                opt(r.clip_score),
                opt(r.ref_clip_score),
                d.mean_length.to_string(),
                d.distinct_1.to_string(),
                d.distinct_2.to_string(),
                d.repetition.to_string(),
                d.vocabulary.to_string(),
                r.ms_per_caption.p50.to_string(),
                r.ms_per_caption.p95.to_string(),
                opt(r.ms_per_token.as_ref().map(|p| p.p50)),
                opt(r.ms_per_token.as_ref().map(|p| p.p95)),
            ]
            .join(",");
            out.push('\n');
        }
        out
    }

    /// Quality against latency, one point per system: CIDEr-D when there are references, else CLIPScore.
    fn plot(&self, path: &Path) -> anyhow::Result<()> {
        let (metric, points): (&str, Vec<(String, f64, f64)>) = if self.rows.iter().all(|r| r.scores.is_some()) {
            (
                "CIDEr-D",
                self.rows
                    .iter()
                    .map(|r| {
                        (
                            r.system.clone(),
                            r.ms_per_caption.p50,
                            r.scores.as_ref().map_or(0.0, |s| s.cider_d),
                        )
                    })
                    .collect(),
            )
        } else {
            (
                "CLIPScore",
                self.rows
                    .iter()
                    .map(|r| (r.system.clone(), r.ms_per_caption.p50, r.clip_score.unwrap_or(0.0)))
                    .collect(),
            )
        };
        quality_plot(path, metric, &points)
    }
}

/// A scatter plot of `(label, ms, quality)` points as SVG: latency on x, `metric` on y.
pub fn quality_plot(path: &Path, metric: &str, points: &[(String, f64, f64)]) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let max = |f: fn(&(String, f64, f64)) -> f64| points.iter().map(f).fold(0.0f64, f64::max);
    // Room on the right and above for the labels.
    let (x_max, y_max) = (max(|p| p.1) * 1.4 + 1e-9, max(|p| p.2) * 1.15 + 1e-9);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{metric} against latency"), ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("ms per caption (median)")
            .y_desc(metric)
            .draw()?;
        chart.draw_series(points.iter().map(|(_, x, y)| Circle::new((*x, *y), 5, BLUE.filled())))?;
        chart.draw_series(
            points
                .iter()
                .map(|(label, x, y)| Text::new(label.clone(), (*x, *y), ("sans-serif", 14).into_font())),
        )?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("{}: cannot draw the plot: {e}", path.display()))
}

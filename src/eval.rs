//! `clipcap eval`: the field comparison of decoding methods. Every image of a folder is captioned once
//! per (bundle, decoder), then each of those "systems" gets a row of metrics (BLEU, ROUGE-L and CIDEr-D
//! against the references when there are any; CLIPScore and RefCLIPScore with the bundle's CLIP;
//! length and diversity; latency) with each value's 95% bootstrap interval, and every pair of
//! systems the paired-bootstrap differences that say whether the gap is real. Written (table.rs) as
//! Markdown, CSV, JSON, a quality-against-latency plot per metric, and an HTML page with the images and
//! their captions (gallery.rs).

use std::collections::BTreeMap;
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
use clipcap_core::metrics::bootstrap::{self, Difference, Interval, Measured};
use clipcap_core::metrics::clipscore;
use clipcap_core::metrics::{self, Diversity, coco};
use clipcap_core::runtime::Runtime;

use crate::plot::Point;

/// One image to caption, and its references when the annotations have them.
#[derive(Debug, Clone)]
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
    /// 95% bootstrap intervals over the images of the metrics above, by metric name, and of the
    /// median latency ([`LATENCY`]).
    pub intervals: BTreeMap<String, Interval>,
}

/// The key of the median ms per caption in [`Row::intervals`].
pub const LATENCY: &str = "ms/caption p50";

/// The metrics drawn against latency, one plot each, when the systems have them.
pub const PLOTTED: [&str; 2] = ["CIDEr-D", "CLIPScore"];

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
    /// BLEU, ROUGE-L and CIDEr-D of this caption alone, when there are references.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<metrics::Scores>,
    /// People's votes for this caption as the best of its frame (`clipcap report`).
    #[serde(skip_serializing_if = "is_zero")]
    pub votes: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
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
    pub captions: BTreeMap<String, Vec<Captioned>>,
    /// The images measured, in order, for the gallery.
    #[serde(skip)]
    pub frames: Vec<Image>,
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
    let mut captions = BTreeMap::new();
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
                scores: per_image.as_ref().map(|p| p.scores(&[i])),
                votes: 0,
            })
            .collect();
        captions.insert(system.clone(), listed);
        let mut values = BTreeMap::new();
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
        let scores = per_image.as_ref().map(metrics::PerImage::all);
        let measured_here = Measured {
            references: per_image,
            values,
        };
        let mut intervals: BTreeMap<String, Interval> = measured_here
            .metrics()
            .into_iter()
            .filter_map(|m| {
                Some((
                    m.to_string(),
                    bootstrap::interval(n, draws, seed, |rows| measured_here.value(m, rows))?,
                ))
            })
            .collect();
        let ms = &s.caption_ms;
        let median = |rows: &[usize]| {
            let mut v: Vec<f64> = rows.iter().map(|&i| ms[i]).collect();
            v.sort_by(f64::total_cmp);
            metrics::quantile(&v, 0.5)
        };
        if let Some(latency) = bootstrap::interval(ms.len(), draws, seed, median) {
            intervals.insert(LATENCY.into(), latency);
        }
        rows.push(Row {
            system: system.clone(),
            bundle: s.bundle.clone(),
            decoder: s.decoder.clone(),
            images: n,
            failed: s.failed,
            scores,
            clip_score: mean(&s.clip_score),
            ref_clip_score: mean(&s.ref_clip_score),
            diversity: metrics::diversity(&tokenised),
            ms_per_caption: percentiles(&s.caption_ms),
            ms_per_token: (!s.token_ms.is_empty()).then(|| percentiles(&s.token_ms)),
            intervals,
        });
        measured.push((system, measured_here));
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
    let rows_done = rows.iter().map(|r| r.images).max().unwrap_or(0);
    Report {
        images: images.len(),
        interrupted,
        rows,
        pairs,
        notes,
        captions,
        frames: images.iter().take(rows_done).cloned().collect(),
    }
}

impl Report {
    /// The points of each plotted metric: the systems with an interval of it and of latency.
    pub fn plots(&self) -> Vec<(&'static str, Vec<Point>)> {
        PLOTTED
            .iter()
            .map(|&metric| {
                let points = self
                    .rows
                    .iter()
                    .filter_map(|r| {
                        Some(Point {
                            system: r.system.clone(),
                            ms: *r.intervals.get(LATENCY)?,
                            quality: *r.intervals.get(metric)?,
                        })
                    })
                    .collect::<Vec<_>>();
                (metric, points)
            })
            .filter(|(_, points)| !points.is_empty())
            .collect()
    }

    /// The pairwise differences whose interval excludes 0, as sentences (length left out).
    pub fn significant(&self) -> Vec<String> {
        self.pairs
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
                    "{winner} beats {loser} by {:.4} {} [{low:.4}, {high:.4}]",
                    d.difference.abs(),
                    d.metric
                )
            })
            .collect()
    }
}

/// `value [low, high]`, with the digits of the metric's column.
pub fn interval_cell(metric: &str, i: &Interval) -> String {
    let digits = if metric == LATENCY { 1 } else { 4 };
    format!("{:.digits$} [{:.digits$}, {:.digits$}]", i.value, i.low, i.high)
}

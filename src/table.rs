//! What `clipcap eval` and `clipcap report` write: the `Table` trait (Markdown, CSV, JSON, a plot per
//! metric, the HTML page) and its implementation for `clipcap eval`'s report.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::eval::{LATENCY, PLOTTED, Report, interval_cell};
use crate::gallery;
use crate::plot;

/// What `clipcap eval` and `clipcap report` produce: printed as Markdown (or JSON), and written into
/// `--out` as `STEM.md`, `STEM.csv`, `STEM.json`, a plot per metric of [`PLOTTED`] the systems have
/// (`STEM-cider-d.svg`, `STEM-clipscore.svg`) and `STEM.html`, the page with all of them and the gallery.
pub trait Table: Serialize {
    /// The files' name in `--out`.
    const STEM: &'static str;
    fn markdown(&self) -> String;
    fn csv(&self) -> String;
    /// The comparison of the systems, which the plots and the gallery show.
    fn comparison(&self) -> &Report;
    /// The page, given the plots' SVG text by metric.
    fn html(&self, plots: &[(&str, String)]) -> String;

    fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("--out {}", dir.display()))?;
        let file = |name: String| dir.join(name);
        let write = |name: String, text: &str| {
            std::fs::write(file(name.clone()), text).with_context(|| file(name).display().to_string())
        };
        write(format!("{}.md", Self::STEM), &self.markdown())?;
        write(format!("{}.csv", Self::STEM), &self.csv())?;
        write(format!("{}.json", Self::STEM), &serde_json::to_string_pretty(self)?)?;
        let mut plots = Vec::new();
        for (metric, points) in self.comparison().plots() {
            let svg = plot::render(metric, &points)?;
            write(format!("{}-{}.svg", Self::STEM, metric.to_lowercase()), &svg)?;
            plots.push((metric, svg));
        }
        write(format!("{}.html", Self::STEM), &self.html(&plots))
    }
}

/// A Markdown table of `head` and `rows`.
pub(crate) fn markdown_table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for r in rows {
        out += &format!("| {} |\n", r.join(" | "));
    }
    out
}

/// The table of each system's intervals of the plotted metrics and latency.
fn intervals_markdown(report: &Report) -> String {
    let columns: Vec<&str> = PLOTTED
        .iter()
        .copied()
        .filter(|m| report.rows.iter().any(|r| r.intervals.contains_key(*m)))
        .chain([LATENCY])
        .collect();
    let head: Vec<&str> = std::iter::once("system").chain(columns.iter().copied()).collect();
    let rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|r| {
            std::iter::once(r.system.clone())
                .chain(
                    columns
                        .iter()
                        .map(|m| r.intervals.get(*m).map_or("–".into(), |i| interval_cell(m, i))),
                )
                .collect()
        })
        .collect();
    format!(
        "\nEach system with its 95% interval (bootstrap over the images; the plots draw these):\n\n{}",
        markdown_table(&head, &rows)
    )
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
        out += &intervals_markdown(self);
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
            let sentences = self.significant();
            if !sentences.is_empty() {
                out += "\nDifferences whose interval excludes 0:\n\n";
                out += &sentences
                    .iter()
                    .map(|s| format!("- {s}"))
                    .collect::<Vec<_>>()
                    .join("\n");
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

    fn comparison(&self) -> &Report {
        self
    }

    fn html(&self, plots: &[(&str, String)]) -> String {
        gallery::page("clipcap eval", self, plots, &[])
    }
}

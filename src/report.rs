//! `clipcap report`: the daemons' caption logs (one device or several) turned into the comparison
//! table, intervals and plot of `clipcap eval`, reference-free (CLIPScore, length, diversity,
//! latency), over the frames where the decoders were compared; then the people's votes as pairwise win
//! rates with bootstrap intervals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::eval::{self, Image, System, Table};
use crate::service::{Comparison, Vote};

/// A log line: its kind and its daemon run.
#[derive(Deserialize)]
struct Line {
    event: String,
    run: u64,
}

/// A frame, across logs: (log, run, caption id).
type Frame = (usize, u64, u64);

/// The comparisons and votes of the logs.
pub struct Logs {
    comparisons: Vec<(Frame, Comparison)>,
    votes: Vec<(Frame, Vote)>,
    captions: usize,
}

/// Reads caption logs. A torn last line (a daemon writing it, or killed while writing) is skipped with
/// a warning; any other line that is not a log record is an error naming the file and line.
pub fn read(paths: &[PathBuf]) -> anyhow::Result<Logs> {
    let mut logs = Logs {
        comparisons: Vec::new(),
        votes: Vec::new(),
        captions: 0,
    };
    for (index, path) in paths.iter().enumerate() {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let lines: Vec<&str> = text.lines().collect();
        for (n, raw) in lines.iter().enumerate() {
            let where_ = || format!("{}:{}", path.display(), n + 1);
            let line: Line = match serde_json::from_str(raw) {
                Ok(l) => l,
                Err(_) if n + 1 == lines.len() && !text.ends_with('\n') => {
                    eprintln!("warning: {}: a torn last line (being written?); skipped", where_());
                    continue;
                }
                Err(e) => anyhow::bail!("{}: not a caption-log record: {e}", where_()),
            };
            match line.event.as_str() {
                "caption" => logs.captions += 1,
                "comparison" => {
                    let c: Comparison = serde_json::from_str(raw).with_context(where_)?;
                    logs.comparisons.push(((index, line.run, c.id), c));
                }
                "vote" => {
                    let v: Vote = serde_json::from_str(raw).with_context(where_)?;
                    logs.votes.push(((index, line.run, v.id), v));
                }
                other => anyhow::bail!("{}: unknown record kind {other:?}", where_()),
            }
        }
    }
    Ok(logs)
}

/// One pair of decoders judged by people: how often each was voted best on frames showing both.
#[derive(Debug, Clone, Serialize)]
pub struct WinRate {
    pub a: String,
    pub b: String,
    /// Votes for `a` and for `b` on frames where both captioned.
    pub votes_a: usize,
    pub votes_b: usize,
    /// `votes_a / (votes_a + votes_b)` and its 95% bootstrap interval.
    pub rate: f64,
    pub low: f64,
    pub high: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub captions: usize,
    pub compared_frames: usize,
    pub comparison: eval::Report,
    pub votes: usize,
    pub win_rates: Vec<WinRate>,
}

/// The decoder comparison of the logs: decoders in the order they first appear.
pub fn report(logs: &Logs, draws: usize, seed: u64) -> Report {
    let mut order: Vec<String> = Vec::new();
    for (_, c) in &logs.comparisons {
        for d in std::iter::once(&c.decoder).chain(c.compare.iter().map(|x| &x.decoder)) {
            if !order.contains(d) {
                order.push(d.clone());
            }
        }
    }
    // The frames where every decoder captioned: the systems are compared on the same frames.
    let complete: Vec<&(Frame, Comparison)> = logs
        .comparisons
        .iter()
        .filter(|(_, c)| {
            order
                .iter()
                .all(|d| *d == c.decoder || c.compare.iter().any(|x| x.decoder == *d && x.caption.is_some()))
        })
        .collect();
    let mut systems: Vec<System> = order.iter().map(|d| System::new(String::new(), d.clone())).collect();
    let scored = complete
        .iter()
        .all(|(_, c)| c.clip_score.is_some() && c.compare.iter().all(|x| x.clip_score.is_some()));
    for (_, c) in &complete {
        for s in &mut systems {
            let (caption, clip, ms) = if s.decoder == c.decoder {
                (c.caption.clone(), c.clip_score, c.ms)
            } else {
                let x = c
                    .compare
                    .iter()
                    .find(|x| x.decoder == s.decoder)
                    .expect("complete frames only");
                (x.caption.clone().unwrap_or_default(), x.clip_score, x.ms)
            };
            s.captions.push(caption);
            if scored {
                s.clip_score.push(clip.unwrap_or(0.0));
            }
            s.caption_ms.push(ms);
        }
    }
    let frames: Vec<Image> = complete
        .iter()
        .map(|((log, run, id), _)| Image {
            id: format!("{log}:{run}:{id}"),
            path: Path::new("").into(),
            references: None,
        })
        .collect();
    let mut comparison = eval::measure(systems, &frames, false, false, draws, seed);
    comparison
        .notes
        .push("latencies are the decoders' decoding times on the daemon (ms per caption)".into());
    let win_rates = win_rates(logs, &order, draws, seed);
    Report {
        captions: logs.captions,
        compared_frames: complete.len(),
        comparison,
        votes: logs.votes.len(),
        win_rates,
    }
}

fn win_rates(logs: &Logs, order: &[String], draws: usize, seed: u64) -> Vec<WinRate> {
    let shown: BTreeMap<&Frame, Vec<&str>> = logs
        .comparisons
        .iter()
        .map(|(f, c)| {
            let mut d = vec![c.decoder.as_str()];
            d.extend(
                c.compare
                    .iter()
                    .filter(|x| x.caption.is_some())
                    .map(|x| x.decoder.as_str()),
            );
            (f, d)
        })
        .collect();
    let mut out = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (i, a) in order.iter().enumerate() {
        for b in &order[i + 1..] {
            // Each vote on a frame that showed both: true when it went to `a`, false to `b`.
            let outcomes: Vec<bool> = logs
                .votes
                .iter()
                .filter(|(f, v)| {
                    shown
                        .get(f)
                        .is_some_and(|d| d.contains(&a.as_str()) && d.contains(&b.as_str()))
                        && (v.decoder == *a || v.decoder == *b)
                })
                .map(|(_, v)| v.decoder == *a)
                .collect();
            if outcomes.is_empty() {
                continue;
            }
            let n = outcomes.len();
            let share = |o: &mut dyn Iterator<Item = bool>| o.filter(|&x| x).count() as f64 / n as f64;
            let mut rates: Vec<f64> = (0..draws)
                .map(|_| share(&mut (0..n).map(|_| outcomes[rng.random_range(0..n)])))
                .collect();
            rates.sort_by(f64::total_cmp);
            let at = |q: f64| clipcap_core::metrics::quantile(&rates, q).unwrap_or(f64::NAN);
            let votes_a = outcomes.iter().filter(|&&x| x).count();
            out.push(WinRate {
                a: a.clone(),
                b: b.clone(),
                votes_a,
                votes_b: n - votes_a,
                rate: votes_a as f64 / n as f64,
                low: at(0.025),
                high: at(0.975),
            });
        }
    }
    out
}

/// The comparison's CSV and plot are `clipcap eval`'s; the Markdown adds the votes.
impl Table for Report {
    const STEM: &'static str = "report";

    fn markdown(&self) -> String {
        let mut out = format!(
            "{} captions logged, {} frames compared with every decoder captioning\n\n",
            self.captions, self.compared_frames
        );
        out += &self.comparison.markdown();
        out += &format!("\n## Votes\n\n{} votes.", self.votes);
        if !self.win_rates.is_empty() {
            out += " Pairwise, on frames that showed both (95% bootstrap interval):\n\n| A | B | votes A | votes B | A wins | 95% interval |\n|---|---|---|---|---|---|\n";
            for w in &self.win_rates {
                out += &format!(
                    "| {} | {} | {} | {} | {:.0}% | [{:.0}%, {:.0}%] |\n",
                    w.a,
                    w.b,
                    w.votes_a,
                    w.votes_b,
                    100.0 * w.rate,
                    100.0 * w.low,
                    100.0 * w.high
                );
            }
        } else {
            out += "\n";
        }
        out
    }

    fn csv(&self) -> String {
        self.comparison.csv()
    }

    fn plot(&self, path: &Path) -> anyhow::Result<()> {
        self.comparison.plot(path)
    }
}

//! `clipcap report`: the daemons' caption logs (one device or several, as files or from an MQTT
//! broker) turned into the comparison table, intervals and plot of `clipcap eval`, reference-free
//! (CLIPScore, length, diversity, latency), over the frames where the decoders were compared; then
//! the people's votes as pairwise win rates with bootstrap intervals; with `--group-by source`, the
//! same for each source's frames after the whole (in the Markdown and JSON; the CSV and plot are the
//! whole's).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::eval::{self, Image, System, Table};
use crate::publish::{self, PublishConfig};

use crate::records::{Comparison, Vote};

/// A log line: its kind, its daemon run, and (captions) its source.
#[derive(Deserialize)]
struct Line {
    event: String,
    run: u64,
    #[serde(default)]
    source: String,
}

/// What `clipcap report --group-by` splits the frames by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    /// The source's name (`[[sources]]`); logs from before sources had names are one group, "".
    Source,
}

/// A frame, across logs: (log, run, caption id).
type Frame = (usize, u64, u64);

/// The comparisons and votes of the logs.
pub struct Logs {
    comparisons: Vec<(Frame, Comparison)>,
    votes: Vec<(Frame, Vote)>,
    /// Who voted on which frame, for one vote each.
    voters: HashSet<(Frame, String)>,
    /// The source of each caption logged.
    captions: Vec<String>,
}

impl Logs {
    fn new() -> Logs {
        Logs {
            comparisons: Vec::new(),
            votes: Vec::new(),
            voters: HashSet::new(),
            captions: Vec::new(),
        }
    }

    /// The sources of the logged captions, in the order they first appear.
    fn sources(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for name in &self.captions {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }

    /// The captions, comparisons and votes of the source named `source` only.
    fn of_source(&self, source: &str) -> Logs {
        let comparisons: Vec<(Frame, Comparison)> = self
            .comparisons
            .iter()
            .filter(|(_, c)| c.source == source)
            .cloned()
            .collect();
        let frames: HashSet<&Frame> = comparisons.iter().map(|(f, _)| f).collect();
        let votes: Vec<(Frame, Vote)> = self.votes.iter().filter(|(f, _)| frames.contains(f)).cloned().collect();
        Logs {
            voters: votes.iter().map(|(f, v)| (*f, v.voter().to_string())).collect(),
            comparisons,
            votes,
            captions: self.captions.iter().filter(|c| *c == source).cloned().collect(),
        }
    }

    /// One record (a caption-log line) of source `index` (a log file, or a device's topic).
    fn add(&mut self, index: usize, raw: &str) -> anyhow::Result<()> {
        let line: Line = serde_json::from_str(raw).context("not a caption-log record")?;
        match line.event.as_str() {
            "caption" => self.captions.push(line.source),
            "comparison" => {
                let c: Comparison = serde_json::from_str(raw)?;
                self.comparisons.push(((index, line.run, c.id), c));
            }
            "vote" => {
                let v: Vote = serde_json::from_str(raw)?;
                let frame = (index, line.run, v.id);
                // One vote per voter and frame: the daemon refuses a second one, and a log
                // concatenated twice or an older daemon's log counts each once.
                if self.voters.insert((frame, v.voter().to_string())) {
                    self.votes.push((frame, v));
                }
            }
            other => anyhow::bail!("unknown record kind {other:?}"),
        }
        Ok(())
    }
}

/// Reads caption logs. A torn last line (a daemon writing it, or killed while writing) is skipped with
/// a warning; any other line that is not a log record is an error naming the file and line.
pub fn read(paths: &[PathBuf]) -> anyhow::Result<Logs> {
    let mut logs = Logs::new();
    for (index, path) in paths.iter().enumerate() {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let lines: Vec<&str> = text.lines().collect();
        for (n, raw) in lines.iter().enumerate() {
            let where_ = || format!("{}:{}", path.display(), n + 1);
            match logs.add(index, raw) {
                Ok(()) => {}
                Err(_) if n + 1 == lines.len() && !text.ends_with('\n') => {
                    eprintln!("warning: {}: a torn last line (being written?); skipped", where_());
                }
                Err(e) => return Err(e.context(where_())),
            }
        }
    }
    Ok(logs)
}

/// `clipcap report --mqtt`: the records published on `topic` (a filter such as `clipcap/+/captions`)
/// for `listen`, each topic (device) a source of its own, each record once (a record sent again after
/// a lost acknowledgement is the same bytes). The broker settings are `broker`'s ([publish]: url,
/// credentials, certificates). A message that is not a record is skipped with a warning.
pub fn subscribe(broker: &PublishConfig, topic: &str, listen: Duration) -> anyhow::Result<Logs> {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
    use rumqttc::v5::{Client, Event, RecvTimeoutError};

    let (options, address) = publish::client_options(broker, &format!("clipcap-report-{}", std::process::id()))?;
    let (client, mut connection) = Client::new(options, 16);
    let deadline = Instant::now() + listen;
    let mut logs = Logs::new();
    let mut topics: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    let (mut messages, mut skipped) = (0, 0);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = match connection.recv_timeout(left) {
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            Ok(event) => event,
        };
        match event {
            // Each connection is a new session: subscribe on every one.
            Ok(Event::Incoming(Packet::ConnAck(_))) => client.subscribe(topic, QoS::AtLeastOnce)?,
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .find(|c| !matches!(c, SubscribeReasonCode::Success(_)));
                if let Some(refused) = refused {
                    anyhow::bail!("{address} refused the subscription to {topic:?}: {refused:?}");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let source = String::from_utf8_lossy(&p.topic).into_owned();
                if !seen.insert((source.clone(), p.payload.clone())) {
                    continue;
                }
                messages += 1;
                let index = topics.iter().position(|t| *t == source).unwrap_or_else(|| {
                    topics.push(source.clone());
                    topics.len() - 1
                });
                let added = std::str::from_utf8(&p.payload)
                    .map_err(anyhow::Error::from)
                    .and_then(|raw| logs.add(index, raw));
                if let Err(e) = added {
                    skipped += 1;
                    eprintln!("warning: a message on {source} skipped: {e:#}");
                }
            }
            Ok(_) => {}
            Err(e) => {
                let (message, refused) = publish::describe(&e, &address);
                anyhow::ensure!(!refused, "{message}");
                eprintln!("warning: {message}; retrying");
                std::thread::sleep(Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now())));
            }
        }
    }
    eprintln!(
        "{messages} records from {} device(s) on {topic} in {}{}",
        topics.len(),
        humantime::format_duration(listen),
        if skipped > 0 {
            format!(" ({skipped} messages skipped)")
        } else {
            String::new()
        }
    );
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
    /// With `--group-by`: the same report for each group's frames, by group.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<(String, Report)>,
}

/// The decoder comparison of the logs (decoders in the order they first appear), and with `group_by`
/// that of each group too.
pub fn report(logs: &Logs, draws: usize, seed: u64, group_by: Option<GroupBy>) -> Report {
    let mut whole = report_of(logs, draws, seed);
    if group_by == Some(GroupBy::Source) {
        whole.groups = logs
            .sources()
            .into_iter()
            .map(|name| {
                let group = report_of(&logs.of_source(&name), draws, seed);
                (name, group)
            })
            .collect();
    }
    whole
}

fn report_of(logs: &Logs, draws: usize, seed: u64) -> Report {
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
        captions: logs.captions.len(),
        compared_frames: complete.len(),
        comparison,
        votes: logs.votes.len(),
        win_rates,
        groups: Vec::new(),
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
        for (name, group) in &self.groups {
            out += &format!("\n# Source {name}\n\n{}", group.markdown());
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

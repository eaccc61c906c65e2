//! `clipcap report`: the daemons' caption logs (one device or several, as files or from an MQTT
//! broker) turned into the comparison table, intervals and plot of `clipcap eval`, reference-free
//! (CLIPScore, length, diversity, latency), over the frames where the decoders were compared; then
//! the people's votes as pairwise win rates and Bradley–Terry ratings with bootstrap intervals; with
//! `--group-by source|bundle|decoder`, the same for each group's frames after the whole (in the
//! Markdown, JSON and HTML; the CSV and plots are the whole's). The gallery of report.html shows the
//! frames the daemon kept (captioning.keep_compared_frames).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Context;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::eval::{self, Image, System};
use crate::gallery;
use crate::publish::{self, PublishConfig};

use crate::ratings::{self, Ratings};
use crate::records::{BundleId, Comparison, Vote};
use crate::table::{Table, markdown_table};

/// A log line: its kind, its daemon run, and (captions) what `--group-by` groups it by.
#[derive(Deserialize)]
struct Line {
    event: String,
    run: u64,
    #[serde(flatten)]
    group: Group,
}

/// What a caption or comparison is grouped by.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
struct Group {
    #[serde(default)]
    source: String,
    #[serde(default)]
    bundle: Option<BundleId>,
    #[serde(default)]
    decoder: String,
}

impl Group {
    fn of(c: &Comparison) -> Group {
        Group {
            source: c.source.clone(),
            bundle: c.bundle.clone(),
            decoder: c.decoder.clone(),
        }
    }
}

/// What `clipcap report --group-by` splits the frames by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    /// The source's name (`[[sources]]`); logs from before sources had names are one group, "".
    Source,
    /// The live bundle's name (after a reload, the frames of each bundle); "" in logs from before
    /// bundles were recorded.
    Bundle,
    /// The primary decoder (`decoding.decoder`, which may differ between devices or runs).
    Decoder,
}

impl GroupBy {
    fn key(self, group: &Group) -> String {
        match self {
            GroupBy::Source => group.source.clone(),
            GroupBy::Bundle => group.bundle.as_ref().map_or(String::new(), |b| b.name.clone()),
            GroupBy::Decoder => group.decoder.clone(),
        }
    }

    fn heading(self) -> &'static str {
        match self {
            GroupBy::Source => "Source",
            GroupBy::Bundle => "Bundle",
            GroupBy::Decoder => "Decoder",
        }
    }
}

/// How to report: the bootstrap's draws and seed, the groups, and where kept frames are.
pub struct Options {
    pub draws: usize,
    pub seed: u64,
    pub group_by: Option<GroupBy>,
    /// A folder holding the kept frames (copied from the devices), looked up by file name; without
    /// it, each comparison's `frame` path as the daemon wrote it.
    pub frames: Option<PathBuf>,
}

/// A frame, across logs: (log, run, caption id).
type Frame = (usize, u64, u64);

/// The comparisons and votes of the logs.
pub struct Logs {
    comparisons: Vec<(Frame, Comparison)>,
    votes: Vec<(Frame, Vote)>,
    /// Who voted on which frame, for one vote each.
    voters: HashSet<(Frame, String)>,
    /// What each caption logged is grouped by.
    captions: Vec<Group>,
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

    /// The groups of the logged captions by `by`, in the order they first appear.
    fn groups(&self, by: GroupBy) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for name in self.captions.iter().map(|c| by.key(c)) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// The captions, comparisons and votes of the group `name` by `by` only.
    fn of_group(&self, by: GroupBy, name: &str) -> Logs {
        let comparisons: Vec<(Frame, Comparison)> = self
            .comparisons
            .iter()
            .filter(|(_, c)| by.key(&Group::of(c)) == name)
            .cloned()
            .collect();
        let frames: HashSet<&Frame> = comparisons.iter().map(|(f, _)| f).collect();
        let votes: Vec<(Frame, Vote)> = self.votes.iter().filter(|(f, _)| frames.contains(f)).cloned().collect();
        Logs {
            voters: votes.iter().map(|(f, v)| (*f, v.voter().to_string())).collect(),
            comparisons,
            votes,
            captions: self.captions.iter().filter(|c| by.key(c) == name).cloned().collect(),
        }
    }

    /// One record (a caption-log line) of source `index` (a log file, or a device's topic).
    fn add(&mut self, index: usize, raw: &str) -> anyhow::Result<()> {
        let line: Line = serde_json::from_str(raw).context("not a caption-log record")?;
        match line.event.as_str() {
            "caption" => self.captions.push(line.group),
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
    /// The votes as Bradley–Terry ratings, when there are votes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratings: Option<Ratings>,
    /// With `--group-by`: what the frames were grouped by, and the same report for each group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_by: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<(String, Report)>,
}

/// The decoder comparison of the logs (decoders in the order they first appear), and with
/// `options.group_by` that of each group too.
pub fn report(logs: &Logs, options: &Options) -> Report {
    let mut whole = report_of(logs, options);
    if let Some(by) = options.group_by {
        whole.group_by = Some(by.heading());
        whole.groups = logs
            .groups(by)
            .into_iter()
            .map(|name| {
                let group = report_of(&logs.of_group(by, &name), options);
                (name, group)
            })
            .collect();
    }
    whole
}

/// Where the frame a comparison kept is to be read: in `frames` by file name, or where the daemon
/// wrote it. An empty path where none was kept.
fn frame_path(c: &Comparison, frames: Option<&Path>) -> PathBuf {
    match (&c.frame, frames) {
        (None, _) => PathBuf::new(),
        (Some(kept), None) => kept.into(),
        (Some(kept), Some(dir)) => dir.join(Path::new(kept).file_name().unwrap_or_default()),
    }
}

fn report_of(logs: &Logs, options: &Options) -> Report {
    let (draws, seed) = (options.draws, options.seed);
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
        .filter(|(_, c)| order.iter().all(|d| c.captioned().any(|x| x == d)))
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
    let several_logs = complete.iter().any(|((log, _, _), _)| *log > 0);
    let frames: Vec<Image> = complete
        .iter()
        .map(|((log, run, id), c)| Image {
            id: format!(
                "#{id} {} · run of {}{}",
                c.source,
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(*run)),
                if several_logs {
                    format!(" · log {}", log + 1)
                } else {
                    String::new()
                }
            ),
            path: frame_path(c, options.frames.as_deref()),
            references: None,
        })
        .collect();
    let mut comparison = eval::measure(systems, &frames, false, false, draws, seed);
    comparison
        .notes
        .push("latencies are the decoders' decoding times on the daemon (ms per caption)".into());
    // The people's votes beside the captions they chose.
    let position: HashMap<&Frame, usize> = complete.iter().enumerate().map(|(i, (f, _))| (f, i)).collect();
    for (frame, vote) in &logs.votes {
        let caption = position
            .get(frame)
            .and_then(|&i| comparison.captions.get_mut(&vote.decoder)?.get_mut(i));
        if let Some(c) = caption {
            c.votes += 1;
        }
    }
    let win_rates = win_rates(logs, &order, draws, seed);
    let ratings = (!logs.votes.is_empty()).then(|| ratings::rate(&order, &rated_votes(logs, &order), draws, seed));
    Report {
        captions: logs.captions.len(),
        compared_frames: complete.len(),
        comparison,
        votes: logs.votes.len(),
        win_rates,
        ratings,
        group_by: None,
        groups: Vec::new(),
    }
}

/// Each vote as its decoder beating every other decoder that captioned the frame.
fn rated_votes(logs: &Logs, order: &[String]) -> Vec<ratings::Vote> {
    let index = |d: &str| order.iter().position(|o| o == d);
    let shown: BTreeMap<&Frame, &Comparison> = logs.comparisons.iter().map(|(f, c)| (f, c)).collect();
    logs.votes
        .iter()
        .filter_map(|(f, v)| {
            let c = shown.get(f)?;
            let winner = index(&v.decoder)?;
            let losers = c.captioned().filter_map(index).filter(|&i| i != winner).collect();
            Some(ratings::Vote { winner, losers })
        })
        .collect()
}

fn win_rates(logs: &Logs, order: &[String], draws: usize, seed: u64) -> Vec<WinRate> {
    let shown: BTreeMap<&Frame, Vec<&str>> = logs
        .comparisons
        .iter()
        .map(|(f, c)| (f, c.captioned().collect()))
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

impl Report {
    /// The votes' win rates, as Markdown table rows.
    fn win_rate_rows(&self) -> Vec<Vec<String>> {
        self.win_rates
            .iter()
            .map(|w| {
                vec![
                    w.a.clone(),
                    w.b.clone(),
                    w.votes_a.to_string(),
                    w.votes_b.to_string(),
                    format!("{:.0}%", 100.0 * w.rate),
                    format!("[{:.0}%, {:.0}%]", 100.0 * w.low, 100.0 * w.high),
                ]
            })
            .collect()
    }

    /// The ratings and the votes their gaps need, as rows of two tables.
    fn rating_rows(&self) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
        let Some(r) = &self.ratings else {
            return (Vec::new(), Vec::new());
        };
        let ratings = r
            .ratings
            .iter()
            .map(|x| {
                vec![
                    x.decoder.clone(),
                    format!("{:.0}", x.rating),
                    format!("[{:.0}, {:.0}]", x.low, x.high),
                    x.shown.to_string(),
                    x.won.to_string(),
                ]
            })
            .collect();
        let gaps = r
            .gaps
            .iter()
            .map(|g| {
                vec![
                    g.a.clone(),
                    g.b.clone(),
                    format!("{:.0}%", 100.0 * g.p_a),
                    g.votes.to_string(),
                    g.needed.map_or("–".into(), |n| n.to_string()),
                ]
            })
            .collect();
        (ratings, gaps)
    }
}

const WIN_RATE_HEAD: [&str; 6] = ["A", "B", "votes A", "votes B", "A wins", "95% interval"];
const RATING_HEAD: [&str; 5] = ["decoder", "rating", "95% interval", "votes shown", "votes won"];
const GAP_HEAD: [&str; 5] = ["A", "B", "A preferred", "votes on both", "votes needed"];
const RATINGS_TEXT: &str = "Bradley–Terry ratings (Elo scale, mean 1000; 95% bootstrap interval over the votes). \
    A vote for a caption beats every other caption of its frame. \"votes needed\": votes on frames showing \
    both that a preference of that size needs to show at 95% confidence with 80% power.";

/// The comparison's CSV and plots are `clipcap eval`'s; the Markdown and the page add the votes.
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
            out += " Pairwise, on frames that showed both (95% bootstrap interval):\n\n";
            out += &markdown_table(&WIN_RATE_HEAD, &self.win_rate_rows());
        } else {
            out += "\n";
        }
        let (ratings, gaps) = self.rating_rows();
        if !ratings.is_empty() {
            out += &format!("\n{RATINGS_TEXT}\n\n");
            out += &markdown_table(&RATING_HEAD, &ratings);
            out += "\n";
            out += &markdown_table(&GAP_HEAD, &gaps);
        }
        for (name, group) in &self.groups {
            out += &format!(
                "\n# {} {name}\n\n{}",
                self.group_by.unwrap_or_default(),
                group.markdown()
            );
        }
        out
    }

    fn csv(&self) -> String {
        self.comparison.csv()
    }

    fn comparison(&self) -> &eval::Report {
        &self.comparison
    }

    fn html(&self, plots: &[(&str, String)]) -> String {
        let esc = |rows: Vec<Vec<String>>| rows.into_iter().map(|r| r.iter().map(|c| gallery::escape(c)).collect());
        let mut votes = format!(
            "<p>{} votes on {} compared frames.</p>",
            self.votes, self.compared_frames
        );
        if !self.win_rates.is_empty() {
            votes += "<p>Pairwise, on frames that showed both (95% bootstrap interval):</p>";
            votes += &gallery::table(&WIN_RATE_HEAD, esc(self.win_rate_rows()));
        }
        let (ratings, gaps) = self.rating_rows();
        if !ratings.is_empty() {
            votes += &format!("<p>{}</p>", gallery::escape(RATINGS_TEXT));
            votes += &gallery::table(&RATING_HEAD, esc(ratings));
            votes += &gallery::table(&GAP_HEAD, esc(gaps));
        }
        let mut sections = vec![("Votes".to_string(), votes)];
        for (name, group) in &self.groups {
            sections.push((
                format!("{} {name}", self.group_by.unwrap_or_default()),
                format!("<pre>{}</pre>", gallery::escape(&group.markdown())),
            ));
        }
        gallery::page(
            &format!(
                "clipcap report: {} captions, {} frames compared",
                self.captions, self.compared_frames
            ),
            &self.comparison,
            plots,
            &sections,
        )
    }
}

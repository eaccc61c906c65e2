//! `source.kind = "folder"`: a folder watched for image files (`source.folder`, listed every
//! `poll_ms`), in one of two modes (`source.folder_mode`):
//! - `camera`: a stand-in for a camera. A file that appears (or changes) after the daemon started is
//!   read once it has stopped changing and becomes the newest frame in the slot; latest frame wins.
//!   What was in the folder at start is never read: the listing is taken when the source is created,
//!   first thing in `serve`, before anything slow.
//! - `queue`: an inbox. Every file is captioned once, oldest first, those already there at start
//!   included, and none is skipped: the folder thread hands over the next file only once the
//!   previous one was taken. Each finished file is recorded in a journal (and moved to
//!   `source.done_folder` if set), so a restart neither repeats nor misses one.
//!
//! Names starting with `.` are never read (temporary files of rsync and editors, the journal).
//! Its captions are labelled `folder`; it is ready while the folder can be listed.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{FolderMode, FrameSlot, Kind, NotReady, Origin, Pixels, SourceConfig, SourceLabel, SourceStatus, Spec};
use crate::settings::{Invalid, check};
use crate::shutdown::{Shutdown, Worker};
use clipcap_core::imageio::{self, Budget};

pub(super) const SPEC: Spec = Spec { validate, open };

fn validate(config: &SourceConfig) -> Result<(), Invalid> {
    check(!config.folder.as_os_str().is_empty(), "source.folder", || {
        "source.folder must be set when source.kind = \"folder\"".into()
    })?;
    check(
        config.done_folder.as_os_str().is_empty() || config.done_folder != config.folder,
        "source.done_folder",
        || "source.done_folder must be another folder than source.folder".into(),
    )
}

/// Lists the folder now. In queue mode also loads the journal (an unreadable one is an error).
fn open(config: &SourceConfig, budget: Budget) -> super::Opened {
    Ok(Box::new(Folder {
        queue: config.folder_mode == FolderMode::Queue,
        watcher: Mutex::new(Some(Watcher::new(config, budget)?)),
    }))
}

/// The source: its watcher until it starts.
struct Folder {
    queue: bool,
    watcher: Mutex<Option<Watcher>>,
}

impl Kind for Folder {
    fn every_frame(&self) -> bool {
        self.queue
    }

    fn readiness(&self, status: &SourceStatus) -> Result<(), NotReady> {
        if status.is_up() {
            Ok(())
        } else {
            Err(super::failed_or(status, NotReady::NotOpen))
        }
    }

    fn start(
        &self,
        slot: Arc<FrameSlot>,
        status: Arc<SourceStatus>,
        shutdown: Shutdown,
    ) -> std::io::Result<Option<Worker>> {
        let Some(watcher) = self.watcher.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Ok(None); // started already
        };
        super::spawn_capture("capture-folder", status, move |status| {
            watcher.run(&slot, status, &shutdown)
        })
    }
}

/// A file of the folder that is not an image the daemon takes.
#[derive(Debug, thiserror::Error)]
enum Unreadable {
    #[error("{0}")]
    Read(std::io::Error),
    #[error("{0}")]
    Decode(imageio::DecodeFault),
}

/// A queue's journal that cannot be read or rewritten.
#[derive(Debug, thiserror::Error)]
#[error("source.queue_journal {}: {problem}", .path.display())]
pub struct QueueError {
    path: PathBuf,
    problem: String,
}

/// A file is read once it has not been modified for this long (it may still be being written).
const SETTLE: Duration = Duration::from_millis(150);
/// The journal file in the watched folder when `source.queue_journal` is empty.
pub const DEFAULT_JOURNAL: &str = ".clipcap-queue.jsonl";

/// A file as the folder lists it: the same name, size and modification time is the same file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Entry {
    file: String,
    len: u64,
    modified_ns: u64,
}

/// The folder's reader, created (and the folder listed) when the daemon starts.
struct Watcher {
    config: SourceConfig,
    budget: Budget,
    /// Files listed and not to be read again: in camera mode, those there at start and those read.
    seen: HashSet<Entry>,
    queue: Option<Arc<Queue>>,
}

impl Watcher {
    fn new(config: &SourceConfig, budget: Budget) -> Result<Self, QueueError> {
        let (seen, queue) = match config.folder_mode {
            FolderMode::Camera => (list(&config.folder).unwrap_or_default().into_iter().collect(), None),
            FolderMode::Queue => (HashSet::new(), Some(Arc::new(Queue::open(config)?))),
        };
        Ok(Watcher {
            config: config.clone(),
            budget,
            seen,
            queue,
        })
    }

    fn run(mut self, slot: &FrameSlot, status: &SourceStatus, shutdown: &Shutdown) {
        let dir = self.config.folder.clone();
        let poll = Duration::from_millis(self.config.poll_ms);
        let mut listed = false;
        let mut first = true;
        // The first scan is at once: a queue left from the last run starts without waiting.
        while first || shutdown.nap(poll) {
            first = false;
            let entries = match list(&dir) {
                Ok(entries) => entries,
                Err(e) => {
                    if listed || status.last_error().is_none() {
                        status.fail(format!("folder {}: {e}", dir.display()));
                    }
                    listed = false;
                    continue;
                }
            };
            if !listed {
                status.set_up();
                listed = true;
            }
            // Forget files that are gone, so that memory stays the size of the folder.
            let present: HashSet<&Entry> = entries.iter().collect();
            self.seen.retain(|e| present.contains(e));
            let now = SystemTime::now();
            let mut fresh: Vec<Entry> = entries
                .iter()
                .filter(|e| !self.seen.contains(*e) && now_minus(now, e.modified_ns) >= SETTLE)
                .filter(|e| self.queue.as_ref().is_none_or(|q| !q.is_done(e)))
                .cloned()
                .collect();
            fresh.sort_by(|a, b| (a.modified_ns, &a.file).cmp(&(b.modified_ns, &b.file)));
            for entry in fresh {
                self.seen.insert(entry.clone());
                let path = dir.join(&entry.file);
                let image = std::fs::read(&path)
                    .map_err(Unreadable::Read)
                    .and_then(|b| imageio::decode_limited(&b, self.budget).map_err(Unreadable::Decode))
                    .map(Pixels::Rgb);
                let ticket = self.queue.as_ref().map(|q| Ticket {
                    queue: q.clone(),
                    entry,
                    path: path.clone(),
                });
                let image = match image {
                    Ok(image) => image,
                    Err(e) => {
                        status.bad_frame();
                        tracing::warn!("folder source: {}: {e}", path.display());
                        if let Some(ticket) = ticket {
                            ticket.failed(&e);
                        }
                        continue;
                    }
                };
                let origin = Origin {
                    source: SourceLabel::Folder,
                    name: path.display().to_string(),
                    header: None,
                };
                match ticket {
                    None => status.frame(slot.put(image, origin)),
                    Some(ticket) => {
                        if !slot.put_queued(image, origin, ticket, shutdown) {
                            return; // stopping: the file stays unfinished and is read after a restart
                        }
                        status.frame(false);
                    }
                }
            }
        }
    }
}

/// The files of `dir` (not folders, not names starting with `.`).
fn list(dir: &Path) -> std::io::Result<Vec<Entry>> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let meta = e.metadata().ok()?;
            let modified = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
            let modified_ns = u64::try_from(modified.as_nanos()).ok()?;
            (!file.starts_with('.')).then_some(Entry {
                file,
                len: meta.len(),
                modified_ns,
            })
        })
        .collect())
}

fn now_minus(now: SystemTime, modified_ns: u64) -> Duration {
    let now_ns = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    Duration::from_nanos(now_ns.saturating_sub(modified_ns))
}

/// One line of the queue journal: a file that was finished, and how.
#[derive(Serialize, Deserialize)]
struct JournalLine {
    #[serde(flatten)]
    entry: Entry,
    /// The caption's id (of the daemon's run `run`), or why there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    caption_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The queue's record of finished files: a JSON-lines journal, appended and synced per file, and
/// rewritten without the files that are gone when the daemon starts.
struct Queue {
    journal: PathBuf,
    done_folder: Option<PathBuf>,
    done: Mutex<HashSet<Entry>>,
}

impl Queue {
    fn open(config: &SourceConfig) -> Result<Self, QueueError> {
        let journal = if config.queue_journal.as_os_str().is_empty() {
            config.folder.join(DEFAULT_JOURNAL)
        } else {
            config.queue_journal.clone()
        };
        let err = |problem: String| QueueError {
            path: journal.clone(),
            problem,
        };
        let text = match std::fs::read_to_string(&journal) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(err(e.to_string())),
        };
        let mut done = HashSet::new();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str::<JournalLine>(line) {
                Ok(l) => {
                    done.insert(l.entry);
                }
                // A crash while appending leaves a torn last line: that file was not finished.
                Err(_) if i + 1 == lines.len() => {
                    tracing::warn!("{}: ignoring a torn last line", journal.display())
                }
                Err(e) => return Err(err(format!("line {}: {e}", i + 1))),
            }
        }
        // Keep only the files still in the folder; the others were moved or deleted.
        if let Ok(present) = list(&config.folder) {
            let present: HashSet<Entry> = present.into_iter().collect();
            done.retain(|e| present.contains(e));
            if done.len() != lines.len() {
                let mut text = String::new();
                for entry in &done {
                    let line = JournalLine {
                        entry: entry.clone(),
                        caption_id: None,
                        error: None,
                    };
                    text += &serde_json::to_string(&line).expect("journal lines serialise");
                    text.push('\n');
                }
                let tmp = journal.with_extension("tmp");
                std::fs::write(&tmp, text)
                    .and_then(|_| std::fs::rename(&tmp, &journal))
                    .map_err(|e| err(format!("cannot rewrite: {e}")))?;
            }
        }
        let done_folder = (!config.done_folder.as_os_str().is_empty()).then(|| config.done_folder.clone());
        Ok(Queue {
            journal,
            done_folder,
            done: Mutex::new(done),
        })
    }

    fn is_done(&self, entry: &Entry) -> bool {
        self.done.lock().unwrap_or_else(|p| p.into_inner()).contains(entry)
    }

    /// Records `entry` finished: with its caption's id, or the error that stopped it.
    fn finish(&self, entry: &Entry, path: &Path, caption_id: Option<u64>, error: Option<String>) {
        let line = JournalLine {
            entry: entry.clone(),
            caption_id,
            error,
        };
        let mut text = serde_json::to_string(&line).expect("journal lines serialise");
        text.push('\n');
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|_| f.sync_data()));
        if let Err(e) = appended {
            tracing::error!(
                "queue journal {}: {e}; {} may be captioned again after a restart",
                self.journal.display(),
                path.display()
            );
        }
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.clone());
        if let Some(folder) = &self.done_folder
            && let Err(e) = move_into(path, folder)
        {
            tracing::warn!("cannot move {} to {}: {e}", path.display(), folder.display());
        }
    }
}

/// Moves `path` into `folder` under its name, or `NAME.1`, `NAME.2`, ... if that is taken.
fn move_into(path: &Path, folder: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(folder)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let mut target = folder.join(&name);
    let mut n = 0;
    while target.exists() {
        n += 1;
        target = folder.join(format!("{name}.{n}"));
    }
    std::fs::rename(path, target)
}

/// A queued file handed to the captioning thread, which reports how it ended with [`Ticket::done`].
pub struct Ticket {
    queue: Arc<Queue>,
    entry: Entry,
    path: PathBuf,
}

impl Ticket {
    /// Records the file as captioned, with the caption's id.
    pub fn captioned(&self, id: u64) {
        self.queue.finish(&self.entry, &self.path, Some(id), None);
    }

    /// Records the file as finished without a caption, and why.
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        self.queue
            .finish(&self.entry, &self.path, None, Some(error.to_string()));
    }
}

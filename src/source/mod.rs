//! Frame sources. Each kind is one module that says in one place how it is configured (its keys of
//! `[source]`), validated, started, reported ready and labelled: `camera` (a V4L2 camera), `folder`
//! (a watched folder), `ros2` (an image topic, fed by the daemon's ROS 2 node) and `none` (uploads
//! only). [`SourceKind`] names them in the configuration and `spec` maps each to its module; a new
//! kind is a module and one variant there, and the compiler asks for its arm.
//!
//! What the kinds share: frames and the slot they wait in (frame.rs; latest frame wins), the status
//! they report (status.rs), and the conversion of raw camera rows to RGB (convert.rs).

mod camera;
mod convert;
mod folder;
mod frame;
mod none;
pub mod ros2;
mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{Invalid, check};
use crate::shutdown::{Shutdown, Worker};
use clipcap_core::imageio::Budget;
pub use convert::{ConvertError, Layout};
pub use folder::{QueueError, Ticket};
pub use frame::{Frame, FrameError, FrameSlot, Header, Origin, Pixels, Stamp};
pub use status::{SourceCounters, SourceStatus};

/// Where a caption's image came from: the label of the kind of source (its captions' `source` field
/// and the `source` label of `clipcap_captions_total`), or an upload (an image POSTed to the API). docs/api.md lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceLabel {
    Camera,
    Folder,
    Ros2,
    Upload,
}

impl SourceLabel {
    pub const ALL: [SourceLabel; 4] = [
        SourceLabel::Camera,
        SourceLabel::Folder,
        SourceLabel::Ros2,
        SourceLabel::Upload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceLabel::Camera => "camera",
            SourceLabel::Folder => "folder",
            SourceLabel::Ros2 => "ros2",
            SourceLabel::Upload => "upload",
        }
    }
}

/// Where frames come from (`source.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A V4L2 camera (camera.rs).
    V4l2,
    /// A folder watched for new image files (folder.rs).
    Folder,
    /// A ROS 2 image topic, `[ros2]` (ros2.rs).
    Ros2,
    /// No source: only images POSTed to the API are captioned (none.rs).
    None,
}

impl SourceKind {
    /// The label its captions carry; `none` has no captions.
    pub fn label(self) -> Option<SourceLabel> {
        match self {
            SourceKind::V4l2 => Some(SourceLabel::Camera),
            SourceKind::Folder => Some(SourceLabel::Folder),
            SourceKind::Ros2 => Some(SourceLabel::Ros2),
            SourceKind::None => None,
        }
    }
}

/// How a watched folder is used (folder.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FolderMode {
    /// Like a camera: files that appear after start, latest frame wins.
    Camera,
    /// An inbox: every file captioned once, oldest first, across restarts.
    Queue,
}

/// `[source]`: the kind, and the keys of every kind (each reads its own; config.toml documents them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// The source's name, which its captions and metrics carry (letters, digits, `-`, `_`). Required
    /// in `[[sources]]`; a lone `[source]` is named after its kind's label unless it has one.
    pub name: String,
    pub kind: SourceKind,
    pub device: PathBuf,
    pub width: u32,
    pub height: u32,
    /// Frames per second asked of the camera; 0 keeps the driver's.
    pub fps: u32,
    /// Pixel formats in order of preference: MJPG, YUYV, RGB3.
    pub formats: Vec<String>,
    pub folder: PathBuf,
    pub folder_mode: FolderMode,
    /// Queue mode: finished files are moved here; empty leaves them in the folder.
    pub done_folder: PathBuf,
    /// Queue mode: the journal of finished files; empty means `.clipcap-queue.jsonl` in the folder.
    pub queue_journal: PathBuf,
    pub poll_ms: u64,
    /// Reconnect backoff: first wait, doubling up to the maximum.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            name: String::new(),
            kind: SourceKind::V4l2,
            device: PathBuf::from("/dev/video0"),
            width: 640,
            height: 480,
            fps: 15,
            formats: vec!["MJPG".into(), "YUYV".into(), "RGB3".into()],
            folder: PathBuf::new(),
            folder_mode: FolderMode::Camera,
            done_folder: PathBuf::new(),
            queue_journal: PathBuf::new(),
            poll_ms: 200,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
        }
    }
}

/// A source that exists: what the daemon asks of it while it runs.
pub trait Kind: Send + Sync {
    /// Whether every frame must be captioned (a queue): no cadence, no scene-change skip.
    fn every_frame(&self) -> bool {
        false
    }

    /// Ready to caption (the daemon's readiness, once the model is loaded), or why not.
    fn readiness(&self, status: &SourceStatus) -> Result<(), NotReady>;

    /// Starts delivering frames into `slot`: on a thread of its own, or none (`none` has no frames,
    /// and the daemon's ROS 2 node feeds a `ros2` source). Called once.
    fn start(
        &self,
        slot: Arc<FrameSlot>,
        status: Arc<SourceStatus>,
        shutdown: Shutdown,
    ) -> std::io::Result<Option<Worker>>;
}

/// Why a source is not ready.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotReady {
    /// It failed: its last error.
    #[error("{0}")]
    Failed(String),
    #[error("source not open yet")]
    NotOpen,
    #[error("camera open but no frame in the last 5 s")]
    CameraSilent,
    #[error("no publisher on the ROS 2 image topic yet")]
    NoPublisher,
    #[error("the ROS 2 image topic has a publisher but sent no frame in the last 5 s")]
    TopicSilent,
}

/// A camera or topic without a frame for this long is not ready.
const FRESH: Duration = Duration::from_secs(5);

/// The source's last error, or `never` when it has not failed yet.
fn failed_or(status: &SourceStatus, never: NotReady) -> NotReady {
    status.last_error().map_or(never, NotReady::Failed)
}

/// The readiness of a source that sends frames all the time (a camera, a topic): a frame within
/// `FRESH`; else `silent` while it is up, or its last error, or `never`.
fn streaming(status: &SourceStatus, silent: NotReady, never: NotReady) -> Result<(), NotReady> {
    if status.fresh(FRESH) {
        Ok(())
    } else if status.is_up() {
        Err(silent)
    } else {
        Err(failed_or(status, never))
    }
}

/// Why a source could not be created at start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// A source made at start, or why not.
type Opened = Result<Box<dyn Kind>, SourceError>;

/// What a kind provides before a source exists: its checks of `[source]`, and how to make one.
struct Spec {
    validate: fn(&SourceConfig) -> Result<(), Invalid>,
    open: fn(&SourceConfig, Budget) -> Opened,
}

/// The registry of kinds.
fn spec(kind: SourceKind) -> Spec {
    match kind {
        SourceKind::V4l2 => camera::SPEC,
        SourceKind::Folder => folder::SPEC,
        SourceKind::Ros2 => ros2::SPEC,
        SourceKind::None => none::SPEC,
    }
}

/// Checks the keys `config`'s kind reads.
pub fn validate(config: &SourceConfig) -> Result<(), Invalid> {
    check_waits(config)?;
    (spec(config.kind).validate)(config)
}

/// Checks a set of sources (Config::sources): each one's keys, their names (unique, made of letters,
/// digits, `-` and `_`), and at most one ROS 2 image topic (the node subscribes one). A refusal of
/// the `index`th of several names it as `sources[index]`.
pub fn validate_all(sources: &[SourceConfig], several: bool) -> Result<(), Invalid> {
    for (i, source) in sources.iter().enumerate() {
        let prefix = if several {
            format!("sources[{i}]")
        } else {
            "source".into()
        };
        let name = &source.name;
        let named = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        check(named, format!("{prefix}.name"), || {
            format!("{prefix}.name = {name:?}: a source's name is made of letters, digits, '-' and '_'")
        })?;
        check(source.kind != SourceKind::None, format!("{prefix}.kind"), || {
            format!("{prefix}.kind = \"none\": leave the source out instead (uploads need none)")
        })?;
        check(
            !sources[..i].iter().any(|s| &s.name == name),
            format!("{prefix}.name"),
            || format!("{prefix}.name = {name:?} is the name of an earlier source"),
        )?;
        let renamed = |text: &str| text.replace("source.", &format!("{prefix}."));
        validate(source).map_err(|e| Invalid::new(renamed(&e.key), renamed(&e.reason)))?;
    }
    let ros2 = sources.iter().filter(|s| s.kind == SourceKind::Ros2).count();
    check(ros2 <= 1, "sources", || {
        format!("{ros2} sources are ROS 2 topics; the daemon's ROS 2 node subscribes to one (ros2.image_topic)")
    })
}

/// The configured source, created before anything slow happens at start (so that a folder's "already
/// there" means there when the daemon started), and started later with [`Kind::start`]. Image files
/// over `budget` are refused.
pub fn open(config: &SourceConfig, budget: Budget) -> Opened {
    (spec(config.kind).open)(config, budget)
}

/// A source's thread, named `name`: a panic inside it (the camera library panics on some device
/// errors) marks the source failed instead of taking the daemon down.
fn spawn_capture(
    name: &'static str,
    status: Arc<SourceStatus>,
    run: impl FnOnce(&SourceStatus) + Send + 'static,
) -> std::io::Result<Option<Worker>> {
    let worker = Worker::spawn(name, move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&status)));
        if result.is_err() {
            status.fail("the capture thread panicked; restart the service to capture again".into());
        }
    })?;
    Ok(Some(worker))
}

/// `reconnect_min_ms`, `reconnect_max_ms` and `poll_ms`, the waits of the kinds that retry or poll.
fn check_waits(config: &SourceConfig) -> Result<(), Invalid> {
    check(
        config.reconnect_min_ms > 0 && config.reconnect_max_ms >= config.reconnect_min_ms && config.poll_ms > 0,
        "source.poll_ms",
        || "source.poll_ms and reconnect_min_ms must be > 0, reconnect_max_ms >= reconnect_min_ms".into(),
    )
}

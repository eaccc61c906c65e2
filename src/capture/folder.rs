//! A folder watched for new images (a camera for machines without one, and for tests): files that
//! appear after start are read once they have stopped changing, newest last, into the frame slot.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use super::{FrameSlot, SourceStatus, nap};
use crate::config::SourceConfig;
use crate::imageio;

/// A file is read once it has not been modified for this long (it may still be being written).
const SETTLE: Duration = Duration::from_millis(150);

pub fn run(config: &SourceConfig, max_pixels: u64, slot: &FrameSlot, status: &SourceStatus, stop: &AtomicBool) {
    let dir = &config.folder;
    let mut seen: HashSet<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            status.fail(format!("folder {}: {e}", dir.display()));
            HashSet::new()
        }
    };
    let poll = Duration::from_millis(config.poll_ms);
    let mut listed = false;
    while nap(poll, stop) {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                if listed {
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
        let now = SystemTime::now();
        let mut fresh: Vec<(SystemTime, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()) && !seen.contains(&e.path()))
            .filter_map(|e| e.metadata().ok()?.modified().ok().map(|m| (m, e.path())))
            .filter(|(modified, _)| now.duration_since(*modified).is_ok_and(|age| age >= SETTLE))
            .collect();
        fresh.sort();
        for (_, path) in fresh {
            seen.insert(path.clone());
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| imageio::decode_limited(&b, max_pixels))
            {
                Ok(image) => status.frame(slot.put(image, path.display().to_string())),
                Err(e) => {
                    status.counters.errors.inc();
                    tracing::warn!("folder source: {}: {e}", path.display());
                }
            }
        }
    }
}

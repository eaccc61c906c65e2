//! The JSON-lines caption log (`service.caption_log`): standard output or a file appended to. A line
//! is written whole or not at all: a write that fails part-way (a full disk) is cut back off the file,
//! so a torn line never sits between two good ones and the log goes on once there is room again.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

pub enum CaptionLog {
    Stdout,
    File {
        file: File,
        path: PathBuf,
        /// Records lost since the last successful append: the first loss is logged, and the recovery.
        lost: u64,
    },
}

impl CaptionLog {
    /// `target`: "-" for standard output, a file path (created, or appended to), or "" for none.
    pub fn open(target: &str) -> anyhow::Result<Option<CaptionLog>> {
        Ok(match target {
            "" => None,
            "-" => Some(CaptionLog::Stdout),
            path => Some(CaptionLog::File {
                file: std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("caption log {path}"))?,
                path: path.into(),
                lost: 0,
            }),
        })
    }

    /// Appends `line` (a newline included) in one write, so that a reader never sees half of it. A
    /// failure is returned (to be counted); it is logged when the log starts failing, and the recovery
    /// with the number of records lost meanwhile.
    pub fn append(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            CaptionLog::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes()).and_then(|_| out.flush())
            }
            CaptionLog::File { file, path, lost } => {
                // A failure to read the length counts as a failed append like any other.
                let written = file.metadata().and_then(|m| {
                    let end = m.len();
                    file.write_all(line.as_bytes()).inspect_err(|_| {
                        // What part of the line got in is cut off again (truncating frees space,
                        // so this works on a full disk too).
                        if let Err(e) = file.set_len(end) {
                            tracing::error!("caption log {}: cannot cut off a partial line: {e}", path.display());
                        }
                    })
                });
                match (&written, *lost) {
                    (Err(e), 0) => {
                        tracing::error!(
                            "caption log {}: {e}; records are lost until it can be written",
                            path.display()
                        );
                    }
                    (Ok(()), 1..) => {
                        tracing::warn!(
                            "caption log {}: written again, after losing {lost} records",
                            path.display()
                        );
                    }
                    _ => {}
                }
                *lost = if written.is_ok() { 0 } else { *lost + 1 };
                written
            }
        }
    }
}

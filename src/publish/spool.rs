//! The publishing spool: messages waiting for the broker's acknowledgement, on disk, so that neither
//! a broker outage nor a daemon restart loses one.
//!
//! Two files in the spool folder. `spool.jsonl` is append-only, one record a line:
//! `{"seq":N,"payload":...}` with `seq` increasing across restarts. `acked` holds the highest `seq`
//! below which everything was acknowledged; it is replaced atomically (write, fsync, rename), and
//! records at or below it are skipped when the spool is opened. The file is emptied once everything
//! is acknowledged and rewritten with only the waiting records when it has grown to twice their size.
//!
//! A torn last record (the daemon killed, or the power cut, while appending) is cut off when the spool
//! opens; a record that does not parse in the middle of the file is skipped. Both are reported and
//! counted, neither is fatal. Beyond `cap` bytes of waiting records the oldest are dropped and counted.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

const RECORDS: &str = "spool.jsonl";
const ACKED: &str = "acked";

#[derive(Debug, thiserror::Error)]
#[error("spool {}: {what}: {source}", .path.display())]
pub struct SpoolError {
    path: PathBuf,
    what: &'static str,
    source: std::io::Error,
}

#[derive(Serialize, Deserialize)]
struct Line<'a> {
    seq: u64,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// A message waiting for its acknowledgement.
#[derive(Debug, Clone)]
pub struct Record {
    pub seq: u64,
    pub payload: String,
    acked: bool,
    /// The record's line in `spool.jsonl`, newline included.
    bytes: u64,
}

/// What opening a spool found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Records waiting from an earlier run.
    pub waiting: usize,
    /// Records that did not parse (a torn last one included), left out.
    pub broken: usize,
}

pub struct Spool {
    dir: PathBuf,
    file: File,
    /// Waiting records, oldest first; `acked` ones stay until everything before them is acked.
    records: VecDeque<Record>,
    /// Bytes of `records` in the file.
    bytes: u64,
    /// Bytes of the file.
    file_bytes: u64,
    cap: u64,
    next_seq: u64,
    acked: u64,
    dropped: u64,
}

impl Spool {
    /// Opens (creating) the spool in `dir`, recovering what an earlier run left.
    pub fn open(dir: &Path, cap: u64) -> Result<(Spool, Recovered), SpoolError> {
        let err = |what, source| SpoolError {
            path: dir.to_path_buf(),
            what,
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| err("cannot create the folder", e))?;
        let acked_path = dir.join(ACKED);
        let acked = match std::fs::read_to_string(&acked_path) {
            Ok(text) => text.trim().parse::<u64>().unwrap_or_else(|_| {
                tracing::warn!(
                    "spool {}: {ACKED} holds {:?}, not a number; every spooled record is sent again",
                    dir.display(),
                    text.trim()
                );
                0
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(err("cannot read acked", e)),
        };
        let mut recovered = Recovered::default();
        let mut records = VecDeque::new();
        let mut last_seq = acked;
        let path = dir.join(RECORDS);
        match File::open(&path) {
            Ok(f) => {
                let mut reader = BufReader::new(f);
                let mut raw = Vec::new();
                loop {
                    raw.clear();
                    let n = reader
                        .read_until(b'\n', &mut raw)
                        .map_err(|e| err("cannot read spool.jsonl", e))?;
                    if n == 0 {
                        break;
                    }
                    let line = (raw.last() == Some(&b'\n'))
                        .then(|| std::str::from_utf8(&raw).ok())
                        .flatten()
                        .and_then(|text| serde_json::from_str::<Line>(text).ok());
                    match line {
                        Some(l) if l.seq > last_seq => {
                            last_seq = l.seq;
                            records.push_back(Record {
                                seq: l.seq,
                                payload: l.payload.get().to_string(),
                                acked: false,
                                bytes: n as u64,
                            });
                        }
                        Some(_) => {} // acknowledged before the restart
                        None => recovered.broken += 1,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err("cannot open spool.jsonl", e)),
        }
        if recovered.broken > 0 {
            tracing::warn!(
                "spool {}: {} broken record(s) (a torn last one is what a kill while writing leaves) left out",
                dir.display(),
                recovered.broken
            );
        }
        recovered.waiting = records.len();
        let bytes = records.iter().map(|r| r.bytes).sum();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| err("cannot open spool.jsonl", e))?;
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            file,
            records,
            bytes,
            file_bytes: 0,
            cap,
            next_seq: last_seq + 1,
            acked,
            dropped: 0,
        };
        // Start from a file holding exactly the waiting records (no torn tail to append after).
        spool.rewrite()?;
        spool.enforce_cap();
        Ok((spool, recovered))
    }

    fn error(&self, what: &'static str, source: std::io::Error) -> SpoolError {
        SpoolError {
            path: self.dir.clone(),
            what,
            source,
        }
    }

    /// Appends a message (JSON) and returns its sequence number. On a failed write (a full disk) the
    /// file is cut back to its last whole record and the error returned; the message is kept in memory
    /// and still sent, but would not survive a restart.
    pub fn append(&mut self, payload: &str) -> Result<u64, SpoolError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let raw = RawValue::from_string(payload.to_string()).expect("payloads are serialised JSON");
        let mut line = serde_json::to_string(&Line { seq, payload: &raw }).expect("spool lines serialise");
        line.push('\n');
        let bytes = line.len() as u64;
        self.records.push_back(Record {
            seq,
            payload: payload.to_string(),
            acked: false,
            bytes,
        });
        self.bytes += bytes;
        let written = self.file.write_all(line.as_bytes()).and_then(|_| self.file.sync_data());
        let result = match written {
            Ok(()) => {
                self.file_bytes += bytes;
                Ok(seq)
            }
            Err(e) => {
                let _ = self.file.set_len(self.file_bytes);
                Err(self.error("cannot append", e))
            }
        };
        self.enforce_cap();
        result
    }

    /// Drops the oldest waiting records while they exceed the cap (the newest is always kept).
    fn enforce_cap(&mut self) {
        let before = self.dropped;
        while self.bytes > self.cap && self.records.len() > 1 {
            let r = self.records.pop_front().expect("more than one record");
            self.bytes -= r.bytes;
            self.acked = self.acked.max(r.seq);
            self.dropped += 1;
        }
        if self.dropped > before {
            tracing::warn!(
                "spool {}: over its cap of {} bytes; dropped the {} oldest message(s)",
                self.dir.display(),
                self.cap,
                self.dropped - before
            );
            if let Err(e) = self.save_acked().and_then(|_| self.rewrite()) {
                tracing::warn!("{e}");
            }
        }
    }

    /// The first waiting record after `seq` that is not acknowledged yet.
    pub fn next_after(&self, seq: u64) -> Option<&Record> {
        let start = self.records.partition_point(|r| r.seq <= seq);
        self.records.range(start..).find(|r| !r.acked)
    }

    /// Marks `seq` acknowledged; once every record up to it is, they leave the spool.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        let Ok(at) = self.records.binary_search_by_key(&seq, |r| r.seq) else {
            return Ok(()); // dropped by the cap meanwhile, or acknowledged twice
        };
        self.records[at].acked = true;
        let mut advanced = false;
        while self.records.front().is_some_and(|r| r.acked) {
            let r = self.records.pop_front().expect("front exists");
            self.bytes -= r.bytes;
            self.acked = r.seq;
            advanced = true;
        }
        if !advanced {
            return Ok(());
        }
        self.save_acked()?;
        if self.records.is_empty() {
            self.file
                .set_len(0)
                .map_err(|e| self.error("cannot empty spool.jsonl", e))?;
            self.file_bytes = 0;
        } else if self.file_bytes > 2 * self.bytes + 64 * 1024 {
            self.rewrite()?;
        }
        Ok(())
    }

    /// The highest sequence number below which everything was acknowledged (or dropped).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Records waiting for an acknowledgement.
    pub fn waiting(&self) -> usize {
        self.records.iter().filter(|r| !r.acked).count()
    }

    /// Records dropped by the cap since the spool was opened.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn save_acked(&self) -> Result<(), SpoolError> {
        replace(&self.dir.join(ACKED), format!("{}\n", self.acked).as_bytes())
            .map_err(|e| self.error("cannot write acked", e))
    }

    /// Replaces the file with the waiting records only.
    fn rewrite(&mut self) -> Result<(), SpoolError> {
        let mut text = String::with_capacity(self.bytes as usize);
        for r in &self.records {
            let raw = RawValue::from_string(r.payload.clone()).expect("payloads are serialised JSON");
            text.push_str(
                &serde_json::to_string(&Line {
                    seq: r.seq,
                    payload: &raw,
                })
                .expect("spool lines serialise"),
            );
            text.push('\n');
        }
        let path = self.dir.join(RECORDS);
        replace(&path, text.as_bytes()).map_err(|e| self.error("cannot rewrite spool.jsonl", e))?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| self.error("cannot open spool.jsonl", e))?;
        self.file_bytes = text.len() as u64;
        Ok(())
    }
}

/// Writes `path` atomically: a temporary file, synced, renamed over it.
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: u64) -> String {
        format!("{{\"event\":\"caption\",\"id\":{n}}}")
    }

    fn seqs(spool: &Spool) -> Vec<u64> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(r) = spool.next_after(at) {
            out.push(r.seq);
            at = r.seq;
        }
        out
    }

    #[test]
    fn waiting_records_survive_a_restart_and_acked_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, found) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(found, Recovered::default());
        for n in 1..=5 {
            assert_eq!(spool.append(&payload(n)).unwrap(), n);
        }
        spool.ack(1).unwrap();
        spool.ack(3).unwrap(); // out of order: 2 still waits, so 3 stays until it is acked
        assert_eq!((spool.acked(), seqs(&spool)), (1, vec![2, 4, 5]));
        drop(spool);
        let (mut spool, found) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(found.waiting, 4); // 3's acknowledgement was not yet durable: sent again
        assert_eq!(seqs(&spool), vec![2, 3, 4, 5]);
        assert_eq!(spool.next_after(1).unwrap().payload, payload(2));
        assert_eq!(spool.append(&payload(6)).unwrap(), 6);
        for n in 2..=6 {
            spool.ack(n).unwrap();
        }
        assert_eq!(std::fs::metadata(dir.path().join(RECORDS)).unwrap().len(), 0);
        drop(spool);
        let (mut spool, found) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(found.waiting, 0);
        assert_eq!(spool.append(&payload(7)).unwrap(), 7, "sequence numbers never restart");
    }

    #[test]
    fn a_torn_last_record_and_a_broken_one_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        for n in 1..=3 {
            spool.append(&payload(n)).unwrap();
        }
        drop(spool);
        let path = dir.path().join(RECORDS);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let torn = &lines[2][..lines[2].len() / 2];
        std::fs::write(&path, format!("{}\nnot json\n{}\n{torn}", lines[0], lines[1])).unwrap();
        let (mut spool, found) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(found, Recovered { waiting: 2, broken: 2 });
        assert_eq!(seqs(&spool), vec![1, 2]);
        // Appends go after the last whole record, not after the torn one.
        assert_eq!(spool.append(&payload(9)).unwrap(), 3);
        drop(spool);
        let (spool, found) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((found.broken, seqs(&spool)), (0, vec![1, 2, 3]));
    }

    #[test]
    fn over_the_cap_the_oldest_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let line = 40; // {"seq":N,"payload":{"event":"caption","id":N}}\n, about
        let (mut spool, _) = Spool::open(dir.path(), 3 * line).unwrap();
        for n in 1..=10 {
            spool.append(&payload(n)).unwrap();
        }
        let kept = seqs(&spool);
        assert_eq!(kept.last(), Some(&10));
        assert!(kept.len() < 10 && kept.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(spool.dropped(), 10 - kept.len() as u64);
        drop(spool);
        let (spool, _) = Spool::open(dir.path(), 3 * line).unwrap();
        assert_eq!(seqs(&spool), kept, "dropped records stay dropped");
    }

    #[test]
    fn a_failed_append_leaves_no_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&payload(1)).unwrap();
        let good = std::fs::read(dir.path().join(RECORDS)).unwrap();
        // A read-only handle in place of the file makes the next write fail, as a full disk does.
        spool.file = File::open(dir.path().join(RECORDS)).unwrap();
        assert!(spool.append(&payload(2)).is_err());
        assert_eq!(std::fs::read(dir.path().join(RECORDS)).unwrap(), good);
        assert_eq!(seqs(&spool), vec![1, 2], "kept in memory and still sent");
    }
}

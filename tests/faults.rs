//! Faults of the machine the daemon runs on, survived, reported and counted: the caption log's disk,
//! and the kept frames' disk, fill up and free again. (A camera unplugged and returning:
//! tests/vivid.rs.)

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::{Daemon, demo_image, metric};

fn upload(daemon: &Daemon) -> u64 {
    let png = std::fs::read(demo_image("08209.png")).unwrap();
    let (status, response) = daemon.raw("POST /v1/caption HTTP/1.1\r\nHost: {host}", &png);
    assert_eq!(status, 200, "{response}");
    let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
    serde_json::from_str::<serde_json::Value>(body).unwrap()["id"]
        .as_u64()
        .unwrap()
}

/// The daemon's wrapper that mounts a tmpfs of `size` at `{dir}/disk` in the daemon's own mount
/// namespace (root only, as CI runs): a disk the test can fill.
fn on_tmpfs(size: &str) -> Vec<&'static str> {
    let mount: &'static str = format!("mount -t tmpfs -o size={size} tmpfs \"$0\" && exec \"$@\"").leak();
    vec![
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        mount,
        "{dir}/disk",
    ]
}

/// The log's lines; every one must be a whole JSON record.
fn logged_ids(log: &std::path::Path) -> Vec<u64> {
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the log ends mid-line:\n{text}"
    );
    text.lines()
        .map(|l| {
            let record: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("a torn line ({e}): {l:?}\nlog:\n{text}"));
            record["id"].as_u64().unwrap()
        })
        .collect()
}

#[test]
fn a_full_disk_costs_the_log_only_what_did_not_fit_and_the_log_resumes() {
    // The log lives on a 64 KiB tmpfs.
    let daemon = Daemon::start_wrapped(
        &on_tmpfs("64k"),
        "caption_log = \"{dir}/disk/captions.jsonl\"\n[source]\nkind = \"none\"",
        &[],
        |dir| std::fs::create_dir(dir.join("disk")).unwrap(),
    );
    daemon.wait_ready();
    // The tmpfs as the daemon sees it.
    let disk = PathBuf::from(format!("/proc/{}/root", daemon.child.id()))
        .join(daemon.dir.path().join("disk").strip_prefix("/").unwrap());
    let log = disk.join("captions.jsonl");
    let mut published = vec![upload(&daemon)];
    assert_eq!(logged_ids(&log), published, "the log is on the tmpfs");

    // Fill the disk to the last byte, then caption on: the log's last page still takes a few lines
    // (tmpfs allocates whole pages), then one line fits in part, then none.
    let mut filler = std::fs::File::create(disk.join("filler")).unwrap();
    let block = vec![0u8; 512];
    while filler.write_all(&block).is_ok() {}
    while filler.write_all(&block[..1]).is_ok() {}
    drop(filler);
    published.extend((0..20).map(|_| upload(&daemon)));
    let metrics = daemon.raw("GET /metrics HTTP/1.1\r\nHost: {host}", b"").1;
    let lost = metric(&metrics, "clipcap_errors_total{kind=\"log\"}");
    assert!(
        lost >= 5.0,
        "captions on a full disk are counted as lost to the log:\n{metrics}"
    );

    // Room again: the log resumes where it stopped, with no torn line between.
    std::fs::remove_file(disk.join("filler")).unwrap();
    let after: Vec<u64> = (0..3).map(|_| upload(&daemon)).collect();
    published.extend(&after);
    let ids = logged_ids(&log);
    assert_eq!(
        ids.len() as f64 + lost,
        published.len() as f64,
        "every caption is logged or counted as lost: logged {ids:?}, published {published:?}"
    );
    assert!(ids.ends_with(&after), "the log resumed: {ids:?}");
    assert!(ids.iter().all(|id| published.contains(id)));
    let stderr = daemon.stderr();
    assert_eq!(
        stderr.matches("records are lost until it can be written").count(),
        1,
        "the failure is logged once, not per caption:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("written again, after losing {lost} records")),
        "{stderr}"
    );
}

#[test]
fn a_full_disk_costs_kept_frames_not_comparisons_and_keeping_resumes() {
    // captioning.keep_compared_frames on a 256 KiB tmpfs.
    let daemon = Daemon::start_wrapped(
        &on_tmpfs("256k"),
        "[captioning]\ninterval_ms = 100\ncompare = [\"beam:num_beams=2\"]\nkeep_compared_frames = \"{dir}/disk/frames\"",
        &[],
        |dir| std::fs::create_dir(dir.join("disk")).unwrap(),
    );
    let disk = PathBuf::from(format!("/proc/{}/root", daemon.child.id()))
        .join(daemon.dir.path().join("disk").strip_prefix("/").unwrap());
    let compared = |n: usize| {
        daemon.wait_until(|| daemon.log_records("comparison").len() == n, "a comparison");
        daemon.log_records("comparison").pop().unwrap()
    };
    daemon.drop_image("08200.png");
    let first = compared(1);
    assert!(
        disk.join("frames")
            .join(Path::new(first["frame"].as_str().unwrap()).file_name().unwrap())
            .is_file()
    );

    let mut filler = std::fs::File::create(disk.join("filler")).unwrap();
    let block = vec![0u8; 4096];
    while filler.write_all(&block).is_ok() {}
    while filler.write_all(&block[..1]).is_ok() {}
    drop(filler);
    for (n, name) in ["08203.png", "08208.png"].iter().enumerate() {
        daemon.drop_image(name);
        let c = compared(n + 2);
        assert!(
            c.get("frame").is_none() && c["compare"][0]["caption"].is_string(),
            "{c}"
        );
    }
    assert_eq!(metric(&daemon.metrics(), "clipcap_errors_total{kind=\"frame\"}"), 2.0);
    assert!(daemon.stderr().contains("keep_compared_frames"), "{}", daemon.stderr());

    std::fs::remove_file(disk.join("filler")).unwrap();
    daemon.drop_image("08209.png");
    let last = compared(4);
    assert!(last["frame"].is_string(), "{last}");
    // No half-written frame was left behind.
    let names: Vec<String> = std::fs::read_dir(disk.join("frames"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.len() == 2 && names.iter().all(|n| n.ends_with(".jpg")),
        "{names:?}"
    );
}

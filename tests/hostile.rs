//! What an attack on the API found (issue 16), each kept as a regression test: clients that send
//! nothing, trickle their headers or stop mid-body; more connections than allowed; broken body
//! framing; a PNG whose colour profile inflates to 1 GiB, four at once; decoder specs and queries
//! that repeat or mangle their parameters; and uploads that name ever new decoders to grow /metrics.
//! (A JPEG whose header claims more pixels than its data holds: core/src/imageio.rs's tests.)

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Daemon, demo_image, metric};

/// Waits up to this long for the daemon to close a connection or answer: far beyond the 1-2 s
/// timeouts configured below, so that a slow machine cannot fail the test, while a connection the
/// daemon never closes does.
const PATIENCE: Duration = Duration::from_secs(30);

fn connect(daemon: &Daemon) -> TcpStream {
    let tcp = TcpStream::connect(daemon.url.trim_start_matches("http://")).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp
}

/// Everything the daemon sends until it closes the connection; fails if it is still open after
/// PATIENCE.
fn until_closed(tcp: &mut TcpStream) -> String {
    let mut received = Vec::new();
    match tcp.read_to_end(&mut received) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the connection is still open after {PATIENCE:?} ({e}); received {received:?}"),
    }
    String::from_utf8_lossy(&received).into_owned()
}

fn png() -> Vec<u8> {
    std::fs::read(demo_image("08209.png")).unwrap()
}

#[test]
fn slow_silent_and_surplus_clients_are_cut_off_while_event_streams_live_on() {
    let daemon = Daemon::start(
        "header_timeout_ms = 1000\nbody_timeout_ms = 2000\nmax_connections = 4\n[source]\nkind = \"none\"",
        &[],
    );
    daemon.wait_ready();

    // Connects and sends nothing.
    let received = until_closed(&mut connect(&daemon));
    assert_eq!(received, "", "nothing is answered to a client that asked nothing");

    // Trickles header lines, one every 200 ms, never ending the head.
    let mut tcp = connect(&daemon);
    write!(tcp, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
    let start = Instant::now();
    let mut line = 0;
    while start.elapsed() < PATIENCE && write!(tcp, "X-Slow-{line}: a\r\n").is_ok() {
        line += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let received = until_closed(&mut tcp);
    assert!(
        !received.contains(" 200 "),
        "a head that never ends is not served: {received}"
    );
    assert!(line < 100, "the trickle went on for {line} lines");

    // Declares a body and stops sending it.
    let mut tcp = connect(&daemon);
    write!(
        tcp,
        "POST /v1/caption HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n"
    )
    .unwrap();
    tcp.write_all(&png()[..1000]).unwrap();
    let received = until_closed(&mut tcp);
    assert!(received.starts_with("HTTP/1.1 408 "), "{received}");
    assert!(received.contains("did not arrive within 2000 ms"), "{received}");

    // Four event streams take every connection; they outlive the header timeout. (Opened until
    // accepted: the connections above may not all be counted as closed yet.)
    let open_stream = || {
        let mut tcp = connect(&daemon);
        write!(tcp, "GET /v1/captions/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head).ok()?;
        (&head == b"HTTP/1.1 200").then_some(tcp)
    };
    let mut streams: Vec<TcpStream> = Vec::new();
    daemon.wait_until(
        || {
            streams.extend(open_stream());
            streams.len() == 4
        },
        "four event streams",
    );
    // A fifth connection is closed unanswered: it is over max_connections.
    let mut surplus = connect(&daemon);
    let _ = write!(surplus, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let received = until_closed(&mut surplus);
    assert_eq!(received, "", "a connection over max_connections is closed unanswered");
    std::thread::sleep(Duration::from_millis(1500)); // past the header timeout
    drop(streams.pop());
    daemon.raw_until_ok(
        "POST /v1/caption HTTP/1.1\r\nHost: {host}",
        &png(),
        "an upload once a stream closed",
    );
    // The caption reached the three streams still open, past the header timeout.
    for stream in &mut streams {
        let mut seen = String::new();
        let mut buffer = [0u8; 4096];
        while !seen.contains("event: caption") {
            let n = stream.read(&mut buffer).expect("the stream is still open");
            assert!(n > 0, "the stream was closed: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    }
    drop(streams);
    let metrics = daemon.raw_until_ok("GET /metrics HTTP/1.1\r\nHost: {host}", b"", "/metrics");
    assert!(
        metric(&metrics, "clipcap_errors_total{kind=\"connection\"}") >= 1.0,
        "{metrics}"
    );
}

/// A PNG chunk: length, type, data, CRC.
fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out
}

fn zlib(chunks: impl Iterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    for c in chunks {
        z.write_all(&c).unwrap();
    }
    z.finish().unwrap()
}

/// A valid 1x1 PNG whose iCCP colour profile inflates to `inflated` bytes of zeros.
fn iccp_bomb(inflated: usize) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    // 1x1, 8-bit RGB, no interlace.
    png.extend(chunk(b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0]));
    let mut profile = b"bomb\0\0".to_vec(); // name, compression method 0
    profile.extend(zlib((0..inflated >> 20).map(|_| vec![0u8; 1 << 20])));
    png.extend(chunk(b"iCCP", &profile));
    png.extend(chunk(b"IDAT", &zlib(std::iter::once(vec![0, 200, 40, 40]))));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// Kilobytes of a /proc/PID/status field (VmRSS, VmHWM).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .strip_suffix(" kB")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn hostile_bodies_get_their_status_and_bombs_cost_no_memory() {
    let daemon = Daemon::start("[source]\nkind = \"none\"", &[]);
    daemon.wait_ready();
    let post = "POST /v1/caption HTTP/1.1\r\nHost: 127.0.0.1\r\n";

    // Chunked framing that is not hex sizes.
    let mut tcp = connect(&daemon);
    write!(tcp, "{post}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n").unwrap();
    let received = until_closed(&mut tcp);
    assert!(received.starts_with("HTTP/1.1 400 "), "broken chunks: {received}");

    // A body shorter than its Content-Length: the client sends part and closes its side.
    let mut tcp = connect(&daemon);
    write!(tcp, "{post}Content-Length: 5000\r\n\r\n").unwrap();
    tcp.write_all(&png()[..1000]).unwrap();
    tcp.shutdown(std::net::Shutdown::Write).unwrap();
    let received = until_closed(&mut tcp);
    assert!(
        received.starts_with("HTTP/1.1 400 "),
        "a short body is a bad request, not one too large: {received}"
    );

    // Warm up, then measure the peak RSS of four 1 GiB iCCP bombs decoded at once.
    assert_eq!(daemon.raw(post.trim_end(), &png()).0, 200);
    let pid = daemon.child.id();
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap(); // VmHWM := VmRSS
    let before = status_kb(pid, "VmRSS");
    let bomb = iccp_bomb(1 << 30);
    assert!(bomb.len() < 2 << 20, "the bomb is {} bytes", bomb.len());
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let uploads: Vec<_> = (0..4).map(|_| s.spawn(|| daemon.raw(post.trim_end(), &bomb))).collect();
        uploads.into_iter().map(|u| u.join().unwrap()).collect()
    });
    let peak = status_kb(pid, "VmHWM");
    for (status, response) in &answers {
        // The profile is dropped (png ignores a profile over its limit); the pixel is captioned.
        assert_eq!(*status, 200, "{response}");
    }
    let growth_mb = peak.saturating_sub(before) / 1024;
    eprintln!("four 1 GiB iCCP bombs at once: peak RSS {before} kB before, {peak} kB at the peak");
    assert!(
        growth_mb < 200,
        "four 1 GiB iCCP bombs raised the peak RSS by {growth_mb} MB ({before} kB before)"
    );
}

#[test]
fn repeated_or_mangled_parameters_are_refused_and_decoder_labels_stay_bounded() {
    let daemon = Daemon::start("[source]\nkind = \"none\"", &[]);
    daemon.wait_ready();
    let upload = |query: &str| daemon.raw(&format!("POST /v1/caption{query} HTTP/1.1\r\nHost: {{host}}"), &png());
    assert_eq!(upload("").0, 200, "the configured decoder (greedy) captions");
    for (query, reason) in [
        (
            "?decoder=beam:num_beams=5,num_beams=6",
            "parameter `num_beams` is given twice",
        ),
        ("?decoder=beam:,,,", "an empty parameter"),
        (
            "?decoder=greedy&decoder=beam",
            "query parameter `decoder` is given more than once",
        ),
    ] {
        let (status, response) = upload(query);
        assert_eq!(status, 400, "{query}: {response}");
        assert!(response.contains(reason), "{query}: {response}");
    }
    let (status, response) = daemon.raw("GET /v1/captions?limit=1&limit=2 HTTP/1.1\r\nHost: {host}", b"");
    assert_eq!(status, 400, "{response}");
    assert!(response.contains("`limit` is given more than once"), "{response}");

    // One decoder, one label, however its spec is spelled.
    let (status, response) = upload("?decoder=beam:%20num_beams%20=%202.0");
    assert_eq!(status, 200, "{response}");
    assert!(response.contains(r#""decoder":"beam:num_beams=2""#), "{response}");

    // 40 distinct decoders: the first 32 get their own series, the rest share "other".
    for k in 1..=40 {
        let (status, response) = upload(&format!("?decoder=sample:top_k={k}"));
        assert_eq!(status, 200, "top_k={k}: {response}");
    }
    let (_, metrics) = daemon.raw("GET /metrics HTTP/1.1\r\nHost: {host}", b"");
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("clipcap_decoder_seconds_count{"))
        .collect();
    // greedy (configured), beam:num_beams=2, 31 of the sample ones, and other.
    assert_eq!(series.len(), 34, "{series:#?}");
    assert_eq!(
        metric(&metrics, "clipcap_decoder_seconds_count{decoder=\"other\"}"),
        9.0,
        "{series:#?}"
    );
}

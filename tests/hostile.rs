//! What the attacks on the API found, each kept as a regression test. Issue 16's: clients that send
//! nothing, trickle their headers or stop mid-body; more connections than allowed; broken body
//! framing; a PNG whose colour profile inflates to 1 GiB, four at once; decoder specs and queries
//! that repeat or mangle their parameters; and uploads that name ever new decoders to grow /metrics.
//! (A JPEG whose header claims more pixels than its data holds: core/src/imageio.rs's tests.)
//! Issue 30's: one address holding every connection, one address's upload flood starving the
//! others, bitmaps and PNGs that claim tens of megapixels in a few bytes, ten votes of one person,
//! Origin headers that are not text, and Host headers doubled, malformed or contradicted. Other
//! clients come from other loopback addresses (127.0.0.2 ...).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
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
        "header_timeout_ms = 1000\nbody_timeout_ms = 2000\nmax_connections = 4\nlocal_connections = 0\n\
         [source]\nkind = \"none\"",
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
    let daemon = Daemon::start("uploads_in_flight = 32\n[source]\nkind = \"none\"", &[]);
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

/// An event stream from `source`, once the daemon answered it (None: the connection was refused).
fn open_stream(daemon: &Daemon, source: Ipv4Addr) -> Option<TcpStream> {
    let mut tcp = daemon.connect_from(source);
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(tcp, "GET /v1/captions/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).ok()?;
    (&head == b"HTTP/1.1 200").then_some(tcp)
}

#[test]
fn one_address_cannot_take_every_connection() {
    let daemon = Daemon::start(
        "max_connections = 16\nmax_connections_per_client = 4\nlocal_connections = 2\n[source]\nkind = \"none\"",
        &[],
    );
    daemon.wait_ready();
    let flood = Ipv4Addr::new(127, 0, 0, 1);
    // Event streams from one address, held open: four are served (opened until accepted: earlier
    // connections may not all be counted as closed yet), a fifth is closed unanswered.
    let mut streams = Vec::new();
    daemon.wait_until(
        || {
            streams.extend(open_stream(&daemon, flood));
            streams.len() == 4
        },
        "four event streams",
    );
    assert!(open_stream(&daemon, flood).is_none(), "a fifth stream of one address");
    // Idle sockets from a second address take its four slots too.
    let idle: Vec<TcpStream> = (0..6)
        .map(|_| daemon.connect_from(Ipv4Addr::new(127, 0, 0, 3)))
        .collect();
    // A third address's probes are served while both hold all they may.
    for path in ["/healthz", "/readyz", "/v1/captions"] {
        let (status, response) = daemon.raw_from(
            Ipv4Addr::new(127, 0, 0, 2),
            &format!("GET {path} HTTP/1.1\r\nHost: {{host}}"),
            b"",
        );
        assert_eq!(status, 200, "{path} from 127.0.0.2: {response}");
    }
    let (_, metrics) = daemon.raw_from(
        Ipv4Addr::new(127, 0, 0, 2),
        "GET /metrics HTTP/1.1\r\nHost: {host}",
        b"",
    );
    assert!(
        metric(&metrics, "clipcap_connections_refused_total{reason=\"client\"}") >= 3.0,
        "{metrics}"
    );
    drop((streams, idle));
}

/// Uploads `body` from `source` with `query` until `stop`, tallying the answers' statuses.
fn flood(
    daemon: &Daemon,
    source: Ipv4Addr,
    query: &str,
    body: &[u8],
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<u16> {
    let mut statuses = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        statuses.push(
            daemon
                .raw_from(
                    source,
                    &format!("POST /v1/caption{query} HTTP/1.1\r\nHost: {{host}}"),
                    body,
                )
                .0,
        );
    }
    statuses
}

#[test]
fn one_address_flooding_uploads_does_not_starve_another() {
    let daemon = Daemon::start("[source]\nkind = \"none\"", &[]);
    daemon.wait_ready();
    let image = png();
    let flooder = Ipv4Addr::new(127, 0, 0, 1);
    // Beyond the ceiling, a costly decoder is refused at once.
    let (status, response) = daemon.raw(
        "POST /v1/caption?decoder=beam:num_beams=64 HTTP/1.1\r\nHost: {host}",
        &image,
    );
    assert_eq!(status, 400, "{response}");
    assert!(
        response.contains("64 beams are more than the 8 uploads may ask for"),
        "{response}"
    );

    // Twelve threads of one address upload with the costliest decoder allowed, while another address
    // uploads five images one after the other.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (flooded, waits) = std::thread::scope(|s| {
        let flooders: Vec<_> = (0..12)
            .map(|_| s.spawn(|| flood(&daemon, flooder, "?decoder=beam:num_beams=8", &image, &stop)))
            .collect();
        std::thread::sleep(Duration::from_secs(1));
        let mut waits = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let (status, response) = daemon.raw_from(
                Ipv4Addr::new(127, 0, 0, 2),
                "POST /v1/caption HTTP/1.1\r\nHost: {host}",
                &image,
            );
            assert_eq!(status, 200, "the other address during the flood: {response}");
            waits.push(start.elapsed());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let flooded: Vec<u16> = flooders.into_iter().flat_map(|f| f.join().unwrap()).collect();
        (flooded, waits)
    });
    let count = |status| flooded.iter().filter(|&&s| s == status).count();
    eprintln!(
        "flood: {} uploads, {} captioned, {} answered 429, {} 503; the other address waited {waits:?}",
        flooded.len(),
        count(200),
        count(429),
        count(503)
    );
    assert!(count(200) > 0 && count(429) > 0, "{flooded:?}");
    assert_eq!(count(503), 0, "the flood filled the queue: {flooded:?}");
    // Its turn comes after at most the flood's two uploads in flight: seconds, on the slowest machine.
    let slowest = waits.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(20),
        "the other address waited {slowest:?}"
    );
}

/// A BMP of `width` x `height` 8-bit pixels, run-length encoded (BI_RLE8), whose data ends the bitmap
/// at once: 60 bytes, any size.
fn rle_bmp(width: i32, height: i32) -> Vec<u8> {
    let data = [0u8, 1]; // end of bitmap
    let offset = 14 + 40 + 4;
    let mut bmp = b"BM".to_vec();
    bmp.extend(((offset + data.len()) as u32).to_le_bytes());
    bmp.extend([0u8; 4]);
    bmp.extend((offset as u32).to_le_bytes());
    bmp.extend(40u32.to_le_bytes());
    bmp.extend(width.to_le_bytes());
    bmp.extend(height.to_le_bytes());
    bmp.extend(1u16.to_le_bytes()); // planes
    bmp.extend(8u16.to_le_bytes()); // bits per pixel
    bmp.extend(1u32.to_le_bytes()); // BI_RLE8
    bmp.extend((data.len() as u32).to_le_bytes());
    bmp.extend([0u8; 8]); // resolution
    bmp.extend(1u32.to_le_bytes()); // colours used
    bmp.extend(0u32.to_le_bytes());
    bmp.extend([0u8, 0, 0, 0]); // the one colour
    bmp.extend(data);
    bmp
}

/// A PNG of `width` x `height` pixels of `bits`-bit `colour` type (0 grey, 6 RGBA), all zeros: as
/// valid as it is small.
fn zero_png(width: u32, height: u32, bits: u8, colour: u8) -> Vec<u8> {
    let channels = if colour == 6 { 4 } else { 1 };
    let row = 1 + (width as usize * channels * bits as usize).div_ceil(8);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([bits, colour, 0, 0, 0]);
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &zlib((0..height).map(|_| vec![0u8; row]))));
    png.extend(chunk(b"IEND", &[]));
    png
}

#[test]
fn images_that_claim_more_than_they_may_are_refused_before_they_cost_memory() {
    // Many uploads of one client at once (the default uploads_in_flight, 2, would refuse most first).
    let daemon = Daemon::start("uploads_in_flight = 32\n[source]\nkind = \"none\"", &[]);
    daemon.wait_ready();
    let post = "POST /v1/caption HTTP/1.1\r\nHost: {host}";
    // A real photograph of 12 MP (a phone's) is captioned.
    let photo = image::RgbImage::from_fn(4000, 3000, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
        .encode_image(&photo)
        .unwrap();
    let (status, response) = daemon.raw(post, &jpeg);
    assert_eq!(status, 200, "a 12 MP photograph: {response}");

    let bombs = [
        (
            "a 60-byte RLE bitmap of 6000x6600",
            rle_bmp(6000, 6600),
            "more than the 16000000 allowed",
        ),
        (
            "a 1-bit PNG of 6320x6320",
            zero_png(6320, 6320, 1, 0),
            "more than the 16000000 allowed",
        ),
        (
            "a 16-bit RGBA PNG of 4000x4000",
            zero_png(4000, 4000, 16, 6),
            "more than the 128 MiB allowed",
        ),
    ];
    let pid = daemon.child.id();
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap(); // VmHWM := VmRSS
    let before = status_kb(pid, "VmRSS");
    let daemon = &daemon;
    let answers: Vec<(&str, u16, String, &str)> = std::thread::scope(|s| {
        let sent: Vec<_> = bombs
            .iter()
            .flat_map(|bomb| std::iter::repeat_n(bomb, 8))
            .map(|(what, bytes, why)| {
                s.spawn(move || {
                    let (status, response) = daemon.raw(post, bytes);
                    (*what, status, response, *why)
                })
            })
            .collect();
        sent.into_iter().map(|u| u.join().unwrap()).collect()
    });
    let peak = status_kb(pid, "VmHWM");
    for (what, status, response, why) in &answers {
        assert_eq!(*status, 400, "{what}: {response}");
        assert!(response.contains(why), "{what}: {response}");
    }
    let growth_mb = peak.saturating_sub(before) / 1024;
    eprintln!(
        "bombs ({}): 8 each at once, {} bytes in all; peak RSS {before} kB before, {peak} kB at the peak",
        bombs
            .iter()
            .map(|b| format!("{}: {} bytes", b.0, b.1.len()))
            .collect::<Vec<_>>()
            .join(", "),
        bombs.iter().map(|b| 8 * b.1.len()).sum::<usize>()
    );
    assert!(
        growth_mb < 64,
        "the bombs raised the peak RSS by {growth_mb} MB ({before} kB before)"
    );
}

#[test]
fn a_person_votes_once_for_a_caption() {
    let mut daemon = Daemon::start(
        "[captioning]\ninterval_ms = 100\ncompare = [\"beam:num_beams=3\"]\nvotes = true\nvotes_per_minute = 100",
        &[],
    );
    daemon.drop_image("08200.png");
    daemon.wait_until(|| daemon.log_records("comparison").len() == 1, "a comparison");
    let id = daemon.logged()[0]["id"].clone();
    let vote = |source: Ipv4Addr, decoder: &str| {
        daemon.raw_from(
            source,
            &format!("POST /v1/captions/{id}/vote HTTP/1.1\r\nHost: {{host}}\r\nContent-Type: application/json"),
            format!(r#"{{"decoder": "{decoder}"}}"#).as_bytes(),
        )
    };
    let me = Ipv4Addr::new(127, 0, 0, 1);
    assert_eq!(vote(me, "beam:num_beams=3").0, 200);
    for n in 1..10 {
        let decoder = if n % 2 == 0 { "greedy" } else { "beam:num_beams=3" };
        let (status, response) = vote(me, decoder);
        assert_eq!(status, 409, "vote {n}: {response}");
        assert!(response.contains("address:127.0.0.1 voted for caption"), "{response}");
    }
    // Another person's vote for the same caption counts.
    assert_eq!(vote(Ipv4Addr::new(127, 0, 0, 2), "greedy").0, 200);
    assert_eq!(
        metric(&daemon.metrics(), "clipcap_votes_total{decoder=\"beam:num_beams=3\"}"),
        1.0
    );
    assert_eq!(daemon.terminate().code(), Some(0));
    let votes = daemon.log_records("vote");
    let voters: Vec<&str> = votes.iter().map(|v| v["voter"].as_str().unwrap()).collect();
    assert_eq!(voters, ["address:127.0.0.1", "address:127.0.0.2"]);

    // A log that holds one person's vote twice (written twice, or by an older daemon) counts it once.
    let log = std::fs::read_to_string(daemon.log_path()).unwrap();
    let first_vote = log.lines().find(|l| l.contains(r#""event":"vote""#)).unwrap();
    let doubled = daemon.dir.path().join("doubled.jsonl");
    std::fs::write(&doubled, format!("{log}{first_vote}\n")).unwrap();
    let report = std::process::Command::new(env!("CARGO_BIN_EXE_clipcap"))
        .args(["report", "--json"])
        .arg(&doubled)
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["votes"], 2, "{report}");
}

#[test]
fn hosts_and_origins_that_are_not_one_clear_value_are_refused() {
    let daemon = Daemon::start("[source]\nkind = \"none\"", &[]);
    daemon.wait_ready();
    let address = daemon.url.trim_start_matches("http://").to_string();
    let send = |request: &[u8]| {
        let mut tcp = connect(&daemon);
        tcp.write_all(request).unwrap();
        until_closed(&mut tcp)
    };
    let status = |response: &str| response.split(' ').nth(1).unwrap_or_default().to_string();
    for (what, request, expected) in [
        (
            "two Host headers, the allowed one first",
            format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\nHost: evil.example\r\nConnection: close\r\n\r\n"),
            "400",
        ),
        (
            "a port that is no port",
            "GET /healthz HTTP/1.1\r\nHost: localhost:evil.example\r\nConnection: close\r\n\r\n".to_string(),
            "400",
        ),
        (
            "an absolute URI naming another host",
            format!("GET http://evil.example/healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"),
            "421",
        ),
        (
            "an absolute URI naming this one",
            "GET http://localhost/healthz HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_string(),
            "200",
        ),
    ] {
        let response = send(request.as_bytes());
        assert_eq!(status(&response), expected, "{what}: {response}");
    }
    // An upload whose Origin or Sec-Fetch-Site is not text: no browser sends one.
    for header in [&b"Origin: http://a\xff\xfe"[..], b"Sec-Fetch-Site: same-\xffsite"] {
        let mut request = format!("POST /v1/caption HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n").into_bytes();
        request.extend_from_slice(header);
        request.extend_from_slice(format!("\r\nContent-Length: {}\r\n\r\n", png().len()).as_bytes());
        request.extend_from_slice(&png());
        let response = send(&request);
        assert_eq!(
            status(&response),
            "403",
            "{}: {response}",
            String::from_utf8_lossy(header)
        );
    }
}

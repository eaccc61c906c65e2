//! clipcap as a ROS 2 node, against a DDS implementation nobody here wrote: Eclipse Cyclone DDS,
//! through its Python binding (tests/ros2/cyclone_peer.py), publishes `sensor_msgs/Image` (rgb8 and
//! bgr8 with padded rows, mono8, rgba8) and `CompressedImage` (JPEG, PNG) messages of demo images on
//! `rt/camera/image_raw` and reads `rt/clipcap/caption` and `rt/clipcap/caption_json`: every image
//! gets its caption back, equal to `clipcap caption` on the same image, with its header. Also: an
//! unreadable encoding is one error, not one per image; readiness follows the publisher; a folder
//! source's captions go out on ROS 2 too (`ros2.enabled`).
//!
//! No packet leaves the machine: before it starts anything, the test's thread moves into a network
//! namespace of its own (unshare(CLONE_NEWNET): root, as CI runs; without it the test fails, it is
//! not skipped). The daemon and the peer are its children and live there too. The test asserts that
//! the namespace's only interface is `lo`, which it brings up with multicast (DDS discovery) on.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Daemon, demo_image, metric, plugin_dir};
use serde_json::{Value, json};

const DOMAIN: u16 = 17;

/// Cyclone DDS on `lo` only, with multicast, and unicast discovery to 127.0.0.1 besides.
const CYCLONE: &str = r#"<CycloneDDS><Domain Id="any"><General><Interfaces><NetworkInterface name="lo" multicast="true"/></Interfaces></General><Discovery><ParticipantIndex>auto</ParticipantIndex><Peers><Peer address="127.0.0.1"/></Peers></Discovery></Domain></CycloneDDS>"#;

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Moves this thread (and so every process it starts) into a new network namespace whose only
/// interface is `lo`, up, with multicast.
fn isolate_network() {
    // SAFETY: unshare(2) with CLONE_NEWNET takes no pointers; it changes only the calling thread's
    // network namespace, which this test's thread then keeps to itself.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}; this test needs root (CAP_SYS_ADMIN) to keep DDS traffic in a network namespace of its own",
        std::io::Error::last_os_error()
    );
    run("ip", &["link", "set", "lo", "up"]);
    run("ip", &["link", "set", "lo", "multicast", "on"]);
    run("ip", &["route", "add", "224.0.0.0/4", "dev", "lo"]);
    let links = run("ip", &["-o", "link", "show"]);
    let names: Vec<&str> = links.lines().filter_map(|l| l.split(": ").nth(1)).collect();
    assert_eq!(names, ["lo"], "interfaces of the test's namespace:\n{links}");
}

/// `clipcap caption --json` on `files`: their captions, in order.
fn clipcap_caption(files: &[PathBuf]) -> Vec<String> {
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/bundle");
    let out = Command::new(env!("CARGO_BIN_EXE_clipcap"))
        .env("CLIPCAP__PLUGINS__DIRECTORIES", plugin_dir())
        .env("CLIPCAP__PLUGINS__ALLOW_INSECURE", "true")
        .args(["caption", "--json", "--bundle"])
        .arg(bundle)
        .args(files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["caption"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// The Cyclone DDS peer (see cyclone_peer.py) on `plan`, writing what it read to `<dir>/<name>.json`.
fn cyclone_peer(dir: &Path, name: &str, plan: Value) -> (Command, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (plan_file, out) = (dir.join(format!("{name}-plan.json")), dir.join(format!("{name}.json")));
    std::fs::write(&plan_file, plan.to_string()).unwrap();
    let mut peer = Command::new(root.join("export/.venv/bin/python"));
    peer.arg(root.join("tests/ros2/cyclone_peer.py"))
        .args([&plan_file, &out])
        .env("CYCLONEDDS_URI", CYCLONE);
    (peer, out)
}

/// What the peer read, once it succeeded.
fn read_back(done: std::process::Output, out: &Path) -> Value {
    let log = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "the Cyclone DDS peer failed:\n{log}");
    eprint!("{log}");
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

/// What the peer read, `feed(n)` called for n = 0, 1, ... until it has read what its plan asks
/// (it may match the daemon only after the first images).
fn read_while_feeding(mut peer: Command, out: &Path, mut feed: impl FnMut(usize)) -> Value {
    let mut peer = peer.stderr(std::process::Stdio::piped()).spawn().unwrap();
    for n in 0.. {
        if peer.try_wait().unwrap().is_some() {
            break;
        }
        feed(n);
    }
    read_back(peer.wait_with_output().unwrap(), out)
}

/// The peer publishing `images` on `topic` until each has its caption.
fn publish_images(dir: &Path, topic: &str, images: &[Value]) -> Value {
    let name = topic.replace('/', "-");
    let (mut peer, out) = cyclone_peer(dir, &name, json!({"domain": DOMAIN, "topic": topic, "images": images}));
    read_back(
        peer.output()
            .expect("export/.venv with cyclonedds (scripts/setup-lab.sh)"),
        &out,
    )
}

/// Asserts that each image in `images` came back with `want` (by id), its header and its origin, and
/// that the text topic carried every caption the JSON topic did, in the same order.
fn assert_captions(got: &Value, images: &[Value], want: &[(&str, &str)], topic: &str) {
    for (number, image) in images.iter().enumerate() {
        let id = image["id"].as_str().unwrap();
        let Some(&(_, caption)) = want.iter().find(|(i, _)| *i == id) else {
            continue;
        };
        let event = &got["captions"][id];
        assert_eq!(event["caption"], caption, "{id}: {event}");
        assert_eq!(
            (&event["source"], &event["origin"]),
            (&json!("ros2"), &json!(topic)),
            "{id}: {event}"
        );
        let stamp = json!({"sec": 1_700_000_000 + number, "nanosec": 1000 * number});
        assert_eq!(event["header"], json!({"stamp": stamp, "frame_id": id}), "{event}");
    }
    let events: Vec<&Value> = got["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["caption"])
        .collect();
    let texts: Vec<&Value> = got["texts"].as_array().unwrap().iter().collect();
    assert_eq!(texts, events, "the text topic and the JSON topic disagree");
}

/// The readiness reason (`None` when ready).
fn not_ready(daemon: &Daemon) -> Option<String> {
    let (status, response) = daemon.raw("GET /readyz HTTP/1.1\r\nHost: {host}", b"");
    let body: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    (status != 200).then(|| body["reason"].as_str().unwrap().to_string())
}

fn image(id: &str, file: &Path, encoding: &str, pad: u32) -> Value {
    json!({"id": id, "file": file, "encoding": encoding, "pad": pad})
}

fn daemon(compressed: bool) -> Daemon {
    let config = format!(
        "[captioning]\ninterval_ms = 100\n[source]\nkind = \"ros2\"\n\
         [ros2]\ndomain_id = {DOMAIN}\ncompressed = {compressed}\n"
    );
    Daemon::start(&config, &[("CYCLONEDDS_URI", CYCLONE)])
}

#[test]
fn images_from_cyclone_dds_get_the_captions_clipcap_caption_gives() {
    isolate_network();
    let dir = tempfile::tempdir().unwrap();
    // Three demo images (224x224: 150 KB as rgb8, so DDS fragments them), and of the first a grey
    // version (mono8) and a JPEG (CompressedImage).
    let (a, b, c) = (
        demo_image("08200.png"),
        demo_image("08203.png"),
        demo_image("08207.png"),
    );
    let (grey, jpeg) = (dir.path().join("grey.png"), dir.path().join("a.jpg"));
    let picture = image::open(&a).unwrap();
    picture.to_luma8().save(&grey).unwrap();
    picture.to_rgb8().save(&jpeg).unwrap();
    let want = clipcap_caption(&[a.clone(), b.clone(), c.clone(), grey.clone(), jpeg.clone()]);
    let [ca, cb, cc, cgrey, cjpeg] = [0, 1, 2, 3, 4].map(|i| want[i].as_str());
    assert_ne!(ca, cb, "the test needs images with different captions");

    // Raw images. Before any publisher: not ready, saying why.
    let mut raw = daemon(false);
    raw.wait_until(
        || not_ready(&raw).as_deref() == Some("source ros2: no publisher on the ROS 2 image topic yet"),
        "the model to load",
    );
    let images = [
        image("a-rgb8", &a, "rgb8", 5),
        image("b-bgr8", &b, "bgr8", 3),
        image("c-rgba8", &c, "rgba8", 0),
        image("a-mono8", &grey, "mono8", 7),
        image("a-bgr8", &a, "bgr8", 0),
        json!({"id": "depth", "file": a, "encoding": "16UC1", "expect_caption": false}),
    ];
    let got = publish_images(dir.path(), "rt/camera/image_raw", &images);
    let want = [
        ("a-rgb8", ca),
        ("b-bgr8", cb),
        ("c-rgba8", cc),
        ("a-mono8", cgrey),
        ("a-bgr8", ca),
    ];
    assert_captions(&got, &images, &want, "/camera/image_raw");
    // The peer is gone: the source is down, and readiness says why.
    raw.wait_until(
        || not_ready(&raw).as_deref() == Some("source ros2: no publisher on /camera/image_raw any more"),
        "readiness to report the publisher gone",
    );
    // Two source errors: the publisher gone, and the three 16UC1 images, as an encoding is reported
    // once, not per image.
    let metrics = raw.metrics();
    assert_eq!(
        metric(&metrics, "clipcap_errors_total{kind=\"source\"}"),
        2.0,
        "{metrics}"
    );
    assert!(
        raw.stderr().contains("encoding \"16UC1\" is not one of"),
        "{}",
        raw.stderr()
    );
    assert!(
        metric(&metrics, "clipcap_ros2_captions_published_total") >= 5.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "clipcap_frames_captured_total{source=\"ros2\"}") >= 5.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "clipcap_ros2_image_publishers"), 0.0, "{metrics}");
    assert_eq!(raw.terminate().code(), Some(0), "{}", raw.stderr());

    // Compressed images: the JPEG as the camera would send it, and a PNG.
    let mut compressed = daemon(true);
    let images = [image("a-jpeg", &jpeg, "jpeg", 0), image("b-png", &b, "png", 0)];
    let got = publish_images(dir.path(), "rt/camera/image_raw/compressed", &images);
    assert_captions(
        &got,
        &images,
        &[("a-jpeg", cjpeg), ("b-png", cb)],
        "/camera/image_raw/compressed",
    );
    assert_eq!(compressed.terminate().code(), Some(0), "{}", compressed.stderr());

    // Any source's captions go out on ROS 2 with ros2.enabled: a watched folder's here, with no header.
    let folder = Daemon::start(
        &format!("[captioning]\ninterval_ms = 100\n[ros2]\nenabled = true\ndomain_id = {DOMAIN}\n"),
        &[],
    );
    let (peer, out) = cyclone_peer(
        dir.path(),
        "folder",
        json!({"domain": DOMAIN, "topic": null, "captions": 1}),
    );
    // Images keep coming until the peer has read a caption.
    let got = read_while_feeding(peer, &out, |n| {
        folder.drop_image_as("08203.png", &format!("{n}.png"));
        std::thread::sleep(std::time::Duration::from_millis(500));
    });
    let event = &got["events"][0];
    assert_eq!(
        (&event["source"], &event["caption"]),
        (&json!("folder"), &json!(cb)),
        "{event}"
    );
    assert!(event.get("header").is_none(), "{event}");
    assert_eq!(got["texts"][0], json!(cb));
    drop(folder);

    // Several sources: each also has its caption topics under its name, as a ROS name
    // (`yard-2` becomes `yard_2`), and only its own captions go there.
    let sources = Daemon::start_with(
        &format!(
            "[captioning]\ninterval_ms = 100\n[ros2]\nenabled = true\ndomain_id = {DOMAIN}\n\
             [[sources]]\nname = \"door\"\nkind = \"folder\"\nfolder = \"{{dir}}/door\"\npoll_ms = 50\n\
             [[sources]]\nname = \"yard-2\"\nkind = \"folder\"\nfolder = \"{{dir}}/yard\"\npoll_ms = 50\n"
        ),
        &[],
        |d| {
            ["door", "yard"]
                .iter()
                .for_each(|f| std::fs::create_dir(d.join(f)).unwrap())
        },
    );
    let (peer, out) = cyclone_peer(
        dir.path(),
        "yard",
        json!({"domain": DOMAIN, "topic": null, "captions": 1, "captions_prefix": "rt/clipcap/yard_2"}),
    );
    let got = read_while_feeding(peer, &out, |n| {
        // The door's frame first: were it published on the yard's topics, the peer would read it.
        for (folder, image) in [("door", "08202.png"), ("yard", "08203.png")] {
            sources.drop_image_into(folder, image, &format!("{n}.png"));
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    });
    let event = &got["events"][0];
    assert_eq!(
        (&event["source"], &event["caption"]),
        (&json!("yard-2"), &json!(cb)),
        "{event}"
    );
    assert_eq!(got["texts"][0], json!(cb));
}

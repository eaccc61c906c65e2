//! Publishing to a real MQTT 5 broker: Debian's mosquitto, started here on loopback ports with a
//! generated configuration (a password file; a TLS listener with certificates made here with rcgen),
//! and mosquitto's own client, mosquitto_sub, as the subscriber. Nothing leaves 127.0.0.1.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, demo_image, free_port};
use serde_json::Value;

const USER: &str = "camera";
const PASSWORD: &str = "s3cret-pass";

/// mosquitto with persistence (subscriber sessions and their queued messages survive a restart), a
/// plain listener and a TLS one, both needing the password, and a mutual-TLS one where the client
/// certificate's common name is the user.
struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    tls_port: u16,
    mtls_port: u16,
    child: Option<Child>,
}

/// Certificates for the TLS listener: a CA, the broker's certificate for "localhost" signed by it, and
/// another CA that signed nothing here.
fn make_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    };
    let (trusted, other) = (ca("clipcap test CA"), ca("another CA"));
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &trusted)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), trusted.pem()).unwrap();
    std::fs::write(dir.join("other-ca.pem"), other.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    // A device's client certificate: its common name is its MQTT user name on the mutual-TLS listener.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, USER);
    let client = params.signed_by(&key, &trusted).unwrap();
    std::fs::write(dir.join("client.pem"), client.pem()).unwrap();
    std::fs::write(dir.join("client.key"), key.serialize_pem()).unwrap();
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_certificates(d);
        let passwd = d.join("passwd");
        let status = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwd)
            .args([USER, PASSWORD])
            .status()
            .expect("mosquitto_passwd (Debian's mosquitto; scripts/setup-lab.sh installs it)");
        assert!(status.success());
        std::fs::write(d.join("password"), format!("{PASSWORD}\n")).unwrap();
        std::fs::write(d.join("wrong-password"), "not-it\n").unwrap();
        let (port, tls_port, mtls_port) = (free_port(), free_port(), free_port());
        // As root, mosquitto switches to `user`, which must be able to read this folder.
        // SAFETY: getuid(2) has no preconditions.
        let user = if unsafe { libc::getuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        std::fs::write(
            d.join("mosquitto.conf"),
            format!(
                "{user}persistence true\npersistence_location {dir}/\nallow_anonymous false\n\
                 password_file {passwd}\nlog_dest file {dir}/broker.log\nlog_type all\n\
                 listener {port} 127.0.0.1\n\
                 listener {tls_port} 127.0.0.1\ncertfile {dir}/server.pem\nkeyfile {dir}/server.key\n\
                 listener {mtls_port} 127.0.0.1\ncertfile {dir}/server.pem\nkeyfile {dir}/server.key\n\
                 cafile {dir}/ca.pem\nrequire_certificate true\nuse_identity_as_username true\n",
                dir = d.display(),
                passwd = passwd.display(),
            ),
        )
        .unwrap();
        let mut broker = Broker {
            dir,
            port,
            tls_port,
            mtls_port,
            child: None,
        };
        broker.run();
        broker
    }

    fn run(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "mosquitto did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM: mosquitto saves its sessions and exits.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            child.wait().unwrap();
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("broker.log")).unwrap_or_default()
    }

    /// The first message on `topic` (a retained one at once), read by mosquitto_sub within 10 s.
    fn first_message(&self, topic: &str) -> Value {
        let out = Command::new("mosquitto_sub")
            .args(["-V", "mqttv5", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-u", USER, "-P", PASSWORD, "-t", topic, "-C", "1", "-W", "10"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{topic}: {e}: {out:?}"))
    }

    /// The `[publish]` section for a daemon that publishes here as `device`.
    fn publish_config(&self, device: &str) -> String {
        format!(
            "[publish]\nurl = \"mqtt://127.0.0.1:{}\"\ndevice_id = \"{device}\"\nspool = \"{{dir}}/spool\"\n\
             username = \"{USER}\"\npassword_file = {:?}\ncompare_interval_s = 1\n",
            self.port,
            self.path("password")
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// mosquitto_sub with a persistent session (client id, clean session off, an hour's expiry), so that
/// what is published while it is away waits for it at the broker; each message as a line
/// "topic payload" appended to a file.
struct Subscriber {
    child: Child,
    out: PathBuf,
}

impl Subscriber {
    fn start(broker: &Broker, topic: &str) -> Subscriber {
        let out = broker.path("received.txt");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out)
            .unwrap();
        let child = Command::new("mosquitto_sub")
            .args(["-V", "mqttv5", "-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .args([
                "-u",
                USER,
                "-P",
                PASSWORD,
                "-i",
                "clipcap-test-sub",
                "-c",
                "-x",
                "3600",
                "-q",
                "1",
            ])
            .args(["-t", topic, "-F", "%t %p"])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (Debian's mosquitto-clients)");
        // Subscribed once the broker's log says so (the first start creates the session).
        let start = Instant::now();
        while !broker.log().contains("clipcap-test-sub") {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "mosquitto_sub did not connect"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        Subscriber { child, out }
    }

    /// The messages received: (topic, payload).
    fn received(&self) -> Vec<(String, Value)> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| {
                let (topic, payload) = l.split_once(' ').unwrap();
                (topic.to_string(), serde_json::from_str(payload).unwrap())
            })
            .collect()
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn readyz(daemon: &Daemon) -> (u16, Value) {
    let response = ureq::get(&format!("{}/readyz", daemon.url))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    (response.status().as_u16(), response.into_body().read_json().unwrap())
}

/// Waits until the daemon has loaded its model (the API answers before).
fn wait_model(daemon: &Daemon) {
    daemon.wait_until(
        || readyz(daemon).1["reason"] != "loading the model",
        "the model to load",
    );
}

/// The daemon with `publish` (TOML) and no frame source (captions come from uploads), its model loaded.
fn start(publish: &str) -> Daemon {
    let daemon = Daemon::start(&format!("{publish}\n[source]\nkind = \"none\"\n"), &[]);
    wait_model(&daemon);
    daemon
}

fn upload(daemon: &Daemon, image: &str) -> Value {
    let body = std::fs::read(demo_image(image)).unwrap();
    ureq::post(&format!("{}/v1/caption", daemon.url))
        .send(&body[..])
        .unwrap()
        .into_body()
        .read_json()
        .unwrap()
}

fn images() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(demo_image(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".png"))
        .collect();
    names.sort();
    names
}

fn metric(daemon: &Daemon, name: &str) -> f64 {
    daemon
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// The caption records received on `topic`, de-duplicated by (run, id), in order of first arrival.
fn captions_received(sub: &Subscriber, topic: &str) -> Vec<Value> {
    let mut seen = HashSet::new();
    sub.received()
        .into_iter()
        .filter(|(t, p)| t == topic && p["event"] == "caption")
        .map(|(_, p)| p)
        .filter(|p| seen.insert((p["run"].as_u64().unwrap(), p["id"].as_u64().unwrap())))
        .collect()
}

fn key(record: &Value) -> (u64, u64, String) {
    (
        record["run"].as_u64().unwrap(),
        record["id"].as_u64().unwrap(),
        record["caption"].as_str().unwrap().to_string(),
    )
}

#[test]
fn every_caption_arrives_once_in_order_through_a_broker_outage_and_a_daemon_kill() {
    let mut broker = Broker::start();
    let topic = "clipcap/dev1/captions";
    let mut sub = Subscriber::start(&broker, topic);
    let mut daemon = start(&broker.publish_config("dev1"));
    let images = images();
    let mut next = images.iter().cycle();
    daemon.wait_until(|| metric(&daemon, "clipcap_publish_connected") == 1.0, "the connection");
    for _ in 0..3 {
        upload(&daemon, next.next().unwrap());
    }
    daemon.wait_until(|| captions_received(&sub, topic).len() == 3, "the first captions");

    // The broker goes away for 30 s while captions keep coming; they wait in the spool.
    sub.stop();
    broker.stop();
    let outage = Instant::now();
    let mut during = 0;
    while outage.elapsed() < Duration::from_secs(30) {
        upload(&daemon, next.next().unwrap());
        during += 1;
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(metric(&daemon, "clipcap_publish_connected"), 0.0);
    assert_eq!(metric(&daemon, "clipcap_publish_waiting"), during as f64);
    let ready = readyz(&daemon);
    assert_eq!(ready.0, 200, "an outage is not a refusal: {}", ready.1);
    broker.run();
    sub = Subscriber::start(&broker, topic);
    daemon.wait_until(
        || captions_received(&sub, topic).len() == 3 + during,
        "the backlog after the outage",
    );
    daemon.wait_until(|| metric(&daemon, "clipcap_publish_waiting") == 0.0, "an empty spool");

    // Again, and the daemon is killed (SIGKILL) during the outage; its successor sends the backlog.
    sub.stop();
    broker.stop();
    for _ in 0..4 {
        upload(&daemon, next.next().unwrap());
    }
    daemon.kill_and_start();
    wait_model(&daemon);
    for _ in 0..2 {
        upload(&daemon, next.next().unwrap());
    }
    broker.run();
    sub = Subscriber::start(&broker, topic);
    let logged: Vec<_> = daemon.logged().iter().map(key).collect();
    assert_eq!(logged.len(), 3 + during + 4 + 2);
    daemon.wait_until(
        || captions_received(&sub, topic).len() == logged.len(),
        "every caption of both runs",
    );
    let received: Vec<_> = captions_received(&sub, topic).iter().map(key).collect();
    assert_eq!(received, logged, "every caption once, in the log's order");

    // The retained status: online, with the bundle; the comparison statistics come periodically.
    let status = broker.first_message("clipcap/dev1/status");
    assert_eq!(
        (status["state"].as_str(), status["device"].as_str()),
        (Some("online"), Some("dev1"))
    );
    assert!(status["bundle"].as_str().unwrap().ends_with("demo/bundle"), "{status}");
    let compare = broker.first_message("clipcap/dev1/compare");
    assert!(compare["decoders"].is_array(), "{compare}");

    // A clean stop says offline (retained).
    assert_eq!(daemon.terminate().code(), Some(0));
    assert_eq!(broker.first_message("clipcap/dev1/status")["state"], "offline");
}

/// A daemon publishing with `publish` (TOML) that refuses to connect: the log and /readyz say why,
/// naming the key to fix, and captioning goes on.
fn assert_refused(publish: &str, says: &[&str]) {
    let daemon = start(publish);
    daemon.wait_until(
        || says.iter().all(|s| daemon.stderr().contains(s)),
        &format!("{says:?} in the log"),
    );
    let (status, body) = readyz(&daemon);
    assert_eq!(status, 503, "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("publishing:") && says.iter().all(|s| reason.contains(s)),
        "{body}"
    );
    let caption = upload(&daemon, &images()[0]);
    assert!(!caption["caption"].as_str().unwrap().is_empty());
    assert!(metric(&daemon, "clipcap_errors_total{kind=\"publish\"}") >= 1.0);
    assert_eq!(metric(&daemon, "clipcap_publish_waiting"), 1.0);
}

#[test]
fn tls_with_a_password_or_a_client_certificate_works_and_refusals_are_clear_errors() {
    let broker = Broker::start();
    let topic = "clipcap/tls1/captions";
    let sub = Subscriber::start(&broker, topic);
    let tls = |ca: &str, password: &str| {
        format!(
            "[publish]\nurl = \"mqtts://localhost:{}\"\ndevice_id = \"tls1\"\nspool = \"{{dir}}/spool\"\n\
             username = \"{USER}\"\npassword_file = {:?}\nca_file = {:?}\n",
            broker.tls_port,
            broker.path(password),
            broker.path(ca)
        )
    };
    {
        let daemon = start(&tls("ca.pem", "password"));
        let caption = upload(&daemon, &images()[0]);
        daemon.wait_until(|| captions_received(&sub, topic).len() == 1, "a caption over TLS");
        assert_eq!(captions_received(&sub, topic)[0]["caption"], caption["caption"]);
    }
    {
        let mtls = format!(
            "[publish]\nurl = \"mqtts://localhost:{}\"\ndevice_id = \"tls1\"\nspool = \"{{dir}}/spool\"\n\
             ca_file = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
            broker.mtls_port,
            broker.path("ca.pem"),
            broker.path("client.pem"),
            broker.path("client.key")
        );
        let daemon = start(&mtls);
        let caption = upload(&daemon, &images()[1]);
        daemon.wait_until(
            || captions_received(&sub, topic).len() == 2,
            "a caption with a client certificate",
        );
        assert_eq!(captions_received(&sub, topic)[1]["caption"], caption["caption"]);
    }
    assert_refused(
        &tls("ca.pem", "wrong-password"),
        &["refused the credentials", "password_file"],
    );
    assert_refused(
        &tls("other-ca.pem", "password"),
        &["not trusted", "UnknownIssuer", "ca_file"],
    );
    let plain = broker.publish_config("dev2").replace("password\"", "wrong-password\"");
    assert_refused(&plain, &["refused the credentials"]);
}

#[test]
fn report_from_the_fleet_equals_the_report_from_its_logs() {
    let broker = Broker::start();
    let report = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_clipcap"))
            .arg("report")
            .args(args)
            .arg("--json")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (serde_json::from_slice::<Value>(&out.stdout).unwrap(), stderr)
    };
    // The credentials come from the config's [publish], the broker from --mqtt.
    let config = broker.path("report.toml");
    std::fs::write(
        &config,
        format!(
            "[publish]\nusername = \"{USER}\"\npassword_file = {:?}\n",
            broker.path("password")
        ),
    )
    .unwrap();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let listening = std::thread::scope(|scope| {
        let fleet = scope.spawn(|| report(&["--config", config.to_str().unwrap(), "--mqtt", &url, "--listen", "25s"]));
        std::thread::sleep(Duration::from_secs(2)); // subscribed by then
        let compare = "[captioning]\ninterval_ms = 100\ncompare = [\"beam:num_beams=3\"]\n";
        let daemons: Vec<Daemon> = ["robot-a", "robot-b"]
            .iter()
            .map(|device| Daemon::start(&format!("{compare}{}", broker.publish_config(device)), &[]))
            .collect();
        for (d, daemon) in daemons.iter().enumerate() {
            wait_model(daemon);
            for (n, name) in images().iter().skip(d * 3).take(3).enumerate() {
                daemon.drop_image(name);
                daemon.wait_until(|| daemon.log_records("comparison").len() == n + 1, "a comparison");
            }
            daemon.wait_until(|| metric(daemon, "clipcap_publish_waiting") == 0.0, "everything sent");
        }
        let logs: Vec<PathBuf> = daemons.iter().map(|d| d.log_path()).collect();
        let from_logs = report(&logs.iter().map(|p| p.to_str().unwrap()).collect::<Vec<_>>());
        (fleet.join().unwrap(), from_logs)
    });
    let ((fleet, said), (from_logs, _)) = listening;
    assert!(said.contains("from 2 device(s) on clipcap/+/captions"), "{said}");
    assert_eq!(fleet, from_logs, "the same report from the broker as from the logs");
    assert_eq!(
        (fleet["captions"].as_u64(), fleet["compared_frames"].as_u64()),
        (Some(6), Some(6))
    );
    let rows = fleet["comparison"]["rows"].as_array().unwrap();
    assert!(rows.len() == 2 && rows.iter().all(|r| r["images"] == 6), "{fleet}");
}

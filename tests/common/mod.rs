//! Shared by the integration tests: fixture paths, the ONNX Runtime set-up, reference outputs.
#![allow(dead_code)] // each test binary uses a different part

pub mod browser;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clipcap_core::decoding::{DecoderInstance, DecoderRequest, IsolationOptions, PluginOptions, Plugins, Vetting};
use clipcap_core::runtime::{Provider, Runtime, RuntimeOptions};
use serde::Deserialize;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn tiny_bundle() -> PathBuf {
    fixtures().join("tiny-bundle")
}

/// Builds plugins/c/greedy.c into `dir` with one of its ABI-breaking macros, and with `extra`, more C
/// source compiled into the same library (a constructor that crashes, say).
pub fn build_c_plugin(dir: &Path, name: &str, define: Option<&str>, extra: Option<&str>) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = dir.join(format!("lib{name}.so"));
    let mut cc = std::process::Command::new("cc");
    // Warnings are errors, but the NULL_DECODE build leaves `greedy` unused on purpose.
    cc.args([
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wno-unused-function",
        "-shared",
        "-fPIC",
        "-I",
    ])
    .arg(root.join("plugins/sdk/include"))
    .arg("-o")
    .arg(&out)
    .arg(root.join("plugins/c/greedy.c"));
    if let Some(d) = define {
        cc.arg(format!("-D{d}"));
    }
    if let Some(source) = extra {
        let file = dir.join(format!("{name}-extra.c"));
        std::fs::write(&file, source).unwrap();
        cc.arg(file);
    }
    assert!(cc.status().unwrap().success(), "cc failed for {name}");
    out
}

/// A minisign key pair without a password in `dir`: (public key file, secret key file).
pub fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (public, secret) = (dir.join(format!("{name}.pub")), dir.join(format!("{name}.key")));
    let out = std::process::Command::new("minisign")
        .args(["-G", "-W", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .output()
        .expect("minisign (Debian's package; scripts/setup-lab.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (public, secret)
}

/// Copies of the shipped greedy/beam and sampling plugins in `dir/plugins`, signed with `secret`.
pub fn signed_plugins(dir: &Path, secret: &Path) -> PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for lib in ["libclipcap_search.so", "libclipcap_sampling.so"] {
        std::fs::copy(plugin_dir().join(lib), plugins.join(lib)).unwrap();
        sign(secret, &plugins.join(lib));
    }
    plugins
}

pub fn sign(secret: &Path, file: &Path) {
    let out = std::process::Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(secret)
        .arg("-m")
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A copy of the files of `from` (not its folders) in `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

/// A copy of the tiny bundle quantised to `precision` ("int8", "int4") by the export tool, in `dir`.
pub fn quantised_tiny_bundle(dir: &Path, precision: &str) -> PathBuf {
    let bundle = dir.join(precision);
    quantise(&tiny_bundle(), &bundle, precision);
    bundle
}

/// `bundle` quantised to `precision` by the export tool, into `out`.
pub fn quantise(bundle: &Path, out: &Path, precision: &str) {
    let done =
        std::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("export/.venv/bin/clipcap-export"))
            .arg("quantize")
            .arg(bundle)
            .args(["--precision", precision, "--out"])
            .arg(out)
            .output()
            .unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
}

pub fn runtime() -> Runtime {
    let options = RuntimeOptions {
        providers: vec![Provider::Cpu],
        intra_threads: 1,
        ..RuntimeOptions::default()
    };
    Runtime::init(&options).unwrap_or_else(|e| panic!("{e}\n(run scripts/setup.sh first)"))
}

pub fn options(directories: Vec<PathBuf>, allow_insecure: bool) -> PluginOptions {
    PluginOptions {
        directories,
        vetting: Vetting {
            allow_insecure,
            trusted_keys: None,
        },
        isolation: isolation(),
    }
}

/// Isolated decoders as the daemon runs them by default (config.toml), restarted without delay.
pub fn isolation() -> IsolationOptions {
    IsolationOptions {
        program: PathBuf::from(env!("CARGO_BIN_EXE_clipcap")),
        memory_mb: 1024,
        cpu_seconds: 10,
        wait: Duration::from_secs(10),
        restart: Duration::ZERO,
    }
}

/// Where cargo put the workspace's plugin libraries (target/<profile>, next to the test's deps/).
pub fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    assert!(
        dir.join("libclipcap_search.so").is_file(),
        "{}: plugins not built; run `cargo build --workspace` first",
        dir.display()
    );
    dir
}

/// The workspace's plugins. Ownership and mode checks are off here because the checkout may live in
/// a world-writable folder such as /tmp; tests/plugins.rs tests those checks on purpose.
pub fn plugins() -> Plugins {
    Plugins::load(&options(vec![plugin_dir()], true))
}

/// The decoder `spec` in this process (unless it says `isolate=true`).
pub fn decoder(plugins: &Plugins, spec: &str) -> DecoderInstance {
    plugins
        .create(&DecoderRequest::parse(spec).unwrap(), false)
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
}

/// The misbehave plugin's decoders that break a rule of the host, each with what its caption's error
/// says; in process and isolated alike (tests/plugins.rs, tests/isolation.rs).
pub const RULE_BREAKERS: [(&str, &str); 5] = [
    ("panic", "decoder panicked: deliberate panic"),
    ("bad_token", "outside the vocabulary of 50257"),
    ("bad_parent", "parent 5 does not exist"),
    ("step_flood", "step budget of 67 exhausted"),
    ("picky", "picky never captions"),
];

/// One line of a tests/fixtures/reference/*.jsonl file, written by the PyTorch reference.
#[derive(Debug, Deserialize)]
pub struct Reference {
    pub image: PathBuf,
    pub decoder: String,
    pub caption: String,
    pub token_ids: Vec<u32>,
    pub image_embeds: Vec<f32>,
}

impl Reference {
    pub fn image_path(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(&self.image)
    }

    /// OpenAI CLIP's preprocessed tensor of this image, [3, 224, 224] flattened.
    pub fn pixels(&self) -> Vec<f32> {
        let name = self.image.file_name().unwrap().to_string_lossy();
        let path = fixtures().join("reference").join(format!("{name}.npy"));
        let array: ndarray::ArrayD<f32> =
            ndarray_npy::read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        array.iter().copied().collect()
    }
}

/// The reference outputs of one decoder: greedy, beam, beam-stops, contrastive, magic.
pub fn references(name: &str) -> Vec<Reference> {
    let path = fixtures().join(format!("reference/{name}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap();
    let refs: Vec<Reference> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        refs.len() >= 5,
        "{}: expected at least 5 reference images",
        path.display()
    );
    refs
}

/// A free TCP port on loopback (bound and released; fine for tests run on one machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An image of demo/images.
pub fn demo_image(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/images").join(name)
}

/// The true captions of a demo image, from demo/images/annotations.json (COCO format).
pub fn truth(name: &str) -> Vec<String> {
    clipcap_core::metrics::coco::read_annotations(&demo_image("annotations.json"))
        .unwrap()
        .into_iter()
        .find(|a| a.file_name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("{name} is not in demo/images/annotations.json"))
        .references
}

/// A sample's value in Prometheus text (`name` with its labels, e.g. `clipcap_errors_total{kind="upload"}`);
/// 0 when absent, as Prometheus reads a labelled counter that has not appeared yet.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `ok` every 50 ms for up to 60 s; a timeout names `what`, then says `context()`.
pub fn poll(what: &str, mut ok: impl FnMut() -> bool, context: impl Fn() -> String) {
    let start = std::time::Instant::now();
    while !ok() {
        assert!(
            start.elapsed().as_secs() < 60,
            "timed out waiting for {what}{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `clipcap serve` running as a child process, killed when dropped.
pub struct Daemon {
    pub child: std::process::Child,
    pub url: String,
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    /// A command the daemon runs under (its arguments follow), e.g. `unshare`; empty: none.
    wrapper: Vec<String>,
}

impl Daemon {
    /// Starts the daemon with the demo bundle, the workspace's plugins, a watched folder
    /// (`<dir>/in`), a caption log (`<dir>/captions.jsonl`), and `extra` TOML appended to the config.
    pub fn start(extra: &str, env: &[(&str, &str)]) -> Daemon {
        Self::start_with(extra, env, |_| {})
    }

    /// Like [`Daemon::start`], with `{dir}` in `extra` standing for the daemon's folder, and `prepare`
    /// called on that folder before the daemon starts.
    pub fn start_with(extra: &str, env: &[(&str, &str)], prepare: impl FnOnce(&Path)) -> Daemon {
        Self::start_wrapped(&[], extra, env, prepare)
    }

    /// Like [`Daemon::start_with`], with the daemon run as `WRAPPER... clipcap ...` (`{dir}` in the
    /// wrapper's arguments too); its pid is the wrapper's, which must exec the daemon.
    pub fn start_wrapped(wrapper: &[&str], extra: &str, env: &[(&str, &str)], prepare: impl FnOnce(&Path)) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let in_dir = |s: &str| s.replace("{dir}", dir.path().to_str().unwrap());
        let extra = in_dir(extra);
        let wrapper: Vec<String> = wrapper.iter().map(|w| in_dir(w)).collect();
        std::fs::create_dir(dir.path().join("in")).unwrap();
        let port = free_port();
        let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/bundle");
        // The caption log is `<dir>/captions.jsonl` unless `extra` puts it elsewhere.
        let log = if extra.contains("caption_log") {
            String::new()
        } else {
            format!("caption_log = {:?}\n", dir.path().join("captions.jsonl"))
        };
        let config = format!(
            "[service]\nbundle = {bundle:?}\nlisten = \"127.0.0.1:{port}\"\n{log}{extra}\n\
             [plugins]\ndirectories = [{plugins:?}]\nallow_insecure = true\n",
            plugins = plugin_dir(),
        );
        let config = if config.contains("[source]") || config.contains("[[sources]]") {
            config
        } else {
            format!(
                "{config}\n[source]\nkind = \"folder\"\nfolder = {:?}\npoll_ms = 50\n",
                dir.path().join("in")
            )
        };
        std::fs::write(dir.path().join("clipcap.toml"), config).unwrap();
        prepare(dir.path());
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let child = Self::spawn(dir.path(), &env, &wrapper);
        let mut daemon = Daemon {
            child,
            url: format!(
                "{}://127.0.0.1:{port}",
                if extra.contains("tls_cert") { "https" } else { "http" }
            ),
            dir,
            env,
            wrapper,
        };
        daemon.wait_listening();
        daemon
    }

    /// Waits until the port takes connections (HTTP or HTTPS); fails at once, with the daemon's log, if
    /// it exited instead.
    fn wait_listening(&mut self) {
        let start = std::time::Instant::now();
        let address = self.url.split("://").nth(1).unwrap().to_string();
        while std::net::TcpStream::connect(&address).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the daemon exited ({status}) instead of listening:\n{}", self.stderr());
            }
            assert!(
                start.elapsed().as_secs() < 60,
                "the daemon did not listen within 60 s:\n{}",
                self.stderr()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn spawn(dir: &Path, env: &[(String, String)], wrapper: &[String]) -> std::process::Child {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stderr.log"))
            .unwrap();
        let clipcap = env!("CARGO_BIN_EXE_clipcap");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = std::process::Command::new(program);
                command.args(args).arg(clipcap);
                command
            }
            None => std::process::Command::new(clipcap),
        };
        command
            .arg("--config")
            .arg(dir.join("clipcap.toml"))
            .arg("serve")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap()
    }

    /// Stops the daemon with SIGTERM (asserting a clean exit) and starts it again on the same folder,
    /// configuration and caption log.
    pub fn restart(&mut self) {
        let status = self.terminate();
        assert_eq!(status.code(), Some(0), "exit status after SIGTERM:\n{}", self.stderr());
        self.child = Self::spawn(self.dir.path(), &self.env, &self.wrapper);
        self.wait_listening();
    }

    /// Kills the daemon (SIGKILL: no clean stop) and starts it again on the same folder, configuration
    /// and caption log.
    pub fn kill_and_start(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(self.dir.path(), &self.env, &self.wrapper);
        self.wait_listening();
    }

    /// The caption log's captions.
    pub fn logged(&self) -> Vec<serde_json::Value> {
        self.log_records("caption")
    }

    /// The caption log's records of one kind: `caption`, `comparison` or `vote`.
    /// A line still being written (no newline yet) is not read: the daemon may be mid-write.
    pub fn log_records(&self, kind: &str) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|l| l["event"] == kind)
            .collect()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("captions.jsonl")
    }

    pub fn folder(&self) -> PathBuf {
        self.dir.path().join("in")
    }

    /// Puts a demo image into the watched folder so that it appears complete (written, then renamed).
    pub fn drop_image(&self, name: &str) {
        self.drop_image_as(name, name);
    }

    /// Puts demo image `name` into the watched folder as `file`.
    pub fn drop_image_as(&self, name: &str, file: &str) {
        self.drop_image_into("in", name, file);
    }

    /// Puts demo image `name` as `file` into `<dir>/folder` (one of several sources' folders).
    pub fn drop_image_into(&self, folder: &str, name: &str, file: &str) {
        let tmp = self.dir.path().join(format!("{folder}-{file}.part"));
        std::fs::copy(demo_image(name), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join(folder).join(file)).unwrap();
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Polls `ok` for up to 60 s.
    pub fn wait_until(&self, ok: impl FnMut() -> bool, what: &str) {
        poll(what, ok, || format!("; daemon stderr:\n{}", self.stderr()));
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        ureq::get(&format!("{}{path}", self.url))
            .call()
            .unwrap()
            .into_body()
            .read_json()
            .unwrap()
    }

    /// The Prometheus text of /metrics.
    pub fn metrics(&self) -> String {
        ureq::get(&format!("{}/metrics", self.url))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap()
    }

    /// Sends `head` (request line and headers, without the final blank line; `{host}` stands for the
    /// daemon's address) and `body` over plain TCP with `Connection: close`, and returns the status
    /// and the whole response, for requests that must be exactly what a browser or an attacker sends.
    pub fn raw(&self, head: &str, body: &[u8]) -> (u16, String) {
        self.raw_from(Ipv4Addr::LOCALHOST, head, body)
    }

    /// A connection to the daemon from `source`, a loopback address (127.0.0.0/8: each is another
    /// client to the daemon).
    pub fn connect_from(&self, source: Ipv4Addr) -> std::net::TcpStream {
        let address: std::net::SocketAddr = self.url.trim_start_matches("http://").parse().unwrap();
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&std::net::SocketAddr::from((source, 0)).into()).unwrap();
        socket.connect(&address.into()).unwrap();
        socket.into()
    }

    /// [`Daemon::raw`] from the client address `source`.
    pub fn raw_from(&self, source: Ipv4Addr, head: &str, body: &[u8]) -> (u16, String) {
        self.try_raw_from(source, head, body)
            .unwrap_or_else(|e| panic!("`{head}`: no answer: {e}"))
    }

    /// [`Daemon::raw_from`], an error where the connection was closed unanswered (the daemon refuses
    /// a connection over `service.max_connections` that way) or broke.
    fn try_raw_from(&self, source: Ipv4Addr, head: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
        use std::io::{Read, Write};
        let address = self.url.trim_start_matches("http://");
        let mut tcp = self.connect_from(source);
        let head = head.replace("{host}", address);
        write!(
            tcp,
            "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        tcp.write_all(body)?;
        let mut response = String::new();
        tcp.read_to_string(&mut response)?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {response:?}")))?;
        Ok((status, response))
    }

    /// Sends `head` like [`Daemon::raw`] until the answer is 200 (for up to 60 s), and returns it. A
    /// connection closed unanswered is an attempt that was not answered 200, not a failure.
    pub fn raw_until_ok(&self, head: &str, body: &[u8], what: &str) -> String {
        let mut answer = String::new();
        self.wait_until(
            || match self.try_raw_from(Ipv4Addr::LOCALHOST, head, body) {
                Ok((status, response)) => {
                    answer = response;
                    status == 200
                }
                Err(e) => {
                    answer = e.to_string();
                    false
                }
            },
            what,
        );
        answer
    }

    /// Waits until `/readyz` answers 200: the model is loaded and the source delivers.
    pub fn wait_ready(&self) {
        self.raw_until_ok("GET /readyz HTTP/1.1\r\nHost: {host}", b"", "the model to load");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

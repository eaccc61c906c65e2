//! Reading a plugin library's descriptor in a process of its own (`clipcap describe-plugin`). Loading
//! a library runs its constructors, so a library that crashes, hangs or blows up its memory as it
//! loads costs that plugin, never the process that lists the plugins (the daemon). The child vets the
//! file as every loader here does (security.rs: owner and mode, architecture, signature), limits its
//! memory, loads the library, and prints its decoders as one line of JSON.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use super::IsolationOptions;
use super::sandbox::{self, SandboxError};
use super::server::ended;
use crate::decoding::plugin::{self, DecoderInfo};
use crate::decoding::security::{self, Vetting};
use crate::decoding::{PluginError, PluginFault};

/// What `clipcap describe-plugin` is told on its command line.
#[derive(Debug, Clone)]
pub struct ListingArgs {
    pub plugin: PathBuf,
    pub vetting: Vetting,
    pub memory_mb: u64,
}

/// What the child prints: the decoders, or why the library is refused.
type Listing = Result<Vec<DecoderInfo>, String>;

/// The child's side: loads the plugin and prints its [`Listing`].
pub fn describe_plugin(args: &ListingArgs) -> Result<(), SandboxError> {
    sandbox::limit_memory(args.memory_mb)?;
    let listing: Listing = security::open(&args.plugin, &args.vetting)
        .and_then(|file| plugin::load(&args.plugin, file))
        .map(|found| found.into_iter().map(|d| d.info).collect())
        .map_err(|e| e.reason.to_string());
    println!("{}", serde_json::to_string(&listing).expect("a listing serialises"));
    Ok(())
}

/// Whether processes of `options.program` run on this machine: not so for an aarch64 build run by
/// qemu-user on another machine without binfmt_misc (its children fail to exec, and under qemu the
/// failure is not even reported to the parent: the child just exits 127). Asked once, with
/// `--version`, before any plugin is listed, so that no library can make the answer.
pub(crate) fn lister_runs(options: &IsolationOptions) -> Result<(), String> {
    let status = Command::new(&options.program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() { Ok(()) } else { Err(ended(status)) }
}

/// The decoders the library at `path` provides, read by a child process, or why it is refused: the
/// child's refusal, or how the child failed (crashed, killed after `options.wait`).
pub(crate) fn describe(
    path: &Path,
    vetting: &Vetting,
    options: &IsolationOptions,
) -> Result<Vec<DecoderInfo>, PluginError> {
    let refuse = |reason: PluginFault| PluginError {
        path: path.to_path_buf(),
        reason,
    };
    let mut command = Command::new(&options.program);
    command
        .arg("describe-plugin")
        .arg(path)
        .arg("--memory-mb")
        .arg(options.memory_mb.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .env("RUST_BACKTRACE", "0");
    if vetting.allow_insecure {
        command.arg("--allow-insecure");
    }
    if let Some(keys) = &vetting.trusted_keys {
        command.arg("--trusted-keys").arg(keys);
    }
    let mut child = command.spawn().map_err(|e| {
        refuse(PluginFault::Lister(format!(
            "cannot start {}: {e}",
            options.program.display()
        )))
    })?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let (sent, output) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = sent.send(stdout.read_to_string(&mut text).map(|_| text));
    });
    // The child's output ends when it exits (or closes it): a library that hangs as it loads is
    // killed after the wait an isolated decoder gets.
    let text = match output.recv_timeout(options.wait) {
        Ok(read) => read.unwrap_or_default(),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(refuse(PluginFault::Lister(format!(
                "loading it did not finish within {} ms (plugins.isolate_wait_ms); its process was killed",
                options.wait.as_millis()
            ))));
        }
    };
    let status = child
        .wait()
        .map_err(|e| refuse(PluginFault::Lister(format!("cannot wait for its process: {e}"))))?;
    match serde_json::from_str::<Listing>(text.trim()) {
        Ok(Ok(decoders)) if status.success() => Ok(decoders),
        Ok(Err(reason)) => Err(refuse(PluginFault::Relayed(reason))),
        _ => Err(refuse(PluginFault::Lister(format!(
            "loading it crashed the process that read its descriptor ({}); nothing of it runs here",
            ended(status)
        )))),
    }
}

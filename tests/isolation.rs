//! Decoders in their own process (plugins.isolate): the same captions as in process, the same rules,
//! and every fault that would kill a process (segfault, abort, endless loop, hang, memory blow-up,
//! nonsense on the socket) costing one caption, with the process restarted; the sandbox (no network,
//! no new privileges, seccomp, memory limit) checked from /proc.

mod common;

use std::path::Path;
use std::time::Duration;

use clipcap_core::Batching;
use clipcap_core::bundle::Bundle;
use clipcap_core::captioner::{Captioner, Prepared};
use clipcap_core::decoding::{DecoderInstance, DecoderRequest, FaultKind, IsolationOptions, Plugins};
use clipcap_core::imageio;
use common::{
    RULE_BREAKERS, Reference, decoder, isolation, options, plugin_dir, plugins, references, runtime, tiny_bundle,
};

fn captioner() -> Captioner {
    Captioner::load(&Bundle::open(tiny_bundle()).unwrap(), &runtime(), Batching::default()).unwrap()
}

fn prepared(captioner: &Captioner, r: &Reference) -> Prepared {
    captioner
        .prepare(&imageio::load_file(&r.image_path()).unwrap())
        .unwrap()
}

fn isolated(plugins: &Plugins, spec: &str) -> DecoderInstance {
    let d = plugins
        .create(&DecoderRequest::parse(spec).unwrap(), true)
        .unwrap_or_else(|e| panic!("{spec}: {e}"));
    assert!(d.isolated());
    d
}

fn plugins_with(isolation: IsolationOptions) -> Plugins {
    let mut options = options(vec![plugin_dir()], true);
    options.isolation = isolation;
    Plugins::load(&options)
}

/// Processes started by this test process whose command line contains `needle`.
fn children(needle: &str) -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().nth(1) == Some(&me));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(true) && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

#[test]
fn isolated_decoders_caption_exactly_as_in_process() {
    let (plugins, captioner) = (plugins(), captioner());
    for name in ["greedy", "beam", "contrastive", "magic"] {
        for r in &references(name) {
            let p = prepared(&captioner, r);
            let mut d = isolated(&plugins, &r.decoder);
            let c = captioner.decode(&p, &mut d, None, 0).unwrap();
            assert_eq!(
                c.token_ids,
                r.token_ids,
                "{} isolated on {}",
                r.decoder,
                r.image.display()
            );
        }
    }
    // The random stream crosses the socket exactly.
    let r = &references("greedy")[0];
    let p = prepared(&captioner, r);
    let spec = "sample:temperature=0.8,top_k=40";
    let (mut inside, mut outside) = (decoder(&plugins, spec), isolated(&plugins, spec));
    for seed in 0..3 {
        assert_eq!(
            captioner.decode(&p, &mut inside, None, seed).unwrap().token_ids,
            captioner.decode(&p, &mut outside, None, seed).unwrap().token_ids,
            "seed {seed}"
        );
    }
    // Extensions work across the boundary.
    let mut logs = isolated(&plugins, "logs");
    assert_eq!(captioner.decode(&p, &mut logs, None, 0).unwrap().token_ids, [50256]);
}

#[test]
fn isolated_decoders_keep_the_in_process_rules() {
    let (plugins, captioner) = (plugins(), captioner());
    let r = &references("greedy")[0];
    let p = prepared(&captioner, r);
    for (spec, why) in RULE_BREAKERS {
        let mut bad = isolated(&plugins, spec);
        for attempt in 0..2 {
            let err = captioner.decode(&p, &mut bad, None, 0).unwrap_err().to_string();
            assert!(
                err.contains(&format!("decoder `{spec}`")) && err.contains(why),
                "{spec} (attempt {attempt}): {err}"
            );
        }
    }
    let err = plugins
        .create(&DecoderRequest::parse("picky:fail=true").unwrap(), true)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("picky refuses to be created"), "{err}");
}

#[test]
fn a_fault_costs_one_caption_and_the_process_is_restarted() {
    let captioner = captioner();
    let r = &references("greedy")[0];
    let p = prepared(&captioner, r);
    let cases: [(i32, &str, IsolationOptions); 6] = [
        (0, "killed by signal 11 (SIGSEGV", isolation()),
        (1, "killed by signal 6 (SIGABRT", isolation()),
        (
            2,
            "killed by signal 24 (SIGXCPU",
            IsolationOptions {
                cpu_seconds: 1,
                ..isolation()
            },
        ),
        (
            3,
            "no answer within 1000 ms",
            IsolationOptions {
                wait: Duration::from_secs(1),
                ..isolation()
            },
        ),
        (
            4,
            "last words: memory allocation of 16777216 bytes failed",
            IsolationOptions {
                memory_mb: 256,
                ..isolation()
            },
        ),
        (5, "protocol violation: a message of", isolation()),
    ];
    for (kind, why, options) in cases {
        let plugins = plugins_with(options);
        let spec = format!("crash:after=2,kind={kind}");
        let mut d = isolated(&plugins, &spec);
        assert_eq!(children(&spec).len(), 1, "{spec}: one process");
        let eos = [50256];
        assert_eq!(
            captioner.decode(&p, &mut d, None, 0).unwrap().token_ids,
            eos,
            "{spec}: first caption"
        );
        let err = captioner.decode(&p, &mut d, None, 0).unwrap_err().to_string();
        assert!(
            err.contains(&format!("decoder `{spec}`")) && err.contains(why),
            "{spec}: {err}"
        );
        assert!(
            children(&spec).is_empty(),
            "{spec}: the failed process is gone and reaped"
        );
        // A new process (restart wait 0 here), counting its captions from the start again.
        assert_eq!(
            captioner.decode(&p, &mut d, None, 0).unwrap().token_ids,
            eos,
            "{spec}: after restart"
        );
        assert_eq!(children(&spec).len(), 1, "{spec}: restarted");
        // The model and its cache are unharmed.
        let mut greedy = decoder(&plugins, "greedy");
        assert_eq!(
            captioner.decode(&p, &mut greedy, None, 0).unwrap().token_ids,
            r.token_ids
        );
    }
}

#[test]
fn a_failed_decoder_waits_before_its_restart_and_the_fallback_takes_over() {
    let captioner = captioner();
    let r = &references("greedy")[1];
    let p = prepared(&captioner, r);
    let plugins = plugins_with(IsolationOptions {
        restart: Duration::from_secs(600),
        ..isolation()
    });
    let mut crash = isolated(&plugins, "crash:kind=0");
    let mut greedy = decoder(&plugins, "greedy");
    let c = captioner.decode(&p, &mut crash, Some(&mut greedy), 0).unwrap();
    assert_eq!((c.decoder.as_str(), &c.token_ids), ("greedy", &r.token_ids));
    let failed = c.fallback_from.unwrap();
    assert!(failed.error.contains("SIGSEGV"), "{}", failed.error);
    assert_eq!(failed.fault, FaultKind::Crashed);
    let err = captioner.decode(&p, &mut crash, None, 0).unwrap_err().to_string();
    assert!(
        err.contains("unavailable: its process failed (its process crashed: killed by signal 11")
            && err.contains("restarting in"),
        "{err}"
    );
}

#[test]
fn an_isolated_decoder_has_no_network_and_runs_confined() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let spec = format!("crash:kind=6,port={port}");
    let (plugins, captioner) = (plugins(), captioner());
    let p = prepared(&captioner, &references("greedy")[0]);
    // In process the decoder reaches the listener: the test can tell.
    let mut inside = decoder(&plugins, &spec);
    captioner.decode(&p, &mut inside, None, 0).unwrap();
    assert!(listener.accept().is_ok(), "in process, the connection arrives");
    let mut outside = isolated(&plugins, &spec);
    let err = captioner.decode(&p, &mut outside, None, 0).unwrap_err().to_string();
    assert!(err.contains("connect: Operation not permitted"), "{err}");
    assert!(listener.accept().is_err(), "no connection from the isolated decoder");
    let pids = children(&spec);
    assert_eq!(pids.len(), 1);
    let status = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).unwrap();
    for line in ["NoNewPrivs:\t1", "Seccomp:\t2"] {
        assert!(
            status.lines().any(|l| l == line),
            "{line} not in /proc/PID/status:\n{status}"
        );
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", pids[0])).unwrap();
    let data = limits.lines().find(|l| l.starts_with("Max data size")).unwrap();
    assert!(data.contains(&(1024u64 << 20).to_string()), "{data}");
    drop(outside);
    assert!(children(&spec).is_empty(), "dropping the instance ends its process");
}

#[test]
fn a_decoder_process_that_cannot_start_is_a_clear_error() {
    // Without the program, plugins are listed in this process (as where it cannot run: an aarch64
    // build under qemu-user), and an isolated decoder is a clear error naming it.
    let plugins = plugins_with(IsolationOptions {
        program: Path::new("/nonexistent/clipcap").into(),
        ..isolation()
    });
    let err = plugins
        .create(&DecoderRequest::parse("greedy").unwrap(), true)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cannot start /nonexistent/clipcap"), "{err}");
    // A program that lists plugins but whose decoder process dies at once.
    let tmp = tempfile::tempdir().unwrap();
    let program = tmp.path().join("clipcap");
    std::fs::write(
        &program,
        format!(
            "#!/bin/sh\ncase \"$1\" in describe-plugin|--version) exec {:?} \"$@\";; esac\necho no decoders here >&2\nexit 3\n",
            env!("CARGO_BIN_EXE_clipcap")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let plugins = plugins_with(IsolationOptions { program, ..isolation() });
    let err = plugins
        .create(&DecoderRequest::parse("greedy").unwrap(), true)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("decoder `greedy`") && err.contains("no decoders here") && err.contains("status 3"),
        "{err}"
    );
    let err = DecoderRequest::parse("greedy:isolate=maybe").unwrap_err().to_string();
    assert!(
        err.contains("parameter `isolate` = maybe: expected true or false"),
        "{err}"
    );
}

//! The daemon's side of one decoder process: starting it, limiting its CPU time per caption, and
//! serving its host calls from the caption's [`HostCtx`], the same code as the in-process table.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Resource, Rlimit, getrlimit, prlimit};

use super::arena::ArenaWriter;
use super::child::{ARENA_FD, SOCKET_FD};
use super::protocol::{self, Call, Done, RecvError, Refusal, Reply, Slot, ToChild, ToParent};
use super::{IsolationOptions, Launch};
use crate::decoding::DecoderFault;
use crate::decoding::host::{HostCtx, Row};

pub(super) struct Child {
    process: std::process::Child,
    socket: UnixStream,
    arena: ArenaWriter,
    /// Forwards what the process writes to stdout and stderr into the log; its last line.
    output: Option<std::thread::JoinHandle<String>>,
}

/// Why a decoder's process did not start, or its instance was not created.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("cannot start {}: {source}", .program.display())]
    Exec {
        program: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The plugin's `create` refused the parameters: its message.
    #[error(transparent)]
    Refused(Refusal),
    #[error("protocol violation: {0} before the instance was created")]
    Protocol(String),
    #[error("its process did not start: {0}")]
    NotStarted(DecoderFault),
}

impl Child {
    /// Starts `clipcap decoder-host` for the decoder and creates the instance in it.
    pub fn spawn(launch: &Launch) -> Result<Child, StartError> {
        let io = |what: &'static str, source: std::io::Error| StartError::Io { what, source };
        let (socket, theirs) = UnixStream::pair().map_err(|e| io("socket pair", e))?;
        let (arena, reader) = ArenaWriter::new().map_err(|e| io("shared memory", e))?;
        let mut command = Command::new(&launch.options.program);
        command
            .arg("decoder-host")
            .arg(&launch.plugin)
            .arg(&launch.decoder)
            .arg("--label")
            .arg(&launch.label)
            .arg("--memory-mb")
            .arg(launch.options.memory_mb.to_string())
            .stdin(Stdio::null())
            // The last line of its output goes into the caption's error when it dies; a backtrace
            // after the reason would bury it (the next line drops Rust's note about backtraces).
            .env("RUST_BACKTRACE", "0");
        let (output, writer) = std::io::pipe().map_err(|e| io("pipe", e))?;
        let writer2 = writer.try_clone().map_err(|e| io("pipe", e))?;
        command.stdout(writer2).stderr(writer);
        if launch.vetting.allow_insecure {
            command.arg("--allow-insecure");
        }
        if let Some(keys) = &launch.vetting.trusted_keys {
            command.arg("--trusted-keys").arg(keys);
        }
        let fds = [(theirs.as_raw_fd(), SOCKET_FD), (reader.as_raw_fd(), ARENA_FD)];
        // SAFETY: the closure runs in the forked child before exec and makes only async-signal-safe
        // system calls (fcntl, dup2) on descriptors this process owns until `spawn` returns.
        unsafe {
            command.pre_exec(move || {
                // First above the targets (so that placing one cannot close the other), close-on-exec;
                // then onto the numbers child.rs expects, which dup2 leaves open across exec.
                let mut high = [0; 2];
                for (i, (fd, _)) in fds.iter().enumerate() {
                    high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                    if high[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, (_, target)) in fds.iter().enumerate() {
                    if libc::dup2(high[i], *target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            })
        };
        let process = command.spawn().map_err(|source| StartError::Exec {
            program: launch.options.program.clone(),
            source,
        })?;
        drop((theirs, reader, command));
        let mut child = Child {
            process,
            socket,
            arena,
            output: Some(forward(output, launch.label.clone())),
        };
        let deadline = Some(Instant::now() + launch.options.wait);
        let created = protocol::send(
            &mut child.socket,
            &ToChild::Create {
                values: launch.values.clone(),
            },
        )
        .map_err(|_| RecvError::Closed)
        .and_then(|()| protocol::recv::<ToParent>(&mut child.socket, deadline));
        match created {
            Ok(ToParent::Created(Ok(()))) => Ok(child),
            Ok(ToParent::Created(Err(refused))) => Err(StartError::Refused(refused)),
            Ok(other) => Err(StartError::Protocol(format!("{other:?}"))),
            Err(e) => Err(StartError::NotStarted(child.fault(e, launch.options.wait))),
        }
    }

    fn pid(&self) -> Option<Pid> {
        Pid::from_raw(self.process.id() as i32)
    }

    /// One caption: sends the job, serves the decoder's calls until it is done.
    pub fn decode(&mut self, ctx: &mut HostCtx, options: &IsolationOptions) -> Result<Done, DecoderFault> {
        self.limit_cpu(options.cpu_seconds)?;
        let decode = ToChild::Decode {
            facts: ctx.facts.clone(),
            arena_bytes: self.reserve(ctx)?,
        };
        self.send(decode, options.wait)?;
        loop {
            let deadline = Some(Instant::now() + options.wait);
            match protocol::recv::<ToParent>(&mut self.socket, deadline) {
                Ok(ToParent::Call(call)) => {
                    if let Some(reply) = self.serve(ctx, call)? {
                        self.send(ToChild::Reply(reply), options.wait)?;
                    }
                }
                Ok(ToParent::Done(done)) => return Ok(done),
                Ok(ToParent::Created(_)) => {
                    return Err(DecoderFault::Protocol("sent `Created` during a caption".into()));
                }
                Err(e) => return Err(self.fault(e, options.wait)),
            }
        }
    }

    fn send(&mut self, message: ToChild, wait: Duration) -> Result<(), DecoderFault> {
        protocol::send(&mut self.socket, &message).map_err(|_| self.fault(RecvError::Closed, wait))
    }

    /// What went wrong, from the process's point of view; the process is dead when this returns
    /// (the caller drops it).
    fn fault(&mut self, error: RecvError, wait: Duration) -> DecoderFault {
        match error {
            RecvError::Closed => {
                // It closed the socket: it died, or closed it and lives on (then it is killed).
                let until = Instant::now() + Duration::from_secs(1);
                while Instant::now() < until {
                    if let Ok(Some(status)) = self.process.try_wait() {
                        // It is gone, so its output ends: the last line is often the reason.
                        let said = self.output.take().and_then(|t| t.join().ok()).unwrap_or_default();
                        let said = if said.is_empty() {
                            String::new()
                        } else {
                            format!("; its last words: {said}")
                        };
                        return DecoderFault::Crashed(format!("{}{said}", ended(status)));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                let _ = self.process.kill();
                DecoderFault::Protocol("closed its connection to the daemon".into())
            }
            RecvError::TimedOut => DecoderFault::TimedOut(wait),
            RecvError::Malformed(m) => DecoderFault::Protocol(m),
            RecvError::Io(e) => DecoderFault::Protocol(format!("reading its socket: {e}")),
        }
    }

    /// Sets the process's CPU-time limit to what it has used so far plus one caption's allowance.
    fn limit_cpu(&self, seconds: u64) -> Result<(), DecoderFault> {
        let used = self.cpu_seconds_used().unwrap_or(0);
        let hard = getrlimit(Resource::Cpu).maximum;
        let soft = (used + seconds).min(hard.unwrap_or(u64::MAX));
        let limit = Rlimit {
            current: Some(soft),
            maximum: hard,
        };
        prlimit(self.pid(), Resource::Cpu, limit)
            .map(drop)
            .map_err(|e| DecoderFault::Unavailable(format!("cannot limit its CPU time: {e}")))
    }

    /// User and system CPU time of the process, whole seconds rounded up, from /proc/PID/stat.
    fn cpu_seconds_used(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.id())).ok()?;
        // Fields after the parenthesised command name: state is the 3rd field, utime the 14th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(ticks.div_ceil(rustix::param::clock_ticks_per_second()))
    }

    /// Room in the arena for the caption's context and every live sequence's rows.
    fn reserve(&mut self, ctx: &HostCtx) -> Result<u64, DecoderFault> {
        let layout = Layout::of(ctx);
        self.arena
            .reserve(layout.total())
            .map_err(|e| DecoderFault::Unavailable(format!("cannot grow the shared memory: {e}")))
    }

    /// Answers one call (`None` for calls that get no answer).
    fn serve(&mut self, ctx: &mut HostCtx, call: Call) -> Result<Option<Reply>, DecoderFault> {
        let error = |ctx: &HostCtx| Refusal(ctx.last_error().to_string_lossy().into_owned());
        Ok(Some(match call {
            Call::Start | Call::Step { .. } => {
                let ok = match call {
                    Call::Step { parents, tokens } => ctx.step(&parents, &tokens),
                    _ => ctx.start(),
                };
                Reply::Stepped {
                    ok: if ok { Ok(()) } else { Err(error(ctx)) },
                    arena_bytes: self.reserve(ctx)?,
                }
            }
            Call::Batch => Reply::Batch(ctx.generation.batch() as u32),
            Call::Row { what, seq } => {
                let layout = Layout::of(ctx);
                let offset = layout.offset(what, seq as usize);
                Reply::Row(match ctx.row(what, seq) {
                    Some(row) => {
                        self.arena.write(offset, row);
                        Ok(Slot {
                            offset: offset as u64,
                            len: row.len() as u64,
                        })
                    }
                    None => Err(error(ctx)),
                })
            }
            Call::Random => Reply::Random(ctx.generation.random()),
            Call::Detokenize(ids) => Reply::Text(ctx.detokenize(&ids).ok_or_else(|| error(ctx))),
            Call::Similarity(texts) => Reply::Similarity(ctx.similarity(&texts).ok_or_else(|| error(ctx))),
            Call::Log { level, message } => {
                ctx.log(level, &message);
                return Ok(None);
            }
            Call::Violation(message) => {
                ctx.violate(message);
                return Ok(None);
            }
        }))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Where rows lie in the arena, in floats: the context buffer (the longest a caption can have),
/// then every sequence's logits, then every sequence's hidden state.
struct Layout {
    context: usize,
    batch: usize,
    vocab: usize,
    width: usize,
}

impl Layout {
    fn of(ctx: &HostCtx) -> Layout {
        let g = &ctx.generation;
        Layout {
            context: g.max_positions() * g.hidden_size(),
            batch: g.batch(),
            vocab: g.vocab_size(),
            width: g.hidden_size(),
        }
    }

    fn total(&self) -> usize {
        self.context + self.batch * (self.vocab + self.width)
    }

    fn offset(&self, what: Row, seq: usize) -> usize {
        match what {
            Row::Context => 0,
            Row::Logits => self.context + seq * self.vocab,
            Row::Hidden => self.context + self.batch * self.vocab + seq * self.width,
        }
    }
}

/// A thread that logs each line the process writes, attributed to the decoder, and returns the last.
fn forward(output: std::io::PipeReader, decoder: String) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        use std::io::BufRead;
        let (mut reader, mut line, mut last) = (std::io::BufReader::new(output), Vec::new(), String::new());
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            tracing::warn!(decoder, "decoder process: {text}");
            // Rust follows a panic or a failed allocation with a "note:" on backtraces: not the reason.
            if !text.starts_with("note: ") {
                last = text;
            }
            line.clear();
        }
        last
    })
}

/// How the process ended, for the caption's error.
pub(super) fn ended(status: ExitStatus) -> String {
    match status.signal() {
        Some(signal) => {
            let name = match signal {
                libc::SIGSEGV => "SIGSEGV, a memory access violation",
                libc::SIGABRT => "SIGABRT, it aborted",
                libc::SIGBUS => "SIGBUS, a bad memory access",
                libc::SIGILL => "SIGILL, an illegal instruction",
                libc::SIGFPE => "SIGFPE, an arithmetic fault",
                libc::SIGKILL => "SIGKILL",
                libc::SIGXCPU => "SIGXCPU, over its CPU-time limit",
                libc::SIGSYS => "SIGSYS, a forbidden system call",
                _ => "a signal",
            };
            format!("killed by signal {signal} ({name})")
        }
        None => format!("exited with status {}", status.code().unwrap_or(-1)),
    }
}

//! What an isolated decoder's process may do: set up by the process itself after it has loaded the
//! plugin and before any decoder code runs (`create`, `decode`).
//!
//! - A memory limit (RLIMIT_DATA: heap and private writable mappings; the read-only arena is not
//!   counted): allocation beyond it fails, and the process dies of it.
//! - `PR_SET_NO_NEW_PRIVS`: no exec can gain privileges.
//! - A seccomp filter allowing what a decoder needs to compute and talk to the daemon over the
//!   socket it already has (read/write, memory, futexes, clocks, signals to itself), and failing
//!   everything else with EPERM: no files, no network, no processes, no limits raised.
//!
//! The CPU-time limit (RLIMIT_CPU) is the daemon's to set, per caption (server.rs), which is why
//! the filter refuses `prlimit64` and `setrlimit`. Everything here works under the systemd unit's
//! own filter (SystemCallFilter=@system-service ~@privileged ~@resources): limits are set with
//! prlimit64, the filter installed with prctl.

use std::collections::BTreeMap;

use rustix::process::{Resource, Rlimit, setrlimit};
use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule};

/// A limit or filter that could not be set: the process does not run the decoder unconfined.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot limit memory to {mb} MiB: {source}")]
    Memory { mb: u64, source: rustix::io::Errno },
    #[error("PR_SET_NO_NEW_PRIVS: {0}")]
    NoNewPrivs(rustix::io::Errno),
    #[error("seccomp filter: {0}")]
    Filter(#[from] seccompiler::BackendError),
    #[error("seccomp: {0}")]
    Arch(String),
    #[error("seccomp: the filter is too long")]
    TooLong,
    #[error("seccomp: {0}")]
    Install(std::io::Error),
}

pub fn limit_memory(mb: u64) -> Result<(), SandboxError> {
    let bytes = mb.saturating_mul(1 << 20);
    setrlimit(
        Resource::Data,
        Rlimit {
            current: Some(bytes),
            maximum: Some(bytes),
        },
    )
    .map_err(|source| SandboxError::Memory { mb, source })
}

/// The system calls a decoder may make.
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_gettid,
    // Rust's SIGSEGV handler (stack-overflow reports) restores the default action with
    // rt_sigaction before the fault repeats and kills the process; without it the fault would loop.
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// No new privileges, then the seccomp filter, for the rest of this process's life.
pub fn confine() -> Result<(), SandboxError> {
    rustix::thread::set_no_new_privs(true).map_err(SandboxError::NoNewPrivs)?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED.iter().map(|&call| (call, Vec::new())).collect();
    // Signals to this process only (abort() raises SIGABRT with tgkill): never to the daemon.
    let own = |arg: u8| {
        SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            std::process::id().into(),
        )
        .and_then(|c| SeccompRule::new(vec![c]))
    };
    rules.insert(libc::SYS_tgkill, vec![own(0)?]);
    rules.insert(libc::SYS_kill, vec![own(0)?]);
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| SandboxError::Arch(format!("{e}")))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )?;
    let program: seccompiler::BpfProgram = filter.try_into()?;
    install(&program)
}

/// Installs the filter with prctl(PR_SET_SECCOMP) rather than the seccomp() system call that
/// seccompiler::apply_filter uses: systemd's @system-service set (our unit's SystemCallFilter) has
/// prctl but not seccomp().
fn install(program: &[seccompiler::sock_filter]) -> Result<(), SandboxError> {
    let len = u16::try_from(program.len()).map_err(|_| SandboxError::TooLong)?;
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut().cast::<libc::sock_filter>(),
    };
    // SAFETY: `fprog` points to `len` BPF instructions that live through the call (the kernel copies
    // them); seccompiler's sock_filter is #[repr(C)] {u16, u8, u8, u32}, the layout of the kernel's
    // and libc's. No new privileges is set above, as the kernel requires for an unprivileged filter.
    let rc = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &raw const fprog) };
    if rc != 0 {
        return Err(SandboxError::Install(std::io::Error::last_os_error()));
    }
    Ok(())
}

//! Which plugin files may be loaded: loading a library runs its code with the daemon's rights, so a
//! file that someone else could have replaced is refused, as sshd's StrictModes refuses such keys.
//!
//! The file is opened once, without following a symbolic link, and everything is checked on that
//! descriptor: its owner and mode, its ELF header (a library built for another machine is refused
//! with both architectures named), and the folders above it. The loader then opens the descriptor
//! itself (`/proc/self/fd/N`), so a file swapped in after the check is never run. With trusted keys,
//! the bytes of that descriptor must also carry a signature of one of them (`libX.so.minisig`).

use std::fs::{File, Metadata, OpenOptions};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{PluginError, PluginFault};
use crate::trust::{TrustError, TrustedKeys};

/// What a plugin file must pass before it is loaded, besides being an ELF library for this machine.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Vetting {
    /// Load plugins even from files or folders that others could write (development only).
    pub allow_insecure: bool,
    /// minisign public keys: when set, a plugin must be signed by one of them (`libX.so.minisig`).
    pub trusted_keys: Option<PathBuf>,
}

/// A plugin file, open and checked: load it through [`CheckedFile::loader_path`].
pub struct CheckedFile {
    file: File,
}

impl CheckedFile {
    /// The path that opens this very descriptor, whatever happened to the listed path since.
    pub fn loader_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Once the loader has opened the library by [`loader_path`], the descriptor stays open for the
    /// life of the process: the dynamic loader knows a library by the name it was opened with and
    /// hands back the same library for the same name, so that name must never come to mean
    /// another file (as it would if the descriptor number were reused). One descriptor per library.
    ///
    /// [`loader_path`]: CheckedFile::loader_path
    pub fn keep_open(self) {
        let _ = self.file.into_raw_fd();
    }
}

/// Opens `path` for loading. Refused: a symbolic link, anything but a regular file, an ELF file for
/// another architecture, unless `allow_insecure` a file or folder above it owned by someone other
/// than root or this process's user or writable by group or others, and with `trusted_keys` a file
/// without a valid signature of one of them.
pub fn open(path: &Path, vetting: &Vetting) -> Result<CheckedFile, PluginError> {
    let refuse = |reason: PluginFault| PluginError {
        path: path.to_path_buf(),
        reason,
    };
    let insecure = |reason: String| refuse(PluginFault::Insecure(reason));
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => insecure(
                "is a symbolic link; list the folder that holds the library itself in plugins.directories".into(),
            ),
            _ => refuse(PluginFault::Open(e)),
        })?;
    let meta = file.metadata().map_err(|e| refuse(PluginFault::Open(e)))?;
    if !meta.is_file() {
        return Err(refuse(PluginFault::Descriptor("not a regular file".into())));
    }
    elf_machine(&file).map_err(refuse)?;
    if !vetting.allow_insecure {
        owner_and_mode(path, &meta).map_err(|e| insecure(e.to_string()))?;
        let folder = path.parent().unwrap_or(Path::new("."));
        let real = folder
            .canonicalize()
            .map_err(|e| insecure(format!("{}: cannot resolve: {e}", folder.display())))?;
        for dir in real.ancestors() {
            let meta = std::fs::metadata(dir).map_err(|e| insecure(format!("{}: {e}", dir.display())))?;
            owner_and_mode(dir, &meta).map_err(|e| insecure(e.to_string()))?;
        }
    }
    if let Some(keys) = &vetting.trusted_keys {
        let untrusted = |e: TrustError| refuse(PluginFault::Untrusted(e.fault));
        let keys = TrustedKeys::load(keys).map_err(untrusted)?;
        let mut bytes = vec![0u8; meta.len() as usize];
        file.read_exact_at(&mut bytes, 0)
            .map_err(|e| refuse(PluginFault::Open(e)))?;
        keys.verify(path, &bytes).map_err(untrusted)?;
    }
    Ok(CheckedFile { file })
}

/// A file or folder others could change.
#[derive(Debug, thiserror::Error)]
enum Unsafe {
    #[error("{} is owned by uid {owner}, neither root nor this user ({uid})", .path.display())]
    Owner { path: PathBuf, owner: u32, uid: u32 },
    #[error(
        "{} is writable by group or others (mode {mode:o}); set plugins.allow_insecure = true for development",
        .path.display()
    )]
    Writable { path: PathBuf, mode: u32 },
}

fn owner_and_mode(path: &Path, meta: &Metadata) -> Result<(), Unsafe> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != uid {
        return Err(Unsafe::Owner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            uid,
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(Unsafe::Writable {
            path: path.to_path_buf(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// ELF `e_machine` of this build's architecture.
const HOST_MACHINE: u16 = if cfg!(target_arch = "x86_64") {
    62
} else if cfg!(target_arch = "aarch64") {
    183
} else if cfg!(target_arch = "riscv64") {
    243
} else {
    0 // elsewhere: the dynamic loader alone decides
};

fn machine_name(machine: u16) -> String {
    match machine {
        3 => "x86 (32-bit)".into(),
        40 => "arm (32-bit)".into(),
        62 => "x86_64".into(),
        183 => "aarch64".into(),
        243 => "riscv".into(),
        other => format!("ELF machine {other}"),
    }
}

/// Refuses anything but a 64-bit little-endian ELF file for this machine, before the loader sees it.
fn elf_machine(file: &File) -> Result<(), PluginFault> {
    let mut header = [0u8; 20];
    file.read_exact_at(&mut header, 0)
        .map_err(|_| PluginFault::Descriptor("not an ELF shared library (too short)".into()))?;
    if &header[..4] != b"\x7fELF" {
        return Err(PluginFault::Descriptor("not an ELF shared library".into()));
    }
    let machine = match header[5] {
        1 => u16::from_le_bytes([header[18], header[19]]),
        _ => u16::from_be_bytes([header[18], header[19]]),
    };
    let (class, little) = (header[4], header[5] == 1);
    if HOST_MACHINE != 0 && (machine != HOST_MACHINE || class != 2 || !little) {
        return Err(PluginFault::Architecture {
            plugin: format!(
                "{}{}",
                machine_name(machine),
                if class == 2 && little {
                    ""
                } else {
                    ", 32-bit or big-endian"
                }
            ),
            host: machine_name(HOST_MACHINE),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::plugin;
    use super::*;

    /// The workspace's plugin libraries (built by `cargo build --workspace`, as scripts/test.sh does).
    fn built(name: &str) -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        let lib = exe.parent().and_then(Path::parent).unwrap().join(name);
        assert!(lib.is_file(), "{}: run `cargo build --workspace` first", lib.display());
        lib
    }

    #[test]
    fn a_file_swapped_in_after_the_check_is_never_run() {
        let tmp = std::env::temp_dir().join(format!("clipcap-swap-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let (listed, other) = (tmp.join("libdecoders.so"), tmp.join("libother.so"));
        std::fs::copy(built("libclipcap_search.so"), &listed).unwrap();
        std::fs::copy(built("libclipcap_sampling.so"), &other).unwrap();
        let dev = Vetting {
            allow_insecure: true,
            trusted_keys: None,
        };
        let checked = open(&listed, &dev).unwrap();
        // Between the check and the load, the listed path now names another library.
        std::fs::rename(&other, &listed).unwrap();
        let names = |file: CheckedFile| -> Vec<String> {
            let found = plugin::load(&listed, file).unwrap();
            found.into_iter().map(|d| d.info.name).collect()
        };
        assert_eq!(
            names(checked),
            ["greedy", "beam"],
            "the checked file was loaded, not the swapped one"
        );
        // The swap did happen: opening the path now finds the other library.
        assert_eq!(names(open(&listed, &dev).unwrap()), ["sample"]);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

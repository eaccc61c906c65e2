//! Which plugin files may be loaded: loading a library runs its code with the daemon's rights, so a
//! file that someone else could have replaced is refused, as sshd's StrictModes refuses such keys.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{PluginError, PluginFault};

/// Refuses `path` unless it and every folder above it are owned by root or by this process's user
/// and writable by neither group nor others.
pub fn check(path: &Path) -> Result<(), PluginError> {
    let refuse = |reason: String| PluginError {
        path: path.to_path_buf(),
        reason: PluginFault::Insecure(reason),
    };
    let real = path
        .canonicalize()
        .map_err(|e| refuse(format!("cannot resolve: {e}")))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    for p in real.ancestors() {
        let meta = std::fs::metadata(p).map_err(|e| refuse(format!("{}: {e}", p.display())))?;
        if meta.uid() != 0 && meta.uid() != uid {
            return Err(refuse(format!(
                "{} is owned by uid {}, neither root nor this user ({uid})",
                p.display(),
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(refuse(format!(
                "{} is writable by group or others (mode {:o}); set plugins.allow_insecure = true for development",
                p.display(),
                meta.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

//! What every part's settings share: the error of a value the part refuses. Each part that owns a
//! section of the configuration file (source, publish, ros2) validates it itself with this error,
//! naming the key; `config` collects them and says which file or variable holds the key.

/// A setting whose value is refused: its key (`section.key`) and why, in a sentence that names the key
/// and the value (the whole message users read).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct Invalid {
    pub key: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Invalid {
        Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Ok when `ok`, else `key` refused for `reason`.
pub fn check(ok: bool, key: impl Into<String>, reason: impl FnOnce() -> String) -> Result<(), Invalid> {
    if ok { Ok(()) } else { Err(Invalid::new(key, reason())) }
}

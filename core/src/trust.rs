//! Who made a bundle or a plugin: a minisign signature (Ed25519, `FILE.minisig` next to the file)
//! checked against the keys a fleet trusts, and, for a bundle, each file checked against the size and
//! SHA-256 its signed manifest pins (`[files]`), so that signing the small manifest signs the weights.
//!
//! Signatures are minisign's own format, so that the reference tool (`minisign -S`, `minisign -V`)
//! makes and checks what clipcap checks; `minisign-verify` (by minisign's author) reads them.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use minisign_verify::{PublicKey, Signature};
use sha2::{Digest, Sha256};

/// The extension minisign gives a file's signature: `manifest.toml.minisig`.
pub const SIGNATURE_EXTENSION: &str = "minisig";

/// A file that is not what a trusted key vouched for: the file, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {fault}", .path.display())]
pub struct TrustError {
    pub path: PathBuf,
    pub fault: TrustFault,
}

#[derive(Debug, thiserror::Error)]
pub enum TrustFault {
    #[error("trusted keys: {0}")]
    Keys(String),
    #[error("not signed: {} does not exist", .0.display())]
    Unsigned(PathBuf),
    #[error("cannot read: {0}")]
    Read(std::io::Error),
    #[error("{}: not a minisign signature: {message}", .signature.display())]
    Malformed { signature: PathBuf, message: String },
    #[error("signed by key {key}, which is not one of the trusted keys ({trusted}, {})", .keys.display())]
    ForeignKey {
        key: String,
        trusted: String,
        keys: PathBuf,
    },
    #[error("the signature of key {0} does not match the file: it was changed after it was signed")]
    Tampered(String),
    /// The file differs from the size or SHA-256 its manifest pins.
    #[error("{0}")]
    Pin(String),
}

/// minisign public keys, as `minisign -G` writes them (`minisign.pub`): pairs of an untrusted comment
/// line and a base64 key line; a file may hold several.
pub struct TrustedKeys {
    path: PathBuf,
    keys: Vec<(String, PublicKey)>,
}

impl TrustedKeys {
    pub fn load(path: &Path) -> Result<TrustedKeys, TrustError> {
        let bad = |message: String| TrustError {
            path: path.to_path_buf(),
            fault: TrustFault::Keys(message),
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let mut keys = Vec::new();
        let mut lines = text.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty());
        while let Some((n, comment)) = lines.next() {
            if !comment.starts_with("untrusted comment:") {
                return Err(bad(format!("line {}: expected \"untrusted comment: ...\"", n + 1)));
            }
            let Some((n, line)) = lines.next() else {
                return Err(bad(format!("line {}: a comment without a key after it", n + 1)));
            };
            let key = PublicKey::from_base64(line)
                .map_err(|e| bad(format!("line {}: not a minisign public key: {e}", n + 1)))?;
            keys.push((key_id(line).unwrap_or_default(), key));
        }
        if keys.is_empty() {
            return Err(bad("no keys in the file".into()));
        }
        Ok(TrustedKeys {
            path: path.to_path_buf(),
            keys,
        })
    }

    /// The key IDs, as minisign prints them (upper-case hex).
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// Checks `data`, the contents of `path`, against the signature `path.minisig`, and returns the
    /// ID of the trusted key that made it.
    pub fn verify(&self, path: &Path, data: &[u8]) -> Result<String, TrustError> {
        let refuse = |fault| TrustError {
            path: path.to_path_buf(),
            fault,
        };
        let signature = signature_path(path);
        let text = match std::fs::read_to_string(&signature) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(refuse(TrustFault::Unsigned(signature))),
            Err(e) => return Err(refuse(TrustFault::Read(e))),
        };
        let malformed = |message: String| {
            refuse(TrustFault::Malformed {
                signature: signature.clone(),
                message,
            })
        };
        let parsed = Signature::decode(&text).map_err(|e| malformed(e.to_string()))?;
        let signer = text
            .lines()
            .nth(1)
            .and_then(key_id)
            .ok_or_else(|| malformed("its second line is not a signature".into()))?;
        let Some((id, key)) = self.keys.iter().find(|(id, _)| *id == signer) else {
            return Err(refuse(TrustFault::ForeignKey {
                key: signer,
                trusted: self.ids().join(", "),
                keys: self.path.clone(),
            }));
        };
        // Legacy signatures (`minisign -l`, Ed25519 over the file itself) are as sound as the
        // pre-hashed default; older minisign made them.
        key.verify(data, &parsed, true)
            .map_err(|_| refuse(TrustFault::Tampered(id.clone())))?;
        Ok(id.clone())
    }
}

/// Where minisign puts the signature of `path`.
pub fn signature_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(SIGNATURE_EXTENSION);
    PathBuf::from(name)
}

/// The key ID of a minisign public key or signature line (base64 of two algorithm bytes, the 8-byte
/// ID, little-endian, then the key or signature), as minisign prints it.
fn key_id(line: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(line.trim()).ok()?;
    let id = bytes.get(2..10)?;
    Some(id.iter().rev().map(|b| format!("{b:02X}")).collect())
}

/// A file's size and SHA-256 (lower-case hex), as a manifest's `[files]` pins them.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilePin {
    pub size: u64,
    pub sha256: String,
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the file at `path` against its pin, reading it once: the size first (a truncated or grown
/// file is named as such without hashing it), then the SHA-256 of what is read.
pub fn check_pin(path: &Path, pin: &FilePin) -> Result<(), TrustError> {
    let refuse = |fault| TrustError {
        path: path.to_path_buf(),
        fault,
    };
    let read = |e| refuse(TrustFault::Read(e));
    let differs = |message| refuse(TrustFault::Pin(message));
    let mut file = File::open(path).map_err(read)?;
    let size = file.metadata().map_err(read)?.len();
    if size != pin.size {
        return Err(differs(format!(
            "is {size} bytes, the manifest pins {} ([files]): not the file that was signed",
            pin.size
        )));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(read)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let sha = hex(&hasher.finalize());
    if sha != pin.sha256 {
        return Err(differs(format!(
            "SHA-256 {sha} differs from the manifest's pin {} ([files]): the file was changed after it was signed",
            pin.sha256
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_read_as_minisign_prints_them() {
        // A key and a signature minisign 0.11 made (`minisign -G`, `minisign -S`); its .pub's comment
        // line says "minisign public key 24679AFCEC93AAC0".
        let public = "RWTAqpPs/JpnJESnRahS1ZUX/GU6ZsDLMfUCDEnAh995N1FELtQnU+La";
        let signature =
            "RUTAqpPs/JpnJAnha8pvYQsf/Bk15UtP9AxE8wVuNpxiX7nzGs7VfZvHWV4PPTPclGUUMFXnhYcmafdSudbcXgIIJNldbKO0NwU=";
        assert_eq!(key_id(public).unwrap(), "24679AFCEC93AAC0");
        assert_eq!(key_id(signature).unwrap(), "24679AFCEC93AAC0");
    }
}

//! The messages between the daemon and an isolated decoder's process, and their framing on the
//! socket: a little-endian u32 length, then the message in postcard (serde's compact binary form,
//! exact for floats). Rows of floats never travel here: they go through the shared arena.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::decoding::plugin::Done;

use crate::decoding::host::{Facts, Row};

/// Largest message either side accepts; anything longer is a protocol violation.
const MAX_MESSAGE: usize = 64 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub enum ToChild {
    /// Create the decoder instance from its checked parameter values (once, first).
    Create { values: Vec<f64> },
    /// Caption one image: the fixed part of the host table, and the arena's current size.
    Decode { facts: Facts, arena_bytes: u64 },
    /// The answer to the child's last call.
    Reply(Reply),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ToParent {
    /// `create` succeeded, or its message.
    Created(Result<(), Refusal>),
    /// A host function the decoder called; every call but `Log` and `Violation` gets one `Reply`.
    Call(Call),
    /// The decoder's `decode` returned.
    Done(Done),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
    Start,
    Batch,
    Step {
        parents: Vec<u32>,
        tokens: Vec<u32>,
    },
    Row {
        what: Row,
        seq: u32,
    },
    Random,
    Detokenize(Vec<u32>),
    Similarity(Vec<String>),
    Log {
        level: u32,
        message: String,
    },
    /// A request the decoder's process refused itself (null arrays); no reply.
    Violation(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// After `start` or `step`: whether it was done (or the message), and the arena's size, which
    /// only changes here (when a batch outgrows it), while no row handed out is valid any more.
    Stepped {
        ok: Result<(), Refusal>,
        arena_bytes: u64,
    },
    Batch(u32),
    /// Where the row lies in the arena, in floats from its start, or why there is none.
    Row(Result<Slot, Refusal>),
    Random(f64),
    Text(Result<String, Refusal>),
    Similarity(Result<Vec<f32>, Refusal>),
}

/// A refusal that crosses the socket as text: the plugin's message when `create` fails, the host's
/// last error when a call is refused.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Slot {
    pub offset: u64,
    pub len: u64,
}

/// Why no message arrived.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    #[error("the other side closed the connection")]
    Closed,
    #[error("no message in time")]
    TimedOut,
    #[error("reading the socket: {0}")]
    Io(io::Error),
    #[error("{0}")]
    Malformed(String),
}

pub fn send<T: Serialize>(socket: &mut UnixStream, message: &T) -> io::Result<()> {
    let body = postcard::to_stdvec(message).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    socket.write_all(&frame)
}

/// The next message, waiting until `deadline` at most (`None`: as long as it takes).
pub fn recv<T: DeserializeOwned>(socket: &mut UnixStream, deadline: Option<Instant>) -> Result<T, RecvError> {
    let mut header = [0u8; 4];
    read_by(socket, &mut header, deadline)?;
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_MESSAGE {
        return Err(RecvError::Malformed(format!(
            "a message of {len} bytes announced; at most {MAX_MESSAGE} are allowed"
        )));
    }
    let mut body = vec![0u8; len];
    read_by(socket, &mut body, deadline)?;
    postcard::from_bytes(&body).map_err(|e| RecvError::Malformed(format!("an unreadable message ({len} bytes): {e}")))
}

fn read_by(socket: &mut UnixStream, buf: &mut [u8], deadline: Option<Instant>) -> Result<(), RecvError> {
    let mut filled = 0;
    while filled < buf.len() {
        // Only the daemon waits with a deadline; the decoder's process never sets a timeout (its
        // sandbox has no setsockopt).
        if let Some(d) = deadline {
            match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => socket.set_read_timeout(Some(left)).map_err(RecvError::Io)?,
                _ => return Err(RecvError::TimedOut),
            }
        }
        match socket.read(&mut buf[filled..]) {
            Ok(0) => return Err(RecvError::Closed),
            Ok(n) => filled += n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(RecvError::TimedOut);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(RecvError::Closed),
            Err(e) => return Err(RecvError::Io(e)),
        }
    }
    Ok(())
}

//! Which connections the daemon accepts (`service.max_connections`, `max_connections_per_client`,
//! `local_connections`): no client address holds more than its share, so one client's event streams
//! or idle sockets cannot lock the others out; and the last `local_connections` slots are kept for
//! loopback, so that the device's own probes (systemd, a kiosk's browser) reach /healthz and /readyz
//! whatever remote clients do. A connection is counted from its accept to its close (the header
//! timeout closes one that sends no request), and refused at once, unanswered, otherwise.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::metrics::{ConnectionRefusal as Refusal, Metrics};

/// The limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max: usize,
    pub per_client: usize,
    /// Of `max`, the slots only loopback peers may take.
    pub local: usize,
}

/// The open connections, by client address.
pub struct Admission {
    limits: Limits,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// One admitted connection's slot, given back when it is dropped.
pub struct Slot {
    admission: Arc<Admission>,
    peer: IpAddr,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            open: Mutex::default(),
        })
    }

    /// A slot for a connection from `peer`, or why there is none.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refusal> {
        let peer = peer.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let l = self.limits;
        if open.total >= l.max {
            return Err(Refusal::Full);
        }
        if !peer.is_loopback() && open.total >= l.max.saturating_sub(l.local) {
            return Err(Refusal::Reserved);
        }
        let mine = open.by_client.entry(peer).or_default();
        if *mine >= l.per_client {
            return Err(Refusal::Client);
        }
        *mine += 1;
        open.total += 1;
        Ok(Slot {
            admission: self.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total -= 1;
        if let Some(mine) = open.by_client.get_mut(&self.peer) {
            *mine -= 1;
            if *mine == 0 {
                open.by_client.remove(&self.peer);
            }
        }
    }
}

/// The acceptor in front of the HTTP (or TLS) one: admits or closes each connection as it arrives,
/// counting refusals.
#[derive(Clone)]
pub struct Admit {
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
}

impl<S> Accept<TcpStream, S> for Admit {
    type Stream = Admitted;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Admitted, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let slot = stream.peer_addr().and_then(|peer| {
            self.admission.admit(peer.ip()).map_err(|refusal| {
                self.metrics.connection_refused(refusal);
                io::Error::other(refusal.as_str())
            })
        });
        std::future::ready(slot.map(|slot| (Admitted { stream, _slot: slot }, service)))
    }
}

/// An admitted connection: the stream, holding its slot until it closes.
pub struct Admitted {
    stream: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Admitted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_its_share_and_loopback_keeps_its_reserve() {
        let admission = Admission::new(Limits {
            max: 6,
            per_client: 2,
            local: 2,
        });
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let (a, b, c, local) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"), ip("127.0.0.1"));
        let mut held = vec![admission.admit(a).unwrap(), admission.admit(a).unwrap()];
        assert_eq!(admission.admit(a).err(), Some(Refusal::Client));
        held.push(admission.admit(b).unwrap());
        held.push(admission.admit(b).unwrap());
        // Four open of six: the last two are loopback's.
        assert_eq!(admission.admit(c).err(), Some(Refusal::Reserved));
        held.push(admission.admit(local).unwrap());
        held.push(admission.admit(ip("::ffff:127.0.0.1")).unwrap());
        assert_eq!(admission.admit(local).err(), Some(Refusal::Full));
        // Closed connections give their slots back: with four open, the remote ones still wait; with
        // two, there is room again.
        held.drain(..2);
        assert_eq!(admission.admit(c).err(), Some(Refusal::Reserved));
        held.drain(..2);
        held.push(admission.admit(c).unwrap());
        held.push(admission.admit(a).unwrap());
        drop(held);
        let open = admission.open.lock().unwrap();
        assert_eq!((open.total, open.by_client.len()), (0, 0));
    }
}

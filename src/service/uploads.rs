//! The uploads waiting for the captioning thread, shared fairly between clients: a bounded queue
//! served round robin across them (each client's uploads in their order), so that a client's many
//! uploads wait behind every other client's next one; and each client's uploads in flight (from
//! arrival to answer), which `service.uploads_in_flight` caps, so that no client holds the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use image::RgbImage;
use tokio::sync::oneshot;

use crate::records::CaptionEvent;
use clipcap_core::captioner::CaptionError;
use clipcap_core::decoding::DecoderInstance;

/// An image posted to the API, with the decoder to use (already checked) and where to answer.
pub struct Upload {
    pub image: RgbImage,
    pub decoder: Option<DecoderInstance>,
    /// Who sent it (its token's name, or its address): its turn in the queue.
    pub client: String,
    /// The connection's address, the caption's `origin`.
    pub origin: String,
    pub received: SystemTime,
    pub reply: oneshot::Sender<Result<Arc<CaptionEvent>, CaptionError>>,
}

/// Why an upload was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum NotQueued {
    /// The queue is full.
    Busy,
    /// The captioning thread is gone (the daemon stops).
    Stopping,
}

#[derive(Default)]
struct Queue {
    by_client: HashMap<String, VecDeque<Upload>>,
    /// The clients with uploads waiting, in the order of their turns.
    turns: VecDeque<String>,
    len: usize,
    sender_gone: bool,
    receiver_gone: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    arrived: Condvar,
    capacity: usize,
    in_flight: Mutex<HashMap<String, usize>>,
    per_client: usize,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The queue of `capacity` uploads, at most `per_client` of a client's in flight: the API's end and
/// the captioning thread's.
pub fn uploads(capacity: usize, per_client: usize) -> (UploadSender, UploadReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::default(),
        arrived: Condvar::new(),
        capacity,
        in_flight: Mutex::default(),
        per_client,
    });
    (UploadSender(shared.clone()), UploadReceiver(shared))
}

pub struct UploadSender(Arc<Shared>);

/// One of a client's uploads in flight; dropping it (when the answer is sent) ends it.
pub struct InFlight {
    shared: Arc<Shared>,
    client: String,
}

impl UploadSender {
    /// An upload of `client` in flight, unless it has `per_client` already.
    pub fn admit(&self, client: &str) -> Option<InFlight> {
        let mut in_flight = self.0.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let mine = in_flight.entry(client.to_string()).or_default();
        if *mine >= self.0.per_client {
            return None;
        }
        *mine += 1;
        Some(InFlight {
            shared: self.0.clone(),
            client: client.to_string(),
        })
    }

    /// Queues `upload` in its client's turn, unless the queue is full or the captioning thread is
    /// gone.
    pub fn try_send(&self, upload: Upload) -> Result<(), NotQueued> {
        let mut guard = self.0.queue();
        let q = &mut *guard;
        if q.receiver_gone {
            return Err(NotQueued::Stopping);
        }
        if q.len >= self.0.capacity {
            return Err(NotQueued::Busy);
        }
        let waiting = q.by_client.entry(upload.client.clone()).or_default();
        if waiting.is_empty() {
            q.turns.push_back(upload.client.clone());
        }
        waiting.push_back(upload);
        q.len += 1;
        drop(guard);
        self.0.arrived.notify_one();
        Ok(())
    }
}

impl Drop for UploadSender {
    fn drop(&mut self) {
        self.0.queue().sender_gone = true;
        self.0.arrived.notify_all();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut in_flight = self.shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mine) = in_flight.get_mut(&self.client) {
            *mine -= 1;
            if *mine == 0 {
                in_flight.remove(&self.client);
            }
        }
    }
}

pub struct UploadReceiver(Arc<Shared>);

impl UploadReceiver {
    /// The next upload in turn, waiting up to `wait` for one.
    pub fn recv_timeout(&self, wait: Duration) -> Result<Upload, RecvTimeoutError> {
        let deadline = Instant::now() + wait;
        let mut q = self.0.queue();
        loop {
            if let Some(upload) = next(&mut q) {
                return Ok(upload);
            }
            if q.sender_gone {
                return Err(RecvTimeoutError::Disconnected);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            q = self
                .0
                .arrived
                .wait_timeout(q, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The next upload in turn, if one waits.
    pub fn try_recv(&self) -> Option<Upload> {
        next(&mut self.0.queue())
    }

    /// Whether an upload waits.
    pub fn waiting(&self) -> bool {
        self.0.queue().len > 0
    }
}

impl Drop for UploadReceiver {
    fn drop(&mut self) {
        self.0.queue().receiver_gone = true;
    }
}

/// The first waiting upload of the client whose turn it is; the client goes to the back of the turns
/// if it has more.
fn next(q: &mut Queue) -> Option<Upload> {
    let client = q.turns.pop_front()?;
    let waiting = q.by_client.get_mut(&client).expect("a client in turn has uploads");
    let upload = waiting.pop_front().expect("a client in turn has uploads");
    if waiting.is_empty() {
        q.by_client.remove(&client);
    } else {
        q.turns.push_back(client);
    }
    q.len -= 1;
    Some(upload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(client: &str, n: u32) -> Upload {
        Upload {
            image: RgbImage::new(n, 1),
            decoder: None,
            client: client.into(),
            origin: String::new(),
            received: SystemTime::now(),
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn clients_take_turns_and_each_holds_its_share() {
        let (sender, receiver) = uploads(6, 2);
        for n in 1..=4 {
            sender.try_send(upload("flood", n)).unwrap();
        }
        sender.try_send(upload("a", 10)).unwrap();
        sender.try_send(upload("b", 20)).unwrap();
        assert_eq!(sender.try_send(upload("c", 30)), Err(NotQueued::Busy));
        let order: Vec<(String, u32)> = std::iter::from_fn(|| receiver.try_recv())
            .map(|u| (u.client, u.image.width()))
            .collect();
        let expected = [
            ("flood", 1),
            ("a", 10),
            ("b", 20),
            ("flood", 2),
            ("flood", 3),
            ("flood", 4),
        ];
        assert_eq!(order, expected.map(|(c, n)| (c.to_string(), n)));
        assert!(!receiver.waiting());

        let first = sender.admit("flood").unwrap();
        let _second = sender.admit("flood").unwrap();
        assert!(sender.admit("flood").is_none(), "a third upload in flight");
        assert!(sender.admit("a").is_some());
        drop(first);
        assert!(
            sender.admit("flood").is_some(),
            "a finished upload gives its place back"
        );

        drop(sender);
        assert_eq!(
            receiver.recv_timeout(Duration::from_secs(5)).err(),
            Some(RecvTimeoutError::Disconnected)
        );
    }
}

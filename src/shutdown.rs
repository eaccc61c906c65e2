//! The daemon's one stop signal. Set once (SIGTERM, SIGINT, or a model that failed to load), it is
//! seen by the threads, which wait on it with a timeout instead of sleeping, and by async tasks,
//! which await it; and each thread is joined through a [`Worker`], within the shutdown bound.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown(Arc<Signal>);

struct Signal {
    set: Mutex<bool>,
    /// Wakes threads waiting in `nap`.
    threads: Condvar,
    /// Wakes async tasks waiting in `wait`.
    tasks: watch::Sender<bool>,
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown(Arc::new(Signal {
            set: Mutex::new(false),
            threads: Condvar::new(),
            tasks: watch::Sender::new(false),
        }))
    }

    pub fn trigger(&self) {
        *self.0.set.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.0.threads.notify_all();
        self.0.tasks.send_replace(true);
    }

    pub fn is_set(&self) -> bool {
        *self.0.set.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `total`; false (at once) when the signal is set before or during the wait.
    pub fn nap(&self, total: Duration) -> bool {
        let set = self.0.set.lock().unwrap_or_else(|p| p.into_inner());
        let (set, _) = self
            .0
            .threads
            .wait_timeout_while(set, total, |set| !*set)
            .unwrap_or_else(|p| p.into_inner());
        !*set
    }

    /// Resolves once the signal is set.
    pub async fn wait(&self) {
        let mut rx = self.0.tasks.subscribe();
        let _ = rx.wait_for(|set| *set).await;
    }
}

/// A named thread of the daemon, joined on shutdown.
pub struct Worker {
    name: &'static str,
    handle: JoinHandle<()>,
    /// Disconnects when the thread's closure returns (its sender is dropped then).
    finished: Receiver<()>,
}

impl Worker {
    pub fn spawn(name: &'static str, f: impl FnOnce() + Send + 'static) -> std::io::Result<Worker> {
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::Builder::new().name(name.into()).spawn(move || {
            let _done: Sender<()> = done;
            f()
        })?;
        Ok(Worker { name, handle, finished })
    }

    /// Joins the thread if it ends by `deadline`; otherwise says so and leaves it to the process's
    /// exit (a caption in flight in ONNX Runtime cannot be interrupted).
    pub fn join_by(self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.finished.recv_timeout(left) {
            Err(RecvTimeoutError::Disconnected) => {
                if self.handle.join().is_err() {
                    tracing::error!("the {} thread panicked", self.name);
                }
            }
            Ok(()) | Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    "the {} thread did not stop within the shutdown bound; leaving it",
                    self.name
                )
            }
        }
    }
}

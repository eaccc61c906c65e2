//! Jobs spread over lanes: one thread per lane, each taking the next job when it is free. A lane owns
//! what a job needs that cannot be shared between threads (decoder instances), and the captioner the
//! jobs share batches their model calls (clipcap-core's batch.rs), so N lanes keep N captions in
//! flight.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs jobs `0..jobs`, each on the next free lane, and hands each result to `done` in job order as
/// soon as it and every job before it have finished.
pub fn run<L: Send, T: Send>(
    lanes: &mut [L],
    jobs: usize,
    job: impl Fn(&mut L, usize) -> T + Sync,
    done: impl FnMut(usize, T) + Send,
) {
    let next = AtomicUsize::new(0);
    // Finished results waiting for an earlier job, and the next job `done` is owed.
    let ready = Mutex::new((0usize, BTreeMap::new(), done));
    std::thread::scope(|scope| {
        for lane in lanes.iter_mut() {
            let (next, ready, job) = (&next, &ready, &job);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs {
                        return;
                    }
                    let result = job(lane, i);
                    let mut guard = ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let (owed, waiting, done) = &mut *guard;
                    waiting.insert(i, result);
                    while let Some(result) = waiting.remove(owed) {
                        done(*owed, result);
                        *owed += 1;
                    }
                }
            });
        }
    });
}

//! Captions decoded together: every caption in flight shares the language model's calls.
//!
//! One thread owns the [`LanguageModel`]. A caption talks to it through an [`LmSession`], whose
//! `start` and `step` block until the thread has run them. The thread collects what the sessions ask
//! (until every open session has asked, `max_batch` rows are waiting, or `max_wait` has passed since
//! the first request) and serves it in as few calls as it can: all prefix passes in one call, all
//! token steps in another, each caption with its own rows (beams) and its own length. Captions join
//! and leave between steps. A step is memory-bound (each call reads every weight once), so a call of
//! four captions costs little more than a call of one.
//!
//! Decoders see none of this: a session answers `logits`, `hidden` and `batch` for its own rows only,
//! so the plugin ABI is unchanged. With [`Padding::Full`] (the default) those numbers are the very
//! ones the caption would get alone, so its tokens do not depend on what shared its calls.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bundle::LanguageModelSpec;
use crate::lm::{Block, LanguageModel, LmError, Padding, RowRef, StepError};

/// How captions share calls.
#[derive(Debug, Clone)]
pub struct Batching {
    /// The most rows (sequences: a beam search has one per beam) a call takes, unless one caption
    /// alone has more.
    pub max_batch: usize,
    /// How long a call waits for sessions that have not asked yet.
    pub max_wait: Duration,
    /// How the rows of a step are padded to one length.
    pub padding: Padding,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_batch: 8,
            max_wait: Duration::from_millis(2),
            padding: Padding::Full,
        }
    }
}

/// Language-model calls so far and the rows they decoded: rows over calls is the batch a call had
/// on average.
#[derive(Debug, Default)]
pub struct BatchStats {
    pub calls: AtomicU64,
    pub rows: AtomicU64,
}

type Id = u64;
type Reply = Result<Outputs, LmError>;

enum Msg {
    Open { id: Id, reply: Sender<Reply> },
    Close(Id),
    Work { id: Id, work: Work },
}

enum Work {
    Start(Vec<f32>),
    Step { parents: Vec<usize>, tokens: Vec<u32> },
}

impl Work {
    fn rows(&self) -> usize {
        match self {
            Work::Start(_) => 1,
            Work::Step { tokens, .. } => tokens.len(),
        }
    }
}

/// A session's share of a call.
struct Outputs {
    rows: usize,
    len: usize,
    new: usize,
    logits: Vec<f32>,
    hidden: Vec<f32>,
}

/// The language model behind its batching thread.
pub struct BatchedLm {
    tx: Option<Sender<Msg>>,
    next_id: AtomicU64,
    spec: LanguageModelSpec,
    prefix_length: usize,
    stats: Arc<BatchStats>,
    thread: Option<JoinHandle<()>>,
}

impl BatchedLm {
    pub fn spawn(lm: LanguageModel, batching: Batching) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let (spec, prefix_length) = (lm.spec().clone(), lm.prefix_length());
        if !lm.batches_captions() {
            tracing::info!(
                "this bundle is format 1: one caption per language-model call (clipcap-export upgrade makes it batch)"
            );
        }
        let stats = Arc::new(BatchStats::default());
        let counted = Arc::clone(&stats);
        let thread = std::thread::Builder::new().name("lm-batch".into()).spawn(move || {
            Scheduler {
                lm,
                batching,
                stats: counted,
                clients: HashMap::new(),
                pending: Vec::new(),
            }
            .run(rx)
        })?;
        Ok(BatchedLm {
            tx: Some(tx),
            next_id: AtomicU64::new(0),
            spec,
            prefix_length,
            stats,
            thread: Some(thread),
        })
    }

    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }

    pub fn spec(&self) -> &LanguageModelSpec {
        &self.spec
    }

    pub fn prefix_length(&self) -> usize {
        self.prefix_length
    }

    /// A new caption's connection; it has no sequences until [`LmSession::start`].
    pub fn session(&self) -> LmSession<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = mpsc::channel();
        let tx = self.tx.clone().expect("present until drop");
        // A send fails only when the thread is gone; the session's calls then report it.
        let _ = tx.send(Msg::Open { id, reply });
        LmSession {
            lm: self,
            id,
            tx,
            rx,
            rows: 0,
            len: 0,
            new: 0,
            logits: Vec::new(),
            hidden: Vec::new(),
        }
    }
}

impl Drop for BatchedLm {
    fn drop(&mut self) {
        // Sessions borrow `self`, so none is left: dropping the last sender ends the thread.
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One caption's sequences: the outputs of its last call, and the way to the next.
pub struct LmSession<'a> {
    lm: &'a BatchedLm,
    id: Id,
    tx: Sender<Msg>,
    rx: Receiver<Reply>,
    rows: usize,
    /// Positions processed so far (prefix plus tokens), the same for every sequence.
    len: usize,
    /// Positions the last call added (the prefix after `start`, one after a step).
    new: usize,
    logits: Vec<f32>,
    hidden: Vec<f32>,
}

impl LmSession<'_> {
    pub fn spec(&self) -> &LanguageModelSpec {
        &self.lm.spec
    }

    /// Number of live sequences.
    pub fn batch(&self) -> usize {
        self.rows
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Next-token logits of sequence `seq` [vocab_size].
    pub fn logits(&self, seq: usize) -> &[f32] {
        let v = self.lm.spec.vocab_size;
        &self.logits[seq * v..(seq + 1) * v]
    }

    /// Last-layer hidden state of sequence `seq` at its last position [width].
    pub fn hidden(&self, seq: usize) -> &[f32] {
        let added = self.added_hidden(seq);
        &added[added.len() - self.lm.spec.width..]
    }

    /// Last-layer states of every position the last call added to `seq` [new, width]: the whole
    /// prefix after `start`, one position after a step.
    pub fn added_hidden(&self, seq: usize) -> &[f32] {
        let per_seq = self.new * self.lm.spec.width;
        &self.hidden[seq * per_seq..(seq + 1) * per_seq]
    }

    /// The prefix pass: one sequence, the image prefix [prefix_length, width] flattened.
    pub fn start(&mut self, prefix: &[f32]) -> Result<(), LmError> {
        let (k, d) = (self.lm.prefix_length, self.lm.spec.width);
        if prefix.len() != k * d {
            return Err(StepError::Prefix {
                got: prefix.len(),
                positions: k,
                width: d,
            }
            .into());
        }
        self.call(Work::Start(prefix.to_vec()))
    }

    /// Sequence `i` of the new batch is old sequence `parents[i]` followed by `tokens[i]`. A refused or
    /// failed step leaves the sequences as they were.
    pub fn step(&mut self, parents: &[usize], tokens: &[u32]) -> Result<(), LmError> {
        let n = parents.len();
        if n == 0 || n != tokens.len() {
            return Err(StepError::Count {
                parents: n,
                tokens: tokens.len(),
            }
            .into());
        }
        if let Some(&parent) = parents.iter().find(|&&p| p >= self.rows) {
            return Err(StepError::Parent {
                parent,
                batch: self.rows,
            }
            .into());
        }
        let spec = &self.lm.spec;
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= spec.vocab_size) {
            return Err(StepError::Token {
                token,
                vocab: spec.vocab_size,
            }
            .into());
        }
        if self.len + 1 > spec.max_positions {
            return Err(StepError::Positions(spec.max_positions).into());
        }
        self.call(Work::Step {
            parents: parents.to_vec(),
            tokens: tokens.to_vec(),
        })
    }

    fn call(&mut self, work: Work) -> Result<(), LmError> {
        self.tx
            .send(Msg::Work { id: self.id, work })
            .map_err(|_| LmError::Stopped)?;
        let out = self.rx.recv().map_err(|_| LmError::Stopped)??;
        (self.rows, self.len, self.new, self.logits, self.hidden) =
            (out.rows, out.len, out.new, out.logits, out.hidden);
        Ok(())
    }
}

impl Drop for LmSession<'_> {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Close(self.id));
    }
}

/// Where a session's sequences are: rows from `first` on of `block`, each `len` long.
struct Place {
    block: Rc<Block>,
    first: usize,
    len: usize,
}

struct Client {
    reply: Sender<Reply>,
    place: Option<Place>,
}

struct Scheduler {
    lm: LanguageModel,
    batching: Batching,
    stats: Arc<BatchStats>,
    clients: HashMap<Id, Client>,
    pending: Vec<(Id, Work)>,
}

impl Scheduler {
    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            if self.pending.is_empty() {
                match rx.recv() {
                    Ok(msg) => self.take(msg),
                    Err(_) => return,
                }
                continue;
            }
            let deadline = Instant::now() + self.batching.max_wait;
            while self.pending.len() < self.clients.len() && self.pending_rows() < self.batching.max_batch {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(msg) => self.take(msg),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            self.serve();
        }
    }

    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Open { id, reply } => {
                self.clients.insert(id, Client { reply, place: None });
            }
            Msg::Close(id) => {
                self.clients.remove(&id);
            }
            Msg::Work { id, work } => self.pending.push((id, work)),
        }
    }

    fn pending_rows(&self) -> usize {
        self.pending.iter().map(|(_, w)| w.rows()).sum()
    }

    /// Runs everything pending: the prefix passes, then the steps, each in calls of at most
    /// `max_batch` rows.
    fn serve(&mut self) {
        let (mut starts, mut steps) = (Vec::new(), Vec::new());
        for (id, work) in std::mem::take(&mut self.pending) {
            match work {
                Work::Start(prefix) => starts.push((id, prefix)),
                Work::Step { parents, tokens } => steps.push((id, parents, tokens)),
            }
        }
        for call in starts.chunks(self.batching.max_batch.max(1)) {
            self.prefill(call);
        }
        // Sessions that shared the last call come in its order, so a call like the last one binds
        // its cache as it is.
        let key = |id: &Id| {
            self.clients
                .get(id)
                .and_then(|c| c.place.as_ref())
                .map(|p| (Rc::as_ptr(&p.block) as usize, p.first))
        };
        steps.sort_by_key(|(id, _, _)| key(id));
        let mut call: Vec<(Id, Vec<usize>, Vec<u32>)> = Vec::new();
        for step in steps {
            let rows: usize = call.iter().map(|(_, _, t)| t.len()).sum();
            let full = rows + step.2.len() > self.batching.max_batch || !self.lm.batches_captions();
            if !call.is_empty() && full {
                self.step(std::mem::take(&mut call));
            }
            call.push(step);
        }
        if !call.is_empty() {
            self.step(call);
        }
    }

    fn prefill(&mut self, call: &[(Id, Vec<f32>)]) {
        let prefixes: Vec<f32> = call.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        match self.lm.prefill(prefixes, call.len()) {
            Ok(out) => self.deliver(call.iter().map(|(id, _)| (*id, 1, 0)), out),
            Err(e) => self.fail(call.iter().map(|(id, _)| *id), e),
        }
    }

    fn step(&mut self, call: Vec<(Id, Vec<usize>, Vec<u32>)>) {
        let mut places = Vec::with_capacity(call.len());
        let mut served = Vec::with_capacity(call.len());
        for (id, parents, tokens) in call {
            match self.clients.get(&id).and_then(|c| c.place.as_ref()) {
                Some(p) => {
                    served.push((id, tokens.len(), p.len));
                    places.push((Rc::clone(&p.block), p.first, p.len, parents, tokens));
                }
                None => self.fail([id], StepError::Parent { parent: 0, batch: 0 }.into()),
            }
        }
        if places.is_empty() {
            return;
        }
        let rows: Vec<RowRef> = places
            .iter()
            .flat_map(|(block, first, len, parents, _)| {
                parents.iter().map(move |&p| RowRef {
                    block,
                    row: first + p,
                    len: *len,
                })
            })
            .collect();
        let tokens: Vec<u32> = places.iter().flat_map(|(.., t)| t.iter().copied()).collect();
        match self.lm.step(&rows, &tokens, self.batching.padding) {
            Ok(out) => self.deliver(served.into_iter(), out),
            Err(e) => self.fail(served.into_iter().map(|(id, ..)| id), e),
        }
    }

    /// Hands each session (id, its rows, its length before the call) its share of `out`, and moves
    /// its sequences into the new block.
    fn deliver(&mut self, sessions: impl Iterator<Item = (Id, usize, usize)>, out: crate::lm::RunOutput) {
        let (v, d, new) = (self.lm.spec().vocab_size, self.lm.spec().width, out.new);
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.stats.rows.fetch_add(out.block.rows() as u64, Ordering::Relaxed);
        let block = Rc::new(out.block);
        let mut first = 0;
        for (id, rows, len) in sessions {
            let Some(client) = self.clients.get_mut(&id) else {
                first += rows;
                continue;
            };
            let len = len + new;
            let outputs = Outputs {
                rows,
                len,
                new,
                logits: out.logits[first * v..(first + rows) * v].to_vec(),
                hidden: out.hidden[first * new * d..(first + rows) * new * d].to_vec(),
            };
            client.place = Some(Place {
                block: Rc::clone(&block),
                first,
                len,
            });
            let _ = client.reply.send(Ok(outputs));
            first += rows;
        }
    }

    /// Every session of a failed call gets the error; their sequences stay as they were.
    fn fail(&mut self, ids: impl IntoIterator<Item = Id>, error: LmError) {
        let error = Arc::new(error);
        for id in ids {
            if let Some(client) = self.clients.get(&id) {
                let _ = client.reply.send(Err(LmError::Shared(Arc::clone(&error))));
            }
        }
    }
}

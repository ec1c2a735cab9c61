//! [`Batch`]: continuous batching of one-shot requests. Up to `max_batch` requests decode
//! together — each decode step is **one** submit for all of them, reading every weight matrix
//! once ([`TextDecoder::step_batch`](crate::text::TextDecoder::step_batch)) — and a request
//! that finishes frees its slot for the next queued one at once, without draining the batch.
//! Every request's reply is exactly the reply [`Model::generate`] gives it alone (same tokens,
//! same text), greedy or sampled with its own seed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Instant;

use super::channel::{self, Flow, Notify, Receiver};

use super::sampler::Sampler;
use super::state::{Buffers, State, bufs};
use super::step::{Generation, PendingTurn, Turn, encode_done};
use super::{CancelToken, Reply, Request};
use crate::error::{Error, Result};
use crate::gpu::GpuTensor;
use crate::model::Model;
use crate::model::media;
use crate::model::vision::ImagePatches;
use crate::prompt::render::prepare_image;
use crate::model::text::{BatchSeq, Workspace};

/// The id [`Batch::submit`] gives a request; its reply comes back with it.
pub type RequestId = u64;

/// A running request: its own KV cache (sized for it, as [`Model::generate`] does) and step
/// machine.
struct Slot {
    id: RequestId,
    st: State,
    g: Generation,
    cancel: CancelToken,
}

/// Continuous batching of one-shot requests on one model (see the module docs).
///
/// ```no_run
/// use gemma_wgpu::{GenerationOptions, Model, Request};
/// let model = Model::load("path/to/gemma-4-E2B-it")?;
/// let mut batch = model.batch(8)?;
/// let opts = GenerationOptions::default().greedy().with_max_new_tokens(64);
/// for path in ["a.jpg", "b.jpg", "c.jpg"] {
///     batch.submit(Request::caption(path).with_options(opts.clone()));
/// }
/// // Replies arrive in completion order, each with the id `submit` returned.
/// for (id, reply) in batch.by_ref() {
///     println!("{id}: {}", reply?.text);
/// }
/// # Ok::<(), gemma_wgpu::Error>(())
/// ```
pub struct Batch {
    model: Model,
    max: usize,
    ws: Workspace,
    queue: VecDeque<(RequestId, Request, CancelToken)>,
    active: Vec<Slot>,
    done: VecDeque<(RequestId, Result<Reply>)>,
    next_id: RequestId,
    steps: u64,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("max_batch", &self.max)
            .field("queued", &self.queue.len())
            .field("active", &self.active.len())
            .field("done", &self.done.len())
            .finish()
    }
}

impl Model {
    /// A continuous batch of up to `max_batch` concurrently decoding requests (1 to 16; see
    /// [`Batch`]). Allocates the batch's decode workspace; each request allocates its own KV
    /// cache when it starts and frees it when it ends.
    pub fn batch(&self, max_batch: usize) -> Result<Batch> {
        self.context().check_health()?;
        let most = crate::gpu::ops::MATVEC_MAX_ROWS;
        if max_batch == 0 || max_batch > most {
            return Err(Error::InvalidArgument(format!(
                "max_batch = {max_batch}: a batch decodes 1 to {most} requests at once"
            )));
        }
        let text = self.text();
        let ws = text.batch_workspace(max_batch, self.options().max_context)?;
        let max = text.max_batch(&ws).min(max_batch);
        Ok(Batch {
            model: self.clone(),
            max,
            ws,
            queue: VecDeque::new(),
            active: Vec::new(),
            done: VecDeque::new(),
            next_id: 0,
            steps: 0,
        })
    }
}

impl Batch {
    /// Queues a one-shot request (as [`Model::generate`] runs it); it starts as soon as a slot
    /// is free. Returns the id its reply comes back with.
    pub fn submit(&mut self, req: impl Into<Request>) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push_back((id, req.into(), CancelToken::new()));
        id
    }

    /// Queues `req` under a caller-chosen id (the worker of a [`BatchHandle`]).
    fn submit_as(&mut self, id: RequestId, req: Request) {
        self.queue.push_back((id, req, CancelToken::new()));
    }

    /// Moves this batch to a worker thread: requests are then submitted and cancelled from
    /// any thread through the returned [`BatchHandle`], and replies arrive through it (polled
    /// once per UI frame, blocked on, or awaited), as the desktop API's
    /// [`GenerationHandle`](super::GenerationHandle) delivers one generation's events.
    pub fn spawn(self) -> BatchHandle {
        BatchHandle::spawn(self)
    }

    /// Cancels a queued or running request: a queued one is answered with an error when its
    /// turn comes (it never runs); a running one ends before its next token, its reply with
    /// [`FinishReason::Cancelled`](super::FinishReason::Cancelled) and the text so far.
    /// Returns false for an unknown or already finished id.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        if let Some(s) = self.active.iter().find(|s| s.id == id) {
            s.cancel.cancel();
            return true;
        }
        match self.queue.iter().find(|(i, ..)| *i == id) {
            Some((_, _, c)) => {
                c.cancel();
                true
            }
            None => false,
        }
    }

    /// The most requests that decode at once.
    pub fn max_batch(&self) -> usize {
        self.max
    }

    /// Requests submitted and not yet answered (queued, running, or answered but not
    /// received).
    pub fn pending(&self) -> usize {
        self.queue.len() + self.active.len() + self.done.len()
    }

    /// Requests decoding now.
    pub fn running(&self) -> usize {
        self.active.len()
    }

    /// Batched decode steps run so far (each one submit).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The next reply in completion order, running the batch until one is ready; `None` when
    /// nothing is pending.
    pub fn next_reply(&mut self) -> Option<(RequestId, Result<Reply>)> {
        while self.done.is_empty() && !(self.queue.is_empty() && self.active.is_empty()) {
            self.step();
        }
        self.done.pop_front()
    }

    /// Runs every pending request to its end; the replies in submission order.
    pub fn run_all(&mut self) -> Vec<(RequestId, Result<Reply>)> {
        let mut all: Vec<_> = std::iter::from_fn(|| self.next_reply()).collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }

    /// One round: queued requests start in the free slots (their images encoded together,
    /// then each prompt's prefill in its own submits, and its first token), then one batched
    /// decode step advances every running request by a token. Finished requests move to the
    /// replies.
    pub fn step(&mut self) {
        self.admit();
        self.decode();
        self.retire();
    }

    /// Starts queued requests while slots are free.
    fn admit(&mut self) {
        let mut starting: Vec<(RequestId, CancelToken, PendingTurn)> = Vec::new();
        while self.active.len() + starting.len() < self.max {
            let Some((id, req, cancel)) = self.queue.pop_front() else {
                break;
            };
            if cancel.take() {
                self.done.push_back((id, Err(cancelled_before_start())));
                continue;
            }
            match PendingTurn::new(&self.model, req) {
                Ok(p) => starting.push((id, cancel, p)),
                Err(e) => self.done.push_back((id, Err(e))),
            }
        }
        let features = self.encode_together(&mut starting);
        for ((id, cancel, pending), features) in starting.into_iter().zip(features) {
            let started = features.and_then(|(f, encode_s)| {
                let turn = pending.finish(&self.model, None, &[], &[], f, encode_s)?;
                self.start(turn, cancel.clone())
            });
            match started {
                Ok((st, g)) => self.active.push(Slot { id, st, g, cancel }),
                Err(e) => self.done.push_back((id, Err(e))),
            }
        }
    }

    /// Encodes the images of the requests starting in this round together (one pass of the
    /// tower per [`MAX_PATCHES_TOGETHER`](crate::model::media::MAX_PATCHES_TOGETHER) patches
    /// across requests), giving each request its features and the time of the encode its images
    /// took part in. An image that cannot be read or prepared fails only its request; if the
    /// joint encode itself fails, each request is encoded alone so that it gets its own result.
    #[allow(clippy::type_complexity)]
    fn encode_together(
        &self,
        starting: &mut [(RequestId, CancelToken, PendingTurn)],
    ) -> Vec<Result<(Vec<GpuTensor>, f64)>> {
        let model = &self.model;
        let t0 = Instant::now();
        let prepared: Vec<Result<Vec<ImagePatches>>> = starting
            .iter_mut()
            .map(|(_, _, p)| {
                let images = p.take_images();
                images.iter().map(|img| prepare_image(model, img)).collect()
            })
            .collect();
        let all: Vec<&ImagePatches> = prepared.iter().flatten().flatten().collect();
        let joint = encode_done(model, t0, media::encode_each(model.vision(), all, Ok));
        match joint {
            Ok((features, elapsed)) => {
                let mut features = features.into_iter();
                prepared
                    .into_iter()
                    .map(|p| {
                        let p = p?;
                        let s = if p.is_empty() { 0.0 } else { elapsed };
                        Ok((features.by_ref().take(p.len()).collect(), s))
                    })
                    .collect()
            }
            Err(_) => prepared
                .into_iter()
                .map(|p| {
                    let p = p?;
                    let t = Instant::now();
                    encode_done(model, t, media::encode_each(model.vision(), &p, Ok))
                })
                .collect(),
        }
    }

    /// Sets up a request on a fresh state sized for it and selects its first token.
    fn start(&self, turn: Turn, cancel: CancelToken) -> Result<(State, Generation)> {
        let model = &self.model;
        let n = turn.ids.len();
        let max_context = (n + turn.opts.max_new_tokens + 1).min(model.options().max_context);
        let mut st = State::new(model, max_context.max(n + 1))?;
        let mut g = Generation::start(model, &mut st, turn, cancel)?;
        // The first token comes from the prompt's logits (this request's own submit).
        if !g.finished()
            && let Some(None) = g.next_input(&mut st)?
        {
            let b = bufs(&mut st.bufs)?;
            let sampler = g.sampler_mut();
            let id = model
                .text()
                .select_last(&mut b.ws, |rec, sel| sampler.record(rec, sel, &b.penalty_ids))?;
            sampler.observe(model, id, &b.penalty_ids);
            // A delta (or a detokenizer error, which ends it) is in the reply's text.
            let _ = g.accept(id, &mut st);
        }
        Ok((st, g))
    }

    /// One batched decode step over the running requests that continue.
    fn decode(&mut self) {
        let model = self.model.clone();
        // Which slots feed a token now (the others ended: cancelled or a full context).
        let mut feeds: Vec<(usize, u32)> = Vec::new();
        for (i, s) in self.active.iter_mut().enumerate() {
            if s.g.finished() {
                continue;
            }
            match s.g.next_input(&mut s.st) {
                Ok(Some(Some(prev))) => feeds.push((i, prev)),
                Ok(_) => {}
                Err(e) => fail(&mut self.done, s, e),
            }
        }
        if feeds.is_empty() {
            return;
        }
        let mut parts: Vec<(&mut Sampler, &GpuTensor)> = Vec::with_capacity(feeds.len());
        let mut seqs: Vec<BatchSeq<'_>> = Vec::with_capacity(feeds.len());
        let mut fi = feeds.iter().peekable();
        for (i, s) in self.active.iter_mut().enumerate() {
            let Some(&&(_, token)) = fi.peek().filter(|(j, _)| *j == i) else {
                continue;
            };
            fi.next();
            let Some(Buffers {
                cache, penalty_ids, ..
            }) = s.st.bufs.as_mut()
            else {
                continue;
            };
            seqs.push(BatchSeq { cache, token });
            parts.push((s.g.sampler_mut(), penalty_ids));
        }
        let r = model.text().step_batch(&mut seqs, &mut self.ws, |b, rec, sel| {
            let (sampler, penalty) = &mut parts[b];
            sampler.record(rec, sel, penalty)
        });
        drop(seqs);
        drop(parts);
        self.steps += 1;
        match r {
            Ok(ids) => {
                for (&(i, _), id) in feeds.iter().zip(ids) {
                    let s = &mut self.active[i];
                    if let Some(b) = s.st.bufs.as_ref() {
                        s.g.sampler_mut().observe(&model, id, &b.penalty_ids);
                    }
                    let _ = s.g.accept(id, &mut s.st);
                }
            }
            Err(e) => {
                // Every sequence of the failed step ends with the error.
                let msg = e.to_string();
                let mut first = Some(e);
                for &(i, _) in &feeds {
                    let e = first
                        .take()
                        .unwrap_or_else(|| Error::InvalidArgument(msg.clone()));
                    let s = &mut self.active[i];
                    fail(&mut self.done, s, e);
                }
            }
        }
    }

    /// Moves the finished requests to the replies (their KV caches are freed).
    fn retire(&mut self) {
        let model = self.model.clone();
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].g.finished() || self.active[i].st.bufs.is_none() {
                let mut s = self.active.remove(i);
                if s.st.bufs.is_none() {
                    continue; // failed: its error is already in `done`
                }
                // Flush the detokenizer's tail into the text.
                while let Some(d) = s.g.next_delta(&model, &mut s.st) {
                    if d.is_err() {
                        break;
                    }
                }
                let reply = s.g.finalize(&model, &mut s.st);
                self.done.push_back((s.id, Ok(reply)));
            } else {
                i += 1;
            }
        }
    }
}

/// Ends slot `s` with the error `e` (its buffers are released; `retire` drops it).
fn fail(done: &mut VecDeque<(RequestId, Result<Reply>)>, s: &mut Slot, e: Error) {
    s.st.bufs = None;
    s.st.update_mem();
    done.push_back((s.id, Err(e)));
}

fn cancelled_before_start() -> Error {
    Error::InvalidArgument("the request was cancelled before it started".into())
}

impl Iterator for Batch {
    type Item = (RequestId, Result<Reply>);

    /// [`next_reply`](Batch::next_reply).
    fn next(&mut self) -> Option<Self::Item> {
        self.next_reply()
    }
}

/// What a [`BatchHandle`] tells its worker.
enum Command {
    Submit(RequestId, Request),
    Cancel(RequestId),
}

/// A [`Batch`] on a worker thread ([`Batch::spawn`]). `submit` and `cancel` take `&self` and
/// never block (share the handle with an `Arc`); replies come back in completion order with
/// their ids, through [`try_recv`](Self::try_recv) (a UI frame loop), [`recv`](Self::recv)
/// or as a [`Stream`](futures_core::Stream); a notify callback (e.g. egui's
/// `request_repaint`) runs after every reply. Dropping the handle stops the worker (running
/// requests are abandoned) and waits for it.
///
/// ```no_run
/// # use gemma_wgpu::{Model, Request};
/// # let model = Model::load("dir")?;
/// let batch = model.batch(8)?.spawn().with_notify(|| { /* request a repaint */ });
/// let id = batch.submit(Request::caption("photo.jpg"));
/// // Once per UI frame:
/// while let Some((done, reply)) = batch.try_recv() {
///     println!("{done} (asked {id}): {}", reply?.text);
/// }
/// # Ok::<(), gemma_wgpu::Error>(())
/// ```
pub struct BatchHandle {
    commands: Option<mpsc::Sender<Command>>,
    replies: Receiver<(RequestId, Result<Reply>)>,
    next_id: AtomicU64,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for BatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchHandle")
            .field("submitted", &self.next_id.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl BatchHandle {
    fn spawn(mut batch: Batch) -> BatchHandle {
        let (cmd_tx, cmd_rx) = mpsc::channel::<Command>();
        let (tx, rx) = channel::channel(Flow::Free);
        let thread = std::thread::Builder::new()
            .name("gemma-wgpu batch".into())
            .spawn(move || {
                loop {
                    let idle = batch.queue.is_empty() && batch.active.is_empty();
                    let cmd = if idle {
                        match cmd_rx.recv() {
                            Ok(c) => c,
                            Err(_) => return, // the handle is gone
                        }
                    } else {
                        match cmd_rx.try_recv() {
                            Ok(c) => c,
                            Err(mpsc::TryRecvError::Empty) => {
                                batch.step();
                                while let Some(r) = batch.done.pop_front() {
                                    if !tx.send(r) {
                                        return;
                                    }
                                }
                                continue;
                            }
                            Err(mpsc::TryRecvError::Disconnected) => return,
                        }
                    };
                    match cmd {
                        Command::Submit(id, req) => batch.submit_as(id, req),
                        Command::Cancel(id) => {
                            batch.cancel(id);
                        }
                    }
                }
            })
            .ok();
        BatchHandle {
            commands: thread.as_ref().map(|_| cmd_tx),
            replies: rx,
            next_id: AtomicU64::new(0),
            thread,
        }
    }

    /// Queues a request; returns its id at once. (Without a worker, because its thread
    /// could not start or it ended on a panic, nothing answers: [`recv`](Self::recv) then
    /// returns `None`.)
    pub fn submit(&self, req: impl Into<Request>) -> RequestId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = &self.commands {
            let _ = c.send(Command::Submit(id, req.into()));
        }
        id
    }

    /// Cancels a queued or running request ([`Batch::cancel`]); its reply still arrives.
    pub fn cancel(&self, id: RequestId) {
        if let Some(c) = &self.commands {
            let _ = c.send(Command::Cancel(id));
        }
    }

    /// The next reply if one is waiting (never blocks).
    pub fn try_recv(&self) -> Option<(RequestId, Result<Reply>)> {
        self.replies.try_recv()
    }

    /// The next reply, blocking until there is one; `None` once the worker has ended (it
    /// could not start, or it stopped on a panic).
    pub fn recv(&self) -> Option<(RequestId, Result<Reply>)> {
        self.replies.recv()
    }

    /// Runs `notify` after every reply from now on (on the worker thread), and once at once
    /// when replies are already waiting.
    pub fn with_notify(self, notify: impl Fn() + Send + Sync + 'static) -> Self {
        let notify: Notify = Arc::new(notify);
        if self.replies.set_notify(notify.clone()) {
            notify();
        }
        self
    }
}

impl futures_core::Stream for BatchHandle {
    type Item = (RequestId, Result<Reply>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.replies.poll_recv(cx)
    }
}

impl Drop for BatchHandle {
    fn drop(&mut self) {
        // The worker sees the closed command channel (at once when idle, else after its
        // current step) and ends.
        self.commands = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

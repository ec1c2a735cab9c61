//! Generation on a worker thread: the [`GenerationHandle`] of an application with a UI thread
//! (polled once per frame with [`try_recv`](GenerationHandle::try_recv), blocked on with
//! [`recv`](GenerationHandle::recv) or awaited: it is a [`Stream`](futures_core::Stream) of
//! [`GenerationEvent`]s; a notify callback such as egui's `request_repaint` runs after every
//! event), and the worker behind it and behind [`ReplyStream`](super::ReplyStream).

use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use super::channel::{self, Flow, Notify, Receiver};
use super::{CancelToken, Reply};
use crate::error::{Error, Result};

/// An event of a background generation.
#[derive(Debug)]
pub enum GenerationEvent {
    /// The next piece of the reply's text (complete UTF-8; stop strings held back).
    Delta(String),
    /// The generation ended: the whole reply, or the error that stopped it. Always the last
    /// event.
    Done(Result<Reply>),
}

/// The work of a worker thread: gets its cancel token, the published token counter and a
/// delta sink (which says `Break` once the consumer is gone).
pub(crate) type Work = Box<
    dyn FnOnce(
            CancelToken,
            Arc<AtomicUsize>,
            &mut dyn FnMut(&str) -> ControlFlow<()>,
        ) -> Result<Reply>
        + Send,
>;

/// A generation running on its own thread, delivering [`GenerationEvent`]s through the
/// crate's channel.
pub(crate) struct Worker {
    pub(crate) events: Option<Receiver<GenerationEvent>>,
    pub(crate) cancel: CancelToken,
    pub(crate) tokens: Arc<AtomicUsize>,
    pub(crate) thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `work` on a new thread; with [`Flow::OnDemand`] it computes a delta only once
    /// the consumer asks for the next one.
    pub(crate) fn spawn(flow: Flow, work: Work) -> Worker {
        let (tx, rx) = channel::channel(flow);
        let cancel = CancelToken::new();
        let tokens = Arc::new(AtomicUsize::new(0));
        let (c2, t2) = (cancel.clone(), tokens.clone());
        let spawned = std::thread::Builder::new()
            .name("gemma-wgpu generation".into())
            .spawn(move || {
                let mut sink = |d: &str| {
                    if tx.send(GenerationEvent::Delta(d.to_string())) && tx.wait_demand() {
                        ControlFlow::Continue(())
                    } else {
                        ControlFlow::Break(())
                    }
                };
                // A panic (of the notify callback, which runs inside `sink`, or of the engine)
                // ends the generation with an error instead of a silently closed channel; the
                // session's state is repaired when it is next locked (`state::lock`).
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    work(c2, t2, &mut sink)
                }))
                .unwrap_or_else(|p| Err(Error::Panicked(panic_message(p.as_ref()))));
                tx.finish(GenerationEvent::Done(r));
            });
        let (events, thread) = match spawned {
            Ok(t) => (rx, Some(t)),
            Err(e) => (
                channel::ready(GenerationEvent::Done(Err(Error::InvalidArgument(format!(
                    "cannot start the generation thread: {e}"
                ))))),
                None,
            ),
        };
        Worker {
            events: Some(events),
            cancel,
            tokens,
            thread,
        }
    }

    pub(crate) fn events(&self) -> &Receiver<GenerationEvent> {
        // Only `None` while being dropped.
        self.events.as_ref().expect("the worker's channel")
    }

    /// Cancels unless the generation has ended.
    pub(crate) fn cancel(&self) {
        if !self.events().is_closed() {
            self.cancel.cancel();
        }
    }
}

/// A generation running on a worker thread (from [`ChatSession::spawn`](super::ChatSession::spawn)
/// or [`Model::spawn`](crate::Model::spawn)).
///
/// Events arrive in order: [`GenerationEvent::Delta`]s, then one [`GenerationEvent::Done`].
/// [`cancel`](Self::cancel) stops the generation within one token (the `Done` reply then has
/// [`FinishReason::Cancelled`](super::FinishReason::Cancelled)); dropping the handle before `Done` also cancels. Nothing here
/// blocks except [`recv`](Self::recv) and [`wait`](Self::wait); the GPU work and its waits
/// happen on the worker thread.
///
/// ```no_run
/// # use gemma_wgpu::{GenerationEvent, GenerationOptions, Model, Request};
/// # let model = Model::load("dir")?;
/// let handle = model
///     .spawn(Request::caption("photo.jpg").with_options(GenerationOptions::default()))
///     .with_notify(|| { /* e.g. egui_ctx.request_repaint() */ });
/// // Once per UI frame:
/// while let Some(event) = handle.try_recv() {
///     match event {
///         GenerationEvent::Delta(text) => print!("{text}"),
///         GenerationEvent::Done(reply) => println!(" [{:?}]", reply?.finish),
///     }
/// }
/// # Ok::<(), gemma_wgpu::Error>(())
/// ```
pub struct GenerationHandle {
    worker: Worker,
}

impl std::fmt::Debug for GenerationHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationHandle")
            .field("tokens", &self.tokens_generated())
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl GenerationHandle {
    /// Starts `work` on a worker thread.
    pub(crate) fn spawn(work: Work) -> GenerationHandle {
        GenerationHandle {
            worker: Worker::spawn(Flow::Free, work),
        }
    }

    /// Runs `notify` after every event from now on (on the generating thread), and once at
    /// once when events are already waiting. A UI passes its repaint request here.
    pub fn with_notify(self, notify: impl Fn() + Send + Sync + 'static) -> Self {
        let notify: Notify = Arc::new(notify);
        if self.worker.events().set_notify(notify.clone()) {
            notify();
        }
        self
    }

    /// The next event if one is waiting (never blocks; for a UI frame loop). `None` while the
    /// generation runs without new text, and after `Done` was received.
    pub fn try_recv(&self) -> Option<GenerationEvent> {
        self.worker.events().try_recv()
    }

    /// The next event, blocking until there is one; `None` after `Done` was received.
    pub fn recv(&self) -> Option<GenerationEvent> {
        self.worker.events().recv()
    }

    /// Blocks until the generation ends and returns the reply (discarding undelivered deltas).
    pub fn wait(self) -> Result<Reply> {
        while let Some(e) = self.recv() {
            if let GenerationEvent::Done(r) = e {
                return r;
            }
        }
        Err(Error::InvalidArgument(
            "the reply of this generation was already received".into(),
        ))
    }

    /// Requests cancellation: the generation stops before its next token. A no-op once the
    /// generation has ended.
    pub fn cancel(&self) {
        self.worker.cancel();
    }

    /// Tokens generated so far (stop token included).
    pub fn tokens_generated(&self) -> usize {
        self.worker.tokens.load(Ordering::SeqCst)
    }

    /// Whether the generation has ended (its `Done` event is queued or was received).
    pub fn is_finished(&self) -> bool {
        self.worker.events().is_closed()
    }
}

impl futures_core::Stream for GenerationHandle {
    type Item = GenerationEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.worker.events().poll_recv(cx)
    }
}

impl Drop for GenerationHandle {
    fn drop(&mut self) {
        // The worker sees the dropped channel at its next delta; the cancel stops it sooner.
        self.worker.cancel();
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

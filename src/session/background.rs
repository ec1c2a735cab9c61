//! Generation on a worker thread for applications with a UI thread: a [`GenerationHandle`]
//! delivers the reply's text deltas and the final [`Reply`] through a channel that the UI polls
//! once per frame ([`GenerationHandle::try_recv`]), blocks on ([`GenerationHandle::recv`]) or
//! awaits (it is a [`Stream`](futures_core::Stream)); a notify callback (e.g. egui's
//! `request_repaint`) runs after every event.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::{
    CAPTION_PROMPT, CancelToken, ChatSession, FinishReason, Generation, ImageInput, Reply, lock,
};
use crate::chat::Message;
use crate::error::{Error, Result};
use crate::generation::GenerationOptions;
use crate::model::Model;

/// An event of a background generation.
#[derive(Debug)]
pub enum GenerationEvent {
    /// The next piece of the reply's text (complete UTF-8; stop strings held back).
    Delta(String),
    /// The generation ended: the whole reply, or the error that stopped it. Always the last
    /// event.
    Done(Result<Reply>),
}

/// A callback run after every event (on the generating thread).
type Notify = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct Channel {
    events: VecDeque<GenerationEvent>,
    /// `Done` was queued (the worker has ended).
    finished: bool,
    /// `Done` was delivered to the consumer.
    delivered: bool,
    /// The handle was dropped.
    dropped: bool,
    waker: Option<Waker>,
    notify: Option<Notify>,
}

#[derive(Default)]
struct Shared {
    channel: Mutex<Channel>,
    cv: Condvar,
    tokens: Arc<AtomicUsize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Channel> {
        self.channel.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event and wakes the consumer; false when the handle is gone.
    fn push(&self, event: GenerationEvent) -> bool {
        let mut ch = self.lock();
        if matches!(event, GenerationEvent::Done(_)) {
            ch.finished = true;
        }
        ch.events.push_back(event);
        let waker = ch.waker.take();
        let notify = ch.notify.clone();
        let alive = !ch.dropped;
        drop(ch);
        self.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
        if let Some(n) = notify {
            n();
        }
        alive
    }
}

/// A generation running on a worker thread (from [`ChatSession::send_background`],
/// [`Model::caption_background`] or [`Model::ask_background`]).
///
/// Events arrive in order: [`GenerationEvent::Delta`]s, then one [`GenerationEvent::Done`].
/// [`cancel`](Self::cancel) stops the generation within one token (the `Done` reply then has
/// [`FinishReason::Cancelled`]); dropping the handle before `Done` also cancels. Nothing here
/// blocks except [`recv`](Self::recv) and [`wait`](Self::wait); the GPU work and its waits
/// happen on the worker thread.
///
/// ```no_run
/// # use gemma_wgpu::{Model, GenerationOptions};
/// # use gemma_wgpu::session::GenerationEvent;
/// # let model = Model::load("dir")?;
/// let handle = model
///     .caption_background("photo.jpg", &GenerationOptions::default())
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
    shared: Arc<Shared>,
    cancel: CancelToken,
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
    /// Starts `work` on a worker thread; it gets the handle's cancel token, the published
    /// token counter and a delta sink (which says `Break` once the handle is dropped).
    fn spawn(
        work: impl FnOnce(
            CancelToken,
            Arc<AtomicUsize>,
            &mut dyn FnMut(&str) -> ControlFlow<()>,
        ) -> Result<Reply>
        + Send
        + 'static,
    ) -> GenerationHandle {
        let shared = Arc::new(Shared::default());
        let cancel = CancelToken::new();
        let (s2, c2) = (shared.clone(), cancel.clone());
        let spawned = std::thread::Builder::new()
            .name("gemma-wgpu generation".into())
            .spawn(move || {
                let mut sink = |d: &str| {
                    if s2.push(GenerationEvent::Delta(d.to_string())) {
                        ControlFlow::Continue(())
                    } else {
                        ControlFlow::Break(())
                    }
                };
                let r = work(c2, s2.tokens.clone(), &mut sink);
                s2.push(GenerationEvent::Done(r));
            });
        if let Err(e) = spawned {
            shared.push(GenerationEvent::Done(Err(Error::InvalidArgument(format!(
                "cannot start the generation thread: {e}"
            )))));
        }
        GenerationHandle { shared, cancel }
    }

    /// Runs `notify` after every event from now on (on the generating thread), and once at
    /// once when events are already waiting. A UI passes its repaint request here.
    pub fn with_notify(self, notify: impl Fn() + Send + Sync + 'static) -> Self {
        let notify: Notify = Arc::new(notify);
        let mut ch = self.shared.lock();
        ch.notify = Some(notify.clone());
        let pending = !ch.events.is_empty();
        drop(ch);
        if pending {
            notify();
        }
        self
    }

    /// The next event if one is waiting (never blocks; for a UI frame loop). `None` while the
    /// generation runs without new text, and after `Done` was received.
    pub fn try_recv(&self) -> Option<GenerationEvent> {
        let mut ch = self.shared.lock();
        let e = ch.events.pop_front();
        if matches!(e, Some(GenerationEvent::Done(_))) {
            ch.delivered = true;
        }
        e
    }

    /// The next event, blocking until there is one; `None` after `Done` was received.
    pub fn recv(&self) -> Option<GenerationEvent> {
        let mut ch = self.shared.lock();
        loop {
            if let Some(e) = ch.events.pop_front() {
                if matches!(e, GenerationEvent::Done(_)) {
                    ch.delivered = true;
                }
                return Some(e);
            }
            if ch.delivered {
                return None;
            }
            ch = self.shared.cv.wait(ch).unwrap_or_else(|e| e.into_inner());
        }
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
        if !self.shared.lock().finished {
            self.cancel.cancel();
        }
    }

    /// Tokens generated so far (stop token included).
    pub fn tokens_generated(&self) -> usize {
        self.shared.tokens.load(Ordering::SeqCst)
    }

    /// Whether the generation has ended (its `Done` event is queued or was received).
    pub fn is_finished(&self) -> bool {
        self.shared.lock().finished
    }
}

impl futures_core::Stream for GenerationHandle {
    type Item = GenerationEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut ch = self.shared.lock();
        if let Some(e) = ch.events.pop_front() {
            if matches!(e, GenerationEvent::Done(_)) {
                ch.delivered = true;
            }
            return Poll::Ready(Some(e));
        }
        if ch.delivered {
            return Poll::Ready(None);
        }
        ch.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for GenerationHandle {
    fn drop(&mut self) {
        let mut ch = self.shared.lock();
        ch.dropped = true;
        if !ch.finished {
            self.cancel.cancel();
        }
    }
}

impl ChatSession {
    /// Sends a user turn and generates the reply on a worker thread; returns at once.
    ///
    /// The [`GenerationHandle`] streams the text deltas and then the [`Reply`]; its
    /// [`cancel`](GenerationHandle::cancel) (or the session's
    /// [`cancel_token`](ChatSession::cancel_token)) stops it within one token. Other calls on
    /// this session wait until the generation has ended; the reply joins the conversation as
    /// with [`send`](ChatSession::send).
    pub fn send_background(
        &mut self,
        text: &str,
        images: Vec<ImageInput>,
        opts: &GenerationOptions,
    ) -> GenerationHandle {
        let model = self.model.clone();
        let state = self.state.clone();
        let system = self.system.clone();
        let user = Self::user_message(text, images.len());
        let opts = opts.clone();
        let session_cancel = self.cancel.clone();
        GenerationHandle::spawn(move |cancel, published, on_delta| {
            let mut st = lock(&state);
            let mut g = Generation::begin(
                &model,
                &mut st,
                system.as_deref(),
                user,
                images,
                &opts,
                session_cancel,
            )?;
            g.cancel_also = Some(cancel);
            g.published = Some(published);
            while let Some(d) = g.next_delta(&model, &mut st) {
                match d {
                    Ok(d) => {
                        if on_delta(&d).is_break() {
                            g.finish = Some(FinishReason::Cancelled);
                            g.flushed = true;
                            break;
                        }
                    }
                    Err(e) => {
                        g.finalize(&model, &mut st);
                        return Err(e);
                    }
                }
            }
            Ok(g.finalize(&model, &mut st))
        })
    }
}

impl Model {
    /// [`caption_with`](Model::caption_with) on a worker thread: returns at once with a
    /// [`GenerationHandle`] that streams the caption (same text as `caption_with` for the same
    /// image and options).
    pub fn caption_background(
        &self,
        image: impl Into<ImageInput>,
        opts: &GenerationOptions,
    ) -> GenerationHandle {
        self.generate_background(CAPTION_PROMPT, image.into(), opts)
    }

    /// [`ask_with`](Model::ask_with) on a worker thread (see
    /// [`caption_background`](Model::caption_background)).
    pub fn ask_background(
        &self,
        image: impl Into<ImageInput>,
        question: &str,
        opts: &GenerationOptions,
    ) -> GenerationHandle {
        self.generate_background(question, image.into(), opts)
    }

    fn generate_background(
        &self,
        prompt: &str,
        image: ImageInput,
        opts: &GenerationOptions,
    ) -> GenerationHandle {
        let model = self.clone();
        let user = Message::user_with_images(1, prompt);
        let opts = opts.clone();
        GenerationHandle::spawn(move |cancel, published, on_delta| {
            model.generate_hooked(
                None,
                user,
                vec![image],
                &opts,
                Some(cancel),
                Some(published),
                on_delta,
            )
        })
    }
}

//! The one channel behind every stream and handle of the crate ([`ReplyStream`](super::ReplyStream),
//! [`GenerationHandle`](super::GenerationHandle), [`LoadHandle`](crate::LoadHandle)): a queue
//! between one producing worker thread and one consumer that may poll without blocking
//! ([`Receiver::try_recv`]), block ([`Receiver::recv`]) or be an async task
//! ([`Receiver::poll_recv`] wakes it), with an optional notify callback run after every item.
//!
//! In [`Flow::OnDemand`] the producer asks before each piece of work whether the consumer wants
//! another item ([`Sender::wait_demand`]), so it never runs ahead of the consumer: a stream then
//! behaves like an iterator driven on the consumer's thread.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A callback run after every item (on the producing thread).
pub(crate) type Notify = Arc<dyn Fn() + Send + Sync>;

/// Whether the producer runs ahead of the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// The producer queues items as fast as it makes them.
    Free,
    /// The producer makes the next item only once the consumer asks for it.
    OnDemand,
}

struct Inner<T> {
    items: VecDeque<T>,
    /// The producer is done (its last item is queued, or it is gone).
    closed: bool,
    /// The consumer is gone.
    dropped: bool,
    /// The consumer waits for an item ([`Flow::OnDemand`]).
    wanted: bool,
    waker: Option<Waker>,
    notify: Option<Notify>,
}

struct Shared<T> {
    flow: Flow,
    inner: Mutex<Inner<T>>,
    cv: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, Inner<T>>) -> MutexGuard<'a, Inner<T>> {
        self.cv.wait(g).unwrap_or_else(|e| e.into_inner())
    }
}

/// The producing end (closes the channel when dropped).
pub(crate) struct Sender<T>(Arc<Shared<T>>);

/// The consuming end (tells the producer it is gone when dropped).
pub(crate) struct Receiver<T>(Arc<Shared<T>>);

/// A new channel.
pub(crate) fn channel<T>(flow: Flow) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        flow,
        inner: Mutex::new(Inner {
            items: VecDeque::new(),
            closed: false,
            dropped: false,
            wanted: false,
            waker: None,
            notify: None,
        }),
        cv: Condvar::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// A channel that already holds its only item (e.g. the error of a worker that did not start).
pub(crate) fn ready<T>(item: T) -> Receiver<T> {
    let (tx, rx) = channel(Flow::Free);
    tx.finish(item);
    rx
}

impl<T> Sender<T> {
    fn push(&self, item: T, close: bool) -> bool {
        let mut ch = self.0.lock();
        ch.items.push_back(item);
        ch.closed |= close;
        ch.wanted = false;
        let waker = ch.waker.take();
        let notify = ch.notify.clone();
        let alive = !ch.dropped;
        drop(ch);
        self.0.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
        if let Some(n) = notify {
            n();
        }
        alive
    }

    /// Queues an item and wakes the consumer; false when the consumer is gone.
    pub(crate) fn send(&self, item: T) -> bool {
        self.push(item, false)
    }

    /// Queues the last item and closes the channel (in one step: the consumer never sees the
    /// item without the channel being closed).
    pub(crate) fn finish(self, item: T) {
        self.push(item, true);
    }

    /// Waits until the consumer wants another item ([`Flow::OnDemand`]; at once with
    /// [`Flow::Free`]); false when the consumer is gone.
    pub(crate) fn wait_demand(&self) -> bool {
        let mut ch = self.0.lock();
        if self.0.flow == Flow::OnDemand {
            while !(ch.dropped || ch.wanted && ch.items.is_empty()) {
                ch = self.0.wait(ch);
            }
        }
        !ch.dropped
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut ch = self.0.lock();
        if ch.closed {
            return;
        }
        ch.closed = true;
        let waker = ch.waker.take();
        drop(ch);
        self.0.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// The next item if one is queued (never blocks).
    pub(crate) fn try_recv(&self) -> Option<T> {
        self.0.lock().items.pop_front()
    }

    /// The next item, blocking until there is one; `None` once the channel is closed and empty.
    pub(crate) fn recv(&self) -> Option<T> {
        let mut ch = self.0.lock();
        loop {
            if let Some(item) = ch.items.pop_front() {
                return Some(item);
            }
            if ch.closed {
                return None;
            }
            if !ch.wanted {
                ch.wanted = true;
                self.0.cv.notify_all();
            }
            ch = self.0.wait(ch);
        }
    }

    /// The next item for an async consumer: `Pending` (the task is woken by the next item)
    /// while none is queued, `Ready(None)` once the channel is closed and empty.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut ch = self.0.lock();
        if let Some(item) = ch.items.pop_front() {
            return Poll::Ready(Some(item));
        }
        if ch.closed {
            return Poll::Ready(None);
        }
        ch.waker = Some(cx.waker().clone());
        if !ch.wanted {
            ch.wanted = true;
            drop(ch);
            self.0.cv.notify_all();
        }
        Poll::Pending
    }

    /// Whether the producer is done (its last item may still be queued).
    pub(crate) fn is_closed(&self) -> bool {
        self.0.lock().closed
    }

    /// Runs `notify` after every item from now on; true when items are already queued.
    pub(crate) fn set_notify(&self, notify: Notify) -> bool {
        let mut ch = self.0.lock();
        ch.notify = Some(notify);
        !ch.items.is_empty()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.0.lock().dropped = true;
        self.0.cv.notify_all();
    }
}

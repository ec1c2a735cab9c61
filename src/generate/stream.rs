//! [`ReplyStream`]: the text deltas of one reply, as a blocking [`Iterator`] and as an async
//! [`Stream`](futures_core::Stream).

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::background::{Work, Worker};
use super::channel::Flow;
use super::{GenerationEvent, Reply};
use crate::error::{Error, Result};

/// The text deltas of one reply (from [`ChatSession::stream`](super::ChatSession::stream)):
/// a blocking [`Iterator`] and an async [`Stream`](futures_core::Stream) (any executor: the
/// generating thread wakes the task) of complete UTF-8 pieces with stop strings held back.
///
/// The GPU work runs on a worker thread, one delta ahead at most: the next delta is computed
/// only once it is asked for, so a consumer that stops asking (or calls
/// [`cancel`](Self::cancel)) stops the generation where it is. Errors (also of the prompt)
/// come as items. [`into_reply`](Self::into_reply) gives the [`Reply`]. Dropping the stream
/// early stops the generation (and waits for it); the text so far joins the conversation.
pub struct ReplyStream<'a> {
    worker: Worker,
    reply: Option<Result<Reply>>,
    ended: bool,
    _session: PhantomData<&'a mut ()>,
}

impl std::fmt::Debug for ReplyStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyStream")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl ReplyStream<'_> {
    pub(crate) fn spawn(work: Work) -> Self {
        ReplyStream {
            worker: Worker::spawn(Flow::OnDemand, work),
            reply: None,
            ended: false,
            _session: PhantomData,
        }
    }

    /// Maps an event to an item (`None`: the end, the reply kept).
    fn item(&mut self, event: Option<GenerationEvent>) -> Option<Result<String>> {
        match event {
            Some(GenerationEvent::Delta(d)) => Some(Ok(d)),
            Some(GenerationEvent::Done(Ok(r))) => {
                self.ended = true;
                self.reply = Some(Ok(r));
                None
            }
            Some(GenerationEvent::Done(Err(e))) => {
                self.ended = true;
                Some(Err(e))
            }
            None => {
                self.ended = true;
                None
            }
        }
    }

    /// Requests cancellation: the generation stops before its next token
    /// ([`FinishReason::Cancelled`](super::FinishReason::Cancelled)).
    pub fn cancel(&self) {
        self.worker.cancel();
    }

    /// Runs the generation to its end (discarding the remaining deltas) and returns the reply.
    pub fn into_reply(mut self) -> Result<Reply> {
        for item in self.by_ref() {
            item?;
        }
        self.reply.take().unwrap_or_else(|| {
            Err(Error::InvalidArgument(
                "the generation ended with an error, already returned by the stream".into(),
            ))
        })
    }
}

impl Iterator for ReplyStream<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        let event = self.worker.events().recv();
        self.item(event)
    }
}

impl futures_core::Stream for ReplyStream<'_> {
    type Item = Result<String>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this.worker.events().poll_recv(cx) {
            Poll::Ready(event) => Poll::Ready(this.item(event)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for ReplyStream<'_> {
    fn drop(&mut self) {
        // Dropping the receiver stops the worker at its next delta; wait for it so the turn has
        // joined the conversation when the session is used again.
        self.worker.events = None;
        if let Some(t) = self.worker.thread.take() {
            let _ = t.join();
        }
    }
}

//! Generation on top of [`Model`](crate::Model): a [`Request`] (text, images, options) run to
//! completion ([`ChatSession::send`], [`Model::generate`](crate::Model::generate)), as a stream
//! of text deltas ([`ChatSession::stream`]: an iterator and an async
//! [`Stream`](futures_core::Stream)) or in the background ([`ChatSession::spawn`],
//! [`Model::spawn`](crate::Model::spawn): a [`GenerationHandle`]), many at once
//! ([`Model::batch`](crate::Model::batch): a [`Batch`]), plus the one-liners
//! [`Model::caption`](crate::Model::caption) and [`Model::ask`](crate::Model::ask).
//!
//! | file | holds |
//! |---|---|
//! | `options.rs` | [`GenerationOptions`], [`Sampling`] |
//! | `request.rs` | [`Request`], [`ImageInput`], [`ImageSource`] |
//! | `reply.rs` | [`Reply`], [`FinishReason`], [`GenerationStats`] |
//! | `cancel.rs` | [`CancelToken`] |
//! | `detokenizer.rs`, `stop.rs` | [`Detokenizer`], [`StopMatcher`] |
//! | `sampler.rs` | token selection on the GPU (penalty, argmax / sample) |
//! | `state.rs` | a conversation's KV cache, workspace, messages, images |
//! | `step.rs` | the step machine: setup, prefill with cache reuse, decode loop, finalize |
//! | `session.rs`, `order.rs` | [`ChatSession`], the order of the calls on it |
//! | `channel.rs` | the one channel behind every stream and handle |
//! | `stream.rs`, `background.rs` | [`ReplyStream`], [`GenerationHandle`] |
//! | `oneshot.rs` | `Model::generate`, `spawn`, `caption`, `ask` |
//! | `batch.rs` | [`Batch`]: continuous batching of one-shot requests (`Model::batch`) |

pub(crate) mod background;
mod batch;
mod cancel;
pub(crate) mod channel;
mod detokenizer;
mod oneshot;
mod options;
mod order;
mod reply;
mod request;
mod sampler;
mod session;
pub(crate) mod state;
mod step;
mod stop;
mod stream;

pub use background::{GenerationEvent, GenerationHandle};
pub use batch::{Batch, BatchHandle, RequestId};
pub use cancel::CancelToken;
pub use detokenizer::Detokenizer;
pub use options::{
    DEFAULT_GEMMA4_STOP_TOKENS, DEFAULT_MAX_NEW_TOKENS, GenerationOptions, Sampling,
};
pub use reply::{FinishReason, GenerationStats, Reply};
pub use request::{CAPTION_PROMPT, ImageInput, ImageSource, Request};
pub use session::ChatSession;
pub use stop::StopMatcher;
pub use stream::ReplyStream;

//! One-shot generation on [`Model`]: a [`Request`] on a fresh KV cache sized for its prompt
//! plus `max_new_tokens` ([`Model::generate`], [`Model::spawn`]) and the one-liners
//! [`Model::caption`] and [`Model::ask`].

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use super::state::State;
use super::step::{Generation, Turn};
use super::{
    CancelToken, ChatSession, GenerationHandle, GenerationOptions, ImageInput, Reply, Request,
};
use crate::error::Result;
use crate::model::Model;

impl Model {
    /// Starts a conversation ([`ChatSession::new`]).
    pub fn chat(&self) -> Result<ChatSession> {
        ChatSession::new(self)
    }

    /// Generates the reply to a one-shot request (no conversation) on a fresh KV cache sized
    /// for the prompt plus `max_new_tokens`.
    ///
    /// ```no_run
    /// use gemma_wgpu::{GenerationOptions, Model, Request};
    /// let model = Model::load("path/to/gemma-4-E2B-it")?;
    /// let opts = GenerationOptions::default().greedy().with_max_new_tokens(32);
    /// let reply = model.generate(Request::caption("photo.jpg").with_options(opts))?;
    /// println!("{} ({:?})", reply.text, reply.finish);
    /// # Ok::<(), gemma_wgpu::Error>(())
    /// ```
    pub fn generate(&self, req: impl Into<Request>) -> Result<Reply> {
        oneshot(self, req.into(), CancelToken::new(), None, &mut |_| {
            ControlFlow::Continue(())
        })
    }

    /// [`generate`](Self::generate) on a worker thread: returns at once with a
    /// [`GenerationHandle`] that streams the reply (the same text as `generate` for the same
    /// request).
    pub fn spawn(&self, req: impl Into<Request>) -> GenerationHandle {
        let model = self.clone();
        let req = req.into();
        GenerationHandle::spawn(Box::new(move |cancel, published, on_delta| {
            oneshot(&model, req, cancel, Some(published), on_delta)
        }))
    }

    /// Describes an image ([`CAPTION_PROMPT`](super::CAPTION_PROMPT)) with the model's
    /// generation defaults. For other options, or the whole [`Reply`]:
    /// `model.generate(Request::caption(image).with_options(opts))`.
    pub fn caption(&self, image: impl Into<ImageInput>) -> Result<String> {
        Ok(self.generate(Request::caption(image))?.text)
    }

    /// Describes an image ([`CAPTION_PROMPT`](super::CAPTION_PROMPT)) with `options`; the
    /// whole [`Reply`] (tokens, timings). What the folder captioner
    /// ([`captioner`](crate::captioner)) runs for each image.
    pub fn caption_with(
        &self,
        image: impl Into<ImageInput>,
        options: GenerationOptions,
    ) -> Result<Reply> {
        self.generate(Request::caption(image).with_options(options))
    }

    /// Answers a question about an image with the model's generation defaults. For other
    /// options: `model.generate(Request::new(question).with_image(image).with_options(opts))`.
    pub fn ask(&self, image: impl Into<ImageInput>, question: &str) -> Result<String> {
        Ok(self
            .generate(Request::new(question).with_image(image))?
            .text)
    }
}

/// Runs `req` on a fresh conversation sized for it.
fn oneshot(
    model: &Model,
    req: Request,
    cancel: CancelToken,
    published: Option<Arc<AtomicUsize>>,
    on_delta: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<Reply> {
    let turn = Turn::prepare(model, None, &[], &[], req)?;
    // Allocate only what the turn needs.
    let n = turn.ids.len();
    let max_context = (n + turn.opts.max_new_tokens + 1).min(model.options().max_context);
    let mut st = State::new(model, max_context.max(n + 1))?;
    let mut g = Generation::start(model, &mut st, turn, cancel)?;
    if let Some(p) = published {
        g = g.with_published(p);
    }
    g.run(model, &mut st, on_delta)
}

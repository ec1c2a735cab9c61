//! The step machine behind every way of running a [`Request`]: [`Turn::prepare`] (the one
//! place a request is set up: options, the user message, image encoding, the rendered prompt),
//! [`Generation::start`] (KV-cache reuse and the prefill), [`Generation::next_delta`] (one
//! decode step per submit until a text delta is complete) and [`Generation::finalize`] (the
//! reply joins the conversation).
//!
//! Normally the previously processed tokens are a prefix of the new prompt; otherwise the cache
//! is rewound to the longest common prefix when no sliding-window key it needs was overwritten
//! since, else reset and everything prefilled. Each decode step is **one** submit: the decoder
//! for one token and the selection ([`Sampler`]); only the 4-byte token id is read back. Stop
//! tokens are checked on the host after each token, stop strings on the streamed text
//! ([`StopMatcher`]); the [`CancelToken`]s are checked before every step.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::sampler::Sampler;
use super::state::{Buffers, State, bufs};
use super::{
    CancelToken, Detokenizer, FinishReason, GenerationOptions, GenerationStats, ImageInput, Reply,
    Request, StopMatcher,
};
use crate::error::{Error, Result};
use crate::gpu::GpuTensor;
use crate::model::Model;
use crate::model::media::{MediaRuns, image_runs};
use crate::prompt::render::{encode_images, prompt_ids};
use crate::prompt::{Content, Message, Role};
use crate::model::text::Logits;

/// A request set up against a conversation: the conversation with the new user message, the
/// features of all its images, the rendered prompt, the options.
pub(crate) struct Turn {
    messages: Vec<Message>,
    images: Vec<GpuTensor>,
    /// The rendered, tokenized prompt with the images expanded.
    pub(crate) ids: Vec<u32>,
    pub(crate) opts: GenerationOptions,
    stats: GenerationStats,
    counters0: (u64, u64),
}

/// A request validated against the model (health, options), its images not yet encoded: the
/// first half of [`Turn::prepare`], so that a batch can encode the images of the requests it
/// starts together before finishing each.
pub(crate) struct PendingTurn {
    text: String,
    images: Vec<ImageInput>,
    n_images: usize,
    opts: GenerationOptions,
    counters0: (u64, u64),
}

impl PendingTurn {
    /// Validates `req` (the model's default options when it has none).
    pub(crate) fn new(model: &Model, req: Request) -> Result<PendingTurn> {
        model.context().check_health()?;
        let (text, images, opts) = req.into_parts();
        let opts = opts.unwrap_or_else(|| model.generation_defaults().clone());
        opts.validate()?;
        Ok(PendingTurn {
            text,
            n_images: images.len(),
            images,
            opts,
            counters0: model.context().counters().snapshot(),
        })
    }

    /// The request's images, for the caller to encode (left empty).
    pub(crate) fn take_images(&mut self) -> Vec<ImageInput> {
        std::mem::take(&mut self.images)
    }

    /// Renders the conversation `messages` / `images` with the new user message, whose images'
    /// features are `new_features` (encoded in `encode_s` seconds).
    pub(crate) fn finish(
        self,
        model: &Model,
        system: Option<&str>,
        messages: &[Message],
        images: &[GpuTensor],
        new_features: Vec<GpuTensor>,
        encode_s: f64,
    ) -> Result<Turn> {
        if new_features.len() != self.n_images {
            return Err(Error::InvalidArgument(format!(
                "{} image features for a request with {} images",
                new_features.len(),
                self.n_images
            )));
        }
        let stats = GenerationStats {
            image_encode_s: encode_s,
            ..GenerationStats::default()
        };
        let mut messages = messages.to_vec();
        messages.push(Message::user_with_images(self.n_images, self.text));
        let mut all_images = images.to_vec();
        all_images.extend(new_features);
        let ids = prompt_ids(model, system, &messages, &all_images)?;
        Ok(Turn {
            messages,
            images: all_images,
            ids,
            opts: self.opts,
            stats,
            counters0: self.counters0,
        })
    }
}

impl Turn {
    /// Sets up `req` after the conversation `messages` / `images` (empty for a one-shot
    /// request): validates the options (the model's defaults when the request has none),
    /// encodes the request's images and renders the conversation with the new message. The
    /// conversation itself is only changed once the generation starts.
    pub(crate) fn prepare(
        model: &Model,
        system: Option<&str>,
        messages: &[Message],
        images: &[GpuTensor],
        req: Request,
    ) -> Result<Turn> {
        let mut pending = PendingTurn::new(model, req)?;
        let t0 = Instant::now();
        let encoded = encode_images(model, pending.take_images());
        let (new_features, encode_s) = encode_done(model, t0, encoded)?;
        pending.finish(model, system, messages, images, new_features, encode_s)
    }
}

/// Ends an image encode begun at `t0`: waits for its GPU work when there were images (its time
/// belongs to the encode, not to the prefill that would otherwise wait for it) and returns the
/// features with the seconds since `t0`.
pub(crate) fn encode_done(
    model: &Model,
    t0: Instant,
    features: Result<Vec<GpuTensor>>,
) -> Result<(Vec<GpuTensor>, f64)> {
    let features = features?;
    if !features.is_empty() {
        model.context().wait_idle()?;
    }
    Ok((features, t0.elapsed().as_secs_f64()))
}

/// One running generation (the step machine behind every API form). It borrows nothing; each
/// call gets the model and the conversation state.
pub(crate) struct Generation {
    opts: GenerationOptions,
    cancel: CancelToken,
    sampler: Sampler,
    detok: Detokenizer,
    stops: StopMatcher,
    tokens: Vec<u32>,
    prompt_ids: Vec<u32>,
    prompt_tokens: usize,
    text: String,
    finish: Option<FinishReason>,
    flushed: bool,
    finalized: bool,
    stats: GenerationStats,
    counters0: (u64, u64),
    decode_start: Option<Instant>,
    /// A second cancel token (a stream's or background handle's own), checked like `cancel`.
    cancel_also: Option<CancelToken>,
    /// Tokens generated so far, published for a background handle.
    published: Option<Arc<AtomicUsize>>,
}

impl Generation {
    /// Starts `turn` on the conversation `st`: reuses what the KV cache holds, prefills the
    /// rest and sets up the decode loop (the first [`next_delta`](Self::next_delta) selects
    /// the first token).
    pub(crate) fn start(
        model: &Model,
        st: &mut State,
        turn: Turn,
        cancel: CancelToken,
    ) -> Result<Self> {
        let Turn {
            messages,
            images: all_images,
            ids,
            opts,
            mut stats,
            counters0,
        } = turn;
        let tokenizer = model
            .tokenizer()
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{} has no tokenizer.json: text generation needs it",
                    model.dir().display()
                ))
            })?
            .clone();
        if ids.len() + 1 > st.max_context {
            return Err(Error::InvalidArgument(format!(
                "the prompt has {} tokens but the maximum context is {} (raise it with \
                 ModelBuilder::with_max_context)",
                ids.len(),
                st.max_context
            )));
        }
        st.ensure(model)?;
        let b = bufs(&mut st.bufs)?;

        // KV reuse: keep the longest common prefix of the processed tokens and the new prompt
        // (normally all processed tokens), rewinding the cache when that is safe; no image's
        // soft tokens may straddle the boundary, and at least one token must remain to prefill.
        let image_token = model.config().image_token_id;
        let runs = image_runs(&ids, image_token);
        let processed = b.cache.position().min(st.history.len());
        let mut pos = if st.dirty {
            0
        } else {
            st.history[..processed]
                .iter()
                .zip(&ids)
                .take_while(|(a, b)| a == b)
                .count()
                .min(ids.len() - 1)
        };
        if let Some(&(s, _)) = runs.iter().find(|&&(s, e)| s < pos && pos < e) {
            pos = s;
        }
        if pos < b.cache.position() && !b.cache.can_truncate_to(pos) {
            pos = 0;
        }
        if pos == 0 {
            b.cache.reset();
        } else {
            b.cache.truncate(pos);
        }
        st.dirty = true;
        let old_messages = std::mem::replace(&mut st.messages, messages);
        let old_images = std::mem::replace(&mut st.images, all_images);
        st.before_turn = Some((old_messages, old_images));
        let first_new_image = runs.iter().filter(|&&(_, e)| e <= pos).count();
        let suffix = &ids[pos..];
        let media = MediaRuns::place(
            model.context(),
            suffix,
            image_token,
            &st.images[first_new_image..],
        );

        let t1 = Instant::now();
        let logits = media.and_then(|media| {
            model.text().forward(
                &mut b.cache,
                &mut b.ws,
                suffix,
                media.as_ref(),
                Logits::Last,
            )
        });
        let logits = match logits {
            Ok(l) => l,
            Err(e) => {
                // The cache may hold part of the suffix: start over next time, without this turn.
                b.cache.reset();
                st.history.clear();
                if let Some((messages, images)) = st.before_turn.take() {
                    st.messages = messages;
                    st.images = images;
                }
                st.dirty = false;
                return Err(e);
            }
        };
        stats.prefill_s = t1.elapsed().as_secs_f64();
        stats.prefill_tok_per_s = suffix.len() as f64 / stats.prefill_s.max(1e-9);
        st.last_logits = Some(logits);
        st.history = ids.clone();

        let sampler = Sampler::new(model, &opts, &ids, &b.penalty_ids);
        let mut g = Generation {
            stops: StopMatcher::new(opts.stop_strings.clone()),
            opts,
            cancel,
            sampler,
            detok: Detokenizer::new(tokenizer),
            tokens: Vec::new(),
            prompt_tokens: suffix.len(),
            prompt_ids: ids,
            text: String::new(),
            finish: None,
            flushed: false,
            finalized: false,
            stats,
            counters0,
            decode_start: None,
            cancel_also: None,
            published: None,
        };
        if g.opts.max_new_tokens == 0 {
            g.finish = Some(FinishReason::MaxTokens);
        }
        st.update_mem();
        Ok(g)
    }

    /// Also stops on `cancel` (a stream's or background handle's own token).
    pub(crate) fn with_cancel_also(mut self, cancel: CancelToken) -> Self {
        self.cancel_also = Some(cancel);
        self
    }

    /// Publishes the number of tokens generated so far to `counter`.
    pub(crate) fn with_published(mut self, counter: Arc<AtomicUsize>) -> Self {
        self.published = Some(counter);
        self
    }

    /// Produces the next token (one submit). Ends the generation on cancellation or a full
    /// context instead.
    fn step(&mut self, model: &Model, st: &mut State) -> Result<Option<u32>> {
        let Some(prev) = self.next_input(st)? else {
            return Ok(None);
        };
        let Buffers {
            cache,
            ws,
            penalty_ids,
        } = bufs(&mut st.bufs)?;
        let text = model.text();
        let sampler = &mut self.sampler;
        let id = match prev {
            None => text.select_last(ws, |rec, sel| sampler.record(rec, sel, penalty_ids))?,
            Some(prev) => text.step_with(cache, ws, prev, |rec, sel| {
                sampler.record(rec, sel, penalty_ids)
            })?,
        };
        self.sampler.observe(model, id, penalty_ids);
        Ok(Some(id))
    }

    /// What the next step feeds: `Some(None)` for the first token (selected from the
    /// prompt's logits), `Some(Some(prev))` for a decode step after `prev`; `None` when the
    /// generation ends instead (cancelled, or the context is full), which sets the finish.
    pub(crate) fn next_input(&mut self, st: &mut State) -> Result<Option<Option<u32>>> {
        if self.cancel.take() | self.cancel_also.as_ref().is_some_and(|c| c.take()) {
            self.finish = Some(FinishReason::Cancelled);
            return Ok(None);
        }
        match self.tokens.last() {
            None => {
                self.decode_start = Some(Instant::now());
                Ok(Some(None))
            }
            Some(&prev) => {
                let cache = &bufs(&mut st.bufs)?.cache;
                if cache.position() + 1 > cache.max_context() {
                    self.finish = Some(FinishReason::ContextFull);
                    return Ok(None);
                }
                Ok(Some(Some(prev)))
            }
        }
    }

    /// The selection state (for a batched step that records it for this generation).
    pub(crate) fn sampler_mut(&mut self) -> &mut Sampler {
        &mut self.sampler
    }

    /// Whether the generation has ended (its remaining text is then flushed by
    /// [`next_delta`](Self::next_delta)).
    pub(crate) fn finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Runs the generation to its end, calling `on_delta` with every text delta; returning
    /// [`ControlFlow::Break`] stops it ([`FinishReason::Cancelled`]). The reply joins the
    /// conversation, also after an error.
    pub(crate) fn run(
        mut self,
        model: &Model,
        st: &mut State,
        on_delta: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Reply> {
        while let Some(delta) = self.next_delta(model, st) {
            match delta {
                Ok(d) => {
                    if on_delta(&d).is_break() {
                        self.finish = Some(FinishReason::Cancelled);
                        self.flushed = true;
                        break;
                    }
                }
                Err(e) => {
                    self.finalize(model, st);
                    return Err(e);
                }
            }
        }
        Ok(self.finalize(model, st))
    }

    /// The next non-empty text delta, or `None` when the generation has ended.
    pub(crate) fn next_delta(&mut self, model: &Model, st: &mut State) -> Option<Result<String>> {
        loop {
            if self.finish.is_some() {
                if self.flushed {
                    return None;
                }
                self.flushed = true;
                if self.stops.stopped() {
                    return None;
                }
                let tail = match self.detok.finish() {
                    Ok(t) => t,
                    Err(e) => return Some(Err(e)),
                };
                let (mut out, stopped) = self.stops.push(&tail);
                if stopped {
                    self.finish = Some(FinishReason::StopString);
                } else {
                    out.push_str(&self.stops.finish());
                }
                if out.is_empty() {
                    return None;
                }
                self.text.push_str(&out);
                return Some(Ok(out));
            }
            let id = match self.step(model, st) {
                Ok(Some(id)) => id,
                Ok(None) => continue,
                Err(e) => {
                    self.finish = Some(FinishReason::Cancelled);
                    self.flushed = true;
                    // The cache state is unknown after a failed step.
                    if let Some(b) = &mut st.bufs {
                        b.cache.reset();
                    }
                    st.history.clear();
                    return Some(Err(e));
                }
            };
            if let Some(d) = self.accept(id, st) {
                return Some(d);
            }
        }
    }

    /// Takes the generated token `id` (already observed by the sampler): the stop and length
    /// rules, the detokenizer and the stop strings. Returns the text delta it completes, if
    /// any (an error ends the generation).
    pub(crate) fn accept(&mut self, id: u32, st: &mut State) -> Option<Result<String>> {
        self.tokens.push(id);
        st.history.push(id);
        if let Some(p) = &self.published {
            p.store(self.tokens.len(), Ordering::SeqCst);
        }
        if self.opts.is_stop_token(id) {
            self.finish = Some(FinishReason::StopToken(id));
            return None;
        }
        if self.tokens.len() >= self.opts.max_new_tokens {
            self.finish = Some(FinishReason::MaxTokens);
        }
        match self.detok.push(id) {
            Ok(Some(delta)) => {
                let (out, stopped) = self.stops.push(&delta);
                if stopped {
                    self.finish = Some(FinishReason::StopString);
                }
                if !out.is_empty() {
                    self.text.push_str(&out);
                    return Some(Ok(out));
                }
                None
            }
            Ok(None) => None,
            Err(e) => {
                self.finish = Some(FinishReason::Cancelled);
                self.flushed = true;
                Some(Err(e))
            }
        }
    }

    /// Ends the turn: the reply joins the conversation (also when the stream was dropped early).
    pub(crate) fn finalize(&mut self, model: &Model, st: &mut State) -> Reply {
        if !self.finalized {
            self.finalized = true;
            st.messages.push(Message::new(
                Role::Assistant,
                vec![Content::Text(self.text.clone())],
            ));
            st.dirty = false;
            st.before_turn = None;
        }
        let finish = *self.finish.get_or_insert(FinishReason::Cancelled);
        if let Some(t) = self.decode_start {
            self.stats.decode_s = t.elapsed().as_secs_f64();
            let n = self.tokens.len().saturating_sub(1);
            self.stats.decode_tok_per_s = if n > 0 {
                n as f64 / self.stats.decode_s.max(1e-9)
            } else {
                0.0
            };
        }
        let (d, s) = model.context().counters().snapshot();
        self.stats.dispatches = d.saturating_sub(self.counters0.0);
        self.stats.submits = s.saturating_sub(self.counters0.1);
        Reply {
            text: self.text.clone(),
            tokens: self.tokens.clone(),
            prompt_ids: self.prompt_ids.clone(),
            prompt_tokens: self.prompt_tokens,
            finish,
            stats: self.stats,
        }
    }
}

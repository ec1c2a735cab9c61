//! Generation on top of [`Model`]: one-shot captioning and visual question answering, and
//! multi-turn chat ([`ChatSession`]) with KV-cache reuse across turns, streaming (iterator,
//! callback, async [`Stream`](futures_core::Stream)) and cancellation.
//!
//! # The generation loop
//!
//! A turn renders the whole conversation with the checkpoint's chat template, tokenizes it,
//! expands every image placeholder to `boi`, the image's soft tokens, `eoi`, and prefills only
//! the tokens the KV cache does not hold yet: normally the previously processed tokens are a
//! prefix of the new prompt; otherwise the cache is rewound to the longest common prefix when
//! no sliding-window key it needs was overwritten since, else reset and everything prefilled. Each decode
//! step is **one** submit: the decoder for one token, the repetition penalty (in place on the
//! GPU logits, over a preallocated buffer of the distinct ids seen so far) and the selection
//! (`argmax`, or `sample` with a host-drawn uniform number from a seeded RNG); only the 4-byte
//! token id is read back. Stop tokens are checked on the host after each token, stop strings on
//! the streamed text ([`StopMatcher`]); a [`CancelToken`] is checked before every step.

mod background;

pub use background::{GenerationEvent, GenerationHandle};

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::chat::{Content, Message, Role, expand_image_tokens};
use crate::error::{Error, Result};
use crate::generation::{Detokenizer, GenerationOptions, StopMatcher};
use crate::gpu::ops;
use crate::gpu::{DType, GpuTensor};
use crate::memory::{SessionMem, SessionMemory};
use crate::model::Model;
use crate::text::{KvCache, Logits, Workspace};

/// The user prompt of [`Model::caption`].
pub const CAPTION_PROMPT: &str = "Describe this image.";

/// An image for a prompt: already decoded, or a file to decode (any supported format; EXIF
/// orientation applied).
#[derive(Debug, Clone)]
pub enum ImageInput {
    /// A decoded image.
    Dynamic(image::DynamicImage),
    /// An image file.
    Path(PathBuf),
}

impl From<image::DynamicImage> for ImageInput {
    fn from(img: image::DynamicImage) -> Self {
        ImageInput::Dynamic(img)
    }
}

impl From<PathBuf> for ImageInput {
    fn from(p: PathBuf) -> Self {
        ImageInput::Path(p)
    }
}

impl From<&Path> for ImageInput {
    fn from(p: &Path) -> Self {
        ImageInput::Path(p.to_path_buf())
    }
}

impl From<&PathBuf> for ImageInput {
    fn from(p: &PathBuf) -> Self {
        ImageInput::Path(p.clone())
    }
}

impl From<&str> for ImageInput {
    fn from(p: &str) -> Self {
        ImageInput::Path(PathBuf::from(p))
    }
}

impl From<String> for ImageInput {
    fn from(p: String) -> Self {
        ImageInput::Path(PathBuf::from(p))
    }
}

/// A cancellation flag shared between threads (an `Arc<AtomicBool>`; clones share it).
///
/// Generation checks it before every decode step, so a cancelled generation stops within one
/// token. A cancel request stops the generation running now or, when none runs, the next one;
/// the generation that observes it clears it.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether cancellation was requested (and not yet observed by a generation).
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Clears a pending request.
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    pub(crate) fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced this stop token (e.g. `<turn|>`); it is in [`Reply::tokens`] but
    /// not in the text.
    StopToken(u32),
    /// A stop string appeared; the text ends before it.
    StopString,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The [`CancelToken`] was cancelled, or the consumer stopped the stream.
    Cancelled,
    /// The KV cache is full (raise [`ModelBuilder::with_max_context`](crate::ModelBuilder::with_max_context)).
    ContextFull,
}

/// Throughput and GPU work of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationStats {
    /// Prompt tokens prefilled per second (image encoding excluded).
    pub prefill_tok_per_s: f64,
    /// Generated tokens per second after the first token.
    pub decode_tok_per_s: f64,
    /// Seconds spent encoding images.
    pub image_encode_s: f64,
    /// Seconds spent prefilling.
    pub prefill_s: f64,
    /// Seconds spent decoding.
    pub decode_s: f64,
    /// Compute dispatches recorded on the model's GPU context during the call (all threads).
    pub dispatches: u64,
    /// Queue submits on the model's GPU context during the call (all threads).
    pub submits: u64,
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The reply text (special tokens skipped, cut before a stop string).
    pub text: String,
    /// Every generated token id, including a final stop token.
    pub tokens: Vec<u32>,
    /// The full prompt of this turn (the whole conversation, images expanded).
    pub prompt_ids: Vec<u32>,
    /// Prompt tokens actually prefilled: the suffix the KV cache did not hold yet.
    pub prompt_tokens: usize,
    /// Why generation ended.
    pub finish: FinishReason,
    /// Timings and counters.
    pub stats: GenerationStats,
}

/// splitmix64: the host RNG of the sampler's uniform numbers (seeded per generation).
#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 24 bits.
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The GPU buffers of a conversation that [`ChatSession::release_cache`] gives back.
struct Buffers {
    cache: KvCache,
    ws: Workspace,
    /// Distinct ids seen by the repetition penalty (u32 `[max_context + 1]`), preallocated.
    penalty_ids: GpuTensor,
}

impl Buffers {
    fn new(model: &Model, max_context: usize) -> Result<Self> {
        let inner = &model.inner;
        let (cache, ws) = inner
            .text
            .new_session(max_context, inner.options.prefill_chunk)?;
        let penalty_ids = GpuTensor::zeros(&inner.ctx, &[max_context + 1], DType::U32)?;
        Ok(Buffers {
            cache,
            ws,
            penalty_ids,
        })
    }
}

/// The GPU and host state of one conversation: KV cache, workspace, processed tokens, images.
struct State {
    /// KV cache, workspace, penalty ids; `None` after a release (allocated again by the next
    /// turn, which then prefills the whole conversation).
    bufs: Option<Buffers>,
    /// Context size of the buffers.
    max_context: usize,
    /// Byte counts for [`Model::memory_report`].
    mem: Arc<SessionMem>,
    /// The conversation so far (system prompt excluded; it is added when rendering).
    messages: Vec<Message>,
    /// Soft-token features `[n, hidden]` of every image of the conversation, in order.
    images: Vec<GpuTensor>,
    /// Tokens of the conversation: processed (`..cache.position()`) plus the pending last
    /// generated token(s) that the next turn feeds first.
    history: Vec<u32>,
    /// Logits of the last prompt position of the latest turn.
    last_logits: Option<Vec<f32>>,
    /// Set while a turn runs; a turn interrupted by a panic leaves it set and the next turn
    /// starts from an empty cache.
    dirty: bool,
}

impl State {
    fn new(model: &Model, max_context: usize) -> Result<Self> {
        let st = State {
            bufs: Some(Buffers::new(model, max_context)?),
            max_context,
            mem: model.inner.sessions.register(),
            messages: Vec::new(),
            images: Vec::new(),
            history: Vec::new(),
            last_logits: None,
            dirty: false,
        };
        st.update_mem();
        Ok(st)
    }

    fn reset(&mut self) {
        if let Some(b) = &mut self.bufs {
            b.cache.reset();
        }
        self.messages.clear();
        self.images.clear();
        self.history.clear();
        self.last_logits = None;
        self.dirty = false;
        self.update_mem();
    }

    /// GPU bytes held now.
    fn memory(&self) -> SessionMemory {
        let (kv_cache, scratch) = match &self.bufs {
            Some(b) => (b.cache.bytes(), b.ws.bytes() + b.penalty_ids.buffer.size()),
            None => (0, 0),
        };
        SessionMemory {
            kv_cache,
            scratch,
            image_features: self.images.iter().map(|t| t.buffer.size()).sum(),
        }
    }

    fn update_mem(&self) {
        self.mem.set(self.memory());
    }

    /// Allocates the buffers again after a release.
    fn ensure(&mut self, model: &Model) -> Result<()> {
        if self.bufs.is_none() {
            self.bufs = Some(Buffers::new(model, self.max_context)?);
            self.update_mem();
        }
        Ok(())
    }

    /// Drops the buffers (the conversation stays); returns the bytes released.
    fn release(&mut self) -> u64 {
        let before = self.memory();
        self.bufs = None;
        self.last_logits = None;
        self.update_mem();
        before.kv_cache + before.scratch
    }

    /// Tokens held in the KV cache.
    fn position(&self) -> usize {
        self.bufs.as_ref().map(|b| b.cache.position()).unwrap_or(0)
    }
}

/// The buffers of `st` (allocated by [`State::ensure`] first).
fn bufs(st: &mut Option<Buffers>) -> Result<&mut Buffers> {
    st.as_mut()
        .ok_or_else(|| Error::InvalidArgument("the session's buffers were released".into()))
}

/// One running generation (the step machine behind every API form). It borrows nothing; each
/// call gets the model and the conversation state.
struct Generation {
    opts: GenerationOptions,
    cancel: CancelToken,
    rng: SplitMix,
    detok: Detokenizer,
    stops: StopMatcher,
    tokens: Vec<u32>,
    prompt_ids: Vec<u32>,
    prompt_tokens: usize,
    /// `seen[id]`: id already in the penalty buffer (only with a penalty).
    seen: Vec<bool>,
    n_seen: usize,
    text: String,
    finish: Option<FinishReason>,
    flushed: bool,
    finalized: bool,
    stats: GenerationStats,
    counters0: (u64, u64),
    decode_start: Option<Instant>,
    /// A second cancel token (a background handle's own), checked like `cancel`.
    cancel_also: Option<CancelToken>,
    /// Tokens generated so far, published for a background handle.
    published: Option<Arc<AtomicUsize>>,
}

/// Encodes images into per-image soft-token features.
fn encode_images(model: &Model, images: Vec<ImageInput>) -> Result<Vec<GpuTensor>> {
    crate::model::media::encode_each(model.vision(), images, |img| match img {
        ImageInput::Path(p) => model.prepare_image_file(&p),
        ImageInput::Dynamic(d) => model.prepare_image(&d),
    })
}

/// Concatenates feature tensors `[n_i, hidden]` into one `[sum, hidden]` (one submit).
fn concat_features(model: &Model, parts: &[GpuTensor]) -> Result<Option<GpuTensor>> {
    crate::model::media::concat_features(model.context(), parts)
}

/// Renders `system` + `messages` (+ generation prompt), tokenizes, expands images.
fn prompt_ids(
    model: &Model,
    system: Option<&str>,
    messages: &[Message],
    images: &[GpuTensor],
) -> Result<Vec<u32>> {
    let (tok, tmpl) = match (model.tokenizer(), model.chat_template()) {
        (Some(t), Some(c)) => (t, c),
        _ => {
            return Err(Error::InvalidArgument(format!(
                "{} has no tokenizer.json: text generation needs the tokenizer and chat \
                 template files of the checkpoint",
                model.dir().display()
            )));
        }
    };
    let mut all = Vec::with_capacity(messages.len() + 1);
    if let Some(s) = system {
        all.push(Message::system(s));
    }
    all.extend_from_slice(messages);
    let text = tmpl.render(&all, true)?;
    let ids = tok.encode(&text)?;
    let cfg = model.config();
    let soft: Vec<usize> = images.iter().map(|t| t.shape[0]).collect();
    expand_image_tokens(
        &ids,
        cfg.image_token_id,
        cfg.boi_token_id,
        cfg.eoi_token_id,
        &soft,
    )
}

/// Start positions of the image soft-token runs of `ids` (one per image, in order).
fn image_runs(ids: &[u32], image_token: u32) -> Vec<(usize, usize)> {
    crate::model::media::image_runs(ids, image_token)
}

impl Generation {
    /// Starts a turn: appends the user message, encodes its images, renders the conversation,
    /// prefills what the cache lacks and selects the first token... lazily (the first
    /// [`next_delta`](Self::next_delta) does).
    fn begin(
        model: &Model,
        st: &mut State,
        system: Option<&str>,
        user: Message,
        images: Vec<ImageInput>,
        opts: &GenerationOptions,
        cancel: CancelToken,
    ) -> Result<Self> {
        opts.validate()?;
        if user.n_images() != images.len() {
            return Err(Error::ImageTokenMismatch {
                placeholders: user.n_images(),
                images: images.len(),
            });
        }
        let counters0 = model.context().counters().snapshot();
        let mut stats = GenerationStats::default();

        let t0 = Instant::now();
        let new_features = encode_images(model, images)?;
        stats.image_encode_s = t0.elapsed().as_secs_f64();

        // Render the conversation with the new message; commit it to the state only once the
        // prompt is known to be valid.
        let mut messages = st.messages.clone();
        messages.push(user);
        let mut all_images = st.images.clone();
        all_images.extend(new_features.iter().cloned());
        let ids = prompt_ids(model, system, &messages, &all_images)?;
        Self::start(
            model, st, messages, all_images, ids, opts, cancel, stats, counters0,
        )
    }

    /// Prefills the rendered prompt `ids` of the conversation `messages` / `images` (the
    /// latter with the new turn) and sets up the decode loop.
    #[allow(clippy::too_many_arguments)]
    fn start(
        model: &Model,
        st: &mut State,
        messages: Vec<Message>,
        all_images: Vec<GpuTensor>,
        ids: Vec<u32>,
        opts: &GenerationOptions,
        cancel: CancelToken,
        mut stats: GenerationStats,
        counters0: (u64, u64),
    ) -> Result<Self> {
        opts.validate()?;
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
        let first_new_image = runs.iter().filter(|&&(_, e)| e <= pos).count();
        let media = concat_features(model, &st.images[first_new_image..])?;

        let t1 = Instant::now();
        let suffix = &ids[pos..];
        let logits = model.text().forward(
            &mut b.cache,
            &mut b.ws,
            suffix,
            media.as_ref(),
            Logits::Last,
        );
        let logits = match logits {
            Ok(l) => l,
            Err(e) => {
                // The cache may hold part of the suffix: start over next time, without this turn.
                b.cache.reset();
                st.history.clear();
                st.messages = old_messages;
                st.images = old_images;
                return Err(e);
            }
        };
        stats.prefill_s = t1.elapsed().as_secs_f64();
        stats.prefill_tok_per_s = suffix.len() as f64 / stats.prefill_s.max(1e-9);
        st.last_logits = Some(logits);
        st.history = ids.clone();

        let mut g = Generation {
            opts: opts.clone(),
            cancel,
            rng: SplitMix(opts.seed),
            detok: Detokenizer::new(tokenizer),
            stops: StopMatcher::new(opts.stop_strings.clone()),
            tokens: Vec::new(),
            prompt_tokens: suffix.len(),
            prompt_ids: ids,
            seen: Vec::new(),
            n_seen: 0,
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
        if g.opts.repetition_penalty != 1.0 {
            // HF applies the penalty to every id of the sequence, prompt included.
            let vocab = model.config().text_config.vocab_size;
            g.seen = vec![false; vocab];
            let mut distinct = Vec::new();
            for &t in &g.prompt_ids {
                if let Some(s) = g.seen.get_mut(t as usize)
                    && !*s
                {
                    *s = true;
                    distinct.push(t);
                }
            }
            model
                .context()
                .write(&b.penalty_ids.buffer, 0, bytemuck::cast_slice(&distinct));
            g.n_seen = distinct.len();
        }
        if g.opts.max_new_tokens == 0 {
            g.finish = Some(FinishReason::MaxTokens);
        }
        st.update_mem();
        Ok(g)
    }

    /// Records the penalty and the token selection for the logits row of `sel`.
    fn select(
        &mut self,
        rec: &mut crate::gpu::Recorder,
        sel: &crate::text::Selection<'_>,
        penalty_ids: &GpuTensor,
    ) -> Result<()> {
        if self.n_seen > 0 {
            ops::repetition_penalty(
                rec,
                sel.logits,
                penalty_ids,
                self.n_seen,
                self.opts.repetition_penalty,
            )?;
        }
        if self.opts.sampling.is_greedy() {
            ops::argmax(rec, sel.logits, sel.out, sel.scratch)?;
        } else {
            let params = self.opts.sampling.to_sample_params(self.rng.uniform());
            ops::sample(rec, sel.logits, sel.out, &params, sel.scratch)?;
        }
        Ok(())
    }

    /// Produces the next token (one submit). Ends the generation on cancellation or a full
    /// context instead.
    fn step(&mut self, model: &Model, st: &mut State) -> Result<Option<u32>> {
        if self.cancel.take() | self.cancel_also.as_ref().is_some_and(|c| c.take()) {
            self.finish = Some(FinishReason::Cancelled);
            return Ok(None);
        }
        let Buffers {
            cache,
            ws,
            penalty_ids,
        } = bufs(&mut st.bufs)?;
        let text = model.text();
        let id = match self.tokens.last() {
            None => {
                self.decode_start = Some(Instant::now());
                text.select_last(ws, |rec, sel| self.select(rec, sel, penalty_ids))?
            }
            Some(&prev) => {
                if cache.position() + 1 > cache.max_context() {
                    self.finish = Some(FinishReason::ContextFull);
                    return Ok(None);
                }
                text.step_with(cache, ws, prev, |rec, sel| {
                    self.select(rec, sel, penalty_ids)
                })?
            }
        };
        if self.n_seen > 0
            && let Some(s) = self.seen.get_mut(id as usize)
            && !*s
            && self.n_seen < penalty_ids.numel()
        {
            *s = true;
            model.context().write(
                &penalty_ids.buffer,
                (self.n_seen * 4) as u64,
                bytemuck::bytes_of(&id),
            );
            self.n_seen += 1;
        }
        Ok(Some(id))
    }

    /// The next non-empty text delta, or `None` when the generation has ended.
    fn next_delta(&mut self, model: &Model, st: &mut State) -> Option<Result<String>> {
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
            self.tokens.push(id);
            st.history.push(id);
            if let Some(p) = &self.published {
                p.store(self.tokens.len(), Ordering::SeqCst);
            }
            if self.opts.is_stop_token(id) {
                self.finish = Some(FinishReason::StopToken(id));
                continue;
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
                }
                Ok(None) => {}
                Err(e) => {
                    self.finish = Some(FinishReason::Cancelled);
                    self.flushed = true;
                    return Some(Err(e));
                }
            }
        }
    }

    /// Ends the turn: the reply joins the conversation (also when the stream was dropped early).
    fn finalize(&mut self, model: &Model, st: &mut State) -> Reply {
        if !self.finalized {
            self.finalized = true;
            st.messages.push(Message::new(
                Role::Assistant,
                vec![Content::Text(self.text.clone())],
            ));
            st.dirty = false;
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

/// A multi-turn conversation with a model, keeping its KV cache between turns.
///
/// Each [`send`](Self::send) renders the whole conversation with the chat template and prefills
/// only the tokens the cache does not hold yet (the reply of the previous turn, up to its
/// end-of-turn token, is part of the cached history). A session is `Send + Sync`; it holds a
/// clone of the [`Model`] handle, so it may outlive the `Model` value it came from.
///
/// ```no_run
/// use gemma_wgpu::{Model, GenerationOptions};
/// let model = Model::load("path/to/gemma-4-E2B-it")?;
/// let mut chat = model.chat()?.with_system("Answer briefly.");
/// let opts = GenerationOptions::default();
/// let r = chat.send("What is in this picture?", vec!["cat.jpg".into()], &opts)?;
/// println!("{}", r.text);
/// for delta in chat.send_stream("And its color?", vec![], &opts) {
///     print!("{}", delta?);
/// }
/// # Ok::<(), gemma_wgpu::Error>(())
/// ```
pub struct ChatSession {
    model: Model,
    system: Option<String>,
    state: Arc<Mutex<State>>,
    cancel: CancelToken,
    mem: Arc<SessionMem>,
}

impl std::fmt::Debug for ChatSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatSession")
            .field("system", &self.system)
            .field("turns", &self.history_len())
            .finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic inside a turn leaves `dirty` set: the next turn then starts from an empty cache.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl ChatSession {
    /// A new conversation; allocates the KV cache for the model's maximum context.
    pub fn new(model: &Model) -> Result<Self> {
        let state = State::new(model, model.options().max_context)?;
        Ok(ChatSession {
            model: model.clone(),
            system: None,
            mem: state.mem.clone(),
            state: Arc::new(Mutex::new(state)),
            cancel: CancelToken::new(),
        })
    }

    /// Sets the system prompt (builder form).
    pub fn with_system(mut self, text: impl Into<String>) -> Self {
        self.system = Some(text.into());
        self
    }

    /// Sets or clears the system prompt. Changing it re-prefills the conversation next turn.
    pub fn set_system(&mut self, text: Option<String>) {
        self.system = text;
    }

    /// The system prompt.
    pub fn system(&self) -> Option<&str> {
        self.system.as_deref()
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The conversation so far (user and model messages; the system prompt is separate).
    pub fn messages(&self) -> Vec<Message> {
        lock(&self.state).messages.clone()
    }

    /// Tokens of the conversation so far (prompt and replies, end-of-turn tokens included).
    pub fn history(&self) -> Vec<u32> {
        lock(&self.state).history.clone()
    }

    fn history_len(&self) -> usize {
        self.state.lock().map(|s| s.history.len()).unwrap_or(0)
    }

    /// Tokens held in the KV cache.
    pub fn cached_tokens(&self) -> usize {
        lock(&self.state).position()
    }

    /// The logits (`[vocab]`) at the last prompt position of the latest turn, as prefilled.
    pub fn last_prompt_logits(&self) -> Option<Vec<f32>> {
        lock(&self.state).last_logits.clone()
    }

    /// Replaces the text of the latest model reply (e.g. after post-processing it). The next
    /// turn renders the conversation with it and reuses the KV cache up to the first token that
    /// differs. Returns false when the conversation has no reply yet.
    pub fn set_last_reply(&mut self, text: impl Into<String>) -> bool {
        let mut st = lock(&self.state);
        match st.messages.last_mut() {
            Some(m) if m.role == Role::Assistant => {
                m.content = vec![Content::Text(text.into())];
                true
            }
            _ => false,
        }
    }

    /// Forgets the conversation (the system prompt stays; buffers are kept).
    pub fn reset(&mut self) {
        lock(&self.state).reset();
    }

    /// GPU bytes the session holds now, by category. Never waits for a running generation.
    pub fn memory(&self) -> SessionMemory {
        self.mem.get()
    }

    /// All GPU bytes the session holds now ([`memory`](Self::memory)`.total()`).
    pub fn memory_bytes(&self) -> u64 {
        self.mem.get().total()
    }

    /// Gives the KV cache and the workspace of an idle session back to the GPU and returns
    /// the bytes released (waits for a running generation to end first). The conversation is
    /// kept: the next turn allocates the buffers again and prefills the whole conversation
    /// (the encoded images are kept, so they are not encoded again).
    pub fn release_cache(&mut self) -> u64 {
        lock(&self.state).release()
    }

    /// Whether the session holds its KV cache and workspace (false after
    /// [`release_cache`](Self::release_cache) until the next turn).
    pub fn has_cache(&self) -> bool {
        lock(&self.state).bufs.is_some()
    }

    /// The session's cancel token: [`CancelToken::cancel`] from any thread stops the running
    /// generation within one token (or the next one, when none runs).
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// Replaces the session's cancel token (e.g. one shared with a UI).
    pub fn set_cancel_token(&mut self, token: CancelToken) {
        self.cancel = token;
    }

    fn user_message(text: &str, n_images: usize) -> Message {
        Message::user_with_images(n_images, text)
    }

    /// Sends a user turn (`text` after `images`, several images allowed) and generates the
    /// whole reply.
    pub fn send(
        &mut self,
        text: &str,
        images: Vec<ImageInput>,
        opts: &GenerationOptions,
    ) -> Result<Reply> {
        self.send_with(text, images, opts, |_| ControlFlow::Continue(()))
    }

    /// Sends a user turn and calls `on_delta` with each piece of text as it is generated
    /// (complete UTF-8, stop strings held back); returning [`ControlFlow::Break`] stops the
    /// generation (finish reason [`FinishReason::Cancelled`]).
    pub fn send_with(
        &mut self,
        text: &str,
        images: Vec<ImageInput>,
        opts: &GenerationOptions,
        mut on_delta: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Reply> {
        let mut st = lock(&self.state);
        let user = Self::user_message(text, images.len());
        let mut g = Generation::begin(
            &self.model,
            &mut st,
            self.system.as_deref(),
            user,
            images,
            opts,
            self.cancel.clone(),
        )?;
        while let Some(delta) = g.next_delta(&self.model, &mut st) {
            match delta {
                Ok(d) => {
                    if on_delta(&d).is_break() {
                        g.finish = Some(FinishReason::Cancelled);
                        g.flushed = true;
                        break;
                    }
                }
                Err(e) => {
                    g.finalize(&self.model, &mut st);
                    return Err(e);
                }
            }
        }
        Ok(g.finalize(&self.model, &mut st))
    }

    /// Sends a user turn and returns a blocking iterator over the reply's text deltas. Errors
    /// (also of the prompt) come as items. Dropping the iterator early stops generation; the
    /// text so far joins the conversation. [`TextStream::into_reply`] gives the [`Reply`].
    pub fn send_stream(
        &mut self,
        text: &str,
        images: Vec<ImageInput>,
        opts: &GenerationOptions,
    ) -> TextStream<'_> {
        let mut st = lock(&self.state);
        let user = Self::user_message(text, images.len());
        let started = Generation::begin(
            &self.model,
            &mut st,
            self.system.as_deref(),
            user,
            images,
            opts,
            self.cancel.clone(),
        );
        let (gen_, error) = match started {
            Ok(g) => (Some(g), None),
            Err(e) => (None, Some(e)),
        };
        TextStream {
            model: &self.model,
            state: st,
            generation: gen_,
            error,
        }
    }

    /// Sends a user turn and returns an async [`Stream`](futures_core::Stream) of text deltas.
    ///
    /// Generation runs on a new OS thread (the GPU work is blocking) and forwards each delta
    /// through a channel that wakes the consumer's task, so the stream works with any executor.
    /// Other calls on this session wait until the generation has ended. Dropping the stream
    /// cancels the generation within one token.
    pub fn send_async(
        &mut self,
        text: &str,
        images: Vec<ImageInput>,
        opts: &GenerationOptions,
    ) -> AsyncTextStream {
        let shared = Arc::new(Shared::default());
        let stream = AsyncTextStream {
            shared: shared.clone(),
            cancel: self.cancel.clone(),
        };
        let model = self.model.clone();
        let state = self.state.clone();
        let system = self.system.clone();
        let user = Self::user_message(text, images.len());
        let opts = opts.clone();
        let cancel = self.cancel.clone();
        let worker = std::thread::Builder::new()
            .name("gemma-wgpu generation".into())
            .spawn(move || {
                let mut st = lock(&state);
                let mut g = match Generation::begin(
                    &model,
                    &mut st,
                    system.as_deref(),
                    user,
                    images,
                    &opts,
                    cancel,
                ) {
                    Ok(g) => g,
                    Err(e) => {
                        shared.push(Some(Err(e)));
                        shared.push(None);
                        return;
                    }
                };
                while let Some(d) = g.next_delta(&model, &mut st) {
                    if !shared.push(Some(d)) {
                        g.finish = Some(FinishReason::Cancelled);
                        break;
                    }
                }
                g.finalize(&model, &mut st);
                shared.push(None);
            });
        if let Err(e) = worker {
            stream.shared.push(Some(Err(Error::InvalidArgument(format!(
                "cannot start the generation thread: {e}"
            )))));
            stream.shared.push(None);
        }
        stream
    }
}

/// Blocking iterator over the text deltas of one reply (from [`ChatSession::send_stream`]).
/// Holds the session's conversation until dropped.
pub struct TextStream<'a> {
    model: &'a Model,
    state: MutexGuard<'a, State>,
    generation: Option<Generation>,
    error: Option<Error>,
}

impl Iterator for TextStream<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            return Some(Err(e));
        }
        let g = self.generation.as_mut()?;
        g.next_delta(self.model, &mut self.state)
    }
}

impl TextStream<'_> {
    /// Runs the generation to its end (discarding the remaining deltas) and returns the reply.
    pub fn into_reply(mut self) -> Result<Reply> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let Some(mut g) = self.generation.take() else {
            return Err(Error::InvalidArgument(
                "the generation did not start".into(),
            ));
        };
        while let Some(d) = g.next_delta(self.model, &mut self.state) {
            if let Err(e) = d {
                g.finalize(self.model, &mut self.state);
                return Err(e);
            }
        }
        Ok(g.finalize(self.model, &mut self.state))
    }
}

impl Drop for TextStream<'_> {
    fn drop(&mut self) {
        if let Some(mut g) = self.generation.take() {
            if g.finish.is_none() {
                g.finish = Some(FinishReason::Cancelled);
            }
            g.finalize(self.model, &mut self.state);
        }
    }
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Result<String>>,
    done: bool,
    dropped: bool,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Shared(Mutex<Queue>);

impl Shared {
    /// Queues an item (`None` = end of stream) and wakes the consumer; false when the consumer
    /// is gone.
    fn push(&self, item: Option<Result<String>>) -> bool {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match item {
            Some(i) => q.items.push_back(i),
            None => q.done = true,
        }
        if let Some(w) = q.waker.take() {
            w.wake();
        }
        !q.dropped
    }
}

/// Async stream of the text deltas of one reply (from [`ChatSession::send_async`]).
/// Implements [`futures_core::Stream`]; dropping it cancels the generation.
pub struct AsyncTextStream {
    shared: Arc<Shared>,
    cancel: CancelToken,
}

impl futures_core::Stream for AsyncTextStream {
    type Item = Result<String>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut q = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(item) = q.items.pop_front() {
            return Poll::Ready(Some(item));
        }
        if q.done {
            return Poll::Ready(None);
        }
        q.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncTextStream {
    /// Requests cancellation (the stream then ends within one token).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Blocks until the next item (for callers without an executor).
    pub fn next_blocking(&mut self) -> Option<Result<String>> {
        loop {
            {
                let mut q = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(item) = q.items.pop_front() {
                    return Some(item);
                }
                if q.done {
                    return None;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for AsyncTextStream {
    fn drop(&mut self) {
        let mut q = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        q.dropped = true;
        if !q.done {
            self.cancel.cancel();
        }
    }
}

impl Model {
    /// Starts a conversation ([`ChatSession::new`]).
    pub fn chat(&self) -> Result<ChatSession> {
        ChatSession::new(self)
    }

    /// One-shot generation of a reply to `user` (with its images) on a fresh KV cache sized for
    /// the prompt plus `max_new_tokens`.
    pub fn generate(
        &self,
        system: Option<&str>,
        user: Message,
        images: Vec<ImageInput>,
        opts: &GenerationOptions,
    ) -> Result<Reply> {
        self.generate_hooked(system, user, images, opts, None, None, &mut |_| {
            ControlFlow::Continue(())
        })
    }

    /// [`generate`](Self::generate) with a cancel token, a published token count and a delta
    /// callback (the machinery of the background forms).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn generate_hooked(
        &self,
        system: Option<&str>,
        user: Message,
        images: Vec<ImageInput>,
        opts: &GenerationOptions,
        cancel: Option<CancelToken>,
        published: Option<Arc<AtomicUsize>>,
        on_delta: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Reply> {
        // Size the cache: render first (cheap), then allocate only what the turn needs.
        let n_img = images.len();
        let features = encode_images(self, images)?;
        if user.n_images() != n_img {
            return Err(Error::ImageTokenMismatch {
                placeholders: user.n_images(),
                images: n_img,
            });
        }
        let ids = prompt_ids(self, system, std::slice::from_ref(&user), &features)?;
        let max_context = (ids.len() + opts.max_new_tokens + 1).min(self.options().max_context);
        let mut st = State::new(self, max_context.max(ids.len() + 1))?;
        let counters0 = self.context().counters().snapshot();
        let mut g = Generation::start(
            self,
            &mut st,
            vec![user],
            features,
            ids,
            opts,
            cancel.unwrap_or_default(),
            GenerationStats::default(),
            counters0,
        )?;
        g.published = published;
        while let Some(d) = g.next_delta(self, &mut st) {
            if on_delta(&d?).is_break() {
                g.finish = Some(FinishReason::Cancelled);
                g.flushed = true;
                break;
            }
        }
        Ok(g.finalize(self, &mut st))
    }

    /// Describes an image with the model's generation defaults ([`CAPTION_PROMPT`]).
    pub fn caption(&self, image: impl Into<ImageInput>) -> Result<String> {
        self.caption_with(image, &self.inner.generation)
    }

    /// Describes an image with the given options.
    pub fn caption_with(
        &self,
        image: impl Into<ImageInput>,
        opts: &GenerationOptions,
    ) -> Result<String> {
        Ok(self.caption_reply(image, opts)?.text)
    }

    /// Describes an image; the whole [`Reply`] (tokens, prompt ids, statistics).
    pub fn caption_reply(
        &self,
        image: impl Into<ImageInput>,
        opts: &GenerationOptions,
    ) -> Result<Reply> {
        self.generate(
            None,
            Message::user_with_images(1, CAPTION_PROMPT),
            vec![image.into()],
            opts,
        )
    }

    /// Answers a question about an image with the model's generation defaults.
    pub fn ask(&self, image: impl Into<ImageInput>, question: &str) -> Result<String> {
        self.ask_with(image, question, &self.inner.generation)
    }

    /// Answers a question about an image with the given options.
    pub fn ask_with(
        &self,
        image: impl Into<ImageInput>,
        question: &str,
        opts: &GenerationOptions,
    ) -> Result<String> {
        Ok(self.ask_reply(image, question, opts)?.text)
    }

    /// Answers a question about an image; the whole [`Reply`].
    pub fn ask_reply(
        &self,
        image: impl Into<ImageInput>,
        question: &str,
        opts: &GenerationOptions,
    ) -> Result<Reply> {
        self.generate(
            None,
            Message::user_with_images(1, question),
            vec![image.into()],
            opts,
        )
    }
}

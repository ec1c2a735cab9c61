//! [`ChatSession`]: a multi-turn conversation that keeps its KV cache between turns, and the
//! three ways to run a [`Request`] on it: to completion ([`ChatSession::send`]), as a stream
//! ([`ChatSession::stream`]) and in the background ([`ChatSession::spawn`]).

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use super::order::{Order, Ticket};
use super::state::{State, lock};
use super::step::{Generation, Turn};
use super::{CancelToken, GenerationHandle, Reply, ReplyStream, Request};
use crate::error::Result;
use crate::memory::{SessionMem, SessionMemory};
use crate::model::Model;
use crate::prompt::{Content, Message, Role};

/// A multi-turn conversation with a model, keeping its KV cache between turns.
///
/// Each [`send`](Self::send) renders the whole conversation with the chat template and prefills
/// only the tokens the cache does not hold yet (the reply of the previous turn, up to its
/// end-of-turn token, is part of the cached history). A session is `Send + Sync`; it holds a
/// clone of the [`Model`] handle, so it may outlive the `Model` value it came from.
///
/// ```no_run
/// use gemma_wgpu::{Model, Request};
/// let model = Model::load("path/to/gemma-4-E2B-it")?;
/// let mut chat = model.chat()?.with_system("Answer briefly.");
/// let r = chat.send(Request::new("What is in this picture?").with_image("cat.jpg"))?;
/// println!("{}", r.text);
/// for delta in chat.stream("And its color?") {
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
    /// Runs the calls on the conversation in the order they were made (see `order.rs`).
    order: Arc<Order>,
}

/// The conversation, locked once every earlier call on the session (a spawned turn included)
/// has ended.
struct Held<'a> {
    // Dropped in this order: the state's lock first, then the place in the order.
    state: std::sync::MutexGuard<'a, State>,
    _ticket: Ticket,
}

impl std::ops::Deref for Held<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl std::fmt::Debug for ChatSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatSession")
            .field("system", &self.system)
            .field("turns", &self.history_len())
            .finish_non_exhaustive()
    }
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
            order: Arc::default(),
        })
    }

    /// The conversation, after the calls made before this one.
    fn state(&self) -> Held<'_> {
        let ticket = self.order.ticket();
        ticket.wait();
        Held {
            state: lock(&self.state),
            _ticket: ticket,
        }
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
        self.state().messages.clone()
    }

    /// Tokens of the conversation so far (prompt and replies, end-of-turn tokens included).
    pub fn history(&self) -> Vec<u32> {
        self.state().history.clone()
    }

    fn history_len(&self) -> usize {
        self.state.lock().map(|s| s.history.len()).unwrap_or(0)
    }

    /// Tokens held in the KV cache.
    pub fn cached_tokens(&self) -> usize {
        self.state().position()
    }

    /// The logits (`[vocab]`) at the last prompt position of the latest turn, as prefilled.
    pub fn last_prompt_logits(&self) -> Option<Vec<f32>> {
        self.state().last_logits.clone()
    }

    /// Replaces the text of the latest model reply (e.g. after post-processing it). The next
    /// turn renders the conversation with it and reuses the KV cache up to the first token that
    /// differs. Returns false when the conversation has no reply yet.
    pub fn set_last_reply(&mut self, text: impl Into<String>) -> bool {
        let mut st = self.state();
        match st.messages.last_mut() {
            Some(m) if m.role == Role::Assistant => {
                m.content = vec![Content::Text(text.into())];
                true
            }
            _ => false,
        }
    }

    /// Rewinds the conversation to its first `keep` messages (user and model messages; the
    /// system prompt stays) and returns how many were removed. The images of the removed
    /// messages are dropped with them. The next turn reuses the KV cache up to where the kept
    /// conversation and the new prompt first differ, so going back a few turns re-prefills only
    /// what changed. Waits for a running generation to end first.
    ///
    /// ```no_run
    /// # let model = gemma_wgpu::Model::load("path/to/gemma-4-E2B-it")?;
    /// let mut chat = model.chat()?;
    /// chat.send("Name a colour.")?;
    /// chat.truncate(0); // try the first question again, with other options
    /// chat.send("Name a fruit.")?;
    /// # Ok::<(), gemma_wgpu::Error>(())
    /// ```
    pub fn truncate(&mut self, keep: usize) -> usize {
        let mut st = self.state();
        if keep >= st.messages.len() {
            return 0;
        }
        let removed = st.messages.len() - keep;
        st.messages.truncate(keep);
        let images = st
            .messages
            .iter()
            .flat_map(|m| &m.content)
            .filter(|c| matches!(c, Content::Image))
            .count();
        st.images.truncate(images);
        st.update_mem();
        removed
    }

    /// Forgets the conversation (the system prompt stays; buffers are kept).
    pub fn reset(&mut self) {
        self.state().reset();
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
        self.state().release()
    }

    /// Whether the session holds its KV cache and workspace (false after
    /// [`release_cache`](Self::release_cache) until the next turn).
    pub fn has_cache(&self) -> bool {
        self.state().bufs.is_some()
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

    /// Sends a user turn and generates the whole reply on this thread. The reply joins the
    /// conversation.
    pub fn send(&mut self, req: impl Into<Request>) -> Result<Reply> {
        let mut st = self.state();
        let g = begin(
            &self.model,
            &mut st.state,
            self.system.as_deref(),
            self.cancel.clone(),
            req.into(),
        )?;
        g.run(&self.model, &mut st.state, &mut |_| ControlFlow::Continue(()))
    }

    /// Sends a user turn and returns the reply's text deltas as they are generated (a
    /// blocking iterator and an async stream, see [`ReplyStream`]). Other calls on this
    /// session wait until the stream is dropped.
    pub fn stream(&mut self, req: impl Into<Request>) -> ReplyStream<'_> {
        ReplyStream::spawn(self.work(req.into()))
    }

    /// Sends a user turn and generates the reply on a worker thread; returns at once.
    ///
    /// The [`GenerationHandle`] streams the text deltas and then the [`Reply`]; its
    /// [`cancel`](GenerationHandle::cancel) (or the session's
    /// [`cancel_token`](ChatSession::cancel_token)) stops it within one token. Other calls on
    /// this session wait until the generation has ended; the reply joins the conversation as
    /// with [`send`](ChatSession::send).
    pub fn spawn(&mut self, req: impl Into<Request>) -> GenerationHandle {
        GenerationHandle::spawn(self.work(req.into()))
    }

    /// The turn `req` as the work of a worker thread.
    fn work(&self, req: Request) -> super::background::Work {
        let model = self.model.clone();
        let state = self.state.clone();
        let system = self.system.clone();
        let session_cancel = self.cancel.clone();
        // Taken now, on the caller's thread: the worker runs this turn after the calls made
        // before it, and the calls made after it wait for it, whenever the worker starts.
        let ticket = self.order.ticket();
        Box::new(move |cancel, published, on_delta| {
            ticket.wait();
            let mut st = lock(&state);
            let g = begin(&model, &mut st, system.as_deref(), session_cancel, req)?
                .with_cancel_also(cancel)
                .with_published(published);
            g.run(&model, &mut st, on_delta)
        })
    }
}

/// Sets up `req` after the conversation of `st` and starts it.
fn begin(
    model: &Model,
    st: &mut State,
    system: Option<&str>,
    cancel: CancelToken,
    req: Request,
) -> Result<Generation> {
    let turn = Turn::prepare(model, system, &st.messages, &st.images, req)?;
    Generation::start(model, st, turn, cancel)
}

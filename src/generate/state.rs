//! The GPU and host state of one conversation (KV cache, workspace, penalty ids, messages,
//! image features, processed tokens), shared by a [`ChatSession`](super::ChatSession) and the
//! generation running on it.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::memory::{SessionMem, SessionMemory};
use crate::model::Model;
use crate::prompt::Message;
use crate::model::text::{KvCache, Workspace};

/// The GPU buffers of a conversation that [`ChatSession::release_cache`] gives back.
pub(crate) struct Buffers {
    pub(crate) cache: KvCache,
    pub(crate) ws: Workspace,
    /// Distinct ids seen by the repetition penalty (u32 `[max_context + 1]`), preallocated.
    pub(crate) penalty_ids: GpuTensor,
}

impl Buffers {
    pub(crate) fn new(model: &Model, max_context: usize) -> Result<Self> {
        let inner = &model.inner;
        inner.ctx.check_health()?;
        let (cache, ws) = inner.text.new_session(max_context, model.session_chunk())?;
        Self::with_cache(&inner.ctx, cache, ws, max_context)
    }

    fn with_cache(ctx: &GpuContext, cache: KvCache, ws: Workspace, max_context: usize) -> Result<Self> {
        let penalty_ids = GpuTensor::zeros(ctx, &[max_context + 1], DType::U32)?;
        Ok(Buffers {
            cache,
            ws,
            penalty_ids,
        })
    }
}

/// The GPU bytes of one session's buffers (KV cache; workspace and penalty ids) for a model
/// with text config `cfg` on `ctx`, allocated on a dry-run context (nothing is allocated): the
/// figures [`SessionMemory`] will report for such a session.
pub(crate) fn session_estimate(
    ctx: &GpuContext,
    cfg: &crate::config::TextConfig,
    kv_window: Option<usize>,
    max_context: usize,
    chunk: usize,
) -> Result<SessionMemory> {
    let (dry, measured) = ctx.measuring();
    let (cache, ws) = crate::model::text::session_buffers(&dry, cfg, kv_window, max_context, chunk)?;
    let b = Buffers::with_cache(&dry, cache, ws, max_context)?;
    // The KV cache counts its tensors by shape (the dry run's stand-ins are 4 bytes); the rest
    // of what was requested is the workspace and the penalty ids.
    let kv_cache = b.cache.bytes();
    let all = measured.bytes.load(std::sync::atomic::Ordering::Relaxed);
    Ok(SessionMemory {
        kv_cache,
        scratch: all.saturating_sub(kv_cache),
        image_features: 0,
    })
}

/// The GPU and host state of one conversation: KV cache, workspace, processed tokens, images.
pub(crate) struct State {
    /// KV cache, workspace, penalty ids; `None` after a release (allocated again by the next
    /// turn, which then prefills the whole conversation).
    pub(crate) bufs: Option<Buffers>,
    /// Context size of the buffers.
    pub(crate) max_context: usize,
    /// Byte counts for [`Model::memory_report`].
    pub(crate) mem: Arc<SessionMem>,
    /// The conversation so far (system prompt excluded; it is added when rendering).
    pub(crate) messages: Vec<Message>,
    /// Soft-token features `[n, hidden]` of every image of the conversation, in order.
    pub(crate) images: Vec<GpuTensor>,
    /// Tokens of the conversation: processed (`..cache.position()`) plus the pending last
    /// generated token(s) that the next turn feeds first.
    pub(crate) history: Vec<u32>,
    /// Logits of the last prompt position of the latest turn.
    pub(crate) last_logits: Option<Vec<f32>>,
    /// Set while a turn runs; a turn interrupted by a panic leaves it set and the next turn
    /// starts from an empty cache.
    pub(crate) dirty: bool,
    /// The conversation (messages, image features) before the running turn, put back when
    /// the turn is interrupted by a panic ([`State::recover`]).
    pub(crate) before_turn: Option<(Vec<Message>, Vec<GpuTensor>)>,
}

impl State {
    pub(crate) fn new(model: &Model, max_context: usize) -> Result<Self> {
        let st = State {
            bufs: Some(Buffers::new(model, max_context)?),
            max_context,
            mem: model.inner.sessions.register(),
            messages: Vec::new(),
            images: Vec::new(),
            history: Vec::new(),
            last_logits: None,
            dirty: false,
            before_turn: None,
        };
        st.update_mem();
        Ok(st)
    }

    pub(crate) fn reset(&mut self) {
        if let Some(b) = &mut self.bufs {
            b.cache.reset();
        }
        self.messages.clear();
        self.images.clear();
        self.history.clear();
        self.last_logits = None;
        self.dirty = false;
        self.before_turn = None;
        self.update_mem();
    }

    /// Repairs the state after a panic inside a turn (the lock was poisoned): a turn that was
    /// running is undone (the conversation as before it) and the cache emptied, so the next
    /// turn prefills the whole conversation, as a fresh session would.
    pub(crate) fn recover(&mut self) {
        if !self.dirty {
            return;
        }
        if let Some((messages, images)) = self.before_turn.take() {
            self.messages = messages;
            self.images = images;
        }
        if let Some(b) = &mut self.bufs {
            b.cache.reset();
        }
        self.history.clear();
        self.last_logits = None;
        self.dirty = false;
        self.update_mem();
    }

    /// GPU bytes held now.
    pub(crate) fn memory(&self) -> SessionMemory {
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

    pub(crate) fn update_mem(&self) {
        self.mem.set(self.memory());
    }

    /// Allocates the buffers again after a release.
    pub(crate) fn ensure(&mut self, model: &Model) -> Result<()> {
        if self.bufs.is_none() {
            self.bufs = Some(Buffers::new(model, self.max_context)?);
            self.update_mem();
        }
        Ok(())
    }

    /// Drops the buffers (the conversation stays); returns the bytes released.
    pub(crate) fn release(&mut self) -> u64 {
        let before = self.memory();
        self.bufs = None;
        self.last_logits = None;
        self.update_mem();
        before.kv_cache + before.scratch
    }

    /// Tokens held in the KV cache.
    pub(crate) fn position(&self) -> usize {
        self.bufs.as_ref().map(|b| b.cache.position()).unwrap_or(0)
    }
}

/// The buffers of `st` (allocated by [`State::ensure`] first).
pub(crate) fn bufs(st: &mut Option<Buffers>) -> Result<&mut Buffers> {
    st.as_mut()
        .ok_or_else(|| Error::InvalidArgument("the session's buffers were released".into()))
}

/// Locks the state of a conversation.
pub(crate) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    match state.lock() {
        Ok(g) => g,
        Err(poisoned) => {
            // A panic inside a turn (a caller's notify callback on the worker thread, or the
            // engine): undo that turn and go on.
            let mut g = poisoned.into_inner();
            g.recover();
            state.clear_poison();
            g
        }
    }
}

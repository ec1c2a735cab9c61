//! The GPU and host state of one conversation (KV cache, workspace, penalty ids, messages,
//! image features, processed tokens), shared by a [`ChatSession`](super::ChatSession) and the
//! generation running on it.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::gpu::{DType, GpuTensor};
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
        let (cache, ws) = inner.text.new_session(max_context, model.session_chunk())?;
        let penalty_ids = GpuTensor::zeros(&inner.ctx, &[max_context + 1], DType::U32)?;
        Ok(Buffers {
            cache,
            ws,
            penalty_ids,
        })
    }
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
    // A panic inside a turn leaves `dirty` set: the next turn then starts from an empty cache.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

//! Where the memory goes: [`Model::memory_report`] (GPU bytes by category, host bytes of the
//! memory-mapped per-layer-embedding table) and per-session figures
//! ([`ChatSession::memory`](crate::ChatSession::memory)). An idle session can give its KV cache
//! and workspace back with [`ChatSession::release_cache`](crate::ChatSession::release_cache).
//!
//! Every figure is the size of buffers that exist right now (wgpu frees a dropped buffer once
//! the GPU is done with it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::model::Model;

/// GPU bytes held by one session (or one running one-shot generation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionMemory {
    /// Keys and values of every layer that owns a cache (0 after
    /// [`release_cache`](crate::ChatSession::release_cache)).
    pub kv_cache: u64,
    /// The decoder workspace (activations of one prefill chunk, logits, selection scratch) and
    /// the repetition-penalty buffer (0 after a release).
    pub scratch: u64,
    /// Soft-token features of the conversation's images (kept across a release: the
    /// conversation is prefilled again from them).
    pub image_features: u64,
}

impl SessionMemory {
    /// All GPU bytes of the session.
    pub fn total(&self) -> u64 {
        self.kv_cache + self.scratch + self.image_features
    }
}

/// Counters of one session, updated when its buffers change (read without locking the session,
/// so a report never waits for a running generation).
#[derive(Debug, Default)]
pub(crate) struct SessionMem {
    kv: AtomicU64,
    scratch: AtomicU64,
    images: AtomicU64,
}

impl SessionMem {
    pub(crate) fn set(&self, m: SessionMemory) {
        self.kv.store(m.kv_cache, Ordering::Relaxed);
        self.scratch.store(m.scratch, Ordering::Relaxed);
        self.images.store(m.image_features, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> SessionMemory {
        SessionMemory {
            kv_cache: self.kv.load(Ordering::Relaxed),
            scratch: self.scratch.load(Ordering::Relaxed),
            image_features: self.images.load(Ordering::Relaxed),
        }
    }
}

/// The model's list of live sessions (weak: a dropped session disappears from the report).
#[derive(Debug, Default)]
pub(crate) struct SessionRegistry(Mutex<Vec<Weak<SessionMem>>>);

impl SessionRegistry {
    pub(crate) fn register(&self) -> Arc<SessionMem> {
        let m = Arc::new(SessionMem::default());
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(&m));
        m
    }

    fn live(&self) -> Vec<SessionMemory> {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .filter_map(|w| w.upgrade())
            .map(|m| m.get())
            .collect()
    }
}

/// Memory of a model and its live sessions ([`Model::memory_report`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// Weight buffers on the GPU (text decoder and vision tower; the per-layer table too when
    /// it was uploaded).
    pub weights_gpu: u64,
    /// KV caches of all live sessions.
    pub kv_cache_gpu: u64,
    /// Workspaces and selection buffers of all live sessions.
    pub scratch_gpu: u64,
    /// Image soft-token features held by live sessions.
    pub image_features_gpu: u64,
    /// The per-layer-embedding table gathered on the host from the memory-mapped checkpoint
    /// (0 when it is on the GPU). Mapped, not read into memory: the OS pages in what is used.
    pub per_layer_table_host: u64,
    /// Live sessions (chat sessions and running one-shot generations).
    pub sessions: usize,
}

impl MemoryReport {
    /// All GPU bytes.
    pub fn gpu_total(&self) -> u64 {
        self.weights_gpu + self.kv_cache_gpu + self.scratch_gpu + self.image_features_gpu
    }
}

/// What a model will take on the GPU before it is loaded ([`Model::estimate_memory`]): the
/// weights as they will be stored and one session at the maximum context. The figures are
/// those [`MemoryReport`] gives once the model is loaded and one session is open
/// ([`MemoryReport::weights_gpu`], [`SessionMemory::kv_cache`], [`SessionMemory::scratch`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Weight buffers (text decoder, vision tower or embedder; the per-layer table when it
    /// goes to the GPU).
    pub weights: u64,
    /// The KV cache of one session at [`max_context`](Self::max_context) tokens.
    pub kv_cache: u64,
    /// That session's workspace and selection buffers.
    pub scratch: u64,
    /// The context the session is sized for.
    pub max_context: usize,
}

impl MemoryEstimate {
    /// All GPU bytes.
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.scratch
    }
}

impl std::fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "weights {:.1} MiB, KV cache {:.1} MiB at {} tokens, workspace {:.1} MiB",
            mib(self.weights),
            mib(self.kv_cache),
            self.max_context,
            mib(self.scratch)
        )
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GPU {:.1} MiB (weights {:.1}, KV cache {:.1}, scratch {:.1}, images {:.1}; {} \
             session(s)), host-mapped per-layer table {:.1} MiB",
            mib(self.gpu_total()),
            mib(self.weights_gpu),
            mib(self.kv_cache_gpu),
            mib(self.scratch_gpu),
            mib(self.image_features_gpu),
            self.sessions,
            mib(self.per_layer_table_host)
        )
    }
}

impl Model {
    /// GPU bytes by category and host bytes of the mapped per-layer table, for the model and
    /// every live session. Never waits for a running generation.
    pub fn memory_report(&self) -> MemoryReport {
        let report = &self.inner.report;
        let live = self.inner.sessions.live();
        MemoryReport {
            weights_gpu: report.bytes_uploaded,
            kv_cache_gpu: live.iter().map(|m| m.kv_cache).sum(),
            scratch_gpu: live.iter().map(|m| m.scratch).sum(),
            image_features_gpu: live.iter().map(|m| m.image_features).sum(),
            per_layer_table_host: report.bytes_host,
            sessions: live.len(),
        }
    }
}

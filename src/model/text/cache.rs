//! The KV cache: only layers that compute their own K/V own a cache. Sliding-window layers keep a
//! ring of `sliding_window + chunk` positions (so a prefill chunk never overwrites keys that its
//! own earlier queries still see); full layers hold up to the maximum context. Allocated once.

use crate::config::{LayerType, TextConfig};
use crate::error::{Error, Result};
use crate::gpu::ops::KvWindows;
use crate::gpu::{DType, GpuContext, GpuTensor};

/// K and V of one cache-owning layer: `cap` slots of `[n_kv_heads, head_dim]` each; the key of
/// absolute position p lives in slot `p % cap`. A ring larger than one storage binding of the
/// device is split into position windows of `slots` slots, each its own `[n_kv_heads, slots_w,
/// head_dim]` buffer (see [`KvWindows`]); otherwise there is one window of all `cap` slots.
#[derive(Debug)]
pub struct LayerCache {
    /// Key windows (after k_norm and RoPE).
    pub k: Vec<GpuTensor>,
    /// Value windows (after the weightless v_norm).
    pub v: Vec<GpuTensor>,
    /// Slots.
    pub cap: usize,
    /// Slots per window (all but the last).
    pub slots: usize,
}

impl LayerCache {
    /// The windows as the attention kernels take them.
    pub fn store(&self) -> KvWindows<'_> {
        KvWindows {
            k: &self.k,
            v: &self.v,
            slots: self.slots as u32,
        }
    }

    /// Allocates a ring of `cap` slots of `nkv` heads of `hd`, split into windows that each fit
    /// one storage binding of `ctx` (and hold at most `window` slots).
    fn new(
        ctx: &GpuContext,
        nkv: usize,
        cap: usize,
        hd: usize,
        window: Option<usize>,
    ) -> Result<Self> {
        let slot_bytes = (nkv * hd * 4) as u64;
        let fit = ctx.caps().max_binding_size.min(ctx.caps().max_buffer_size) / slot_bytes;
        if fit == 0 {
            return Err(Error::Gpu(crate::gpu::GpuError::LimitExceeded {
                what: format!("one KV-cache slot ({nkv} kv heads × {hd})"),
                needed: slot_bytes,
                limit: ctx.caps().max_binding_size,
                limit_name: "max_storage_buffer_binding_size",
            }));
        }
        let slots = (fit as usize).min(cap).min(window.unwrap_or(usize::MAX).max(1));
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let mut start = 0;
        while start < cap {
            let n = slots.min(cap - start);
            k.push(GpuTensor::zeros(ctx, &[nkv, n, hd], DType::F32)?);
            v.push(GpuTensor::zeros(ctx, &[nkv, n, hd], DType::F32)?);
            start += n;
        }
        Ok(LayerCache { k, v, cap, slots })
    }

    /// Windows of the ring (1 when it fits one binding).
    pub fn windows(&self) -> usize {
        self.k.len()
    }
}

/// The KV cache of one session.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    pos: usize,
    max_context: usize,
    /// How far [`truncate`](KvCache::truncate) may rewind without losing sliding-window keys.
    rewind_slack: usize,
}

impl KvCache {
    /// Allocates the cache for `max_context` tokens, prefill chunks of up to `chunk` tokens;
    /// each ring in windows of at most `window` positions (`None`: as many as one storage
    /// binding holds).
    pub fn new(
        ctx: &GpuContext,
        cfg: &TextConfig,
        max_context: usize,
        chunk: usize,
        window: Option<usize>,
    ) -> Result<Self> {
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let mut rewind_slack = usize::MAX;
        for i in 0..cfg.num_hidden_layers {
            if cfg.kv_source(i) != Some(i) {
                layers.push(None);
                continue;
            }
            let hd = cfg.layer_head_dim(i);
            let nkv = cfg.layer_kv_heads(i);
            let cap = match cfg.layer_types[i] {
                LayerType::SlidingAttention => (cfg.sliding_window + chunk).min(max_context.max(1)),
                LayerType::FullAttention => max_context.max(1),
            };
            if cfg.layer_types[i] == LayerType::SlidingAttention && cap < max_context {
                rewind_slack = rewind_slack.min(cap.saturating_sub(cfg.sliding_window));
            }
            layers.push(Some(LayerCache::new(ctx, nkv, cap, hd, window)?));
        }
        Ok(KvCache {
            layers,
            pos: 0,
            max_context,
            rewind_slack,
        })
    }

    /// Number of tokens already in the cache (the position of the next token).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The maximum context.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// Forgets everything (the buffers are kept).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Rewinds to `pos` tokens (e.g. to reuse a common prefix). Only moving backwards is allowed.
    pub fn truncate(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
    }

    /// Whether [`truncate`](Self::truncate) to `pos` keeps the cache valid: a sliding-window
    /// layer's ring must not have overwritten a key that position `pos` still attends to, i.e.
    /// at most (ring capacity - window) tokens may be dropped.
    pub fn can_truncate_to(&self, pos: usize) -> bool {
        pos <= self.pos && self.pos - pos <= self.rewind_slack
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.pos += n;
    }

    /// The cache of layer `i` (which must own one).
    pub fn layer(&self, i: usize) -> Result<&LayerCache> {
        self.layers
            .get(i)
            .and_then(|l| l.as_ref())
            .ok_or_else(|| Error::InvalidArgument(format!("layer {i} owns no KV cache")))
    }

    /// Bytes of GPU memory held by the cache.
    pub fn bytes(&self) -> u64 {
        self.layers
            .iter()
            .flatten()
            .flat_map(|l| l.k.iter().chain(&l.v))
            .map(|t| t.bytes())
            .sum()
    }

    /// The most windows any layer's ring is split into (1: every ring fits one binding).
    pub fn max_windows(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(LayerCache::windows)
            .max()
            .unwrap_or(1)
    }
}

//! The KV cache: only layers that compute their own K/V own a cache. Sliding-window layers keep a
//! ring of `sliding_window + chunk` positions (so a prefill chunk never overwrites keys that its
//! own earlier queries still see); full layers hold up to the maximum context. Allocated once.

use crate::config::{LayerType, TextConfig};
use crate::error::{Error, Result};
use crate::gpu::{DType, GpuContext, GpuTensor};

/// K and V of one cache-owning layer: `[n_kv_heads, cap, head_dim]` each; the key of absolute
/// position p lives in slot `p % cap`.
#[derive(Debug)]
pub struct LayerCache {
    /// Keys (after k_norm and RoPE).
    pub k: GpuTensor,
    /// Values (after the weightless v_norm).
    pub v: GpuTensor,
    /// Slots.
    pub cap: usize,
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
    /// Allocates the cache for `max_context` tokens, prefill chunks of up to `chunk` tokens.
    pub fn new(
        ctx: &GpuContext,
        cfg: &TextConfig,
        max_context: usize,
        chunk: usize,
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
            layers.push(Some(LayerCache {
                k: GpuTensor::zeros(ctx, &[nkv, cap, hd], DType::F32)?,
                v: GpuTensor::zeros(ctx, &[nkv, cap, hd], DType::F32)?,
                cap,
            }));
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
            .map(|l| l.k.bytes() + l.v.bytes())
            .sum()
    }
}

//! Attention (`wgsl/attention.wgsl`): flash-decode for one query, online-softmax prefill for
//! many, over keys and values written by [`kv_write`](super::kv_write) or
//! [`attention_input`](fn@super::attention_input).
//!
//! Keys and values live in a store addressed by absolute position: the key of position `p` of
//! kv head `g` sits in slot `p % cap`. [`KvLayout::HeadMajor`] is the KV cache `[nkv, cap, hd]`
//! (full layers: `cap ≥ context`; sliding layers: a ring); [`KvLayout::TokenMajor`] is a plain
//! contiguous `[cap, nkv, hd]` tensor (the vision tower's k and v, with `cap = L`).
//!
//! Ring sizing for sliding layers: a call that processes queries `p0 .. p0 + C` needs keys
//! `p0 + 1 − W ..= p0 + C − 1` present at once, so a ring must hold `cap ≥ W + C − 1` slots
//! (use `cap = window + max_chunk`, where `max_chunk` is the largest number of tokens written and
//! attended in one step). [`kv_write`](super::kv_write) of more than `cap` rows keeps only the last `cap`.
//!
//! Image blocks of bidirectional-vision models (12B / 26B / 31B, sliding layers):
//! [`AttnMask::CausalBounded`] with [`attention_prefill_bounded`] takes a per-query upper bound
//! from a small u32 buffer (the end of the query's image block, or `q + 1` for text), so a
//! query inside a block also sees the block's later keys while its window start stays
//! `q + 1 − W`. The ring then needs the keys of `q0 + 1 − W ..` the largest bound present: the
//! bounds of one call must not exceed the positions written before it (`cap ≥ W + C` as above).
//!
//! Requirements of the attention ops: `head_dim` a multiple of 4 and at most 512; q, k, v and
//! out element offsets multiples of 4 (16 bytes); `out` in a different buffer from q, k, v.
//! k and v may share one buffer.

use crate::gpu::{
    Access, DType, GpuContext, GpuError, GpuTensor, KernelSpec, ParamLayout, Recorder,
    uniform_params,
};

/// Keys per attention tile (the workgroup size of the attention kernels).
const TILE: u32 = 64;
/// Largest supported head dim.
pub const MAX_HEAD_DIM: usize = 512;

/// Which keys a query sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnMask {
    /// The query at absolute position `q` sees keys `q − W < k ≤ q` with `window = Some(W)`,
    /// or `0 ≤ k ≤ q` with `None`.
    Causal {
        /// Sliding window W (a query sees itself and the W − 1 previous keys).
        window: Option<u32>,
    },
    /// Every query sees keys `0 .. n_keys` (the vision tower; padding beyond is masked).
    Bidirectional {
        /// Number of valid keys.
        n_keys: u32,
    },
    /// As [`Causal`](AttnMask::Causal), except that query `i` of a call sees the keys
    /// `min(max(0, q + 1 − W), lo_i) ≤ k < max(q + 1, hi_i)` with `(lo_i, hi_i)` =
    /// `(bounds[2i], bounds[2i + 1])` (absolute positions; the bounds buffer of
    /// [`attention_prefill_bounded`]; `(u32::MAX, q + 1)` keeps a query causal). With `hi_i` the
    /// end of query `i`'s image block and `lo_i = u32::MAX` this is transformers'
    /// `window AND (causal OR same image block)` (gemma4's sliding layers); with `lo_i` the
    /// block's start too, `(causal AND window) OR same block` (gemma4_unified). Prefill only.
    CausalBounded {
        /// Sliding window W.
        window: Option<u32>,
    },
}

/// How the key/value store is laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvLayout {
    /// `[n_kv_heads, cap, head_dim]`: the KV cache written by [`kv_write`](super::kv_write).
    #[default]
    HeadMajor,
    /// `[cap, n_kv_heads, head_dim]`: contiguous per-token k/v (e.g. the vision tower's
    /// `[L, heads, hd]` projections, with `cap = L`).
    TokenMajor,
}

/// The geometry of one attention call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnShape {
    /// Query heads.
    pub n_heads: u32,
    /// Key/value heads; `n_heads` must be a multiple (query head h uses kv head
    /// `h / (n_heads / n_kv_heads)`).
    pub n_kv_heads: u32,
    /// Head dim (a multiple of 4, at most 512).
    pub head_dim: u32,
    /// Slots per kv head in the key/value store (position p in slot `p % cap`).
    pub cap: u32,
    /// Score scale (Gemma 4: 1.0).
    pub scale: f32,
    /// The mask.
    pub mask: AttnMask,
    /// The key/value layout.
    pub layout: KvLayout,
}

impl AttnShape {
    fn check(&self, what: &str) -> Result<(), GpuError> {
        let bad = |m: String| {
            Err(GpuError::Kernel {
                kernel: what.into(),
                message: m,
            })
        };
        if self.n_kv_heads == 0
            || self.n_heads == 0
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            return bad(format!(
                "{} heads not a multiple of {} kv heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0
            || !self.head_dim.is_multiple_of(4)
            || self.head_dim as usize > MAX_HEAD_DIM
        {
            return bad(format!("unsupported head dim {}", self.head_dim));
        }
        if self.cap == 0 {
            return bad("cap is 0".into());
        }
        if let AttnMask::Bidirectional { n_keys } = self.mask
            && n_keys > self.cap
        {
            return bad(format!("{n_keys} keys in a store of {} slots", self.cap));
        }
        Ok(())
    }

    /// (head stride, row stride) of the key/value store in elements.
    fn strides(&self) -> (u32, u32) {
        match self.layout {
            KvLayout::HeadMajor => (self.cap * self.head_dim, self.head_dim),
            KvLayout::TokenMajor => (self.head_dim, self.n_kv_heads * self.head_dim),
        }
    }

    /// Visible key range `[lo, hi)` of the query at absolute position `q_pos` (for
    /// [`AttnMask::CausalBounded`], before its bound: the causal range).
    pub fn visible(&self, q_pos: u32) -> (u32, u32) {
        match self.mask {
            AttnMask::Causal { window } | AttnMask::CausalBounded { window } => {
                let hi = q_pos + 1;
                let lo = match window {
                    Some(w) if w > 0 && hi > w => hi - w,
                    _ => 0,
                };
                (lo, hi)
            }
            AttnMask::Bidirectional { n_keys } => (0, n_keys),
        }
    }
}

/// Flash-decode scratch: per (head, chunk) the running max and sum and the unnormalised
/// weighted V. Allocate once per model (the largest `n_heads`, `head_dim` over layers) and
/// reuse for every decode step.
#[derive(Debug, Clone)]
pub struct AttnScratch {
    ml: wgpu::Buffer,
    acc: wgpu::Buffer,
    n_heads: u32,
    max_chunks: u32,
    head_dim: u32,
}

impl AttnScratch {
    /// Bytes of GPU memory held by the scratch buffers.
    pub fn bytes(&self) -> u64 {
        self.ml.size() + self.acc.size()
    }

    /// Scratch for up to `n_heads` query heads, `max_chunks` chunks and head dim `head_dim`.
    /// Decode splits the visible keys into at most `max_chunks` chunks (of at least 64 keys);
    /// 64 to 256 chunks are reasonable.
    pub fn new(
        ctx: &GpuContext,
        n_heads: usize,
        max_chunks: usize,
        head_dim: usize,
    ) -> Result<Self, GpuError> {
        let n = (n_heads * max_chunks.max(1)) as u64;
        Ok(AttnScratch {
            ml: ctx.create_storage("attn-scratch-ml", n * 8)?,
            acc: ctx.create_storage("attn-scratch-acc", n * head_dim.max(4) as u64 * 4)?,
            n_heads: n_heads as u32,
            max_chunks: max_chunks.max(1) as u32,
            head_dim: head_dim as u32,
        })
    }
}

uniform_params! {
    /// Parameters of `attention.wgsl`.
    struct Params {
        n_heads: u32,
        group: u32,
        hd4: u32,
        cap: u32,
        head_stride4: u32,
        row_stride4: u32,
        q_off4: u32,
        k_off4: u32,
        v_off4: u32,
        out_off4: u32,
        q_pos0: u32,
        window: u32,
        n_keys: u32,
        causal: u32,
        chunk_len: u32,
        n_chunks: u32,
        max_chunks: u32,
        scale: f32,
        ml_off: u32,
        acc_off4: u32,
        bound_off: u32,
        _p0: u32,
        _p1: u32,
        _p2: u32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

#[derive(Clone, Copy)]
enum Mode {
    Partial,
    Direct,
    /// Direct with the per-query bounds buffer.
    Bounded,
    Combine,
}

/// Query heads per workgroup: the largest of 8, 4, 2, 1 that divides the GQA group and keeps
/// `g * head_dim <= 2048` (the workgroup's q tile).
fn heads_per_workgroup(shape: &AttnShape) -> u32 {
    let group = shape.n_heads / shape.n_kv_heads.max(1);
    [8u32, 4, 2, 1]
        .into_iter()
        .find(|&g| group.is_multiple_of(g) && g * shape.head_dim <= 2048)
        .unwrap_or(1)
}

fn spec(mode: Mode, g: u32, subgroups: bool) -> KernelSpec {
    let r = Access::Read;
    let w = Access::ReadWrite;
    match mode {
        Mode::Partial => KernelSpec::new("attention", "main", &[r, r, r, w, w])
            .define("PARTIAL", 1)
            .define("G", g)
            .with_subgroups(subgroups),
        Mode::Direct => KernelSpec::new("attention", "main", &[r, r, r, w])
            .define("G", g)
            .with_subgroups(subgroups),
        Mode::Bounded => KernelSpec::new("attention", "main", &[r, r, r, w, r])
            .define("BOUNDS", 1)
            .define("G", g)
            .with_subgroups(subgroups),
        Mode::Combine => KernelSpec::new("attention", "combine", &[r, r, w]).define("COMBINE", 1),
    }
}

/// All specialisations (for shader validation): the attention kernels on the subgroup path
/// (one subgroup per key) and the portable path (one thread per key) and the chunk combine.
pub fn all_specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for sg in [true, false] {
        for g in [1, 2, 4, 8] {
            v.push(spec(Mode::Partial, g, sg));
            v.push(spec(Mode::Direct, g, sg));
            v.push(spec(Mode::Bounded, g, sg));
        }
    }
    v.push(spec(Mode::Combine, 1, false));
    v
}

fn err(what: &str, m: String) -> GpuError {
    GpuError::Kernel {
        kernel: what.into(),
        message: m,
    }
}

#[allow(clippy::too_many_arguments)]
fn base_params(
    what: &str,
    q: &GpuTensor,
    k: &GpuTensor,
    v: &GpuTensor,
    out: &GpuTensor,
    shape: &AttnShape,
    n_queries: usize,
    q_pos0: u32,
) -> Result<Params, GpuError> {
    shape.check(what)?;
    let hd = shape.head_dim as usize;
    let per_q = shape.n_heads as usize * hd;
    if q.numel() != n_queries * per_q || out.numel() != n_queries * per_q {
        return Err(err(
            what,
            format!(
                "q has {} / out {} elements, need {n_queries} × {} × {hd}",
                q.numel(),
                out.numel(),
                shape.n_heads
            ),
        ));
    }
    let store = shape.n_kv_heads as usize * shape.cap as usize * hd;
    if k.numel() < store || v.numel() < store {
        return Err(err(
            what,
            format!(
                "k/v have {} / {} elements, the store needs {store}",
                k.numel(),
                v.numel()
            ),
        ));
    }
    for (name, t) in [("q", q), ("k", k), ("v", v), ("out", out)] {
        if t.elem_offset() % 4 != 0 {
            return Err(err(
                what,
                format!(
                    "{name} element offset {} not a multiple of 4",
                    t.elem_offset()
                ),
            ));
        }
    }
    if out.buffer == q.buffer || out.buffer == k.buffer || out.buffer == v.buffer {
        return Err(err(what, "out shares a buffer with q, k or v".into()));
    }
    let (hs, rs) = shape.strides();
    let (causal, window, n_keys) = match shape.mask {
        AttnMask::Causal { window } | AttnMask::CausalBounded { window } => {
            (1, window.unwrap_or(0), 0)
        }
        AttnMask::Bidirectional { n_keys } => (0, 0, n_keys),
    };
    Ok(Params {
        n_heads: shape.n_heads,
        group: shape.n_heads / shape.n_kv_heads,
        hd4: shape.head_dim / 4,
        cap: shape.cap,
        head_stride4: hs / 4,
        row_stride4: rs / 4,
        q_off4: q.elem_offset() / 4,
        k_off4: k.elem_offset() / 4,
        v_off4: v.elem_offset() / 4,
        out_off4: out.elem_offset() / 4,
        q_pos0,
        window,
        n_keys,
        causal,
        chunk_len: u32::MAX,
        n_chunks: 1,
        max_chunks: 1,
        scale: shape.scale,
        ml_off: 0,
        acc_off4: 0,
        bound_off: 0,
        _p0: 0,
        _p1: 0,
        _p2: 0,
    })
}

/// Records single-query attention (decode) with flash-decode: the visible keys of the query at
/// absolute position `q_pos` are split into chunks of at least 64 keys (at most
/// `scratch.max_chunks` chunks), one workgroup per (chunk, head) computes the partial max,
/// sum and weighted V, and a second pass combines them.
///
/// `q`, `out`: `[1, n_heads, hd]`; `k_cache`, `v_cache`: the key/value store of `shape`
/// (the keys of every visible position already written). No allocation per call.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode(
    rec: &mut Recorder,
    q: &GpuTensor,
    k_cache: &GpuTensor,
    v_cache: &GpuTensor,
    out: &GpuTensor,
    shape: &AttnShape,
    q_pos: u32,
    scratch: &AttnScratch,
) -> Result<(), GpuError> {
    let what = "attention_decode";
    if let AttnMask::CausalBounded { .. } = shape.mask {
        return Err(err(
            what,
            "a bounded mask (image blocks) is prefill-only: one query is causal".into(),
        ));
    }
    let mut params = base_params(what, q, k_cache, v_cache, out, shape, 1, q_pos)?;
    if shape.n_heads > scratch.n_heads || shape.head_dim > scratch.head_dim {
        return Err(err(
            what,
            format!(
                "scratch is for {} heads × hd {}, need {} × {}",
                scratch.n_heads, scratch.head_dim, shape.n_heads, shape.head_dim
            ),
        ));
    }
    let (lo, hi) = shape.visible(q_pos);
    let n_vis = hi.saturating_sub(lo).max(1);
    let chunk_len = n_vis
        .div_ceil(scratch.max_chunks)
        .max(TILE)
        .next_multiple_of(TILE);
    let n_chunks = n_vis.div_ceil(chunk_len);
    params.chunk_len = chunk_len;
    params.n_chunks = n_chunks;
    params.max_chunks = scratch.max_chunks;
    let sg = rec.ctx().caps().subgroups;
    let g = heads_per_workgroup(shape);
    let partial = rec.ctx().kernel(&spec(Mode::Partial, g, sg))?;
    rec.dispatch(
        &partial,
        &params,
        &[
            (&q.buffer).into(),
            (&k_cache.buffer).into(),
            (&v_cache.buffer).into(),
            (&scratch.ml).into(),
            (&scratch.acc).into(),
        ],
        [n_chunks, shape.n_heads / g, 1],
    )?;
    let combine = rec.ctx().kernel(&spec(Mode::Combine, 1, false))?;
    rec.dispatch(
        &combine,
        &params,
        &[
            (&scratch.ml).into(),
            (&scratch.acc).into(),
            (&out.buffer).into(),
        ],
        [shape.n_heads, 1, 1],
    )
}

/// Records multi-query attention (prefill, or the vision tower's bidirectional attention):
/// query `i` of `q` `[L, n_heads, hd]` has absolute position `q_pos0 + i` and attends to its
/// visible keys in `k_cache` / `v_cache` (already written); one workgroup per (head, query)
/// runs an online softmax over 64-key tiles and writes `out` `[L, n_heads, hd]`.
/// [`AttnMask::CausalBounded`] needs its bounds: use [`attention_prefill_bounded`].
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill(
    rec: &mut Recorder,
    q: &GpuTensor,
    k_cache: &GpuTensor,
    v_cache: &GpuTensor,
    out: &GpuTensor,
    shape: &AttnShape,
    q_pos0: u32,
) -> Result<(), GpuError> {
    prefill(rec, q, k_cache, v_cache, out, shape, q_pos0, None)
}

/// [`attention_prefill`] with a [`AttnMask::CausalBounded`] mask: `bounds` (u32 `[≥ 2L]`, any
/// element offset) holds, per query `i`, `(lo_i, hi_i)`: it sees the keys
/// `min(window start, lo_i) ≤ k < max(q + 1, hi_i)`; every key in that range must already be
/// written and still be in the store. No allocation per call.
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill_bounded(
    rec: &mut Recorder,
    q: &GpuTensor,
    k_cache: &GpuTensor,
    v_cache: &GpuTensor,
    out: &GpuTensor,
    shape: &AttnShape,
    q_pos0: u32,
    bounds: &GpuTensor,
) -> Result<(), GpuError> {
    prefill(rec, q, k_cache, v_cache, out, shape, q_pos0, Some(bounds))
}

#[allow(clippy::too_many_arguments)]
fn prefill(
    rec: &mut Recorder,
    q: &GpuTensor,
    k_cache: &GpuTensor,
    v_cache: &GpuTensor,
    out: &GpuTensor,
    shape: &AttnShape,
    q_pos0: u32,
    bounds: Option<&GpuTensor>,
) -> Result<(), GpuError> {
    let what = "attention_prefill";
    let per_q = (shape.n_heads * shape.head_dim) as usize;
    if per_q == 0 || !q.numel().is_multiple_of(per_q) {
        return Err(err(
            what,
            format!("q has {} elements, not a multiple of {per_q}", q.numel()),
        ));
    }
    let n_queries = q.numel() / per_q;
    let mut params = base_params(what, q, k_cache, v_cache, out, shape, n_queries, q_pos0)?;
    let bounded = matches!(shape.mask, AttnMask::CausalBounded { .. });
    match (bounded, bounds) {
        (true, Some(b)) => {
            if b.dtype != DType::U32 || b.numel() < 2 * n_queries {
                return Err(err(
                    what,
                    format!(
                        "bounds must be u32 with at least 2 × {n_queries} values, got {:?} {:?}",
                        b.dtype, b.shape
                    ),
                ));
            }
            params.bound_off = b.elem_offset();
        }
        (true, None) => {
            return Err(err(what, "a bounded mask needs its bounds buffer".into()));
        }
        (false, Some(_)) => {
            return Err(err(what, "bounds given for a mask without bounds".into()));
        }
        (false, None) => {}
    }
    let sg = rec.ctx().caps().subgroups;
    let g = heads_per_workgroup(shape);
    let mode = if bounded { Mode::Bounded } else { Mode::Direct };
    let kernel = rec.ctx().kernel(&spec(mode, g, sg))?;
    let mut bufs: Vec<crate::gpu::BufSlice<'_>> = vec![
        (&q.buffer).into(),
        (&k_cache.buffer).into(),
        (&v_cache.buffer).into(),
        (&out.buffer).into(),
    ];
    if let Some(b) = bounds {
        bufs.push((&b.buffer).into());
    }
    rec.dispatch(&kernel, &params, &bufs, [1, shape.n_heads / g, n_queries as u32])
}

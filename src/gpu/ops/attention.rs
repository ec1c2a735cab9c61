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

use std::sync::Arc;

use crate::gpu::context::BindGuard;
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
    _guards: Arc<[BindGuard; 2]>,
    n_heads: u32,
    max_chunks: u32,
    head_dim: u32,
}

impl AttnScratch {
    /// Bytes of GPU memory held by the scratch buffers.
    pub fn bytes(&self) -> u64 {
        self.ml.size() + self.acc.size()
    }

    /// Scratch of [`attention_prefill_windows`] over a windowed store: one online-softmax
    /// state per (query, head) for up to `queries` queries of `n_heads` heads.
    pub fn for_prefill(
        ctx: &GpuContext,
        queries: usize,
        n_heads: usize,
        head_dim: usize,
    ) -> Result<Self, GpuError> {
        Self::new(ctx, queries.max(1) * n_heads, 1, head_dim)
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
        let ml = ctx.create_storage("attn-scratch-ml", n * 8)?;
        let acc = ctx.create_storage("attn-scratch-acc", n * head_dim.max(4) as u64 * 4)?;
        Ok(AttnScratch {
            _guards: Arc::new([ctx.bind_guard(&ml), ctx.bind_guard(&acc)]),
            ml,
            acc,
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
        klo: u32,
        khi: u32,
        slot0: u32,
        accum: u32,
        c_base: u32,
        _p0: u32,
        _p1: u32,
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
    /// Partial with the per-query bounds buffer (a windowed store's bounded prefill).
    PartialBounded,
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
        Mode::PartialBounded => KernelSpec::new("attention", "main", &[r, r, r, w, w, r])
            .define("PARTIAL", 1)
            .define("BOUNDS", 1)
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
            v.push(spec(Mode::PartialBounded, g, sg));
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

/// Keys and values of one attention store split into position windows, each its own buffer
/// (a KV cache larger than one storage binding). Slot `s` of the store (`0 ≤ s < cap`) lives in
/// window `s / slots` at local slot `s % slots`; every window is a head-major
/// `[nkv, slots_w, hd]` tensor with `slots_w = slots` except the last, which holds the rest.
/// A store in one piece is [`KvWindows::whole`].
#[derive(Debug, Clone, Copy)]
pub struct KvWindows<'a> {
    /// Key windows.
    pub k: &'a [GpuTensor],
    /// Value windows (the same shapes as `k`).
    pub v: &'a [GpuTensor],
    /// Slots per window (all but the last window).
    pub slots: u32,
}

impl<'a> KvWindows<'a> {
    /// A store in one piece: `k` and `v` hold all `cap` slots.
    pub fn whole(k: &'a GpuTensor, v: &'a GpuTensor, cap: u32) -> Self {
        KvWindows {
            k: std::slice::from_ref(k),
            v: std::slice::from_ref(v),
            slots: cap,
        }
    }

    /// Slots held by window `w` of a store of `cap` slots.
    pub fn window_slots(&self, w: usize, cap: u32) -> u32 {
        let start = w as u32 * self.slots;
        self.slots.min(cap.saturating_sub(start))
    }

    fn check(&self, what: &str, shape: &AttnShape) -> Result<(), GpuError> {
        let n = self.k.len();
        if n == 0 || n != self.v.len() || self.slots == 0 {
            return Err(err(
                what,
                format!(
                    "{} key and {} value windows of {} slots",
                    n,
                    self.v.len(),
                    self.slots
                ),
            ));
        }
        if (n as u64 - 1) * self.slots as u64 >= shape.cap as u64
            || (n as u64 * self.slots as u64) < shape.cap as u64
        {
            return Err(err(
                what,
                format!(
                    "{n} windows of {} slots do not cover a store of {} slots",
                    self.slots, shape.cap
                ),
            ));
        }
        if n > 1 && shape.layout != KvLayout::HeadMajor {
            return Err(err(
                what,
                "a store in several windows must be head-major".into(),
            ));
        }
        let hd = shape.head_dim as usize;
        for w in 0..n {
            let need = shape.n_kv_heads as usize * self.window_slots(w, shape.cap) as usize * hd;
            let (k, v) = (&self.k[w], &self.v[w]);
            if k.numel() < need || v.numel() < need {
                return Err(err(
                    what,
                    format!(
                        "k/v window {w} has {} / {} elements, it needs {need}",
                        k.numel(),
                        v.numel()
                    ),
                ));
            }
            for (name, t) in [("k", k), ("v", v)] {
                if t.elem_offset() % 4 != 0 {
                    return Err(err(
                        what,
                        format!(
                            "{name} window {w} element offset {} not a multiple of 4",
                            t.elem_offset()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The pieces of the key positions `lo .. hi` (`hi − lo ≤ cap`) by window: (window,
    /// first position, end position), in position order; at most `windows + 1` pieces.
    pub fn intervals(&self, cap: u32, lo: u32, hi: u32) -> Vec<(usize, u32, u32)> {
        let mut out = Vec::new();
        let mut p = lo;
        while p < hi {
            let slot = p % cap;
            let w = slot / self.slots;
            let end_slot = ((w + 1) * self.slots).min(cap);
            let run = (hi - p).min(end_slot - slot);
            out.push((w as usize, p, p + run));
            p += run;
        }
        out
    }
}

#[allow(clippy::too_many_arguments)]
fn base_params(
    what: &str,
    q: &GpuTensor,
    kv: &KvWindows<'_>,
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
    kv.check(what, shape)?;
    let (k, v) = (&kv.k[0], &kv.v[0]);
    for (name, t) in [("q", q), ("out", out)] {
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
    if out.buffer == q.buffer || kv.k.iter().chain(kv.v).any(|t| t.buffer == out.buffer) {
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
        klo: 0,
        khi: u32::MAX,
        slot0: 0,
        accum: 0,
        c_base: 0,
        _p0: 0,
        _p1: 0,
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
    let kv = KvWindows::whole(k_cache, v_cache, shape.cap);
    attention_decode_windows(rec, q, &kv, out, shape, q_pos, scratch, None)
}

/// [`attention_decode`] over a store split into position windows: one partial dispatch per
/// window interval of the visible keys (their chunks side by side in the scratch), then one
/// combine; this needs a scratch with more chunks than the intervals (`max_chunks ≥ windows +
/// 2`). With fewer, `state` (an [`AttnScratch::for_prefill`] of at least one query) carries
/// one online-softmax state per head from window to window instead.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode_windows(
    rec: &mut Recorder,
    q: &GpuTensor,
    kv: &KvWindows<'_>,
    out: &GpuTensor,
    shape: &AttnShape,
    q_pos: u32,
    scratch: &AttnScratch,
    state: Option<&AttnScratch>,
) -> Result<(), GpuError> {
    let what = "attention_decode";
    if let AttnMask::CausalBounded { .. } = shape.mask {
        return Err(err(
            what,
            "a bounded mask (image blocks) is prefill-only: one query is causal".into(),
        ));
    }
    let mut params = base_params(what, q, kv, out, shape, 1, q_pos)?;
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
    if hi - lo > shape.cap {
        return Err(err(
            what,
            format!("{} visible keys in a store of {} slots", hi - lo, shape.cap),
        ));
    }
    let pieces = if kv.k.len() == 1 {
        vec![(0, lo, hi)]
    } else {
        kv.intervals(shape.cap, lo, hi)
    };
    let n_pieces = pieces.len().max(1) as u32;
    let sg = rec.ctx().caps().subgroups;
    let g = heads_per_workgroup(shape);
    let partial = rec.ctx().kernel(&spec(Mode::Partial, g, sg))?;
    let combine = rec.ctx().kernel(&spec(Mode::Combine, 1, false))?;
    if n_pieces > 1 && scratch.max_chunks <= n_pieces {
        // window after window, one state per head
        let Some(st) = state else {
            return Err(err(
                what,
                format!(
                    "scratch has {} chunks, {n_pieces} window intervals need more (or a state)",
                    scratch.max_chunks
                ),
            ));
        };
        if st.max_chunks != 1 || st.n_heads < shape.n_heads || st.head_dim < shape.head_dim {
            return Err(err(
                what,
                format!(
                    "state is for {} rows × {} chunks × hd {}, need {} × 1 × {}",
                    st.n_heads, st.max_chunks, st.head_dim, shape.n_heads, shape.head_dim
                ),
            ));
        }
        for (i, &(w, klo, khi)) in pieces.iter().enumerate() {
            window_params(&mut params, kv, w, shape, klo, khi);
            params.accum = u32::from(i > 0);
            rec.dispatch(
                &partial,
                &params,
                &[
                    (&q.buffer).into(),
                    (&kv.k[w].buffer).into(),
                    (&kv.v[w].buffer).into(),
                    (&st.ml).into(),
                    (&st.acc).into(),
                ],
                [1, shape.n_heads / g, 1],
            )?;
        }
        params.accum = 0;
        return rec.dispatch(
            &combine,
            &params,
            &[(&st.ml).into(), (&st.acc).into(), (&out.buffer).into()],
            [shape.n_heads, 1, 1],
        );
    }
    // Σ ⌈len_i / chunk_len⌉ ≤ n_vis / chunk_len + pieces ≤ max_chunks
    let n_vis = hi.saturating_sub(lo).max(1);
    let budget = if n_pieces == 1 {
        scratch.max_chunks
    } else {
        scratch.max_chunks - n_pieces
    };
    let chunk_len = n_vis.div_ceil(budget).max(TILE).next_multiple_of(TILE);
    params.chunk_len = chunk_len;
    params.max_chunks = scratch.max_chunks;
    let mut c_base = 0;
    for &(w, klo, khi) in &pieces {
        let n_chunks = (khi - klo).max(1).div_ceil(chunk_len);
        window_params(&mut params, kv, w, shape, klo, khi);
        params.n_chunks = n_chunks;
        params.c_base = c_base;
        rec.dispatch(
            &partial,
            &params,
            &[
                (&q.buffer).into(),
                (&kv.k[w].buffer).into(),
                (&kv.v[w].buffer).into(),
                (&scratch.ml).into(),
                (&scratch.acc).into(),
            ],
            [n_chunks, shape.n_heads / g, 1],
        )?;
        c_base += n_chunks;
    }
    params.n_chunks = c_base.max(1);
    params.c_base = 0;
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

/// Points `params` at window `w` of `kv` for the keys `klo .. khi` (a whole store: all keys).
fn window_params(
    params: &mut Params,
    kv: &KvWindows<'_>,
    w: usize,
    shape: &AttnShape,
    klo: u32,
    khi: u32,
) {
    if kv.k.len() == 1 {
        params.klo = 0;
        params.khi = u32::MAX;
        params.slot0 = 0;
        return;
    }
    let slots = kv.window_slots(w, shape.cap);
    params.head_stride4 = slots * shape.head_dim / 4;
    params.k_off4 = kv.k[w].elem_offset() / 4;
    params.v_off4 = kv.v[w].elem_offset() / 4;
    params.klo = klo;
    params.khi = khi;
    params.slot0 = w as u32 * kv.slots;
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
    let kv = KvWindows::whole(k_cache, v_cache, shape.cap);
    attention_prefill_windows(rec, q, &kv, out, shape, q_pos0, None, None)
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
    let kv = KvWindows::whole(k_cache, v_cache, shape.cap);
    attention_prefill_windows(rec, q, &kv, out, shape, q_pos0, Some(bounds), None)
}

/// [`attention_prefill`] / [`attention_prefill_bounded`] (`bounds` given) over a store split
/// into position windows. One window: the direct kernel, `scratch` unused. Several: every
/// query's visible keys lie in the last `cap` positions up to the chunk's end
/// (`q_pos0 + L`), which are cut by window; one partial dispatch per piece continues each
/// (query, head)'s online softmax state in `scratch` (made with
/// [`AttnScratch::for_prefill`] for at least `L` queries), then a combine writes `out`.
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill_windows(
    rec: &mut Recorder,
    q: &GpuTensor,
    kv: &KvWindows<'_>,
    out: &GpuTensor,
    shape: &AttnShape,
    q_pos0: u32,
    bounds: Option<&GpuTensor>,
    scratch: Option<&AttnScratch>,
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
    let mut params = base_params(what, q, kv, out, shape, n_queries, q_pos0)?;
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
    if kv.k.len() == 1 {
        let mode = if bounded { Mode::Bounded } else { Mode::Direct };
        let kernel = rec.ctx().kernel(&spec(mode, g, sg))?;
        let mut bufs: Vec<crate::gpu::BufSlice<'_>> = vec![
            (&q.buffer).into(),
            (&kv.k[0].buffer).into(),
            (&kv.v[0].buffer).into(),
            (&out.buffer).into(),
        ];
        if let Some(b) = bounds {
            bufs.push((&b.buffer).into());
        }
        return rec.dispatch(&kernel, &params, &bufs, [1, shape.n_heads / g, n_queries as u32]);
    }
    let Some(scratch) = scratch else {
        return Err(err(
            what,
            format!(
                "a store in {} windows needs a prefill scratch",
                kv.k.len()
            ),
        ));
    };
    let rows = n_queries as u64 * shape.n_heads as u64;
    if scratch.max_chunks != 1
        || (scratch.n_heads as u64) < rows
        || shape.head_dim > scratch.head_dim
    {
        return Err(err(
            what,
            format!(
                "prefill scratch is for {} rows × {} chunks × hd {}, need {rows} × 1 × {}",
                scratch.n_heads, scratch.max_chunks, scratch.head_dim, shape.head_dim
            ),
        ));
    }
    let (AttnMask::Causal { .. } | AttnMask::CausalBounded { .. }) = shape.mask else {
        return Err(err(
            what,
            "a bidirectional store must be in one window".into(),
        ));
    };
    let end = q_pos0 + n_queries as u32;
    let pieces = kv.intervals(shape.cap, end.saturating_sub(shape.cap), end);
    let mode = if bounded {
        Mode::PartialBounded
    } else {
        Mode::Partial
    };
    let kernel = rec.ctx().kernel(&spec(mode, g, sg))?;
    for (i, &(w, klo, khi)) in pieces.iter().enumerate() {
        window_params(&mut params, kv, w, shape, klo, khi);
        params.accum = u32::from(i > 0);
        let mut bufs: Vec<crate::gpu::BufSlice<'_>> = vec![
            (&q.buffer).into(),
            (&kv.k[w].buffer).into(),
            (&kv.v[w].buffer).into(),
            (&scratch.ml).into(),
            (&scratch.acc).into(),
        ];
        if let Some(b) = bounds {
            bufs.push((&b.buffer).into());
        }
        rec.dispatch(&kernel, &params, &bufs, [1, shape.n_heads / g, n_queries as u32])?;
    }
    params.accum = 0;
    let combine = rec.ctx().kernel(&spec(Mode::Combine, 1, false))?;
    rec.dispatch(
        &combine,
        &params,
        &[
            (&scratch.ml).into(),
            (&scratch.acc).into(),
            (&out.buffer).into(),
        ],
        [shape.n_heads, n_queries as u32, 1],
    )
}

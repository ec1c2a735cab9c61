//! Multi-query attention with one query row per invocation (`wgsl/attention_rows.wgsl`), for
//! head dims up to [`MAX_ROWS_HEAD_DIM`]: the vision towers' bidirectional attention (hd 64 on
//! the E-series, 72 on the large tower) and any small-head prefill.
//!
//! Same key/value store, masks and results as [`attention_prefill`](super::attention_prefill)
//! (whose one-workgroup-per-query design suits the text decoder's hd 256 / 512); here a
//! workgroup takes 64 consecutive queries of one head, keeps each query and its accumulator in
//! registers, and shares every K/V tile between them through workgroup memory.

use super::attention::{AttnMask, AttnShape, KvLayout};
use crate::gpu::{
    Access, GpuError, GpuTensor, KernelSpec, ParamLayout, Recorder, uniform_params,
};

/// Largest head dim of [`attention_rows`] (registers per invocation: 2 · hd floats).
pub const MAX_ROWS_HEAD_DIM: u32 = 128;
/// Queries per workgroup.
const WG: u32 = 64;

uniform_params! {
    /// Parameters of `attention_rows.wgsl`.
    struct Params {
        n_heads: u32,
        group: u32,
        cap: u32,
        head_stride4: u32,
        row_stride4: u32,
        q_off4: u32,
        k_off4: u32,
        v_off4: u32,
        out_off4: u32,
        q_pos0: u32,
        n_queries: u32,
        window: u32,
        n_keys: u32,
        causal: u32,
        scale: f32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

fn spec(hd4: u32, subgroups: bool) -> KernelSpec {
    let r = Access::Read;
    KernelSpec::new("attention_rows", "main", &[r, r, r, Access::ReadWrite])
        .define("HD4", hd4)
        .with_subgroups(subgroups)
}

/// All specialisations (for shader validation): one per supported head dim (multiples of 4 up
/// to [`MAX_ROWS_HEAD_DIM`]). Portable path only: nothing is reduced across invocations.
pub fn all_specs() -> Vec<KernelSpec> {
    (1..=MAX_ROWS_HEAD_DIM / 4)
        .flat_map(|hd4| [spec(hd4, false), spec(hd4, true)])
        .collect()
}

/// Whether [`attention_rows`] takes `shape` (head dim a multiple of 4, at most
/// [`MAX_ROWS_HEAD_DIM`]).
pub fn rows_supported(shape: &AttnShape) -> bool {
    shape.head_dim > 0 && shape.head_dim.is_multiple_of(4) && shape.head_dim <= MAX_ROWS_HEAD_DIM
}

/// Records multi-query attention like [`attention_prefill`](super::attention_prefill): query `i`
/// of `q` `[L, n_heads, hd]` has absolute position `q_pos0 + i` and attends to its visible keys
/// in `k` / `v` (already written), writing `out` `[L, n_heads, hd]`. One workgroup per
/// (64 queries, head). Errors name the mismatch (shapes, offsets, aliasing, head dim above
/// [`MAX_ROWS_HEAD_DIM`]).
#[allow(clippy::too_many_arguments)]
pub fn attention_rows(
    rec: &mut Recorder,
    q: &GpuTensor,
    k: &GpuTensor,
    v: &GpuTensor,
    out: &GpuTensor,
    shape: &AttnShape,
    q_pos0: u32,
) -> Result<(), GpuError> {
    let bad = |m: String| GpuError::Kernel {
        kernel: "attention_rows".into(),
        message: m,
    };
    if !rows_supported(shape) {
        return Err(bad(format!(
            "head dim {} is not a multiple of 4 in 4..={MAX_ROWS_HEAD_DIM}",
            shape.head_dim
        )));
    }
    if shape.n_kv_heads == 0 || shape.n_heads == 0 || !shape.n_heads.is_multiple_of(shape.n_kv_heads)
    {
        return Err(bad(format!(
            "{} heads not a multiple of {} kv heads",
            shape.n_heads, shape.n_kv_heads
        )));
    }
    if shape.cap == 0 {
        return Err(bad("cap is 0".into()));
    }
    let hd = shape.head_dim as usize;
    let per_q = shape.n_heads as usize * hd;
    if q.numel() == 0 || !q.numel().is_multiple_of(per_q) || out.numel() != q.numel() {
        return Err(bad(format!(
            "q has {} / out {} elements, need L × {} × {hd}",
            q.numel(),
            out.numel(),
            shape.n_heads
        )));
    }
    let n_queries = q.numel() / per_q;
    let store = shape.n_kv_heads as usize * shape.cap as usize * hd;
    if k.numel() < store || v.numel() < store {
        return Err(bad(format!(
            "k/v have {} / {} elements, the store needs {store}",
            k.numel(),
            v.numel()
        )));
    }
    let (causal, window, n_keys) = match shape.mask {
        AttnMask::Causal { window } => (1, window.unwrap_or(0), 0),
        AttnMask::CausalBounded { .. } => {
            return Err(bad(
                "the bounded (image-block) mask runs on attention_prefill_bounded only".into(),
            ));
        }
        AttnMask::Bidirectional { n_keys } => {
            if n_keys > shape.cap {
                return Err(bad(format!(
                    "{n_keys} keys in a store of {} slots",
                    shape.cap
                )));
            }
            (0, 0, n_keys)
        }
    };
    for (name, t) in [("q", q), ("k", k), ("v", v), ("out", out)] {
        if t.elem_offset() % 4 != 0 {
            return Err(bad(format!(
                "{name} element offset {} not a multiple of 4",
                t.elem_offset()
            )));
        }
    }
    if out.buffer == q.buffer || out.buffer == k.buffer || out.buffer == v.buffer {
        return Err(bad("out shares a buffer with q, k or v".into()));
    }
    let (head_stride, row_stride) = match shape.layout {
        KvLayout::HeadMajor => (shape.cap * shape.head_dim, shape.head_dim),
        KvLayout::TokenMajor => (shape.head_dim, shape.n_kv_heads * shape.head_dim),
    };
    let params = Params {
        n_heads: shape.n_heads,
        group: shape.n_heads / shape.n_kv_heads,
        cap: shape.cap,
        head_stride4: head_stride / 4,
        row_stride4: row_stride / 4,
        q_off4: q.elem_offset() / 4,
        k_off4: k.elem_offset() / 4,
        v_off4: v.elem_offset() / 4,
        out_off4: out.elem_offset() / 4,
        q_pos0,
        n_queries: n_queries as u32,
        window,
        n_keys,
        causal,
        scale: shape.scale,
    };
    let sg = super::matmul::matmul_subgroups(rec.ctx().caps());
    let kernel = rec.ctx().kernel(&spec(shape.head_dim / 4, sg))?;
    rec.dispatch(
        &kernel,
        &params,
        &[
            (&q.buffer).into(),
            (&k.buffer).into(),
            (&v.buffer).into(),
            (&out.buffer).into(),
        ],
        [(n_queries as u32).div_ceil(WG), shape.n_heads, 1],
    )
}

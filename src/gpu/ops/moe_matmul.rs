//! The prefill grouped GEMM (`wgsl/moe_matmul.wgsl`) and [`experts_prefill`], the routed experts
//! of a batch of tokens: the pairs routed to one expert are multiplied together in 32-pair tiles
//! (gate and up fused with the GeGLU product, then down), grouped on the GPU by
//! [`route_sort`](super::moe_route_sort::route_sort) and combined by
//! [`moe_combine`](super::moe_combine); dispatch sizes come from upper bounds (no readback).

use super::moe_combine::combine;
use super::moe_matvec::{ExpertProj, check_experts};
use super::moe_route_sort::{ROUTE_TILE, RouteLayout, route_sort};
use super::moe_router::{check_len, moe_err};
use crate::gpu::{
    Access, DType, GpuError, GpuTensor, KernelSpec, Matrix, ParamLayout, Recorder, WeightFormat,
    uniform_params,
};

uniform_params! {
    /// Parameters of `moe_matmul.wgsl`.
    struct Params {
        rows: u32,
        cols: u32,
        row_words: u32,
        groups: u32,
        k: u32,
        e: u32,
        e_lo: u32,
        e_hi: u32,
        stride0: u32,
        off0: u32,
        stride1: u32,
        off1: u32,
        route_off: u32,
        perm_off: u32,
        x_off: u32,
        y_off: u32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

/// The grouped-GEMM specialisation: `gate` the gate/up GeGLU form, otherwise down.
pub fn moe_matmul_spec(format: WeightFormat, gate: bool) -> KernelSpec {
    let per = if format.is_affine() { 2 } else { 1 };
    let nw = if gate { 2 * per } else { per };
    // weights, route, x, y
    let mut access = vec![Access::Read; nw + 2];
    access.push(Access::ReadWrite);
    let mut spec = format.define_in(KernelSpec::new("moe_matmul", "main", &access));
    if gate {
        spec = spec.define("GATE", 1).define("B_W1", 1 + per);
        if format.is_affine() {
            spec = spec.define("B_S1", 2 + per);
        }
    }
    spec.define("B_R", nw + 1)
        .define("B_X", nw + 2)
        .define("B_Y", nw + 3)
}

/// All specialisations (for shader validation).
pub fn all_specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for f in WeightFormat::all() {
        for gate in [true, false] {
            v.push(moe_matmul_spec(f, gate));
        }
    }
    v
}

/// The caller-allocated buffers of [`experts_prefill`] for `tokens` tokens, `top_k` experts
/// each (`pairs = tokens * top_k`). `ds` is the largest (`pairs * H * 4` bytes) and must fit
/// one storage binding: a prefill chunk has at most `max_binding / (top_k * H * 4)` tokens
/// (1489 on 26B-A4B with a 128 MiB binding).
#[derive(Debug, Clone)]
pub struct PrefillScratch {
    /// u32 `[RouteLayout::new(tokens, experts, top_k).len]`: the routing table.
    pub route: GpuTensor,
    /// f32 `[pairs, I]`: the GeGLU activations at the sorted positions.
    pub hs: GpuTensor,
    /// f32 `[pairs, H]`: the down projections at the sorted positions.
    pub ds: GpuTensor,
}

impl PrefillScratch {
    /// Allocates the scratch (not in the decode loop: a workspace allocates it once for the
    /// largest prefill chunk).
    pub fn new(
        ctx: &crate::gpu::GpuContext,
        tokens: usize,
        experts: usize,
        top_k: usize,
        hidden: usize,
        inter: usize,
    ) -> Result<Self, GpuError> {
        let layout = RouteLayout::new(tokens, experts, top_k);
        let pairs = layout.pairs;
        Ok(PrefillScratch {
            route: GpuTensor::zeros(ctx, &[layout.len], DType::U32)?,
            hs: GpuTensor::zeros(ctx, &[pairs, inter], DType::F32)?,
            ds: GpuTensor::zeros(ctx, &[pairs, hidden], DType::F32)?,
        })
    }
}

/// Records the routed experts of `tokens = x.rows` tokens (prefill):
/// - `x`: f32 `[T, H]`; `ids`: u32 `[T, k]` (each `< E`); `weights`: f32 `[T, k]` (from
///   [`route`](super::moe::route));
/// - `gate`, `up`, `down`: as in [`experts_decode`](super::moe::experts_decode);
/// - `scratch`: [`PrefillScratch`] for exactly these `T` and `k` (views of a larger one are
///   fine);
/// - `y`: f32 `[T, H]`, written: `y[t] = sum_j weights[t, j] * expert_{ids[t, j]}(x[t])`, summed
///   over `j` in order.
///
/// Dispatches: the routing table (1), the gate/up grouped GEMM and the down grouped GEMM (one
/// per row window each), the combine (1). Grid sizes are upper bounds from `T * k` (tiles past
/// the real count exit at once). `x`, `y` and the scratch are distinct buffers.
#[allow(clippy::too_many_arguments)]
pub fn experts_prefill(
    rec: &mut Recorder,
    x: &GpuTensor,
    gate: &ExpertProj<'_>,
    up: &ExpertProj<'_>,
    down: &ExpertProj<'_>,
    ids: &GpuTensor,
    weights: &GpuTensor,
    scratch: &PrefillScratch,
    y: &GpuTensor,
) -> Result<(), GpuError> {
    const K: &str = "moe_experts_prefill";
    check_experts(K, gate, up, down)?;
    let (hid, inter, experts) = (gate.matrix.cols, gate.rows, gate.experts());
    if !x.numel().is_multiple_of(hid) || x.numel() == 0 {
        return Err(moe_err(
            K,
            format!("x has {} elements, not [tokens, {hid}]", x.numel()),
        ));
    }
    let tokens = x.numel() / hid;
    if !ids.numel().is_multiple_of(tokens) || ids.numel() == 0 {
        return Err(moe_err(
            K,
            format!("ids has {} elements, not [{tokens}, k]", ids.numel()),
        ));
    }
    let k = ids.numel() / tokens;
    let layout = RouteLayout::new(tokens, experts, k);
    check_len(K, "weights", weights, tokens * k, DType::F32)?;
    check_len(K, "y", y, tokens * hid, DType::F32)?;
    check_len(K, "scratch.hs", &scratch.hs, layout.pairs * inter, DType::F32)?;
    check_len(K, "scratch.ds", &scratch.ds, layout.pairs * hid, DType::F32)?;
    let bufs = [
        &x.buffer,
        &y.buffer,
        &scratch.route.buffer,
        &scratch.hs.buffer,
        &scratch.ds.buffer,
    ];
    if (0..bufs.len()).any(|i| bufs[i + 1..].contains(&bufs[i])) {
        return Err(moe_err(
            K,
            "x, y and the scratch tensors must be distinct buffers".into(),
        ));
    }
    route_sort(rec, ids, &scratch.route, &layout)?;
    let g = Gemm {
        route: &scratch.route,
        layout: &layout,
        k,
    };
    g.run(rec, gate, Some(up), x, &scratch.hs)?;
    g.run(rec, down, None, &scratch.hs, &scratch.ds)?;
    combine(
        rec,
        &scratch.route,
        &layout,
        weights,
        &scratch.ds,
        y,
        tokens,
        hid,
        k,
    )
}

struct Gemm<'a> {
    route: &'a GpuTensor,
    layout: &'a RouteLayout,
    k: usize,
}

impl Gemm<'_> {
    /// One grouped GEMM per row window of `a` (with `b`: the fused gate/up form).
    fn run(
        &self,
        rec: &mut Recorder,
        a: &ExpertProj<'_>,
        b: Option<&ExpertProj<'_>>,
        x: &GpuTensor,
        y: &GpuTensor,
    ) -> Result<(), GpuError> {
        let m: &Matrix = a.matrix;
        let (row_words, groups) = m.affine_dims();
        let kernel = rec.ctx().kernel(&moe_matmul_spec(m.format, b.is_some()))?;
        for (i, win) in m.windows.iter().enumerate() {
            let (e_lo, e_hi) = a.window_experts(win);
            if e_lo == e_hi {
                continue;
            }
            let params = Params {
                rows: a.rows as u32,
                cols: m.cols as u32,
                row_words,
                groups,
                k: self.k as u32,
                e: self.layout.experts as u32,
                e_lo,
                e_hi,
                stride0: a.stride as u32,
                off0: a.offset as u32,
                stride1: b.map_or(0, |b| b.stride) as u32,
                off1: b.map_or(0, |b| b.offset) as u32,
                route_off: self.route.elem_offset(),
                perm_off: self.layout.perm_off as u32,
                x_off: x.elem_offset(),
                y_off: y.elem_offset(),
            };
            let mut bufs = m.window_bindings(win, "moe_experts_prefill")?;
            if let Some(b) = b {
                bufs.extend(
                    b.matrix
                        .window_bindings(&b.matrix.windows[i], "moe_experts_prefill")?,
                );
            }
            bufs.push((&self.route.buffer).into());
            bufs.push((&x.buffer).into());
            bufs.push((&y.buffer).into());
            let grid = [
                a.rows.div_ceil(ROUTE_TILE) as u32,
                self.layout.max_tiles as u32,
                1,
            ];
            rec.dispatch(&kernel, &params, &bufs, grid)?;
        }
        Ok(())
    }
}

/// Dispatches of [`experts_prefill`]: routing table, one gate/up and one down GEMM per row
/// window with experts, combine.
pub fn prefill_dispatches(gate: &ExpertProj<'_>, down: &ExpertProj<'_>) -> usize {
    2 + super::moe_matvec::decode_dispatches(gate, down)
}

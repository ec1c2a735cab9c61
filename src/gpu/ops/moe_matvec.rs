//! The decode gathered-expert matvec (`wgsl/moe_matvec.wgsl`): [`experts_decode`], the k experts
//! a token was routed to, with the expert ids and weights read from GPU buffers, as two
//! dispatches: gate and up fused with the GeGLU product, then the down projection fused with the
//! weighted sum over the experts. Expert weights are stacked [`Matrix`]es (see
//! [`ExpertProj`]) in any [`WeightFormat`].

use bytemuck::Zeroable;

use super::moe_router::{check_len, moe_err};
use crate::gpu::{
    Access, DType, GpuError, GpuTensor, KernelSpec, Matrix, MatrixWindow, ParamLayout, Recorder,
    WeightFormat, uniform_params,
};

uniform_params! {
    /// Parameters of `moe_matvec.wgsl`.
    struct Params {
        rows: u32,
        cols: u32,
        row_words: u32,
        groups: u32,
        k: u32,
        inter: u32,
        stride0: u32,
        off0: u32,
        stride1: u32,
        off1: u32,
        e_lo: u32,
        e_hi: u32,
        ids_off: u32,
        w_off: u32,
        x_off: u32,
        y_off: u32,
        acc: u32,
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

/// Rows per workgroup (must match `RPW` in `moe_matvec.wgsl`).
const RPW: usize = 32;

/// One projection of every expert inside a stacked [`Matrix`]: expert `e`'s `[rows, cols]`
/// weights are matrix rows `e * stride + offset .. e * stride + offset + rows`. The number of
/// experts is `matrix.rows / stride`.
///
/// Separate stacked tensors (MLX `switch_glu.{gate,up,down}_proj`, `[E, rows, cols]`) are
/// [`ExpertProj::stacked`]; the halves of HF's `experts.gate_up_proj` (`[E, 2 I, H]`, gate rows
/// first) are [`ExpertProj::gate_up_halves`]. Upload the matrix with
/// [`Matrix::upload_stacked`] (rows per expert = `stride`) so that its row windows hold whole
/// experts.
#[derive(Debug, Clone, Copy)]
pub struct ExpertProj<'a> {
    /// The stacked matrix.
    pub matrix: &'a Matrix,
    /// Matrix rows per expert.
    pub stride: usize,
    /// First row of this projection within an expert's block of `stride` rows.
    pub offset: usize,
    /// Rows of this projection per expert (its output width).
    pub rows: usize,
}

impl<'a> ExpertProj<'a> {
    /// A stacked `[experts, rows, cols]` tensor as one matrix of `experts * rows` rows.
    pub fn stacked(matrix: &'a Matrix, experts: usize) -> Result<Self, GpuError> {
        if experts == 0 || !matrix.rows.is_multiple_of(experts) {
            return Err(moe_err(
                "moe_experts",
                format!(
                    "a stacked matrix of {} rows does not hold {experts} experts",
                    matrix.rows
                ),
            ));
        }
        let rows = matrix.rows / experts;
        Ok(ExpertProj {
            matrix,
            stride: rows,
            offset: 0,
            rows,
        })
    }

    /// The gate and up halves of a stacked `[experts, 2 I, cols]` gate_up matrix (per expert,
    /// the `I` gate rows, then the `I` up rows).
    pub fn gate_up_halves(matrix: &'a Matrix, experts: usize) -> Result<(Self, Self), GpuError> {
        let both = Self::stacked(matrix, experts)?;
        if !both.stride.is_multiple_of(2) {
            return Err(moe_err(
                "moe_experts",
                format!(
                    "gate_up has {} rows per expert, not an even number",
                    both.stride
                ),
            ));
        }
        let i = both.stride / 2;
        Ok((
            ExpertProj {
                rows: i,
                ..both
            },
            ExpertProj {
                offset: i,
                rows: i,
                ..both
            },
        ))
    }

    /// Number of experts.
    pub fn experts(&self) -> usize {
        self.matrix.rows / self.stride.max(1)
    }

    /// Checks the layout: `offset + rows <= stride`, whole experts, windows on expert
    /// boundaries.
    pub(crate) fn check(&self, kernel: &str, what: &str) -> Result<(), GpuError> {
        let m = self.matrix;
        if self.stride == 0
            || self.rows == 0
            || self.offset + self.rows > self.stride
            || !m.rows.is_multiple_of(self.stride)
        {
            return Err(moe_err(
                kernel,
                format!(
                    "{what}: rows {}..+{} of blocks of {} in a matrix of {} rows",
                    self.offset, self.rows, self.stride, m.rows
                ),
            ));
        }
        if let Some(w) = m
            .windows
            .iter()
            .find(|w| !w.row_start.is_multiple_of(self.stride) || !w.rows.is_multiple_of(self.stride))
        {
            return Err(moe_err(
                kernel,
                format!(
                    "{what}: row window {}..+{} does not fall on experts of {} rows (upload \
                     with Matrix::upload_stacked)",
                    w.row_start, w.rows, self.stride
                ),
            ));
        }
        Ok(())
    }

    /// The experts `lo .. hi` of row window `win`.
    pub(crate) fn window_experts(&self, win: &MatrixWindow) -> (u32, u32) {
        let lo = win.row_start / self.stride;
        (lo as u32, (lo + win.rows / self.stride) as u32)
    }
}

/// Whether two projections fused in one dispatch agree: format, width, experts and windows.
pub(crate) fn check_pair(
    kernel: &str,
    a: &ExpertProj<'_>,
    b: &ExpertProj<'_>,
) -> Result<(), GpuError> {
    let (ma, mb) = (a.matrix, b.matrix);
    let same_windows = ma.windows.len() == mb.windows.len()
        && ma
            .windows
            .iter()
            .zip(&mb.windows)
            .all(|(wa, wb)| a.window_experts(wa) == b.window_experts(wb));
    if ma.format != mb.format
        || ma.cols != mb.cols
        || a.rows != b.rows
        || a.experts() != b.experts()
        || !same_windows
    {
        return Err(moe_err(
            kernel,
            format!(
                "gate ({:?}, {} experts x {} x {}, {} windows) and up ({:?}, {} experts x {} x \
                 {}, {} windows) differ",
                ma.format,
                a.experts(),
                a.rows,
                ma.cols,
                ma.windows.len(),
                mb.format,
                b.experts(),
                b.rows,
                mb.cols,
                mb.windows.len()
            ),
        ));
    }
    Ok(())
}

/// The storage bindings of a weight of `format`: data (and scales/biases when affine).
fn per(format: WeightFormat) -> usize {
    if format.is_affine() { 2 } else { 1 }
}

/// The gathered-expert matvec specialisation: `gate` the gate/up GeGLU form, otherwise the
/// down projection with the weighted sum.
pub fn moe_matvec_spec(format: WeightFormat, gate: bool) -> KernelSpec {
    let per = per(format);
    let nw = if gate { 2 * per } else { per };
    // weights, ids, (weights of the experts), x, y
    let mut access = vec![Access::Read; nw + if gate { 2 } else { 3 }];
    access.push(Access::ReadWrite);
    let mut spec = format.define_in(KernelSpec::new("moe_matvec", "main", &access));
    let mut b = nw + 1;
    if gate {
        spec = spec.define("GATE", 1).define("B_W1", 1 + per);
        if format.is_affine() {
            spec = spec.define("B_S1", 2 + per);
        }
    }
    spec = spec.define("B_IDS", b);
    b += 1;
    if !gate {
        spec = spec.define("B_WT", b);
        b += 1;
    }
    spec.define("B_X", b).define("B_Y", b + 1)
}

/// All specialisations (for shader validation).
pub fn all_specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for f in WeightFormat::all() {
        for gate in [true, false] {
            v.push(moe_matvec_spec(f, gate));
        }
    }
    v
}

/// Checks the formats the kernels decode: affine widths a multiple of 32 codes.
pub(crate) fn check_width(kernel: &str, m: &Matrix) -> Result<(), GpuError> {
    m.format
        .check_cols(m.cols)
        .map_err(|e| moe_err(kernel, e))?;
    if m.format.is_affine() && !m.cols.is_multiple_of(32) {
        return Err(moe_err(
            kernel,
            format!("affine width {} is not a multiple of 32", m.cols),
        ));
    }
    Ok(())
}

/// Records the routed experts of one token (decode), with `ids` and `weights` read by the
/// kernels from the GPU (no readback):
/// - `x`: f32 `[H]`, the expert branch's input;
/// - `gate`, `up`: the expert gate and up projections (`[I, H]` per expert), `down` (`[H, I]` per
///   expert), all the same number `E` of experts; gate and up of one format and row windows;
/// - `ids`: u32 `[k]` expert ids (each `< E`), `weights`: f32 `[k]` (from [`route`](super::moe::route));
/// - `h`: f32 `[k, I]` scratch (the GeGLU activations of each expert);
/// - `y`: f32 `[H]`, written: `sum_j weights[j] * down[ids[j]] (gelu_tanh(gate[ids[j]] x) *
///   (up[ids[j]] x))`, the sum over `j` in order in every lane and over the lanes in a fixed
///   order (deterministic).
///
/// Two dispatches per row window: gate/up + GeGLU for all `k` experts, then down + weighted sum
/// (a later window of `down` adds to `y`; experts outside a window are skipped by its
/// dispatch). No buffers are created. `x`, `h` and `y` are distinct buffers.
#[allow(clippy::too_many_arguments)]
pub fn experts_decode(
    rec: &mut Recorder,
    x: &GpuTensor,
    gate: &ExpertProj<'_>,
    up: &ExpertProj<'_>,
    down: &ExpertProj<'_>,
    ids: &GpuTensor,
    weights: &GpuTensor,
    h: &GpuTensor,
    y: &GpuTensor,
) -> Result<(), GpuError> {
    const K: &str = "moe_experts_decode";
    let k = ids.numel();
    check_experts(K, gate, up, down)?;
    let (hid, inter) = (gate.matrix.cols, gate.rows);
    check_len(K, "x", x, hid, DType::F32)?;
    check_len(K, "ids", ids, k, DType::U32)?;
    check_len(K, "weights", weights, k, DType::F32)?;
    check_len(K, "h", h, k * inter, DType::F32)?;
    check_len(K, "y", y, hid, DType::F32)?;
    if x.buffer == h.buffer || h.buffer == y.buffer {
        return Err(moe_err(K, "x, h and y must be distinct buffers".into()));
    }
    if k == 0 {
        return Err(moe_err(K, "no experts per token".into()));
    }
    gate_up_decode(rec, x, gate, up, ids, h, k)?;
    down_decode(rec, h, down, ids, weights, y, k)
}

/// Checks the three projections of an expert block against each other.
pub(crate) fn check_experts(
    kernel: &str,
    gate: &ExpertProj<'_>,
    up: &ExpertProj<'_>,
    down: &ExpertProj<'_>,
) -> Result<(), GpuError> {
    gate.check(kernel, "gate")?;
    up.check(kernel, "up")?;
    down.check(kernel, "down")?;
    check_pair(kernel, gate, up)?;
    check_width(kernel, gate.matrix)?;
    check_width(kernel, down.matrix)?;
    if down.matrix.cols != gate.rows
        || down.rows != gate.matrix.cols
        || down.experts() != gate.experts()
    {
        return Err(moe_err(
            kernel,
            format!(
                "down is {} experts x [{}, {}], expected {} experts x [{}, {}]",
                down.experts(),
                down.rows,
                down.matrix.cols,
                gate.experts(),
                gate.matrix.cols,
                gate.rows
            ),
        ));
    }
    Ok(())
}

fn gate_up_decode(
    rec: &mut Recorder,
    x: &GpuTensor,
    gate: &ExpertProj<'_>,
    up: &ExpertProj<'_>,
    ids: &GpuTensor,
    h: &GpuTensor,
    k: usize,
) -> Result<(), GpuError> {
    let m = gate.matrix;
    let (row_words, groups) = m.affine_dims();
    let kernel = rec.ctx().kernel(&moe_matvec_spec(m.format, true))?;
    let rows = k * gate.rows;
    for (wg, wu) in m.windows.iter().zip(&up.matrix.windows) {
        let (e_lo, e_hi) = gate.window_experts(wg);
        if e_lo == e_hi {
            continue;
        }
        let params = Params {
            rows: rows as u32,
            cols: m.cols as u32,
            row_words,
            groups,
            k: k as u32,
            inter: gate.rows as u32,
            stride0: gate.stride as u32,
            off0: gate.offset as u32,
            stride1: up.stride as u32,
            off1: up.offset as u32,
            e_lo,
            e_hi,
            ids_off: ids.elem_offset(),
            x_off: x.elem_offset(),
            y_off: h.elem_offset(),
            ..Zeroable::zeroed()
        };
        let mut bufs = m.window_bindings(wg, "moe_experts_decode")?;
        bufs.extend(up.matrix.window_bindings(wu, "moe_experts_decode")?);
        bufs.push((&ids.buffer).into());
        bufs.push((&x.buffer).into());
        bufs.push((&h.buffer).into());
        rec.dispatch_linear(&kernel, &params, &bufs, rows.div_ceil(RPW) as u32)?;
    }
    Ok(())
}

fn down_decode(
    rec: &mut Recorder,
    h: &GpuTensor,
    down: &ExpertProj<'_>,
    ids: &GpuTensor,
    weights: &GpuTensor,
    y: &GpuTensor,
    k: usize,
) -> Result<(), GpuError> {
    let m = down.matrix;
    let (row_words, groups) = m.affine_dims();
    let kernel = rec.ctx().kernel(&moe_matvec_spec(m.format, false))?;
    let mut first = true;
    for win in &m.windows {
        let (e_lo, e_hi) = down.window_experts(win);
        if e_lo == e_hi {
            continue;
        }
        let params = Params {
            rows: down.rows as u32,
            cols: m.cols as u32,
            row_words,
            groups,
            k: k as u32,
            stride0: down.stride as u32,
            off0: down.offset as u32,
            e_lo,
            e_hi,
            ids_off: ids.elem_offset(),
            w_off: weights.elem_offset(),
            x_off: h.elem_offset(),
            y_off: y.elem_offset(),
            acc: u32::from(!first),
            ..Zeroable::zeroed()
        };
        first = false;
        let mut bufs = m.window_bindings(win, "moe_experts_decode")?;
        bufs.push((&ids.buffer).into());
        bufs.push((&weights.buffer).into());
        bufs.push((&h.buffer).into());
        bufs.push((&y.buffer).into());
        rec.dispatch_linear(&kernel, &params, &bufs, down.rows.div_ceil(RPW) as u32)?;
    }
    Ok(())
}

/// Dispatches of [`experts_decode`]: one gate/up and one down per row window with experts.
pub fn decode_dispatches(gate: &ExpertProj<'_>, down: &ExpertProj<'_>) -> usize {
    let n = |p: &ExpertProj<'_>| {
        p.matrix
            .windows
            .iter()
            .filter(|w| w.rows >= p.stride.max(1))
            .count()
    };
    n(gate) + n(down)
}

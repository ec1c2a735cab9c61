//! The decode matvec (`wgsl/matvec.wgsl`) and the linear layers built on it: [`linear`]
//! (`y = x @ W^T` over a [`Matrix`] in any [`WeightFormat`]; up to [`MATVEC_MAX_ROWS`] rows run
//! the matvec, more the register-blocked matmul of [`super::matmul`]) and the fused forms — one
//! dispatch over up to three matrices ([`linear_multi`]) or with a GELU epilogue
//! ([`linear_gelu_gate`], [`linear_gelu_mul`]). Row windows are handled transparently: one dispatch per window.

use bytemuck::Zeroable;

use crate::gpu::{
    Access, GpuError, GpuTensor, KernelSpec, Matrix, ParamLayout, Recorder, WeightFormat,
    uniform_params,
};

uniform_params! {
    /// Parameters of `matvec.wgsl`.
    struct Params {
        rows: u32,
        cols: u32,
        row_words: u32,
        groups: u32,
        x_off: u32,
        y_off: u32,
        /// x rows (batch) and the elements between their outputs in y.
        nb: u32,
        y_stride: u32,
        /// Fused matvec: rows of matrix 0 / matrix 1, element offset of the epilogue operand.
        rows0: u32,
        rows1: u32,
        e_off: u32,
        /// Elements between the epilogue operands of consecutive x rows.
        e_stride: u32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

/// Rows per workgroup of the matvec, both paths (must match `RPW` in `matvec.wgsl`).
const MATVEC_RPW: usize = 32;

/// The most x rows a linear layer runs through the matvec (one dispatch per row window for
/// all of them); more rows run the register-blocked matmul. A batched decode of up to this many
/// sequences therefore computes every sequence's outputs with exactly the instructions of a
/// single-sequence decode: the same bits.
pub const MATVEC_MAX_ROWS: usize = 16;

/// Whether the matvec binds the weights as `vec4<u32>` for a matrix of `cols` columns.
pub fn matvec_wvec(format: WeightFormat, cols: usize) -> bool {
    match format {
        WeightFormat::Affine { bits, .. } => bits % 4 == 0,
        WeightFormat::F32 => cols.is_multiple_of(4),
        WeightFormat::F16 | WeightFormat::BF16 => cols.is_multiple_of(8),
    }
}

/// The matvec specialisation: `wvec` weights as `vec4<u32>` (see [`matvec_wvec`]), `xvec` x as
/// `vec4<f32>` (only with affine or `wvec`), `subgroups` the subgroup-reduction path.
pub fn matvec_spec(format: WeightFormat, wvec: bool, xvec: bool, subgroups: bool) -> KernelSpec {
    matvec_fused_spec(format, wvec, xvec, subgroups, 1, MatvecEpilogue::None)
}

/// What a fused matvec does after (and around) the dot products; see [`linear_multi`],
/// [`linear_gelu_gate`] and [`linear_gelu_mul`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatvecEpilogue {
    /// `y = W x` (over the concatenated rows of one to three matrices).
    None,
    /// `y = gelu_tanh(W0 x) * (W1 x)`.
    GeluGate,
    /// `y = gelu_tanh(W x) * e`.
    GeluMul,
}

/// A matvec specialisation over `nmat` (1 to 3) matrices of one format with an epilogue.
pub fn matvec_fused_spec(
    format: WeightFormat,
    wvec: bool,
    xvec: bool,
    subgroups: bool,
    nmat: usize,
    epi: MatvecEpilogue,
) -> KernelSpec {
    let affine = format.is_affine();
    let per = if affine { 2 } else { 1 };
    let mut access = vec![Access::Read; per * nmat + 1];
    access.push(Access::ReadWrite);
    let e = epi == MatvecEpilogue::GeluMul;
    if e {
        access.push(Access::Read);
    }
    let b_x = per * nmat + 1;
    let mut spec = format
        .define_in(KernelSpec::new("matvec", "main", &access))
        .define("WVEC", u8::from(wvec))
        .define("XVEC", u8::from(xvec))
        .define("B_X", b_x)
        .define("B_Y", b_x + 1)
        .define(
            "EPI",
            match epi {
                MatvecEpilogue::None => 0,
                MatvecEpilogue::GeluGate => 1,
                MatvecEpilogue::GeluMul => 2,
            },
        );
    if nmat >= 2 {
        spec = spec.define("MAT2", 1).define("B_W1", 1 + per);
        if affine {
            spec = spec.define("B_S1", 2 + per);
        }
    }
    if nmat >= 3 {
        spec = spec.define("MAT3", 1).define("B_W2", 1 + 2 * per);
        if affine {
            spec = spec.define("B_S2", 2 + 2 * per);
        }
    }
    if e {
        spec = spec.define("EPI_E", 1).define("B_E", b_x + 2);
    }
    spec.with_subgroups(subgroups)
}

/// All specialisations (for shader validation).
pub fn all_specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for f in WeightFormat::all() {
        let wvecs: &[bool] = match f {
            WeightFormat::Affine { bits, .. } => &[bits % 4 == 0],
            _ => &[false, true],
        };
        for &wvec in wvecs {
            let xvecs: &[bool] = if wvec || f.is_affine() {
                &[false, true]
            } else {
                &[false]
            };
            for &xvec in xvecs {
                for sg in [false, true] {
                    v.push(matvec_spec(f, wvec, xvec, sg));
                    for (nmat, epi) in [
                        (2, MatvecEpilogue::None),
                        (3, MatvecEpilogue::None),
                        (2, MatvecEpilogue::GeluGate),
                        (1, MatvecEpilogue::GeluMul),
                    ] {
                        v.push(matvec_fused_spec(f, wvec, xvec, sg, nmat, epi));
                    }
                }
            }
        }
    }
    v
}

/// Records `y = x @ W^T`: `x` is `[batch, cols]` f32 (any element offset; a `[cols]` vector is
/// batch 1), `y` is `[batch, rows]` f32. Up to [`MATVEC_MAX_ROWS`] rows run the decode matvec
/// (subgroup reduction when the context has subgroups, a one-barrier workgroup-memory reduction
/// otherwise; each row's result is bit-identical to running that row alone); a larger batch
/// runs the register-blocked matmul.
/// Each row window of `w` is one dispatch writing its columns of `y`. `y` must not share a
/// buffer with `x`.
pub fn linear(
    rec: &mut Recorder,
    w: &Matrix,
    x: &GpuTensor,
    y: &GpuTensor,
) -> Result<(), GpuError> {
    check_xy(&[w], x, y, w.rows)?;
    linear_at(rec, w, x, y, 0, w.rows)
}

fn linear_err(message: String) -> GpuError {
    GpuError::Kernel {
        kernel: "linear".into(),
        message,
    }
}

/// `y[b, col0 + r] = W[r] . x[b]` with batch rows of `y` placed `y_stride` elements apart
/// (`x` already checked by [`check_xy`]): the matvec for one row, the matmul for a batch.
fn linear_at(
    rec: &mut Recorder,
    w: &Matrix,
    x: &GpuTensor,
    y: &GpuTensor,
    col0: usize,
    y_stride: usize,
) -> Result<(), GpuError> {
    let (rows, cols) = (w.rows, w.cols);
    let batch = x.numel() / cols;
    if batch == 0 || rows == 0 {
        return Ok(());
    }
    if col0 + rows > y_stride || y.numel() < (batch - 1) * y_stride + col0 + rows {
        return Err(linear_err(format!(
            "y has {} elements, too few for batch {batch} x {rows} rows at column {col0} of \
             rows {y_stride} apart",
            y.numel()
        )));
    }
    if batch > MATVEC_MAX_ROWS {
        return super::matmul::matmul(rec, w, x, y, col0, y_stride, batch);
    }
    let (row_words, groups) = w.affine_dims();
    let subgroups = rec.ctx().caps().subgroups;
    let wvec = matvec_wvec(w.format, cols);
    let xvec = (w.format.is_affine() || wvec) && x.elem_offset().is_multiple_of(4);
    let kernel = rec
        .ctx()
        .kernel(&matvec_spec(w.format, wvec, xvec, subgroups))?;
    for win in &w.windows {
        if win.rows == 0 {
            continue;
        }
        let params = Params {
            rows: win.rows as u32,
            cols: cols as u32,
            row_words,
            groups,
            x_off: x.elem_offset(),
            y_off: y.elem_offset() + (col0 + win.row_start) as u32,
            nb: batch as u32,
            y_stride: y_stride as u32,
            ..Zeroable::zeroed()
        };
        let mut bufs = w.window_bindings(win, "linear")?;
        bufs.push((&x.buffer).into());
        bufs.push((&y.buffer).into());
        rec.dispatch_linear(
            &kernel,
            &params,
            &bufs,
            win.rows.div_ceil(MATVEC_RPW) as u32,
        )?;
    }
    Ok(())
}

/// Whether `mats` can run as one fused matvec on this device: the same format and width, one
/// row window each, and enough storage-buffer bindings (weights, x, y and an epilogue operand).
pub fn fusable(ctx: &crate::gpu::GpuContext, mats: &[&Matrix]) -> bool {
    let Some(first) = mats.first() else {
        return false;
    };
    let per = if first.format.is_affine() { 2 } else { 1 };
    mats.len() <= 3
        && (per * mats.len() + 3) as u32 <= ctx.caps().max_storage_buffers
        && mats.iter().all(|m| {
            m.format == first.format && m.cols == first.cols && m.windows.len() == 1 && m.rows > 0
        })
}

/// One fused matvec dispatch over the (fusable) matrices `mats` for `batch` x rows (up to
/// [`MATVEC_MAX_ROWS`]); row `b` of the epilogue operand `e` starts `b * e_stride` elements
/// after its offset.
#[allow(clippy::too_many_arguments)]
fn matvec_fused(
    rec: &mut Recorder,
    mats: &[&Matrix],
    epi: MatvecEpilogue,
    x: &GpuTensor,
    y: &GpuTensor,
    e: Option<(&GpuTensor, usize)>,
    batch: usize,
) -> Result<(), GpuError> {
    let w0 = mats[0];
    let cols = w0.cols;
    let (row_words, groups) = w0.affine_dims();
    let wvec = matvec_wvec(w0.format, cols);
    let xvec = (w0.format.is_affine() || wvec) && x.elem_offset().is_multiple_of(4);
    let subgroups = rec.ctx().caps().subgroups;
    let kernel = rec.ctx().kernel(&matvec_fused_spec(
        w0.format,
        wvec,
        xvec,
        subgroups,
        mats.len(),
        epi,
    ))?;
    let out_rows = match epi {
        MatvecEpilogue::None => mats.iter().map(|m| m.rows).sum(),
        _ => w0.rows,
    };
    let params = Params {
        rows: out_rows as u32,
        cols: cols as u32,
        row_words,
        groups,
        x_off: x.elem_offset(),
        y_off: y.elem_offset(),
        rows0: w0.rows as u32,
        rows1: mats.get(1).map_or(0, |m| m.rows) as u32,
        e_off: e.map_or(0, |(e, _)| e.elem_offset()),
        nb: batch as u32,
        y_stride: out_rows as u32,
        e_stride: e.map_or(0, |(_, s)| s as u32),
    };
    let mut bufs = Vec::new();
    for m in mats {
        bufs.extend(m.window_bindings(&m.windows[0], "linear")?);
    }
    bufs.push((&x.buffer).into());
    bufs.push((&y.buffer).into());
    if let Some((e, _)) = e {
        bufs.push((&e.buffer).into());
    }
    rec.dispatch_linear(
        &kernel,
        &params,
        &bufs,
        out_rows.div_ceil(MATVEC_RPW) as u32,
    )
}

fn check_xy(
    mats: &[&Matrix],
    x: &GpuTensor,
    y: &GpuTensor,
    out_rows: usize,
) -> Result<usize, GpuError> {
    let cols = mats[0].cols;
    if let Some(m) = mats.iter().find(|m| m.cols != cols) {
        return Err(linear_err(format!(
            "fused matrices differ in width: {} vs {cols} columns",
            m.cols
        )));
    }
    if cols == 0 || !x.numel().is_multiple_of(cols) {
        return Err(linear_err(format!(
            "x has {} elements, not a multiple of cols {cols}",
            x.numel()
        )));
    }
    let batch = x.numel() / cols;
    if y.numel() != batch * out_rows {
        return Err(linear_err(format!(
            "y has {} elements, expected batch {batch} x rows {out_rows}",
            y.numel()
        )));
    }
    if x.buffer == y.buffer {
        return Err(linear_err("x and y share a buffer".into()));
    }
    Ok(batch)
}

/// Records `y = x @ [W0; W1; W2]^T` for one to three matrices of the same width: each row of `y`
/// holds matrix 0's outputs, then matrix 1's, then matrix 2's (e.g. the q/k/v projections into one
/// `[batch, q + k + v]` buffer). Up to [`MATVEC_MAX_ROWS`] rows with [`fusable`] matrices are
/// **one** dispatch; otherwise one [`linear`] per matrix.
pub fn linear_multi(
    rec: &mut Recorder,
    mats: &[&Matrix],
    x: &GpuTensor,
    y: &GpuTensor,
) -> Result<(), GpuError> {
    if mats.is_empty() {
        return Err(linear_err("linear_multi without matrices".into()));
    }
    let total: usize = mats.iter().map(|m| m.rows).sum();
    let batch = check_xy(mats, x, y, total)?;
    if batch == 0 || total == 0 {
        return Ok(());
    }
    if batch <= MATVEC_MAX_ROWS && mats.len() > 1 && fusable(rec.ctx(), mats) {
        return matvec_fused(rec, mats, MatvecEpilogue::None, x, y, None, batch);
    }
    let mut col0 = 0;
    for m in mats {
        linear_at(rec, m, x, y, col0, total)?;
        col0 += m.rows;
    }
    Ok(())
}

/// Records the gated GELU of a feed-forward block, `y = gelu_tanh(x @ Wg^T) * (x @ Wu^T)`. A
/// batch of up to [`MATVEC_MAX_ROWS`] rows with [`fusable`] gate and up matrices is **one**
/// dispatch; otherwise two linears
/// (the up projection into `scratch`, `[batch, rows]`) and an elementwise product.
pub fn linear_gelu_gate(
    rec: &mut Recorder,
    gate: &Matrix,
    up: &Matrix,
    x: &GpuTensor,
    y: &GpuTensor,
    scratch: &GpuTensor,
) -> Result<(), GpuError> {
    if gate.rows != up.rows {
        return Err(linear_err(format!(
            "gate has {} rows but up has {}",
            gate.rows, up.rows
        )));
    }
    let batch = check_xy(&[gate, up], x, y, gate.rows)?;
    if batch == 0 || gate.rows == 0 {
        return Ok(());
    }
    if batch <= MATVEC_MAX_ROWS && fusable(rec.ctx(), &[gate, up]) {
        return matvec_fused(rec, &[gate, up], MatvecEpilogue::GeluGate, x, y, None, batch);
    }
    linear(rec, gate, x, y)?;
    linear(rec, up, x, scratch)?;
    super::elementwise_inplace(
        rec,
        super::Elementwise::GeluMul,
        y,
        Some((scratch, super::BLayout::Broadcast)),
    )
}

/// Records `y = gelu_tanh(x @ W^T) * e` where row `b` of `e` starts `b * e_stride` elements
/// after `e`'s offset (e.g. one layer's slice of the per-layer inputs `[tokens, layers, P]`).
/// Up to [`MATVEC_MAX_ROWS`] rows are **one** dispatch; otherwise a linear and an elementwise
/// product.
pub fn linear_gelu_mul(
    rec: &mut Recorder,
    w: &Matrix,
    x: &GpuTensor,
    e: &GpuTensor,
    e_stride: usize,
    y: &GpuTensor,
) -> Result<(), GpuError> {
    let batch = check_xy(&[w], x, y, w.rows)?;
    if batch == 0 || w.rows == 0 {
        return Ok(());
    }
    if e.numel() < (batch - 1) * e_stride + w.rows {
        return Err(linear_err(format!(
            "e has {} elements, too few for {batch} rows of {} placed {e_stride} apart",
            e.numel(),
            w.rows
        )));
    }
    if batch <= MATVEC_MAX_ROWS && fusable(rec.ctx(), &[w]) {
        let e = Some((e, e_stride));
        return matvec_fused(rec, &[w], MatvecEpilogue::GeluMul, x, y, e, batch);
    }
    linear(rec, w, x, y)?;
    super::elementwise_inplace(
        rec,
        super::Elementwise::GeluMul,
        y,
        Some((
            e,
            super::BLayout::Rows {
                cols: w.rows,
                stride: e_stride,
            },
        )),
    )
}

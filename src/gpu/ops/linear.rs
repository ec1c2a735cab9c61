//! Linear layers and embedding gathers over [`Matrix`] weights in every [`WeightFormat`]:
//! [`linear`] (`y = x @ W^T`; a subgroup matvec for decode, a tiled matmul for batches) and
//! [`embedding`] (row gather with a scale). Row windows are handled transparently: one dispatch
//! per window.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{
    Access, BufSlice, GpuError, GpuTensor, KernelSpec, Matrix, Recorder, ScaleDType, WeightFormat,
};

/// Parameters of `matvec.wgsl` and `matmul.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LinearParams {
    rows: u32,
    cols: u32,
    row_words: u32,
    groups: u32,
    x_off: u32,
    y_off: u32,
    y_stride: u32,
    batch: u32,
}

/// Parameters of `gather.wgsl` (kept at 32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GatherParams {
    n: u32,
    cols: u32,
    row_words: u32,
    row_start: u32,
    rows: u32,
    ids_off: u32,
    out_off: u32,
    scale: f32,
}

/// Rows per workgroup of the matvec, both paths (must match `RPW` in `matvec.wgsl`).
const MATVEC_RPW: usize = 32;
/// Output tile edge of the matmul kernel.
const MATMUL_TILE: usize = 32;

/// Adds the format defines (AFFINE, BITS, GROUP, SB_FMT or W_FMT) to `spec`.
fn with_format(spec: KernelSpec, format: WeightFormat) -> KernelSpec {
    match format {
        WeightFormat::Affine {
            bits,
            group,
            scales,
        } => spec
            .define("AFFINE", "1")
            .define("BITS", bits)
            .define("GROUP", group)
            .define(
                "SB_FMT",
                match scales {
                    ScaleDType::F16 => 0,
                    ScaleDType::BF16 => 1,
                    ScaleDType::F32 => 2,
                },
            ),
        WeightFormat::F32 => spec.define("W_FMT", 0),
        WeightFormat::F16 => spec.define("W_FMT", 1),
        WeightFormat::BF16 => spec.define("W_FMT", 2),
    }
}

fn storage(format: WeightFormat) -> &'static [Access] {
    match format {
        WeightFormat::Affine { .. } => {
            &[Access::Read, Access::Read, Access::Read, Access::ReadWrite]
        }
        _ => &[Access::Read, Access::Read, Access::ReadWrite],
    }
}

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
    let spec = KernelSpec::new("matvec", "main", storage(format));
    with_format(spec, format)
        .define("WVEC", u8::from(wvec))
        .define("XVEC", u8::from(xvec))
        .with_subgroups(subgroups)
}

/// The tiled matmul specialisation (no subgroups: one kernel for both paths).
pub fn matmul_spec(format: WeightFormat) -> KernelSpec {
    with_format(KernelSpec::new("matmul", "main", storage(format)), format)
}

/// The embedding-gather specialisation.
pub fn gather_spec(format: WeightFormat) -> KernelSpec {
    with_format(KernelSpec::new("gather", "main", storage(format)), format)
}

/// Every weight format the kernels support.
pub fn all_formats() -> Vec<WeightFormat> {
    let mut v = vec![WeightFormat::F32, WeightFormat::F16, WeightFormat::BF16];
    for bits in [2, 3, 4, 5, 6, 8] {
        for group in [32, 64, 128] {
            for scales in [ScaleDType::F16, ScaleDType::BF16, ScaleDType::F32] {
                v.push(WeightFormat::Affine {
                    bits,
                    group,
                    scales,
                });
            }
        }
    }
    v
}

/// All specialisations (for shader validation).
pub fn all_specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for f in all_formats() {
        let wvecs: &[bool] = match f {
            WeightFormat::Affine { bits, .. } => &[bits % 4 == 0],
            _ => &[false, true],
        };
        for &wvec in wvecs {
            let xvecs: &[bool] = if wvec || matches!(f, WeightFormat::Affine { .. }) {
                &[false, true]
            } else {
                &[false]
            };
            for &xvec in xvecs {
                for sg in [false, true] {
                    v.push(matvec_spec(f, wvec, xvec, sg));
                }
            }
        }
        v.push(matmul_spec(f));
        v.push(gather_spec(f));
    }
    v
}

fn affine_dims(m: &Matrix) -> (u32, u32) {
    match m.format {
        WeightFormat::Affine { bits, group, .. } => (
            crate::gpu::quant::row_words(m.cols, bits) as u32,
            (m.cols / group as usize) as u32,
        ),
        _ => (0, 0),
    }
}

fn window_bufs<'a>(
    m: &Matrix,
    win: &'a crate::gpu::MatrixWindow,
    name: &str,
) -> Result<Vec<BufSlice<'a>>, GpuError> {
    let mut v: Vec<BufSlice<'a>> = vec![(&win.data).into()];
    if matches!(m.format, WeightFormat::Affine { .. }) {
        let sb = win.scale_bias.as_ref().ok_or_else(|| GpuError::Kernel {
            kernel: name.into(),
            message: "affine window without scale/bias buffer".into(),
        })?;
        v.push(sb.into());
    }
    Ok(v)
}

/// Records `y = x @ W^T`: `x` is `[batch, cols]` f32 (any element offset; a `[cols]` vector is
/// batch 1), `y` is `[batch, rows]` f32. Batch 1 runs the decode matvec (subgroup reduction when
/// the context has subgroups, a one-barrier workgroup-memory reduction otherwise); batch > 1 runs the tiled matmul.
/// Each row window of `w` is one dispatch writing its columns of `y`. `y` must not share a
/// buffer with `x`.
pub fn linear(
    rec: &mut Recorder,
    w: &Matrix,
    x: &GpuTensor,
    y: &GpuTensor,
) -> Result<(), GpuError> {
    let bad = |m: String| GpuError::Kernel {
        kernel: "linear".into(),
        message: m,
    };
    let (rows, cols) = (w.rows, w.cols);
    if cols == 0 || !x.numel().is_multiple_of(cols) {
        return Err(bad(format!(
            "x has {} elements, not a multiple of cols {cols}",
            x.numel()
        )));
    }
    let batch = x.numel() / cols;
    if y.numel() != batch * rows {
        return Err(bad(format!(
            "y has {} elements, expected batch {batch} x rows {rows}",
            y.numel()
        )));
    }
    if batch == 0 || rows == 0 {
        return Ok(());
    }
    if x.buffer == y.buffer {
        return Err(bad("x and y share a buffer".into()));
    }
    let (row_words, groups) = affine_dims(w);
    let affine = matches!(w.format, WeightFormat::Affine { .. });
    let subgroups = rec.ctx().caps().subgroups;
    let kernel = if batch == 1 {
        let wvec = matvec_wvec(w.format, cols);
        let xvec = (affine || wvec) && x.elem_offset().is_multiple_of(4);
        rec.ctx()
            .kernel(&matvec_spec(w.format, wvec, xvec, subgroups))?
    } else {
        rec.ctx().kernel(&matmul_spec(w.format))?
    };
    for win in &w.windows {
        if win.rows == 0 {
            continue;
        }
        let params = LinearParams {
            rows: win.rows as u32,
            cols: cols as u32,
            row_words,
            groups,
            x_off: x.elem_offset(),
            y_off: y.elem_offset() + win.row_start as u32,
            y_stride: rows as u32,
            batch: batch as u32,
        };
        let mut bufs = window_bufs(w, win, "linear")?;
        bufs.push((&x.buffer).into());
        bufs.push((&y.buffer).into());
        if batch == 1 {
            rec.dispatch_linear(
                &kernel,
                &params,
                &bufs,
                win.rows.div_ceil(MATVEC_RPW) as u32,
            )?;
        } else {
            let groups = [
                win.rows.div_ceil(MATMUL_TILE) as u32,
                batch.div_ceil(MATMUL_TILE) as u32,
                1,
            ];
            rec.dispatch(&kernel, &params, &bufs, groups)?;
        }
    }
    Ok(())
}

/// Records an embedding gather: `out[i, :] = table[ids[i], :] * scale` (dequantized for affine
/// tables), `ids` u32 `[n]`, `out` f32 `[n, cols]`, both at any element offset. Each row window
/// is one dispatch that fills the rows whose id falls inside it; ids `>= table.rows` leave their
/// output row untouched.
pub fn embedding(
    rec: &mut Recorder,
    table: &Matrix,
    ids: &GpuTensor,
    out: &GpuTensor,
    scale: f32,
) -> Result<(), GpuError> {
    let n = ids.numel();
    let cols = table.cols;
    if out.numel() != n * cols {
        return Err(GpuError::Kernel {
            kernel: "embedding".into(),
            message: format!(
                "out has {} elements, expected {n} ids x {cols} cols",
                out.numel()
            ),
        });
    }
    if n == 0 || cols == 0 {
        return Ok(());
    }
    let (row_words, _) = affine_dims(table);
    let kernel = rec.ctx().kernel(&gather_spec(table.format))?;
    for win in &table.windows {
        if win.rows == 0 {
            continue;
        }
        let params = GatherParams {
            n: n as u32,
            cols: cols as u32,
            row_words,
            row_start: win.row_start as u32,
            rows: win.rows as u32,
            ids_off: ids.elem_offset(),
            out_off: out.elem_offset(),
            scale,
        };
        let mut bufs = window_bufs(table, win, "embedding")?;
        bufs.push((&ids.buffer).into());
        bufs.push((&out.buffer).into());
        rec.dispatch_linear(&kernel, &params, &bufs, (n * cols).div_ceil(256) as u32)?;
    }
    Ok(())
}

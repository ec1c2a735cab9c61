//! The embedding gather (`wgsl/gather.wgsl`): [`embedding`], rows of a [`Matrix`] table in any
//! [`WeightFormat`](crate::gpu::WeightFormat) by id, scaled, one dispatch per row window.

use crate::gpu::{
    Access, GpuError, GpuTensor, KernelSpec, Matrix, ParamLayout, Recorder, WeightFormat,
    uniform_params,
};

uniform_params! {
    /// Parameters of `gather.wgsl` (kept at 32 bytes).
    struct Params {
        n: u32,
        cols: u32,
        row_words: u32,
        row_start: u32,
        rows: u32,
        ids_off: u32,
        out_off: u32,
        scale: f32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

/// The embedding-gather specialisation.
pub fn gather_spec(format: WeightFormat) -> KernelSpec {
    format.define_in(KernelSpec::new(
        "gather",
        "main",
        &format.bindings_then(&[Access::Read, Access::ReadWrite]),
    ))
}

/// All specialisations (for shader validation).
pub fn all_specs() -> Vec<KernelSpec> {
    WeightFormat::all().into_iter().map(gather_spec).collect()
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
    let (row_words, _) = table.affine_dims();
    let kernel = rec.ctx().kernel(&gather_spec(table.format))?;
    for win in &table.windows {
        if win.rows == 0 {
            continue;
        }
        let params = Params {
            n: n as u32,
            cols: cols as u32,
            row_words,
            row_start: win.row_start as u32,
            rows: win.rows as u32,
            ids_off: ids.elem_offset(),
            out_off: out.elem_offset(),
            scale,
        };
        let mut bufs = table.window_bindings(win, "embedding")?;
        bufs.push((&ids.buffer).into());
        bufs.push((&out.buffer).into());
        rec.dispatch_linear(&kernel, &params, &bufs, (n * cols).div_ceil(256) as u32)?;
    }
    Ok(())
}

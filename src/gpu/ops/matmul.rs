//! The register-blocked matrix-matrix product (`wgsl/matmul.wgsl`): the batched form of
//! [`linear`](super::linear) (prefill, the vision tower), `y[b] = W x[b]` over a [`Matrix`] in
//! any [`WeightFormat`](crate::gpu::WeightFormat), one dispatch per row window.

use crate::gpu::{
    Access, GpuError, GpuTensor, KernelSpec, Matrix, ParamLayout, Recorder, WeightFormat,
    uniform_params,
};

uniform_params! {
    /// Parameters of `matmul.wgsl`.
    struct Params {
        rows: u32,
        cols: u32,
        row_words: u32,
        groups: u32,
        x_off: u32,
        y_off: u32,
        y_stride: u32,
        batch: u32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

/// Weight rows of one workgroup's output tile (8 invocations x 16 rows each).
const MATMUL_TILE_ROWS: usize = 128;
/// Batch rows of one workgroup's output tile (8 invocations x 4 rows each).
const MATMUL_TILE_BATCH: usize = 32;

/// The register-blocked matmul specialisation, `xvec`: x bound as `vec4<f32>` (its element
/// offset and width are multiples of 4). No subgroups: one kernel for both paths.
pub fn matmul_spec(format: WeightFormat, xvec: bool) -> KernelSpec {
    format.define_in(
        KernelSpec::new(
            "matmul",
            "main",
            &format.bindings_then(&[Access::Read, Access::ReadWrite]),
        )
        .define("XVEC", u8::from(xvec)),
    )
}

/// All specialisations (for shader validation).
pub fn all_specs() -> Vec<KernelSpec> {
    WeightFormat::all()
        .into_iter()
        .flat_map(|f| [matmul_spec(f, false), matmul_spec(f, true)])
        .collect()
}

/// Records `y[b, col0 + r] = W[r] . x[b]` for `batch` rows of `x` (`[batch, cols]`), the rows of
/// `y` placed `y_stride` elements apart (shapes checked by the caller, [`linear`](super::linear)).
pub(super) fn matmul(
    rec: &mut Recorder,
    w: &Matrix,
    x: &GpuTensor,
    y: &GpuTensor,
    col0: usize,
    y_stride: usize,
    batch: usize,
) -> Result<(), GpuError> {
    let (row_words, groups) = w.affine_dims();
    let xvec = x.elem_offset().is_multiple_of(4) && w.cols.is_multiple_of(4);
    let kernel = rec.ctx().kernel(&matmul_spec(w.format, xvec))?;
    for win in &w.windows {
        if win.rows == 0 {
            continue;
        }
        let params = Params {
            rows: win.rows as u32,
            cols: w.cols as u32,
            row_words,
            groups,
            x_off: x.elem_offset(),
            y_off: y.elem_offset() + (col0 + win.row_start) as u32,
            y_stride: y_stride as u32,
            batch: batch as u32,
        };
        let mut bufs = w.window_bindings(win, "linear")?;
        bufs.push((&x.buffer).into());
        bufs.push((&y.buffer).into());
        let grid = [
            win.rows.div_ceil(MATMUL_TILE_ROWS) as u32,
            batch.div_ceil(MATMUL_TILE_BATCH) as u32,
            1,
        ];
        rec.dispatch(&kernel, &params, &bufs, grid)?;
    }
    Ok(())
}

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

/// The register block `(batch rows, weight rows)` of one invocation: 4 x 16 on the portable
/// path, 8 x 8 on the subgroup path (whose x loads are shared by 8 invocations). A workgroup's
/// output tile is 8 blocks by 8.
fn block(subgroups: bool) -> (usize, usize) {
    if subgroups { (8, 8) } else { (4, 16) }
}

/// The register-blocked matmul specialisation, `xvec`: x bound as `vec4<f32>` (its element
/// offset and width are multiples of 4); `subgroups`: groups of 8 invocations share their x
/// values by shuffle (see [`matmul_subgroups`]).
pub fn matmul_spec(format: WeightFormat, xvec: bool, subgroups: bool) -> KernelSpec {
    let (ba, br) = block(subgroups);
    format.define_in(
        KernelSpec::new(
            "matmul",
            "main",
            &format.bindings_then(&[Access::Read, Access::ReadWrite]),
        )
        .define("XVEC", u8::from(xvec))
        .define("BA", ba)
        .define("BR", br)
        .with_subgroups(subgroups),
    )
}

/// Whether the matmul (and `attention_rows`) take their subgroup paths on this device:
/// subgroups whose size is known to lie in 8..=64, so that 8 consecutive invocations of a
/// 64-invocation workgroup share one.
pub fn matmul_subgroups(caps: &crate::gpu::Capabilities) -> bool {
    caps.subgroups && caps.subgroup_min_size >= 8 && caps.subgroup_max_size <= 64
}

/// All specialisations (for shader validation).
pub fn all_specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for f in WeightFormat::all() {
        for xvec in [false, true] {
            for sg in [false, true] {
                v.push(matmul_spec(f, xvec, sg));
            }
        }
    }
    v
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
    let sg = matmul_subgroups(rec.ctx().caps());
    let kernel = rec.ctx().kernel(&matmul_spec(w.format, xvec, sg))?;
    let (ba, br) = block(sg);
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
            win.rows.div_ceil(8 * br) as u32,
            batch.div_ceil(8 * ba) as u32,
            1,
        ];
        rec.dispatch(&kernel, &params, &bufs, grid)?;
    }
    Ok(())
}

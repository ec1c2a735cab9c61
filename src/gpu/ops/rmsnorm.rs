//! RMSNorm (weighted or weightless, out of place or in place) over the last axis.

use crate::gpu::{
    Access, BufSlice, GpuError, GpuTensor, KernelSpec, ParamLayout, Recorder, uniform_params,
};

uniform_params! {
    /// Parameters of `rmsnorm.wgsl`.
    struct Params {
        rows: u32,
        dim: u32,
        eps: f32,
        x_off: u32,
        w_off: u32,
        out_off: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

fn spec(weight: bool, inplace: bool, subgroups: bool) -> KernelSpec {
    let storage: &[Access] = match (inplace, weight) {
        (true, true) => &[Access::ReadWrite, Access::Read],
        (true, false) => &[Access::ReadWrite],
        (false, true) => &[Access::Read, Access::Read, Access::ReadWrite],
        (false, false) => &[Access::Read, Access::ReadWrite],
    };
    KernelSpec::new("rmsnorm", "main", storage)
        .define("WEIGHT", u8::from(weight))
        .define("INPLACE", u8::from(inplace))
        .with_subgroups(subgroups)
}

/// All specialisations (for shader validation): weighted/weightless × out-of-place/in-place ×
/// subgroup/portable.
pub fn all_specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for sg in [true, false] {
        for w in [true, false] {
            for ip in [true, false] {
                v.push(spec(w, ip, sg));
            }
        }
    }
    v
}

/// Records `out[r, :] = x[r, :] * rsqrt(mean(x[r, :]²) + eps) * weight` for every row of
/// `x` viewed as `[rows, dim]` with `dim = weight.numel()` (or `x.shape.last()` when
/// `weight` is `None`, the weightless norm). The weight is used directly, never as `1 + w`.
///
/// Per-head norms (q_norm, k_norm, v_norm) are the same op with `dim = head_dim` and
/// `rows = tokens · heads`. `out` may be `x` itself (same buffer and offset: normalised in
/// place) or a disjoint region of the same buffer (views of one activation arena): the op then
/// binds the buffer once, read_write. A partial overlap is an error.
pub fn rms_norm(
    rec: &mut Recorder,
    x: &GpuTensor,
    weight: Option<&GpuTensor>,
    out: &GpuTensor,
    eps: f32,
) -> Result<(), GpuError> {
    let bad = |m: String| GpuError::Kernel {
        kernel: "rms_norm".into(),
        message: m,
    };
    let dim = match weight {
        Some(w) => w.numel(),
        None => *x.shape.last().ok_or_else(|| bad("x has no shape".into()))?,
    };
    if dim == 0 || !x.numel().is_multiple_of(dim) {
        return Err(bad(format!("x has {} elements, dim is {dim}", x.numel())));
    }
    if out.numel() != x.numel() {
        return Err(bad(format!(
            "out has {} elements, x has {}",
            out.numel(),
            x.numel()
        )));
    }
    let rows = x.numel() / dim;
    // One buffer for x and out: bind it once (read_write). out must be x itself or disjoint.
    let inplace = out.buffer == x.buffer;
    if inplace && out.offset != x.offset {
        let (a, b) = (x.offset, out.offset);
        let len = x.bytes();
        if a < b + len && b < a + len {
            return Err(bad("out partially overlaps x".into()));
        }
    }
    let sg = rec.ctx().caps().subgroups;
    let kernel = rec.ctx().kernel(&spec(weight.is_some(), inplace, sg))?;
    let params = Params {
        rows: rows as u32,
        dim: dim as u32,
        eps,
        x_off: x.elem_offset(),
        w_off: weight.map_or(0, |w| w.elem_offset()),
        out_off: out.elem_offset(),
        _pad0: 0,
        _pad1: 0,
    };
    let mut bufs: Vec<BufSlice> = vec![(&x.buffer).into()];
    if let Some(w) = weight {
        bufs.push((&w.buffer).into());
    }
    if !inplace {
        bufs.push((&out.buffer).into());
    }
    rec.dispatch_linear(&kernel, &params, &bufs, rows as u32)
}

/// In-place RMSNorm: `x = rms_norm(x) * weight` (see [`rms_norm`]).
pub fn rms_norm_inplace(
    rec: &mut Recorder,
    x: &GpuTensor,
    weight: Option<&GpuTensor>,
    eps: f32,
) -> Result<(), GpuError> {
    rms_norm(rec, x, weight, x, eps)
}

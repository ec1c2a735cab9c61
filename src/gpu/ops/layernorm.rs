//! LayerNorm (PyTorch's `nn.LayerNorm`: mean, biased variance, weight and bias) over the last
//! axis, out of place or in place.

use crate::gpu::{
    Access, BufSlice, GpuError, GpuTensor, KernelSpec, ParamLayout, Recorder, uniform_params,
};

uniform_params! {
    /// Parameters of `layernorm.wgsl`.
    struct Params {
        rows: u32,
        dim: u32,
        eps: f32,
        x_off: u32,
        w_off: u32,
        b_off: u32,
        out_off: u32,
        _pad0: u32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

fn spec(inplace: bool, subgroups: bool) -> KernelSpec {
    let storage: &[Access] = if inplace {
        &[Access::ReadWrite, Access::Read, Access::Read]
    } else {
        &[Access::Read, Access::Read, Access::Read, Access::ReadWrite]
    };
    KernelSpec::new("layernorm", "main", storage)
        .define("INPLACE", u8::from(inplace))
        .with_subgroups(subgroups)
}

/// All specialisations (for shader validation): out-of-place/in-place × subgroup/portable.
pub fn all_specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for sg in [true, false] {
        for ip in [true, false] {
            v.push(spec(ip, sg));
        }
    }
    v
}

/// Records `out[r, :] = (x[r, :] - mean) / sqrt(var + eps) * weight + bias` for every row of
/// `x` viewed as `[rows, dim]` with `dim = weight.numel()` (= `bias.numel()`); `var` is the
/// biased variance (PyTorch's), computed around the mean in a second pass.
///
/// `out` may be `x` itself (same buffer and offset: normalised in place) or a disjoint region
/// of the same buffer: the op then binds the buffer once, read_write. A partial overlap is an
/// error.
pub fn layer_norm(
    rec: &mut Recorder,
    x: &GpuTensor,
    weight: &GpuTensor,
    bias: &GpuTensor,
    out: &GpuTensor,
    eps: f32,
) -> Result<(), GpuError> {
    let bad = |m: String| GpuError::Kernel {
        kernel: "layer_norm".into(),
        message: m,
    };
    let dim = weight.numel();
    if bias.numel() != dim {
        return Err(bad(format!(
            "bias has {} elements, weight has {dim}",
            bias.numel()
        )));
    }
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
    let inplace = out.buffer == x.buffer;
    if inplace && out.offset != x.offset {
        let (a, b) = (x.offset, out.offset);
        let len = x.bytes();
        if a < b + len && b < a + len {
            return Err(bad("out partially overlaps x".into()));
        }
    }
    let sg = rec.ctx().caps().subgroups;
    let kernel = rec.ctx().kernel(&spec(inplace, sg))?;
    let params = Params {
        rows: rows as u32,
        dim: dim as u32,
        eps,
        x_off: x.elem_offset(),
        w_off: weight.elem_offset(),
        b_off: bias.elem_offset(),
        out_off: out.elem_offset(),
        _pad0: 0,
    };
    let mut bufs: Vec<BufSlice> = vec![
        (&x.buffer).into(),
        (&weight.buffer).into(),
        (&bias.buffer).into(),
    ];
    if !inplace {
        bufs.push((&out.buffer).into());
    }
    rec.dispatch_linear(&kernel, &params, &bufs, rows as u32)
}

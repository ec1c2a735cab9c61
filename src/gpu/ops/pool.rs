//! 2-D average pooling of a token grid (the vision tower's k x k pooler).

use crate::gpu::{
    Access, BufSlice, GpuError, GpuTensor, KernelSpec, ParamLayout, Recorder, uniform_params,
};

uniform_params! {
    /// Parameters of `pool.wgsl`.
    struct Params {
        n_out: u32,
        c: u32,
        pw: u32,
        k: u32,
        opw: u32,
        x_off: u32,
        out_off: u32,
        scale: f32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

fn spec() -> KernelSpec {
    KernelSpec::new("pool", "main", &[Access::Read, Access::ReadWrite])
}

/// All specialisations (for shader validation). Pooling has only the portable path: it is a
/// bandwidth-bound gather with nothing to reduce across invocations.
pub fn all_specs() -> Vec<KernelSpec> {
    vec![spec()]
}

/// Records `out = scale * avg_pool_kxk(x)`.
///
/// `x` is a row-major `[ph * pw, C]` grid of tokens (token `y * pw + x`); `out` is
/// `[(ph / k) * (pw / k), C]`, row-major over the pooled grid (row `(y / k) * (pw / k) + x / k`).
/// Each output is the mean of its k x k block (weight `1 / (k k)`) times `scale`.
/// `ph` and `pw` must be multiples of `k`; `out` must not alias `x`.
pub fn avg_pool_2d(
    rec: &mut Recorder,
    x: &GpuTensor,
    out: &GpuTensor,
    ph: u32,
    pw: u32,
    k: u32,
    scale: f32,
) -> Result<(), GpuError> {
    let bad = |m: String| GpuError::Kernel {
        kernel: "avg_pool_2d".into(),
        message: m,
    };
    if k == 0 || ph == 0 || pw == 0 || !ph.is_multiple_of(k) || !pw.is_multiple_of(k) {
        return Err(bad(format!(
            "grid {ph}x{pw} is not a non-empty multiple of the kernel size {k}"
        )));
    }
    let cells = ph as usize * pw as usize;
    if x.numel() == 0 || !x.numel().is_multiple_of(cells) {
        return Err(bad(format!(
            "x has {} elements, not a multiple of the {ph}x{pw} grid",
            x.numel()
        )));
    }
    let c = x.numel() / cells;
    let (oph, opw) = (ph / k, pw / k);
    let n_out = oph as usize * opw as usize * c;
    if out.numel() != n_out {
        return Err(bad(format!(
            "out has {} elements, expected {}x{}x{c} = {n_out}",
            out.numel(),
            oph,
            opw
        )));
    }
    let kernel = rec.ctx().kernel(&spec())?;
    let params = Params {
        n_out: n_out as u32,
        c: c as u32,
        pw,
        k,
        opw,
        x_off: x.elem_offset(),
        out_off: out.elem_offset(),
        scale: scale / (k * k) as f32,
    };
    let bufs: [BufSlice; 2] = [(&x.buffer).into(), (&out.buffer).into()];
    rec.dispatch_linear(&kernel, &params, &bufs, n_out.div_ceil(256) as u32)
}

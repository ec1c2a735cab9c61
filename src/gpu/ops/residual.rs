//! The residual add of a block (`wgsl/residual.wgsl`) with its post-norm, the layer scalar and
//! the next block's pre-norm folded in: one dispatch per block boundary.

use crate::gpu::{Access, GpuError, GpuTensor, KernelSpec, ParamLayout, Recorder, uniform_params};

fn err(kernel: &str, message: String) -> GpuError {
    GpuError::Kernel {
        kernel: kernel.into(),
        message,
    }
}

uniform_params! {
    /// Parameters of `residual.wgsl`.
    struct Params {
        rows: u32,
        dim: u32,
        eps: f32,
        scale: f32,
        h_off: u32,
        o_off: u32,
        w_off: u32,
        w2_off: u32,
        xn_off: u32,
        next: u32,
        _p0: u32,
        _p1: u32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

fn spec(subgroups: bool) -> KernelSpec {
    KernelSpec::new(
        "residual",
        "main",
        &[
            Access::ReadWrite,
            Access::Read,
            Access::Read,
            Access::Read,
            Access::ReadWrite,
        ],
    )
    .with_subgroups(subgroups)
}

/// All specialisations (for shader validation).
pub fn all_specs() -> Vec<KernelSpec> {
    vec![spec(false), spec(true)]
}

/// Records, for every row of `h` (`[rows, dim]`): `h = (h + RMSNorm_{post}(o)) * scale`, then,
/// when `next = Some((w, xn))`, `xn = RMSNorm_w(h)` — the residual add of a block with its
/// post-norm, the layer scalar, and the next block's pre-norm in one dispatch. `o` and `xn` are
/// `[rows, dim]` in buffers other than `h`'s.
pub fn residual_norm(
    rec: &mut Recorder,
    h: &GpuTensor,
    o: &GpuTensor,
    post: &GpuTensor,
    scale: f32,
    next: Option<(&GpuTensor, &GpuTensor)>,
    eps: f32,
) -> Result<(), GpuError> {
    let dim = post.numel();
    if dim == 0 || !h.numel().is_multiple_of(dim) || o.numel() != h.numel() {
        return Err(err(
            "residual_norm",
            format!(
                "h has {} elements and o {}, expected equal multiples of dim {dim}",
                h.numel(),
                o.numel()
            ),
        ));
    }
    if o.buffer == h.buffer {
        return Err(err("residual_norm", "o and h share a buffer".into()));
    }
    let rows = h.numel() / dim;
    let (w2, xn) = match next {
        Some((w, xn)) => {
            if w.numel() != dim || xn.numel() != h.numel() || xn.buffer == h.buffer {
                return Err(err(
                    "residual_norm",
                    format!(
                        "next norm weight {} / output {} elements (expected {dim} / {}), or the \
                         output shares h's buffer",
                        w.numel(),
                        xn.numel(),
                        h.numel()
                    ),
                ));
            }
            (w, xn)
        }
        None => (post, o),
    };
    let params = Params {
        rows: rows as u32,
        dim: dim as u32,
        eps,
        scale,
        h_off: h.elem_offset(),
        o_off: o.elem_offset(),
        w_off: post.elem_offset(),
        w2_off: w2.elem_offset(),
        xn_off: xn.elem_offset(),
        next: u32::from(next.is_some()),
        _p0: 0,
        _p1: 0,
    };
    let kernel = rec.ctx().kernel(&spec(rec.ctx().caps().subgroups))?;
    // Without a next norm nothing is written to the xn binding; bind a read_write buffer other
    // than o's read-only one (h's, already bound read_write).
    let xn_buf = if next.is_some() {
        &xn.buffer
    } else {
        &h.buffer
    };
    rec.dispatch_linear(
        &kernel,
        &params,
        &[
            (&h.buffer).into(),
            (&o.buffer).into(),
            (&post.buffer).into(),
            (&w2.buffer).into(),
            xn_buf.into(),
        ],
        rows as u32,
    )
}

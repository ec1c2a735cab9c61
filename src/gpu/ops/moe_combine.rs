//! The prefill expert combine (`wgsl/moe_combine.wgsl`): each token's expert outputs, held at
//! the sorted positions of the routing table, weighted and summed in slot order.

use super::moe_route_sort::RouteLayout;
use crate::gpu::{
    Access, GpuError, GpuTensor, KernelSpec, ParamLayout, Recorder, uniform_params,
};

uniform_params! {
    /// Parameters of `moe_combine.wgsl`.
    struct Params {
        t: u32,
        h: u32,
        k: u32,
        inv_off: u32,
        w_off: u32,
        d_off: u32,
        y_off: u32,
        _p0: u32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

/// The combine specialisation (no subgroups).
pub fn combine_spec() -> KernelSpec {
    KernelSpec::new(
        "moe_combine",
        "main",
        &[Access::Read, Access::Read, Access::Read, Access::ReadWrite],
    )
}

/// All specialisations (for shader validation).
pub fn all_specs() -> Vec<KernelSpec> {
    vec![combine_spec()]
}

/// Records `y[t, c] = sum_j weights[t, j] * ds[inv[t * k + j], c]` (shapes checked by the
/// caller, [`experts_prefill`](super::moe::experts_prefill)): one dispatch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn combine(
    rec: &mut Recorder,
    route: &GpuTensor,
    layout: &RouteLayout,
    weights: &GpuTensor,
    ds: &GpuTensor,
    y: &GpuTensor,
    tokens: usize,
    hid: usize,
    top_k: usize,
) -> Result<(), GpuError> {
    let kernel = rec.ctx().kernel(&combine_spec())?;
    let params = Params {
        t: tokens as u32,
        h: hid as u32,
        k: top_k as u32,
        inv_off: route.elem_offset() + layout.inv_off as u32,
        w_off: weights.elem_offset(),
        d_off: ds.elem_offset(),
        y_off: y.elem_offset(),
        _p0: 0,
    };
    let bufs = [
        (&route.buffer).into(),
        (&weights.buffer).into(),
        (&ds.buffer).into(),
        (&y.buffer).into(),
    ];
    rec.dispatch_linear(&kernel, &params, &bufs, (tokens * hid).div_ceil(256) as u32)
}

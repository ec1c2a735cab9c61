//! Mixture-of-experts routing on the GPU (`wgsl/moe_router.wgsl`): [`route`], softmax over the
//! experts, top-k, renormalise and the per-expert scale of transformers' `Gemma4TextRouter`,
//! from the router logits (the projection itself is an ordinary
//! [`linear`](super::linear)) to the expert ids and weights that the expert kernels read from
//! the GPU buffer directly.

use crate::gpu::{
    Access, DType, GpuError, GpuTensor, KernelSpec, ParamLayout, Recorder, uniform_params,
};

uniform_params! {
    /// Parameters of `moe_router.wgsl`.
    struct Params {
        t: u32,
        e: u32,
        k: u32,
        logits_off: u32,
        scale_off: u32,
        ids_off: u32,
        w_off: u32,
        _p0: u32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

/// The most experts the router kernel handles (one invocation per expert).
pub const MAX_EXPERTS: usize = 256;

/// The router specialisation (no subgroups: one kernel for both paths).
pub fn router_spec() -> KernelSpec {
    KernelSpec::new(
        "moe_router",
        "main",
        &[
            Access::Read,
            Access::Read,
            Access::ReadWrite,
            Access::ReadWrite,
        ],
    )
}

/// All specialisations (for shader validation).
pub fn all_specs() -> Vec<KernelSpec> {
    vec![router_spec()]
}

pub(crate) fn moe_err(kernel: &str, message: String) -> GpuError {
    GpuError::Kernel {
        kernel: kernel.into(),
        message,
    }
}

/// Checks that `t` is a `dtype` tensor of exactly `n` elements.
pub(crate) fn check_len(
    kernel: &str,
    what: &str,
    t: &GpuTensor,
    n: usize,
    dtype: DType,
) -> Result<(), GpuError> {
    if t.numel() != n || t.dtype != dtype {
        return Err(moe_err(
            kernel,
            format!(
                "{what} is {:?} {:?} ({} elements), expected {n} {dtype:?} elements",
                t.shape,
                t.dtype,
                t.numel()
            ),
        ));
    }
    Ok(())
}

/// Records the routing of `tokens` tokens over `experts` experts, `top_k` each (one dispatch):
/// - `logits`: f32 `[tokens, experts]`, the router projection's output;
/// - `per_expert_scale`: f32 `[experts]`;
/// - `ids`: u32 `[tokens, top_k]`, written: the chosen experts by descending probability (ties:
///   the lower expert index first);
/// - `weights`: f32 `[tokens, top_k]`, written: `p / sum(top-k p) * per_expert_scale[id]` with
///   `p = softmax(logits[t])`.
///
/// `experts` is 1 to [`MAX_EXPERTS`], `top_k` 1 to `experts`; logits are finite. All tensors at
/// any element offset, `ids` and `weights` in distinct buffers.
///
/// Ties: exactly equal probabilities are ranked lower expert index first. (`torch.topk` on CPU
/// does not do that: its selection is unstable, so when a tie straddles the k-th place it may
/// keep other indices; with real router logits exact ties do not occur.)
#[allow(clippy::too_many_arguments)]
pub fn route(
    rec: &mut Recorder,
    logits: &GpuTensor,
    per_expert_scale: &GpuTensor,
    ids: &GpuTensor,
    weights: &GpuTensor,
    tokens: usize,
    experts: usize,
    top_k: usize,
) -> Result<(), GpuError> {
    const K: &str = "moe_route";
    if experts == 0 || experts > MAX_EXPERTS || top_k == 0 || top_k > experts {
        return Err(moe_err(
            K,
            format!(
                "{experts} experts, top-k {top_k}: need 1 <= top-k <= experts <= {MAX_EXPERTS}"
            ),
        ));
    }
    check_len(K, "logits", logits, tokens * experts, DType::F32)?;
    check_len(K, "per_expert_scale", per_expert_scale, experts, DType::F32)?;
    check_len(K, "ids", ids, tokens * top_k, DType::U32)?;
    check_len(K, "weights", weights, tokens * top_k, DType::F32)?;
    if tokens == 0 {
        return Ok(());
    }
    let kernel = rec.ctx().kernel(&router_spec())?;
    let params = Params {
        t: tokens as u32,
        e: experts as u32,
        k: top_k as u32,
        logits_off: logits.elem_offset(),
        scale_off: per_expert_scale.elem_offset(),
        ids_off: ids.elem_offset(),
        w_off: weights.elem_offset(),
        _p0: 0,
    };
    let bufs = [
        (&logits.buffer).into(),
        (&per_expert_scale.buffer).into(),
        (&ids.buffer).into(),
        (&weights.buffer).into(),
    ];
    rec.dispatch_linear(&kernel, &params, &bufs, tokens as u32)
}

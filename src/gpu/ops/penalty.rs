//! Repetition penalty on the GPU (`wgsl/penalty.wgsl`), as Hugging Face's
//! `RepetitionPenaltyLogitsProcessor`: every logit of an id seen so far is divided by the penalty
//! when positive and multiplied by it otherwise. Applied in place before sampling, so the logits
//! never leave the GPU.

use crate::gpu::{
    Access, BufSlice, DType, GpuError, GpuTensor, KernelSpec, ParamLayout, Recorder, uniform_params,
};

uniform_params! {
    /// Parameters of `penalty.wgsl`.
    struct Params {
        n_ids: u32,
        vocab: u32,
        logits_off: u32,
        ids_off: u32,
        penalty: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

const WORKGROUP: usize = 64;

fn spec() -> KernelSpec {
    KernelSpec::new("penalty", "main", &[Access::ReadWrite, Access::Read])
}

/// All specialisations (for shader validation). The kernel has only the portable path: it
/// touches one logit per id, so subgroups would not help.
pub fn all_specs() -> Vec<KernelSpec> {
    vec![spec()]
}

/// Records `logits[t] = logits[t] > 0 ? logits[t] / penalty : logits[t] * penalty` for the first
/// `n_ids` ids of `ids` (u32), in place on the `logits` row (`[vocab]` f32).
///
/// The ids must be **distinct** (keep a set on the host and append each new id once): two
/// invocations updating the same logit would race. Ids `>= vocab` are ignored. `n_ids == 0` or
/// `penalty == 1` records nothing. `ids` must live in another buffer than `logits`.
pub fn repetition_penalty(
    rec: &mut Recorder,
    logits: &GpuTensor,
    ids: &GpuTensor,
    n_ids: usize,
    penalty: f32,
) -> Result<(), GpuError> {
    let bad = |m: String| GpuError::Kernel {
        kernel: "repetition_penalty".into(),
        message: m,
    };
    if !(penalty.is_finite() && penalty > 0.0) {
        return Err(bad(format!("penalty {penalty} must be finite and > 0")));
    }
    if n_ids > ids.numel() {
        return Err(bad(format!(
            "n_ids = {n_ids} but the ids tensor holds {}",
            ids.numel()
        )));
    }
    if ids.dtype != DType::U32 {
        return Err(bad(format!("ids must be u32, found {:?}", ids.dtype)));
    }
    if n_ids == 0 || penalty == 1.0 {
        return Ok(());
    }
    let params = Params {
        n_ids: n_ids as u32,
        vocab: logits.numel() as u32,
        logits_off: logits.elem_offset(),
        ids_off: ids.elem_offset(),
        penalty,
        _pad0: 0,
        _pad1: 0,
        _pad2: 0,
    };
    let kernel = rec.ctx().kernel(&spec())?;
    let bufs: [BufSlice; 2] = [(&logits.buffer).into(), (&ids.buffer).into()];
    rec.dispatch_linear(&kernel, &params, &bufs, n_ids.div_ceil(WORKGROUP) as u32)
}

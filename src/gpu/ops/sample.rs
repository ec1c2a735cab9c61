//! Selection over logits on the GPU: argmax, top-k and sampling (no readback of the logits).
//!
//! All three run in two passes over the same kernel family (`wgsl/sample.wgsl`): up to
//! [`MAX_PARTS`] workgroups each select the k best (value, index) pairs of a contiguous chunk,
//! then one workgroup selects the k best of those and writes the result (or samples from it).
//! Ordering: larger value first, ties by lower index (like `torch.argmax` / `torch.topk`);
//! NaN counts as larger than +inf and -0.0 equals +0.0.
//!
//! Cost: k selection rounds per workgroup, so larger k uses fewer, larger first-pass chunks.
//! On lavapipe (2 cores, noisy) a 262144-logit vector took about 2-10 ms for argmax and
//! 40-60 ms for k = 64 on either path.

use std::sync::Arc;

use crate::gpu::context::BindGuard;
use crate::gpu::{
    Access, BufSlice, GpuContext, GpuError, GpuTensor, KernelSpec, ParamLayout, Recorder,
    uniform_params,
};

/// Largest `k` of [`top_k`] and the largest candidate set of [`sample`].
pub const MAX_TOP_K: u32 = 64;
/// Most workgroups of the first pass (the scratch holds `MAX_PARTS * MAX_TOP_K` candidates).
pub const MAX_PARTS: u32 = 256;
/// Logits per first-pass workgroup below which fewer workgroups are used, for k <= 8. Each
/// workgroup runs k selection rounds, so larger k uses proportionally larger chunks.
const MIN_CHUNK: usize = 1024;

/// (workgroups, logits per workgroup) of the first pass.
fn split(n: usize, k: u32) -> (usize, usize) {
    let min_chunk = MIN_CHUNK * (k as usize / 8).max(1);
    let parts = n.div_ceil(min_chunk).clamp(1, MAX_PARTS as usize);
    (parts, n.div_ceil(parts))
}

uniform_params! {
    /// Parameters of `sample.wgsl`.
    struct Params {
        n: u32,
        k: u32,
        chunk: u32,
        parts: u32,
        in_off: u32,
        out_off: u32,
        out2_off: u32,
        _pad: u32,
        inv_temp: f32,
        top_p: f32,
        min_p: f32,
        uniform: f32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

/// Sampling parameters of [`sample`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    /// Softmax temperature; `<= 0` (or not finite) means greedy (argmax).
    pub temperature: f32,
    /// Number of candidates (the k largest logits), `1..=MAX_TOP_K`; 0 means `MAX_TOP_K`.
    /// `1` means greedy. Capped at the number of logits.
    pub top_k: u32,
    /// Nucleus: keep the smallest prefix of candidates whose cumulative probability is
    /// `>= top_p` (always at least one); `>= 1` disables it.
    pub top_p: f32,
    /// Drop candidates with probability `< min_p * p_max`; `0` disables it.
    pub min_p: f32,
    /// A host-drawn uniform random number in `[0, 1)`.
    pub uniform: f32,
}

impl Default for SampleParams {
    /// Greedy decoding.
    fn default() -> Self {
        SampleParams {
            temperature: 0.0,
            top_k: 1,
            top_p: 1.0,
            min_p: 0.0,
            uniform: 0.0,
        }
    }
}

impl SampleParams {
    /// The candidate count for `n` logits.
    pub fn effective_k(&self, n: usize) -> u32 {
        let k = if self.top_k == 0 {
            MAX_TOP_K
        } else {
            self.top_k
        };
        k.min(n as u32).max(1)
    }

    /// `1 / temperature`, or 0 for greedy decoding (what the kernel receives).
    pub fn inv_temperature(&self) -> f32 {
        let inv = 1.0 / self.temperature;
        if self.temperature > 0.0 && inv.is_finite() && inv > 0.0 {
            inv
        } else {
            0.0
        }
    }
}

/// Scratch memory of the selection ops, allocated once (no allocation per call).
#[derive(Debug, Clone)]
pub struct SampleScratch {
    buffer: wgpu::Buffer,
    _guard: Arc<BindGuard>,
    max_n: usize,
}

impl SampleScratch {
    /// Bytes of GPU memory held by the scratch buffer.
    pub fn bytes(&self) -> u64 {
        self.buffer.size()
    }

    /// Scratch for logits vectors of up to `max_n` elements.
    pub fn new(ctx: &GpuContext, max_n: usize) -> Result<Self, GpuError> {
        // the most first-pass workgroups any k uses on `max_n` logits (k ≤ 8), each writing
        // up to MAX_TOP_K pairs
        let parts = split(max_n.max(1), 1).0 as u64;
        let bytes = parts * (MAX_TOP_K * 2 * 4) as u64;
        let buffer = ctx.create_storage("sample scratch", bytes)?;
        Ok(SampleScratch {
            _guard: Arc::new(ctx.bind_guard(&buffer)),
            buffer,
            max_n,
        })
    }

    /// The largest logits vector this scratch serves.
    pub fn max_n(&self) -> usize {
        self.max_n
    }
}

#[derive(Clone, Copy)]
enum Final {
    TopK,
    ArgMax,
    Sample,
}

fn partial_spec(subgroups: bool) -> KernelSpec {
    KernelSpec::new("sample", "main", &[Access::Read, Access::ReadWrite])
        .define("PARTIAL", 1)
        .with_subgroups(subgroups)
}

fn final_spec(mode: Final, subgroups: bool) -> KernelSpec {
    let spec = match mode {
        Final::TopK => KernelSpec::new(
            "sample",
            "main",
            &[
                Access::Read,
                Access::Read,
                Access::ReadWrite,
                Access::ReadWrite,
            ],
        )
        .define("TOPK", 1),
        Final::ArgMax => KernelSpec::new("sample", "main", &[Access::Read, Access::ReadWrite])
            .define("ARGMAX", 1),
        Final::Sample => KernelSpec::new("sample", "main", &[Access::Read, Access::ReadWrite])
            .define("SAMPLE", 1),
    };
    spec.with_subgroups(subgroups)
}

/// All specialisations (for shader validation), subgroup and portable.
pub fn all_specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for sg in [true, false] {
        v.push(partial_spec(sg));
        for mode in [Final::TopK, Final::ArgMax, Final::Sample] {
            v.push(final_spec(mode, sg));
        }
    }
    v
}

fn bad(what: &str, m: String) -> GpuError {
    GpuError::Kernel {
        kernel: what.to_string(),
        message: m,
    }
}

/// Validates the inputs and records the first pass; returns the params for the final pass.
fn first_pass(
    rec: &mut Recorder,
    what: &str,
    logits: &GpuTensor,
    k: u32,
    scratch: &SampleScratch,
) -> Result<Params, GpuError> {
    let n = logits.numel();
    if n == 0 {
        return Err(bad(what, "empty logits".into()));
    }
    if n > scratch.max_n || n > u32::MAX as usize / 2 {
        return Err(bad(
            what,
            format!("{n} logits but the scratch serves {}", scratch.max_n),
        ));
    }
    if k == 0 || k > MAX_TOP_K || k as usize > n {
        return Err(bad(
            what,
            format!("k = {k} must be in 1..={} and <= n = {n}", MAX_TOP_K),
        ));
    }
    let (parts, chunk) = split(n, k);
    let params = Params {
        n: n as u32,
        k,
        chunk: chunk as u32,
        parts: parts as u32,
        in_off: logits.elem_offset(),
        out_off: 0,
        out2_off: 0,
        _pad: 0,
        inv_temp: 0.0,
        top_p: 1.0,
        min_p: 0.0,
        uniform: 0.0,
    };
    let sg = rec.ctx().caps().subgroups;
    let kernel = rec.ctx().kernel(&partial_spec(sg))?;
    let bufs: [BufSlice; 2] = [(&logits.buffer).into(), (&scratch.buffer).into()];
    rec.dispatch(&kernel, &params, &bufs, [parts as u32, 1, 1])?;
    Ok(params)
}

/// Records `out[0] = argmax(logits)` (u32 index; ties to the lowest index; NaN counts as the
/// largest value, so the first NaN wins, like `torch.argmax`).
pub fn argmax(
    rec: &mut Recorder,
    logits: &GpuTensor,
    out: &GpuTensor,
    scratch: &SampleScratch,
) -> Result<(), GpuError> {
    if out.numel() < 1 {
        return Err(bad("argmax", "out is empty".into()));
    }
    let mut params = first_pass(rec, "argmax", logits, 1, scratch)?;
    params.out_off = out.elem_offset();
    let kernel = rec
        .ctx()
        .kernel(&final_spec(Final::ArgMax, rec.ctx().caps().subgroups))?;
    let bufs: [BufSlice; 2] = [(&scratch.buffer).into(), (&out.buffer).into()];
    rec.dispatch(&kernel, &params, &bufs, [1, 1, 1])
}

/// Records the `k` (1..=[`MAX_TOP_K`], <= n) largest logits in descending order into
/// `values_out` (f32 `[k]`) and their indices into `indices_out` (u32 `[k]`); ties by lower index.
/// The outputs must be two different buffers, neither of them the logits'.
pub fn top_k(
    rec: &mut Recorder,
    logits: &GpuTensor,
    k: u32,
    values_out: &GpuTensor,
    indices_out: &GpuTensor,
    scratch: &SampleScratch,
) -> Result<(), GpuError> {
    if values_out.numel() < k as usize || indices_out.numel() < k as usize {
        return Err(bad(
            "top_k",
            format!(
                "outputs hold {} values and {} indices, k = {k}",
                values_out.numel(),
                indices_out.numel()
            ),
        ));
    }
    let mut params = first_pass(rec, "top_k", logits, k, scratch)?;
    params.out_off = values_out.elem_offset();
    params.out2_off = indices_out.elem_offset();
    let kernel = rec
        .ctx()
        .kernel(&final_spec(Final::TopK, rec.ctx().caps().subgroups))?;
    let bufs: [BufSlice; 4] = [
        (&scratch.buffer).into(),
        (&logits.buffer).into(),
        (&values_out.buffer).into(),
        (&indices_out.buffer).into(),
    ];
    rec.dispatch(&kernel, &params, &bufs, [1, 1, 1])
}

/// Records `out[0] = ` a token id sampled from `logits` entirely on the GPU: the
/// [`SampleParams::effective_k`] largest logits, softmax of `logits / temperature` over them,
/// the min_p filter (drop `p < min_p * p_max`), the top_p nucleus (smallest prefix with
/// cumulative probability `>= top_p`, at least one token), renormalisation, and the inverse CDF
/// at `params.uniform`. Temperature 0 or top_k 1 is argmax. Matches
/// [`reference::sample_ref`](crate::gpu::reference::sample_ref) (same algorithm in f32).
pub fn sample(
    rec: &mut Recorder,
    logits: &GpuTensor,
    out: &GpuTensor,
    params: &SampleParams,
    scratch: &SampleScratch,
) -> Result<(), GpuError> {
    if out.numel() < 1 {
        return Err(bad("sample", "out is empty".into()));
    }
    if params.top_k > MAX_TOP_K {
        return Err(bad(
            "sample",
            format!("top_k = {} exceeds {MAX_TOP_K}", params.top_k),
        ));
    }
    let k = params.effective_k(logits.numel());
    let mut p = first_pass(rec, "sample", logits, k, scratch)?;
    p.out_off = out.elem_offset();
    p.inv_temp = params.inv_temperature();
    p.top_p = params.top_p;
    p.min_p = params.min_p;
    p.uniform = params.uniform.clamp(0.0, 1.0);
    let kernel = rec
        .ctx()
        .kernel(&final_spec(Final::Sample, rec.ctx().caps().subgroups))?;
    let bufs: [BufSlice; 2] = [(&scratch.buffer).into(), (&out.buffer).into()];
    rec.dispatch(&kernel, &p, &bufs, [1, 1, 1])
}

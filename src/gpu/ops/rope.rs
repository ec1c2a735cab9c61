//! Rotary position embeddings (NeoX rotate-half layout): the text model's default and
//! proportional RoPE, and the vision tower's axial 2-D RoPE. In place on `[tokens, heads, hd]`.

use crate::gpu::{Access, GpuError, GpuTensor, KernelSpec, ParamLayout, Recorder, uniform_params};

uniform_params! {
    /// Parameters of `rope.wgsl`.
    struct Params {
        n_pairs: u32,
        hd: u32,
        seg: u32,
        pos_stride: u32,
        x_off: u32,
        pos_off: u32,
        f_off: u32,
        heads: u32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

fn spec() -> KernelSpec {
    KernelSpec::new(
        "rope",
        "main",
        &[Access::ReadWrite, Access::Read, Access::Read],
    )
}

/// All specialisations (for shader validation). RoPE has no reduction, so both paths share
/// one portable kernel.
pub fn all_specs() -> Vec<KernelSpec> {
    vec![spec()]
}

/// Inverse frequencies of a 1-D RoPE, computed like transformers (in f32).
///
/// * `partial_rotary_factor = None` (rope type "default"):
///   `inv_freq[j] = 1 / theta^(2j / head_dim)` for `j < head_dim / 2`.
/// * `Some(f)` (rope type "proportional", Gemma 4 full layers): `rope_angles =
///   int(f * head_dim / 2)` real frequencies `1 / theta^(2j / head_dim)` (the exponent's
///   denominator is the full head dim), then `head_dim / 2 - rope_angles` zeros, whose dims
///   pass through unchanged.
pub fn rope_inv_freq(head_dim: usize, theta: f64, partial_rotary_factor: Option<f32>) -> Vec<f32> {
    let half = head_dim / 2;
    let angles = match partial_rotary_factor {
        None => half,
        Some(f) => ((f as f64 * head_dim as f64 / 2.0) as usize).min(half),
    };
    let base = theta as f32;
    (0..half)
        .map(|j| {
            if j >= angles {
                return 0.0;
            }
            // torch: arange(0, dim, 2).float() / dim (f32), base ** that (f32), 1.0 / that (f32)
            let e = (2 * j) as f32 / head_dim as f32;
            let pw = (base as f64).powf(e as f64) as f32;
            1.0f32 / pw
        })
        .collect()
}

/// Inverse frequencies of the vision tower's 2-D RoPE for head dim `head_dim`: each half of
/// the head (`head_dim / 2` dims) uses `inv_freq[j] = theta^(-2j / (head_dim / 2))`,
/// `j < head_dim / 4`.
pub fn rope_2d_inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    rope_inv_freq(head_dim / 2, theta, None)
}

fn record(
    rec: &mut Recorder,
    what: &str,
    x: &GpuTensor,
    positions: &GpuTensor,
    inv_freq: &GpuTensor,
    segments: usize,
) -> Result<(), GpuError> {
    let bad = |m: String| GpuError::Kernel {
        kernel: what.into(),
        message: m,
    };
    let [tokens, heads, hd] = x.shape[..] else {
        return Err(bad(format!(
            "x must be [tokens, heads, hd], got {:?}",
            x.shape
        )));
    };
    let seg = hd / segments;
    if hd == 0 || hd % (2 * segments) != 0 {
        return Err(bad(format!(
            "head dim {hd} not divisible by {}",
            2 * segments
        )));
    }
    if positions.numel() != tokens * segments {
        return Err(bad(format!(
            "{} positions for {tokens} tokens × {segments}",
            positions.numel()
        )));
    }
    if inv_freq.numel() != seg / 2 {
        return Err(bad(format!(
            "inv_freq has {} values, need {}",
            inv_freq.numel(),
            seg / 2
        )));
    }
    let n_pairs = tokens * heads * hd / 2;
    let kernel = rec.ctx().kernel(&spec())?;
    let params = Params {
        n_pairs: n_pairs as u32,
        hd: hd as u32,
        seg: seg as u32,
        pos_stride: segments as u32,
        x_off: x.elem_offset(),
        pos_off: positions.elem_offset(),
        f_off: inv_freq.elem_offset(),
        heads: heads as u32,
    };
    rec.dispatch_linear(
        &kernel,
        &params,
        &[
            (&x.buffer).into(),
            (&positions.buffer).into(),
            (&inv_freq.buffer).into(),
        ],
        n_pairs.div_ceil(256) as u32,
    )
}

/// Records RoPE in place on `x` `[tokens, heads, hd]`: token `t` rotates with the u32
/// position `positions[t]`; element `j < hd/2` pairs with `j + hd/2`, angle
/// `f32(pos) * inv_freq[j]` (`inv_freq`: f32 `[hd/2]`, see [`rope_inv_freq`]);
/// `y_j = x_j cos − x_{j+hd/2} sin`, `y_{j+hd/2} = x_{j+hd/2} cos + x_j sin`.
/// The angle is range-reduced on the GPU before cos/sin, so large positions stay accurate.
/// `x` must not share a buffer with `positions` or `inv_freq`.
pub fn rope(
    rec: &mut Recorder,
    x: &GpuTensor,
    positions: &GpuTensor,
    inv_freq: &GpuTensor,
) -> Result<(), GpuError> {
    record(rec, "rope", x, positions, inv_freq, 1)
}

/// Records the vision tower's axial 2-D RoPE in place on `x` `[tokens, heads, hd]`:
/// `positions` is u32 `[tokens, 2]` = (x, y); dims `0..hd/2` rotate with x and dims
/// `hd/2..hd` with y, each half with rotate-half pairs `(j, j + hd/4)` and angle
/// `f32(pos) * inv_freq[j]` (`inv_freq`: f32 `[hd/4]`, see [`rope_2d_inv_freq`]).
pub fn rope_2d(
    rec: &mut Recorder,
    x: &GpuTensor,
    positions: &GpuTensor,
    inv_freq: &GpuTensor,
) -> Result<(), GpuError> {
    record(rec, "rope_2d", x, positions, inv_freq, 2)
}

//! The attention input of a decoder layer (`wgsl/attention_input.wgsl`, after the fused q/k/v
//! projection of [`linear_multi`](super::linear_multi)): per-head norms, RoPE and the KV-cache
//! write in one dispatch. With the fused matvecs and [`residual_norm`](super::residual_norm) it
//! brings a Gemma 4 decoder layer to 12 dispatches per decoded token.

use crate::gpu::{Access, GpuError, GpuTensor, KernelSpec, ParamLayout, Recorder, uniform_params};

fn err(kernel: &str, message: String) -> GpuError {
    GpuError::Kernel {
        kernel: kernel.into(),
        message,
    }
}

uniform_params! {
    /// Parameters of `attention_input.wgsl`.
    struct Params {
        tokens: u32,
        nh: u32,
        nkv: u32,
        hd: u32,
        src_off: u32,
        src_stride: u32,
        v_src: u32,
        q_off: u32,
        pos0: u32,
        cap: u32,
        k_off: u32,
        v_off: u32,
        kv: u32,
        eps: f32,
        f_off: u32,
        qn_off: u32,
        kn_off: u32,
        _p0: u32,
        _p1: u32,
        _p2: u32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

fn spec() -> KernelSpec {
    KernelSpec::new(
        "attention_input",
        "main",
        &[
            Access::Read,
            Access::ReadWrite,
            Access::ReadWrite,
            Access::ReadWrite,
            Access::Read,
            Access::Read,
            Access::Read,
        ],
    )
}

/// All specialisations (for shader validation).
pub fn all_specs() -> Vec<KernelSpec> {
    vec![spec()]
}

/// Where a layer that owns its KV cache writes its keys and values.
#[derive(Debug, Clone, Copy)]
pub struct KvTarget<'a> {
    /// `k_norm` weight `[hd]`.
    pub k_norm: &'a GpuTensor,
    /// Key ring `[nkv, cap, hd]`.
    pub k_cache: &'a GpuTensor,
    /// Value ring `[nkv, cap, hd]`.
    pub v_cache: &'a GpuTensor,
    /// Whether v is the raw k projection (`attention_k_eq_v` layers; the projection row then
    /// holds q and k only).
    pub v_from_k: bool,
}

/// The attention input of one decoder layer.
#[derive(Debug, Clone, Copy)]
pub struct AttnInput<'a> {
    /// Projections `[tokens, row]`, a row holding q `[nh, hd]`, then k `[nkv, hd]`, then v
    /// `[nkv, hd]` (k and v only when `kv` is given; no v when `v_from_k`).
    pub qkv: &'a GpuTensor,
    /// Query output `[tokens, nh, hd]` (normalised and rotated).
    pub q_out: &'a GpuTensor,
    /// `q_norm` weight `[hd]`.
    pub q_norm: &'a GpuTensor,
    /// RoPE inverse frequencies `[hd / 2]` (zeros beyond the rotated pairs).
    pub inv_freq: &'a GpuTensor,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Absolute position of the first token.
    pub pos0: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// The KV-cache write of a layer that owns its cache; `None` on KV-shared layers.
    pub kv: Option<KvTarget<'a>>,
}

/// Records the attention input of a decoder layer in one dispatch: per token and head, RMSNorm
/// of q (`q_norm`), k (`k_norm`) and v (weightless), RoPE of q and k at positions `pos0..`, q to
/// `q_out`, k and v into the cache rings at slot `position % cap`.
pub fn attention_input(rec: &mut Recorder, a: &AttnInput<'_>) -> Result<(), GpuError> {
    let (nh, nkv, hd) = (a.n_heads, a.n_kv_heads, a.head_dim);
    if hd == 0 || hd % 2 != 0 || nh == 0 {
        return Err(err(
            "attention_input",
            format!("bad head shape: {nh} heads of {hd}"),
        ));
    }
    let kv_cols = match a.kv {
        Some(t) if t.v_from_k => nkv * hd,
        Some(_) => 2 * nkv * hd,
        None => 0,
    };
    let row = nh * hd + kv_cols;
    let tokens = a.qkv.numel() / row;
    if tokens * row != a.qkv.numel() || tokens == 0 {
        return Err(err(
            "attention_input",
            format!(
                "qkv has {} elements, not a whole number of {row}-element rows",
                a.qkv.numel()
            ),
        ));
    }
    if a.q_out.numel() != tokens * nh * hd {
        return Err(err(
            "attention_input",
            format!(
                "q_out has {} elements, expected {tokens} x {nh} x {hd}",
                a.q_out.numel()
            ),
        ));
    }
    if a.q_norm.numel() != hd || a.inv_freq.numel() < hd / 2 {
        return Err(err(
            "attention_input",
            format!(
                "q_norm has {} elements and inv_freq {}, expected {hd} and {}",
                a.q_norm.numel(),
                a.inv_freq.numel(),
                hd / 2
            ),
        ));
    }
    let (k_cache, v_cache, k_norm, cap) = match a.kv {
        Some(t) => {
            let [cnkv, cap, chd] = t.k_cache.shape[..] else {
                return Err(err(
                    "attention_input",
                    format!("k cache must be [nkv, cap, hd], got {:?}", t.k_cache.shape),
                ));
            };
            if cnkv != nkv || chd != hd || t.v_cache.shape != t.k_cache.shape {
                return Err(err(
                    "attention_input",
                    format!(
                        "caches {:?} / {:?} do not fit {nkv} kv heads of {hd}",
                        t.k_cache.shape, t.v_cache.shape
                    ),
                ));
            }
            if tokens > cap {
                return Err(err(
                    "attention_input",
                    format!("{tokens} tokens overflow a cache ring of {cap} slots"),
                ));
            }
            if t.k_norm.numel() != hd {
                return Err(err(
                    "attention_input",
                    format!("k_norm has {} elements, expected {hd}", t.k_norm.numel()),
                ));
            }
            (t.k_cache, t.v_cache, t.k_norm, cap)
        }
        // Not written: bind the query output in their place.
        None => (a.q_out, a.q_out, a.q_norm, 1),
    };
    let v_src = match a.kv {
        Some(t) if t.v_from_k => nh * hd,
        _ => nh * hd + nkv * hd,
    };
    let params = Params {
        tokens: tokens as u32,
        nh: nh as u32,
        nkv: nkv as u32,
        hd: hd as u32,
        src_off: a.qkv.elem_offset(),
        src_stride: row as u32,
        v_src: v_src as u32,
        q_off: a.q_out.elem_offset(),
        pos0: a.pos0 as u32,
        cap: cap as u32,
        k_off: k_cache.elem_offset(),
        v_off: v_cache.elem_offset(),
        kv: u32::from(a.kv.is_some()),
        eps: a.eps,
        f_off: a.inv_freq.elem_offset(),
        qn_off: a.q_norm.elem_offset(),
        kn_off: k_norm.elem_offset(),
        _p0: 0,
        _p1: 0,
        _p2: 0,
    };
    let slots = nh + if a.kv.is_some() { 2 * nkv } else { 0 };
    let kernel = rec.ctx().kernel(&spec())?;
    rec.dispatch_linear(
        &kernel,
        &params,
        &[
            (&a.qkv.buffer).into(),
            (&a.q_out.buffer).into(),
            (&k_cache.buffer).into(),
            (&v_cache.buffer).into(),
            (&a.inv_freq.buffer).into(),
            (&a.q_norm.buffer).into(),
            (&k_norm.buffer).into(),
        ],
        (tokens * slots) as u32,
    )
}

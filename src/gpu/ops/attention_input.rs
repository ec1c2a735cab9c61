//! The attention input of a decoder layer (`wgsl/attention_input.wgsl`, after the fused q/k/v
//! projection of [`linear_multi`](super::linear_multi)): per-head norms, RoPE and the KV-cache
//! write in one dispatch. With the fused matvecs and [`residual_norm`](super::residual_norm) it
//! brings a Gemma 4 decoder layer to 12 dispatches per decoded token.

use super::attention::KvWindows;
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
        slot0: u32,
        wslots: u32,
        q_skip: u32,
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
    /// The key and value ring of `cap` slots, in one piece (`[nkv, cap, hd]` each, see
    /// [`KvWindows::whole`]) or in position windows.
    pub store: KvWindows<'a>,
    /// Slots of the ring.
    pub cap: usize,
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
    let (store, k_norm, cap) = match a.kv {
        Some(t) => {
            check_store(&t, nkv, hd, tokens)?;
            (t.store, t.k_norm, t.cap)
        }
        // Not written: bind the query output in their place.
        None => (
            KvWindows::whole(a.q_out, a.q_out, 1),
            a.q_norm,
            1,
        ),
    };
    let v_src = match a.kv {
        Some(t) if t.v_from_k => nh * hd,
        _ => nh * hd + nkv * hd,
    };
    let mut params = Params {
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
        k_off: store.k[0].elem_offset(),
        v_off: store.v[0].elem_offset(),
        kv: u32::from(a.kv.is_some()),
        eps: a.eps,
        f_off: a.inv_freq.elem_offset(),
        qn_off: a.q_norm.elem_offset(),
        kn_off: k_norm.elem_offset(),
        slot0: 0,
        wslots: cap as u32,
        q_skip: 0,
    };
    let kernel = rec.ctx().kernel(&spec())?;
    // The windows the rows touch (one for a whole ring or a decoded token); q is written by
    // the first call only.
    let windows: Vec<usize> = if store.k.len() == 1 {
        vec![0]
    } else {
        let mut w: Vec<usize> = store
            .intervals(cap as u32, a.pos0 as u32, (a.pos0 + tokens) as u32)
            .iter()
            .map(|&(w, _, _)| w)
            .collect();
        w.sort_unstable();
        w.dedup();
        w
    };
    for (i, &w) in windows.iter().enumerate() {
        let (k, v) = (&store.k[w], &store.v[w]);
        params.k_off = k.elem_offset();
        params.v_off = v.elem_offset();
        params.slot0 = w as u32 * store.slots;
        params.wslots = store.window_slots(w, cap as u32);
        params.q_skip = u32::from(i > 0);
        let slots = if i > 0 {
            2 * nkv
        } else {
            nh + if a.kv.is_some() { 2 * nkv } else { 0 }
        };
        rec.dispatch_linear(
            &kernel,
            &params,
            &[
                (&a.qkv.buffer).into(),
                (&a.q_out.buffer).into(),
                (&k.buffer).into(),
                (&v.buffer).into(),
                (&a.inv_freq.buffer).into(),
                (&a.q_norm.buffer).into(),
                (&k_norm.buffer).into(),
            ],
            (tokens * slots) as u32,
        )?;
    }
    Ok(())
}

/// The shape checks of a layer's KV target: every window `[nkv, slots_w, hd]`, the windows
/// covering the ring, the rows fitting it.
fn check_store(t: &KvTarget<'_>, nkv: usize, hd: usize, tokens: usize) -> Result<(), GpuError> {
    let what = "attention_input";
    let st = &t.store;
    let n = st.k.len();
    let slots = st.slots as usize;
    if n == 0 || n != st.v.len() || slots == 0 || (n - 1) * slots >= t.cap || n * slots < t.cap {
        return Err(err(
            what,
            format!(
                "{n} key / {} value windows of {slots} slots do not cover a ring of {} slots",
                st.v.len(),
                t.cap
            ),
        ));
    }
    for w in 0..n {
        let want = [nkv, st.window_slots(w, t.cap as u32) as usize, hd];
        if st.k[w].shape != want || st.v[w].shape != want {
            return Err(err(
                what,
                format!(
                    "cache window {w} is {:?} / {:?}, expected {want:?} ({nkv} kv heads of {hd})",
                    st.k[w].shape, st.v[w].shape
                ),
            ));
        }
    }
    if tokens > t.cap {
        return Err(err(
            what,
            format!("{tokens} tokens overflow a cache ring of {} slots", t.cap),
        ));
    }
    if t.k_norm.numel() != hd {
        return Err(err(
            what,
            format!("k_norm has {} elements, expected {hd}", t.k_norm.numel()),
        ));
    }
    Ok(())
}

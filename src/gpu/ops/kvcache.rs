//! The KV-cache write (`wgsl/kvcache.wgsl`): rows of keys or values into the cache ring
//! `[nkv, cap, hd]` at slot `position % cap` (see [`attention`](super::attention) for the
//! ring sizing).

use crate::gpu::{Access, GpuError, GpuTensor, KernelSpec, ParamLayout, Recorder, uniform_params};

uniform_params! {
    /// Parameters of `kvcache.wgsl`.
    struct Params {
        n_elems: u32,
        nkv: u32,
        hd: u32,
        cap: u32,
        pos0: u32,
        src_off: u32,
        cache_off: u32,
        _pad: u32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

fn spec() -> KernelSpec {
    KernelSpec::new("kvcache", "main", &[Access::Read, Access::ReadWrite])
}

/// All specialisations (for shader validation): no reductions, one kernel for both paths.
pub fn all_specs() -> Vec<KernelSpec> {
    vec![spec()]
}

fn err(what: &str, m: String) -> GpuError {
    GpuError::Kernel {
        kernel: what.into(),
        message: m,
    }
}

/// Records a KV-cache write: row `i` of `src` `[n, nkv, hd]` (absolute position `pos0 + i`)
/// goes to slot `(pos0 + i) % cap` of every kv head of `cache` `[nkv, cap, hd]`. When
/// `n > cap` only the last `cap` rows are written (earlier ones would be overwritten anyway).
pub fn kv_write(
    rec: &mut Recorder,
    src: &GpuTensor,
    cache: &GpuTensor,
    pos0: u32,
) -> Result<(), GpuError> {
    let [n, nkv, hd] = src.shape[..] else {
        return Err(err(
            "kv_write",
            format!("src must be [n, nkv, hd], got {:?}", src.shape),
        ));
    };
    let [cnkv, cap, chd] = cache.shape[..] else {
        return Err(err(
            "kv_write",
            format!("cache must be [nkv, cap, hd], got {:?}", cache.shape),
        ));
    };
    if cnkv != nkv || chd != hd || cap == 0 {
        return Err(err(
            "kv_write",
            format!("src {:?} does not fit cache {:?}", src.shape, cache.shape),
        ));
    }
    let skip = n.saturating_sub(cap);
    let rows = n - skip;
    let n_elems = rows * nkv * hd;
    let kernel = rec.ctx().kernel(&spec())?;
    let params = Params {
        n_elems: n_elems as u32,
        nkv: nkv as u32,
        hd: hd as u32,
        cap: cap as u32,
        pos0: pos0 + skip as u32,
        src_off: src.elem_offset() + (skip * nkv * hd) as u32,
        cache_off: cache.elem_offset(),
        _pad: 0,
    };
    rec.dispatch_linear(
        &kernel,
        &params,
        &[(&src.buffer).into(), (&cache.buffer).into()],
        n_elems.div_ceil(256) as u32,
    )
}

//! One Rust op per kernel: `src/gpu/ops/NAME.rs` records the dispatches of `wgsl/NAME.wgsl` (and
//! owns its bind layout through its [`KernelSpec`]s and its uniform parameter struct) into a
//! [`Recorder`](crate::gpu::Recorder). Fused kernels (one dispatch for several steps) are ops like
//! any other, named after what they compute.

pub mod attention;
pub mod attention_input;
pub mod attention_rows;
pub mod elementwise;
pub mod gather;
pub mod kvcache;
pub mod layernorm;
pub mod matmul;
pub mod matvec;
pub mod moe_combine;
pub mod moe_matmul;
pub mod moe_matvec;
pub mod moe_route_sort;
pub mod moe_router;
pub mod penalty;
pub mod pool;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub mod sample;
pub mod fma_probe;
pub mod streaming;

pub use attention::{
    AttnMask, AttnScratch, AttnShape, KvLayout, KvWindows, attention_decode,
    attention_decode_windows, attention_prefill, attention_prefill_bounded, attention_prefill_windows,
};
pub use attention_input::{AttnInput, KvTarget, attention_input};
pub use attention_rows::{MAX_ROWS_HEAD_DIM, attention_rows, rows_supported};
pub use elementwise::{BLayout, Elementwise, elementwise, elementwise_inplace};
pub use gather::embedding;
pub use kvcache::kv_write;
pub use layernorm::layer_norm;
pub use matvec::{
    MATVEC_MAX_ROWS, MatvecEpilogue, fusable, linear, linear_gelu_gate, linear_gelu_mul,
    linear_multi,
};
pub use penalty::repetition_penalty;

/// The mixture-of-experts kernels in one place (files `moe_*.rs` / `wgsl/moe_*.wgsl`): routing
/// ([`route`](moe::route)), the decode gathered-expert matvec
/// ([`experts_decode`](moe::experts_decode)) and the prefill grouped GEMM
/// ([`experts_prefill`](moe::experts_prefill)). Expert ids and weights stay on the GPU.
pub mod moe {
    pub use super::moe_matmul::{PrefillScratch, experts_prefill, prefill_dispatches};
    pub use super::moe_matvec::{ExpertProj, decode_dispatches, experts_decode};
    pub use super::moe_route_sort::{ROUTE_TILE, RouteLayout, route_sort};
    pub use super::moe_router::{MAX_EXPERTS, route};

    /// Dispatches of one MoE layer's routing and routed experts from the router logits on
    /// (the router's norm and projection are ordinary ops and not counted): decode = route +
    /// [`decode_dispatches`] (3 with single-window matrices); prefill = route +
    /// [`prefill_dispatches`] (5).
    pub fn layer_dispatches(gate: &ExpertProj<'_>, down: &ExpertProj<'_>, prefill: bool) -> usize {
        1 + if prefill {
            prefill_dispatches(gate, down)
        } else {
            decode_dispatches(gate, down)
        }
    }
}
pub use pool::avg_pool_2d;
pub use residual::residual_norm;
pub use rmsnorm::{rms_norm, rms_norm_inplace};
pub use rope::{rope, rope_2d, rope_2d_inv_freq, rope_inv_freq};
pub use sample::{MAX_TOP_K, SampleParams, SampleScratch, argmax, sample, top_k};

use crate::gpu::{KernelSpec, ParamLayout};

/// Every kernel specialisation the ops can build, for both the subgroup (fast) and the portable
/// (fallback) paths. The shader-validation test translates each of them to MSL, SPIR-V and HLSL.
pub fn all_specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    v.extend(elementwise::Elementwise::all_specs());
    v.extend(streaming::all_specs());
    v.extend(fma_probe::all_specs());
    v.extend(pool::all_specs());
    v.extend(sample::all_specs());
    v.extend(penalty::all_specs());
    v.extend(rmsnorm::all_specs());
    v.extend(layernorm::all_specs());
    v.extend(rope::all_specs());
    v.extend(attention::all_specs());
    v.extend(attention_rows::all_specs());
    v.extend(kvcache::all_specs());
    v.extend(matvec::all_specs());
    v.extend(matmul::all_specs());
    v.extend(moe_router::all_specs());
    v.extend(moe_matvec::all_specs());
    v.extend(moe_route_sort::all_specs());
    v.extend(moe_matmul::all_specs());
    v.extend(moe_combine::all_specs());
    v.extend(gather::all_specs());
    v.extend(attention_input::all_specs());
    v.extend(residual::all_specs());
    v
}

/// The Rust layout of every kernel's uniform parameter struct, by kernel (WGSL file) name: the
/// kernel-layout test reflects the struct at binding 0 of every specialisation with naga and
/// compares it with this.
#[doc(hidden)]
pub fn param_layouts() -> Vec<(&'static str, ParamLayout)> {
    vec![
        ("attention", attention::param_layout()),
        ("attention_input", attention_input::param_layout()),
        ("attention_rows", attention_rows::param_layout()),
        ("elementwise", elementwise::param_layout()),
        ("gather", gather::param_layout()),
        ("kvcache", kvcache::param_layout()),
        ("layernorm", layernorm::param_layout()),
        ("matmul", matmul::param_layout()),
        ("matvec", matvec::param_layout()),
        ("moe_combine", moe_combine::param_layout()),
        ("moe_matmul", moe_matmul::param_layout()),
        ("moe_matvec", moe_matvec::param_layout()),
        ("moe_route_sort", moe_route_sort::param_layout()),
        ("moe_router", moe_router::param_layout()),
        ("penalty", penalty::param_layout()),
        ("pool", pool::param_layout()),
        ("residual", residual::param_layout()),
        ("rmsnorm", rmsnorm::param_layout()),
        ("rope", rope::param_layout()),
        ("sample", sample::param_layout()),
        ("streaming", streaming::param_layout()),
        ("fma_probe", fma_probe::param_layout()),
    ]
}

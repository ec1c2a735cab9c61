//! One Rust op per kernel family; each owns its bind layout (through its [`KernelSpec`]s) and
//! records dispatches into a [`Recorder`](crate::gpu::Recorder).

pub mod attention;
pub mod elementwise;
pub mod fused;
pub mod penalty;
pub mod pool;
pub mod sample;
pub mod streaming;

pub use elementwise::{BLayout, Elementwise, elementwise, elementwise_inplace};
pub use penalty::repetition_penalty;
pub use pool::avg_pool_2d;
pub use sample::{MAX_TOP_K, SampleParams, SampleScratch, argmax, sample, top_k};
pub mod norm;
pub mod rope;

pub use attention::{
    AttnMask, AttnScratch, AttnShape, KvLayout, attention_decode, attention_prefill, kv_write,
};
pub use norm::{rms_norm, rms_norm_inplace};
pub use rope::{rope, rope_2d, rope_2d_inv_freq, rope_inv_freq};
pub mod linear;

pub use fused::{AttnInput, KvTarget, attention_input, residual_norm};
pub use linear::{
    MatvecEpilogue, embedding, fusable, linear, linear_gelu_gate, linear_gelu_mul, linear_multi,
};

use crate::gpu::KernelSpec;

/// Every kernel specialisation the ops can build, for both the subgroup (fast) and the portable
/// (fallback) paths. The shader-validation test translates each of them to MSL, SPIR-V and HLSL.
pub fn all_specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    v.extend(elementwise::Elementwise::all_specs());
    v.extend(streaming::all_specs());
    v.extend(pool::all_specs());
    v.extend(sample::all_specs());
    v.extend(penalty::all_specs());
    v.extend(norm::all_specs());
    v.extend(rope::all_specs());
    v.extend(attention::all_specs());
    v.extend(linear::all_specs());
    v.extend(fused::all_specs());
    v
}

//! One Rust op per kernel family; each owns its bind layout (through its [`KernelSpec`]s) and
//! records dispatches into a [`Recorder`](crate::gpu::Recorder).

pub mod elementwise;
pub mod pool;
pub mod sample;
pub mod streaming;

pub use elementwise::{BLayout, Elementwise, elementwise, elementwise_inplace};
pub use pool::avg_pool_2d;
pub use sample::{MAX_TOP_K, SampleParams, SampleScratch, argmax, sample, top_k};

use crate::gpu::KernelSpec;

/// Every kernel specialisation the ops can build, for both the subgroup (fast) and the portable
/// (fallback) paths. The shader-validation test translates each of them to MSL, SPIR-V and HLSL.
pub fn all_specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    v.extend(elementwise::Elementwise::all_specs());
    v.extend(streaming::all_specs());
    v.extend(pool::all_specs());
    v.extend(sample::all_specs());
    v
}

//! One Rust op per kernel family; each owns its bind layout (through its [`KernelSpec`]s) and
//! records dispatches into a [`Recorder`](crate::gpu::Recorder).

pub mod elementwise;
pub mod linear;
pub mod streaming;

pub use elementwise::{Elementwise, elementwise};
pub use linear::{embedding, linear};

use crate::gpu::KernelSpec;

/// Every kernel specialisation the ops can build, for both the subgroup (fast) and the portable
/// (fallback) paths. The shader-validation test translates each of them to MSL, SPIR-V and HLSL.
pub fn all_specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    v.extend(elementwise::Elementwise::all_specs());
    v.extend(streaming::all_specs());
    v.extend(linear::all_specs());
    v
}

//! Kernel tests: every compute kernel against its CPU reference over awkward shapes, on the
//! subgroup and the portable path; every shader specialisation through naga; the bench tools.
//! One test binary (one link of wgpu and naga; one shared device and pipeline cache).

#[path = "../common/mod.rs"]
mod common;

mod attention;
mod attention_rows;
mod attention_windows;
mod bench_tools;
mod elementwise;
mod fused;
mod host;
mod layernorm;
mod linear;
mod moe;
mod norm_rope;
mod penalty;
mod pool;
mod sample;
mod shaders;

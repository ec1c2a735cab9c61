//! A plain streaming-read kernel, the bandwidth yardstick of the benchmarks (the arithmetic
//! one is [`super::fma_probe`]).

use crate::gpu::{Access, GpuError, KernelSpec, ParamLayout, Recorder, uniform_params};

uniform_params! {
    /// Parameters of `streaming.wgsl`.
    struct Params {
        n_vec4: u32,
        per_thread: u32,
        threads: u32,
        _pad: u32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

fn spec() -> KernelSpec {
    KernelSpec::new("streaming", "main", &[Access::Read, Access::ReadWrite])
}

/// All specialisations (for shader validation).
pub fn all_specs() -> Vec<KernelSpec> {
    vec![spec()]
}

/// Records one pass that reads every byte of `src` (whose size is a multiple of 16) once.
pub fn stream_read(
    rec: &mut Recorder,
    src: &wgpu::Buffer,
    sink: &wgpu::Buffer,
) -> Result<(), GpuError> {
    let kernel = rec.ctx().kernel(&spec())?;
    let n_vec4 = (src.size() / 16) as u32;
    let threads = (n_vec4.div_ceil(16)).clamp(1, 65536 * 4);
    let params = Params {
        n_vec4,
        per_thread: n_vec4.div_ceil(threads),
        threads,
        _pad: 0,
    };
    rec.dispatch_linear(
        &kernel,
        &params,
        &[src.into(), sink.into()],
        threads.div_ceil(256),
    )
}

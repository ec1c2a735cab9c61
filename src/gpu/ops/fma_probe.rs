//! A plain FMA loop (`wgsl/fma_probe.wgsl`), the arithmetic yardstick of the benchmarks next
//! to the streaming-read kernel's bandwidth ([`super::streaming`]): a GEMM's GFLOP/s is read
//! as a fraction of it.

use crate::gpu::{Access, GpuError, KernelSpec, ParamLayout, Recorder, uniform_params};

uniform_params! {
    /// Parameters of `fma_probe.wgsl`.
    struct Params {
        iters: u32,
        threads: u32,
        m: f32,
        c: f32,
    }
}

/// The Rust layout of the FMA probe's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

fn spec() -> KernelSpec {
    KernelSpec::new("fma_probe", "main", &[Access::ReadWrite])
}

/// All specialisations (for shader validation).
pub fn all_specs() -> Vec<KernelSpec> {
    vec![spec()]
}

/// Flops of one [`fma_probe`] dispatch of `threads` invocations and `iters` steps.
pub fn fma_probe_flops(threads: u32, iters: u32) -> f64 {
    64.0 * f64::from(iters) * f64::from(threads)
}

/// The value invocation `t` of [`fma_probe`] writes (the CPU reference; fused multiply-adds
/// like the kernel's, which an adapter may compute unfused: compare with a tolerance).
pub fn fma_probe_ref(t: u32, iters: u32, m: f32, c: f32) -> f32 {
    let s = (t % 7) as f32 * 0.001;
    let mut sum = 0.0f32;
    let mut lanes = [0.0f32; 4];
    for i in 0..8 {
        let mut a = [s + i as f32 * 0.01, s + 0.1, s + 0.2, s + 0.3];
        for _ in 0..iters {
            for v in &mut a {
                *v = v.mul_add(m, c);
            }
        }
        for (l, v) in lanes.iter_mut().zip(a) {
            *l += v;
        }
    }
    for l in lanes {
        sum += l;
    }
    sum
}

/// Records a plain FMA loop over `threads` invocations of `iters` steps each (64 flops per
/// step, [`fma_probe_flops`]), every invocation writing one f32 of `out` (`4 * threads`
/// bytes at least): the adapter's achievable arithmetic rate, next to which a GEMM's GFLOP/s
/// is read.
pub fn fma_probe(
    rec: &mut Recorder,
    out: &wgpu::Buffer,
    threads: u32,
    iters: u32,
    m: f32,
    c: f32,
) -> Result<(), GpuError> {
    if out.size() < 4 * u64::from(threads) {
        return Err(GpuError::Kernel {
            kernel: "fma_probe".into(),
            message: format!("{threads} invocations need {} bytes of out", 4 * threads),
        });
    }
    let kernel = rec.ctx().kernel(&spec())?;
    let params = Params {
        iters,
        threads,
        m,
        c,
    };
    rec.dispatch_linear(&kernel, &params, &[out.into()], threads.div_ceil(256))
}

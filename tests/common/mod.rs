//! Shared test helpers: one GPU device per test binary, skip-or-fail without an adapter,
//! a seeded RNG and tensor comparison.
#![allow(dead_code)]

pub mod golden;

use std::io::Write;
use std::sync::OnceLock;

use gemma_wgpu::gpu::GpuContext;

static CTX: OnceLock<Option<GpuContext>> = OnceLock::new();

/// The shared context, or `None` (after one notice on stderr) when no adapter exists and
/// `WGPU_REQUIRE_ADAPTER` is unset. With `WGPU_REQUIRE_ADAPTER` set, a missing adapter panics.
pub fn gpu() -> Option<GpuContext> {
    CTX.get_or_init(|| match GpuContext::new() {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            if std::env::var_os("WGPU_REQUIRE_ADAPTER").is_some() {
                panic!("WGPU_REQUIRE_ADAPTER is set but no GPU adapter is usable: {e}");
            }
            let _ = writeln!(
                std::io::stderr(),
                "NOTICE: GPU tests skipped: {e}. On Debian: apt-get install mesa-vulkan-drivers libvulkan1"
            );
            None
        }
    })
    .clone()
}

/// Both kernel paths: ("subgroup", fast context) when the device has subgroups, and
/// ("fallback", a context that never uses subgroups or f16). Empty when GPU tests are skipped.
pub fn paths() -> Vec<(&'static str, GpuContext)> {
    let Some(ctx) = gpu() else {
        return Vec::new();
    };
    let mut v = Vec::new();
    if ctx.uses_subgroups() {
        v.push(("subgroup", ctx.clone()));
    } else if std::env::var_os("WGPU_REQUIRE_ADAPTER").is_some() {
        panic!(
            "adapter {} has no SUBGROUP feature: the fast path cannot be tested",
            ctx.adapter_name()
        );
    }
    v.push(("fallback", ctx.fallback()));
    v
}

/// A small deterministic RNG (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Approximately standard normal.
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
    pub fn normals(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * std).collect()
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Asserts `|got - want| <= atol + rtol * |want|` elementwise, reporting the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs {}",
        got.len(),
        want.len()
    );
    let mut worst = (0usize, 0f32, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        let excess = d - (atol + rtol * w.abs());
        let excess = if excess.is_nan() || g.is_nan() != w.is_nan() {
            f32::INFINITY
        } else {
            excess
        };
        if excess > worst.1 {
            worst = (i, excess, d);
        }
    }
    if worst.1 > 0.0 {
        panic!(
            "{what}: mismatch at {}: got {} want {} (|diff| {}, atol {atol}, rtol {rtol})",
            worst.0, got[worst.0], want[worst.0], worst.2
        );
    }
}

/// A separate device on the same adapter whose `max_storage_buffer_binding_size` is lowered to
/// `bytes` (every other limit the adapter's), as a small or browser-like adapter would report:
/// weights, embedding tables and KV caches must then be split into windows of one binding.
/// `None` when GPU tests are skipped.
pub fn gpu_with_binding_limit(bytes: u64) -> Option<GpuContext> {
    gpu()?;
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .expect("an adapter (the shared context found one)");
    let mut desc = GpuContext::device_descriptor(&adapter);
    desc.required_limits.max_storage_buffer_binding_size = bytes;
    desc.required_limits.max_buffer_size = desc.required_limits.max_buffer_size.max(bytes);
    let (device, queue) =
        pollster::block_on(adapter.request_device(&desc)).expect("a device with a lower limit");
    let ctx = GpuContext::from_host(&adapter, device, queue);
    assert_eq!(ctx.caps().max_binding_size, bytes);
    Some(ctx)
}

// A plain FMA loop, the arithmetic yardstick of the benchmarks (next to the streaming-read
// kernel's bandwidth): each invocation runs 8 independent vec4 chains a = fma(a, m, c) for
// `iters` steps (2 x 4 x 8 = 64 flops per step) and writes the chains' sum, so nothing is
// optimised away. GFLOP/s = 64 * iters * threads / time.

struct Params {
    iters: u32,
    threads: u32,
    m: f32,
    c: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 256u;
    if (t >= p.threads) {
        return;
    }
    let s = f32(t % 7u) * 0.001;
    var a: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        a[i] = vec4<f32>(s + f32(i) * 0.01, s + 0.1, s + 0.2, s + 0.3);
    }
    let m = vec4<f32>(p.m);
    let c = vec4<f32>(p.c);
    for (var k = 0u; k < p.iters; k++) {
        a[0] = fma(a[0], m, c);
        a[1] = fma(a[1], m, c);
        a[2] = fma(a[2], m, c);
        a[3] = fma(a[3], m, c);
        a[4] = fma(a[4], m, c);
        a[5] = fma(a[5], m, c);
        a[6] = fma(a[6], m, c);
        a[7] = fma(a[7], m, c);
    }
    var sum = vec4<f32>(0.0);
    for (var i = 0u; i < 8u; i++) {
        sum += a[i];
    }
    out[t] = sum.x + sum.y + sum.z + sum.w;
}

// A plain streaming-read kernel: each invocation sums a strided slice of a large buffer read as
// vec4<u32>. It measures the adapter's achievable read bandwidth for the kernel benchmark.

struct Params {
    n_vec4: u32,
    per_thread: u32,
    threads: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> sink: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 256u;
    if (t >= p.threads) {
        return;
    }
    var acc = vec4<u32>(0u);
    for (var k = 0u; k < p.per_thread; k++) {
        let i = t + k * p.threads;
        if (i < p.n_vec4) {
            acc = acc ^ src[i];
        }
    }
    let s = acc.x ^ acc.y ^ acc.z ^ acc.w;
    if (s == 0xdeadbeefu) {
        sink[t % 64u] = s;
    }
}

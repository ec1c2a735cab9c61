// 2-D average pooling over a row-major [ph * pw, C] grid of f32 tokens: every k x k block is
// averaged (weight 1 / (k k)) and multiplied by `scale` (the vision tower's sqrt(Hv), folded in).
// Output row-major over the pooled grid: row (y / k) * (pw / k) + x / k, C channels each.
// One invocation per output element; consecutive invocations read consecutive channels.
// Works identically on every backend (no subgroups, no f16).

struct Params {
    n_out: u32,
    c: u32,
    pw: u32,
    k: u32,
    opw: u32,
    x_off: u32,
    out_off: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n_out) {
        return;
    }
    let ch = i % p.c;
    let cell = i / p.c;
    let oy = cell / p.opw;
    let ox = cell % p.opw;
    var acc = 0.0;
    for (var dy = 0u; dy < p.k; dy++) {
        let row = (oy * p.k + dy) * p.pw + ox * p.k;
        for (var dx = 0u; dx < p.k; dx++) {
            acc += x[p.x_off + (row + dx) * p.c + ch];
        }
    }
    out[p.out_off + i] = acc * p.scale;
}

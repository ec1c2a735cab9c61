// Residual add with the block's post-norm, an optional scale, and the next block's pre-norm:
//   h   = (h + RMSNorm_w(o)) * scale
//   xn  = RMSNorm_w2(h)            (when p.next == 1)
// per row of `dim` values, RMSNorm(x) = x * inverseSqrt(mean(x^2) + eps) * w. One workgroup of
// 256 invocations per row (2-D grid); each reduction goes through workgroup memory with one
// barrier, none in loops. Every invocation re-reads only the elements it wrote itself.

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    scale: f32,
    h_off: u32,
    o_off: u32,
    w_off: u32,
    w2_off: u32,
    xn_off: u32,
    next: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> h: array<f32>;
@group(0) @binding(2) var<storage, read> o: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> w2: array<f32>;
@group(0) @binding(5) var<storage, read_write> xn: array<f32>;

const WG: u32 = 256u;
var<workgroup> part_o: array<f32, 256>;
var<workgroup> part_h: array<f32, 256>;

fn total(which: u32) -> f32 {
    // Eight independent partial sums, then combined (shorter dependency chains).
    var acc = vec4<f32>(0.0);
    for (var i = 0u; i < WG; i += 4u) {
        if (which == 0u) {
            acc += vec4<f32>(part_o[i], part_o[i + 1u], part_o[i + 2u], part_o[i + 3u]);
        } else {
            acc += vec4<f32>(part_h[i], part_h[i + 1u], part_h[i + 2u], part_h[i + 3u]);
        }
    }
    return acc.x + acc.y + acc.z + acc.w;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    // `row` is uniform over the workgroup, so this early exit keeps the barriers uniform.
    if (row >= p.rows) {
        return;
    }
    let ob = p.o_off + row * p.dim;
    let hb = p.h_off + row * p.dim;
    var so = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        let v = o[ob + i];
        so += v * v;
    }
    part_o[lid] = so;
    workgroupBarrier();
    let ro = inverseSqrt(total(0u) / f32(p.dim) + p.eps);
    var sh = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        let v = (h[hb + i] + o[ob + i] * ro * w[p.w_off + i]) * p.scale;
        h[hb + i] = v;
        sh += v * v;
    }
    if (p.next == 0u) {
        return;
    }
    part_h[lid] = sh;
    workgroupBarrier();
    let rh = inverseSqrt(total(1u) / f32(p.dim) + p.eps);
    let xb = p.xn_off + row * p.dim;
    for (var i = lid; i < p.dim; i += WG) {
        xn[xb + i] = h[hb + i] * rh * w2[p.w2_off + i];
    }
}

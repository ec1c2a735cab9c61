// RMSNorm over the last axis: out[r, i] = x[r, i] * inverseSqrt(mean_i(x[r, :]^2) + eps) * w[i].
// The weight is used directly (never 1 + w); without WEIGHT the norm is weightless.
// One workgroup of 64 threads per row (rows on a 2-D grid: wid.x + wid.y * nwg.x).
// Reduction: SUBGROUP path = subgroupAdd, then one value per subgroup through workgroup memory;
// portable path = every thread's partial sum through workgroup memory. One barrier either way,
// none in loops. INPLACE binds x's buffer once (read_write) and writes the result at out_off of
// that same buffer (out == x, or a disjoint region of the same buffer).

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    x_off: u32,
    w_off: u32,
    out_off: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
//#if INPLACE
@group(0) @binding(1) var<storage, read_write> x_buf: array<f32>;
//#if WEIGHT
@group(0) @binding(2) var<storage, read> w_buf: array<f32>;
//#endif
//#else
@group(0) @binding(1) var<storage, read> x_buf: array<f32>;
//#if WEIGHT
@group(0) @binding(2) var<storage, read> w_buf: array<f32>;
@group(0) @binding(3) var<storage, read_write> out_buf: array<f32>;
//#else
@group(0) @binding(2) var<storage, read_write> out_buf: array<f32>;
//#endif
//#endif

const WG: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
//#if SUBGROUP
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) n_sg: u32,
//#endif
) {
    let row = wid.x + wid.y * nwg.x;
    // `row` is uniform over the workgroup, so this early exit keeps the barrier uniform.
    if (row >= p.rows) {
        return;
    }
    let base = p.x_off + row * p.dim;
    var s = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        let v = x_buf[base + i];
        s += v * v;
    }
//#if SUBGROUP
    let t = subgroupAdd(s);
    if (sg_lane == 0u) {
        partial[sg_id] = t;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var k = 0u; k < n_sg; k++) {
        total += partial[k];
    }
//#else
    partial[lid] = s;
    workgroupBarrier();
    var total = 0.0;
    for (var k = 0u; k < WG; k++) {
        total += partial[k];
    }
//#endif
    let r = inverseSqrt(total / f32(p.dim) + p.eps);
    for (var i = lid; i < p.dim; i += WG) {
        var y = x_buf[base + i] * r;
//#if WEIGHT
        y = y * w_buf[p.w_off + i];
//#endif
//#if INPLACE
        x_buf[p.out_off + row * p.dim + i] = y;
//#else
        out_buf[p.out_off + row * p.dim + i] = y;
//#endif
    }
}

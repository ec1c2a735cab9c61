// LayerNorm over the last axis (PyTorch semantics, biased variance):
//   out[r, i] = (x[r, i] - mean_r) * inverseSqrt(var_r + eps) * w[i] + b[i]
// with mean_r = mean_i(x[r, :]) and var_r = mean_i((x[r, :] - mean_r)^2) (two passes over the row,
// so a near-constant row keeps its small variance exactly).
// One workgroup of 64 threads per row (rows on a 2-D grid: wid.x + wid.y * nwg.x).
// Reductions: SUBGROUP path = subgroupAdd, then one value per subgroup through workgroup memory;
// portable path = every thread's partial sum through workgroup memory. Two reductions, one barrier
// each (separate workgroup arrays, so the second never overwrites what the first still reads);
// none in loops. INPLACE binds x's buffer once (read_write) and writes the result at out_off of
// that same buffer (out == x, or a disjoint region of the same buffer).

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    x_off: u32,
    w_off: u32,
    b_off: u32,
    out_off: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
//#if INPLACE
@group(0) @binding(1) var<storage, read_write> x_buf: array<f32>;
@group(0) @binding(2) var<storage, read> w_buf: array<f32>;
@group(0) @binding(3) var<storage, read> b_buf: array<f32>;
//#else
@group(0) @binding(1) var<storage, read> x_buf: array<f32>;
@group(0) @binding(2) var<storage, read> w_buf: array<f32>;
@group(0) @binding(3) var<storage, read> b_buf: array<f32>;
@group(0) @binding(4) var<storage, read_write> out_buf: array<f32>;
//#endif

const WG: u32 = 64u;
var<workgroup> partial_sum: array<f32, 64>;
var<workgroup> partial_dev: array<f32, 64>;

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
    // `row` is uniform over the workgroup, so this early exit keeps the barriers uniform.
    if (row >= p.rows) {
        return;
    }
    let base = p.x_off + row * p.dim;
    let n = f32(p.dim);

    // Pass 1: the mean.
    var s = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        s += x_buf[base + i];
    }
//#if SUBGROUP
    let t = subgroupAdd(s);
    if (sg_lane == 0u) {
        partial_sum[sg_id] = t;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var k = 0u; k < n_sg; k++) {
        total += partial_sum[k];
    }
//#else
    partial_sum[lid] = s;
    workgroupBarrier();
    var total = 0.0;
    for (var k = 0u; k < WG; k++) {
        total += partial_sum[k];
    }
//#endif
    let mean = total / n;

    // Pass 2: the (biased) variance around the mean.
    var d = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        let c = x_buf[base + i] - mean;
        d += c * c;
    }
//#if SUBGROUP
    let td = subgroupAdd(d);
    if (sg_lane == 0u) {
        partial_dev[sg_id] = td;
    }
    workgroupBarrier();
    var dev = 0.0;
    for (var k = 0u; k < n_sg; k++) {
        dev += partial_dev[k];
    }
//#else
    partial_dev[lid] = d;
    workgroupBarrier();
    var dev = 0.0;
    for (var k = 0u; k < WG; k++) {
        dev += partial_dev[k];
    }
//#endif
    let r = inverseSqrt(dev / n + p.eps);
    for (var i = lid; i < p.dim; i += WG) {
        let y = (x_buf[base + i] - mean) * r * w_buf[p.w_off + i] + b_buf[p.b_off + i];
//#if INPLACE
        x_buf[p.out_off + row * p.dim + i] = y;
//#else
        out_buf[p.out_off + row * p.dim + i] = y;
//#endif
    }
}

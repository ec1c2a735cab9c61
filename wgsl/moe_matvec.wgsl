// Decode gathered-expert matvec over one row window of stacked expert matrices: the k experts
// chosen for one token (ids[j], read from a GPU buffer) in one dispatch.
// A stacked matrix holds expert e's projection in rows e * stride + off .. + rows (so HF's
// gate_up_proj [E, 2I, H] is gate = (stride 2I, off 0) and up = (stride 2I, off I)); the window
// holds experts e_lo .. e_hi (its first row is e_lo * stride); experts outside it are skipped
// (another window's dispatch covers them).
//   GATE (the gate/up half of the GeGLU): for virtual row v = j * inter + r (j < k, r < inter),
//     h[v] = gelu_tanh(Wg[ids[j]][r] . x) * (Wu[ids[j]][r] . x);
//   otherwise (the down projection with the weighted sum, h = [k, cols]):
//     y[r] = sum_j weights[j] * (Wd[ids[j]][r] . h[j]), summed over j in order in each lane, then
//     over the lanes in a fixed order (deterministic, no atomics); ACC adds to y (the windows
//     after the first).
// Work split: 32 rows per 64-invocation workgroup, 8 groups of 8 invocations with 4 rows each
// (x of a chunk loaded once for the 4 rows, and for gate and up), one workgroup-memory
// reduction. Affine rows (AFFINE, BITS, GROUP, SB_FMT; common/affine.wgsl) in chunks of 32
// codes; float rows (W_FMT, common/dense.wgsl) element by element. No subgroup operations.
// Workgroup index = wid.x + wid.y * num_workgroups.x.

struct Params {
    rows: u32,      // output rows (GATE: k * inter)
    cols: u32,      // width of a weight row
    row_words: u32, // affine: u32 words per row
    groups: u32,    // affine: groups per row
    k: u32,         // experts per token
    inter: u32,     // GATE: rows of one expert's projection
    stride0: u32,   // rows per expert block in matrix 0 (gate or down)
    off0: u32,      // first row of the projection in an expert block, matrix 0
    stride1: u32,   // GATE: the same for matrix 1 (up)
    off1: u32,
    e_lo: u32,      // experts of this window: e_lo .. e_hi
    e_hi: u32,
    ids_off: u32,   // element offset of ids [k]
    w_off: u32,     // down: element offset of weights [k]
    x_off: u32,     // element offset of x (GATE: [cols]; down: h [k, cols])
    y_off: u32,     // element offset of the output (GATE: h [k * inter]; down: y [rows])
    acc: u32,       // down: 1 to add to y
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> wq: array<u32>;
//#if AFFINE
@group(0) @binding(2) var<storage, read> sb: array<u32>;
//#endif
//#if GATE
@group(0) @binding({{B_W1}}) var<storage, read> wq1: array<u32>;
//#if AFFINE
@group(0) @binding({{B_S1}}) var<storage, read> sb1: array<u32>;
//#endif
//#endif
@group(0) @binding({{B_IDS}}) var<storage, read> ids: array<u32>;
//#ifnot GATE
@group(0) @binding({{B_WT}}) var<storage, read> wts: array<f32>;
//#endif
@group(0) @binding({{B_X}}) var<storage, read> xs: array<f32>;
@group(0) @binding({{B_Y}}) var<storage, read_write> ys: array<f32>;

// Weight word i of matrix m.
fn wget(m: u32, i: u32) -> u32 {
//#if GATE
    if (m == 1u) {
        return wq1[i];
    }
//#endif
    return wq[i];
}

//#if AFFINE
//#include "common/affine.wgsl"

fn sb_word(m: u32, i: u32) -> u32 {
//#if GATE
    if (m == 1u) {
        return sb1[i];
    }
//#endif
    return sb[i];
}

// Partial dot products of the window rows lrow[i] (i < 4, live[i]) of matrix m with x starting
// at element xb, over the 32-code chunks lane, lane + 8, ...
fn rows_dot(m: u32, lrow: vec4<u32>, live: vec4<bool>, xb: u32, lane: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    let nchunks = p.cols / 32u;
    for (var c = lane; c < nchunks; c += 8u) {
        var xv: array<vec4<f32>, 8>;
        var sx4 = vec4<f32>(0.0);
        for (var q = 0u; q < 8u; q++) {
            let i = xb + c * 32u + 4u * q;
            xv[q] = vec4<f32>(xs[i], xs[i + 1u], xs[i + 2u], xs[i + 3u]);
            sx4 += xv[q];
        }
        let sx = sx4.x + sx4.y + sx4.z + sx4.w;
        let g = (c * 32u) / GROUP;
        for (var j = 0u; j < 4u; j++) {
            if (live[j]) {
                let base = lrow[j] * p.row_words + c * BITS;
                var w: array<u32, {{BITS}}>;
                for (var i = 0u; i < BITS; i++) {
                    w[i] = wget(m, base + i);
                }
                var d = 0.0;
                for (var q = 0u; q < 8u; q++) {
                    d += dot(vec4<f32>(chunk_codes4(&w, q)), xv[q]);
                }
                let s = scale_bias(m, lrow[j] * p.groups + g);
                acc[j] += s.x * d + s.y * sx;
            }
        }
    }
    return acc;
}
//#else
//#include "common/dense.wgsl"

fn rows_dot(m: u32, lrow: vec4<u32>, live: vec4<bool>, xb: u32, lane: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    for (var c = lane; c < p.cols; c += 8u) {
        let xv = xs[xb + c];
        for (var j = 0u; j < 4u; j++) {
            if (live[j]) {
                let e = lrow[j] * p.cols + c;
                acc[j] += dense_value(wget(m, dense_word(e)), e) * xv;
            }
        }
    }
    return acc;
}
//#endif

//#include "common/gelu.wgsl"

const RPW: u32 = 32u;
var<workgroup> red: array<array<vec4<f32>, 2>, 64>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let g = wid.x + wid.y * nwg.x;
    let lane = li % 8u;
    let row0 = g * RPW + (li / 8u) * 4u;
    var part: array<vec4<f32>, 2>;
    // live[i]: output row row0 + i exists and (GATE) its expert is in this window.
    var live = vec4<bool>(false);
    if (row0 < p.rows) {
//#if GATE
        var lg = vec4<u32>(0u);
        var lu = vec4<u32>(0u);
        for (var i = 0u; i < 4u; i++) {
            let v = row0 + i;
            if (v < p.rows) {
                let e = ids[p.ids_off + v / p.inter];
                let r = v % p.inter;
                if (e >= p.e_lo && e < p.e_hi) {
                    live[i] = true;
                    lg[i] = (e - p.e_lo) * p.stride0 + p.off0 + r;
                    lu[i] = (e - p.e_lo) * p.stride1 + p.off1 + r;
                }
            }
        }
        part[0] = rows_dot(0u, lg, live, p.x_off, lane);
        part[1] = rows_dot(1u, lu, live, p.x_off, lane);
//#else
        for (var j = 0u; j < p.k; j++) {
            let e = ids[p.ids_off + j];
            if (e >= p.e_lo && e < p.e_hi) {
                var lr = vec4<u32>(0u);
                var lv = vec4<bool>(false);
                for (var i = 0u; i < 4u; i++) {
                    if (row0 + i < p.rows) {
                        lv[i] = true;
                        lr[i] = (e - p.e_lo) * p.stride0 + p.off0 + row0 + i;
                    }
                }
                part[0] += wts[p.w_off + j] * rows_dot(0u, lr, lv, p.x_off + j * p.cols, lane);
            }
        }
        for (var i = 0u; i < 4u; i++) {
            live[i] = row0 + i < p.rows;
        }
//#endif
    }
    red[li] = part;
    workgroupBarrier();
    if (lane == 0u && row0 < p.rows) {
        var s: array<vec4<f32>, 2>;
        for (var i = 0u; i < 8u; i++) {
            s[0] += red[li + i][0];
            s[1] += red[li + i][1];
        }
        for (var i = 0u; i < 4u; i++) {
            if (live[i]) {
                let o = p.y_off + row0 + i;
//#if GATE
                ys[o] = gelu_tanh(s[0][i]) * s[1][i];
//#else
                if (p.acc != 0u) {
                    ys[o] = ys[o] + s[0][i];
                } else {
                    ys[o] = s[0][i];
                }
//#endif
            }
        }
    }
}

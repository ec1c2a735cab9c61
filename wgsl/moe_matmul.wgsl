// Prefill grouped GEMM over one row window of stacked expert matrices: the pairs routed to the
// same expert (grouped by moe_route_sort.wgsl) multiplied together, one 32-pair tile of one
// expert per workgroup row (grid y = tile slot, an upper bound of the tile count: slots past
// ntiles, and tiles of experts outside this window's e_lo .. e_hi, exit at once) and 32 output
// rows per workgroup column (grid x). Expert e's projection is rows e * stride + off .. + rows of
// its stacked matrix (as in moe_matvec.wgsl); the window's first row is e_lo * stride.
//   GATE: pair at sorted position pos (slot s = perm[pos], token s / k):
//     hs[pos, r] = gelu_tanh(Wg[e][r] . x[token]) * (Wu[e][r] . x[token]);
//   otherwise: ds[pos, r] = Wd[e][r] . hs[pos]   (rows of x by sorted position).
// The tiling is matmul.wgsl's: a 64-invocation workgroup computes 32 (pairs) x 32 (rows), each
// invocation 4 x 4 (and as many for up), K walked in tiles of 32 through k-major vec4 tiles in
// workgroup memory; a tile of at most 8 pairs accumulates only its live quarter. Same format
// defines as matmul.wgsl (AFFINE with BITS, GROUP, SB_FMT;
// otherwise W_FMT). No subgroup operations (one kernel for both paths).

struct Params {
    rows: u32,      // rows of one expert's projection (output width)
    cols: u32,
    row_words: u32, // affine: u32 words per row
    groups: u32,    // affine: groups per row
    k: u32,         // experts per token
    e: u32,         // experts (the layout of the route table)
    e_lo: u32,      // experts of this window: e_lo .. e_hi
    e_hi: u32,
    stride0: u32,   // rows per expert block, matrix 0 (gate or down)
    off0: u32,      // first row of the projection in an expert block, matrix 0
    stride1: u32,   // GATE: the same for matrix 1 (up)
    off1: u32,
    route_off: u32, // element offset of the route table
    perm_off: u32,  // offset of perm within the route table
    x_off: u32,     // element offset of x (GATE: [T, cols]; otherwise hs [T * k, cols])
    y_off: u32,     // element offset of the output [T * k, rows]
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
@group(0) @binding({{B_R}}) var<storage, read> route: array<u32>;
@group(0) @binding({{B_X}}) var<storage, read> xs: array<f32>;
@group(0) @binding({{B_Y}}) var<storage, read_write> ys: array<f32>;

const T: u32 = 32u;   // tile edge (pairs, rows, K)

var<workgroup> xt: array<vec4<f32>, 256>;
var<workgroup> wt: array<vec4<f32>, 256>;
//#if GATE
var<workgroup> ut: array<vec4<f32>, 256>;
//#endif
// (first sorted position, pairs, expert, 1 if the tile runs in this dispatch)
var<workgroup> tinfo: vec4<u32>;

fn wget(m: u32, i: u32) -> u32 {
//#if GATE
    if (m == 1u) {
        return wq1[i];
    }
//#endif
    return wq[i];
}

// Stores value v of tile row r (0..31) at k into the k-major weight tile of matrix m.
fn put_w(m: u32, k: u32, r: u32, v: f32) {
//#if GATE
    if (m == 1u) {
        ut[k * 8u + r % 8u][r / 8u] = v;
        return;
    }
//#endif
    wt[k * 8u + r % 8u][r / 8u] = v;
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

// Dequantizes the 32 values of K tile kc of window row `row` of matrix m into tile slot `slot`.
fn load_w(m: u32, row: u32, kc: u32, slot: u32) {
    let base = row * p.row_words + kc * BITS;
    var w: array<u32, {{BITS}}>;
    for (var i = 0u; i < BITS; i++) {
        w[i] = wget(m, base + i);
    }
    let s = scale_bias(m, row * p.groups + (kc * T) / GROUP);
    for (var q = 0u; q < 8u; q++) {
        let d = vec4<f32>(chunk_codes4(&w, q)) * s.x + s.y;
        put_w(m, 4u * q, slot, d.x);
        put_w(m, 4u * q + 1u, slot, d.y);
        put_w(m, 4u * q + 2u, slot, d.z);
        put_w(m, 4u * q + 3u, slot, d.w);
    }
}
//#else
//#include "common/dense.wgsl"

fn load_w(m: u32, row: u32, kc: u32, slot: u32) {
    let base = row * p.cols;
    for (var i = 0u; i < T; i++) {
        let k = kc * T + i;
        var v = 0.0;
        if (k < p.cols) {
            let e = base + k;
            v = dense_value(wget(m, dense_word(e)), e);
        }
        put_w(m, i, slot, v);
    }
}
//#endif

//#include "common/gelu.wgsl"

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    if (li == 0u) {
        var info = vec4<u32>(0u);
        let ro = p.route_off;
        if (wid.y < route[ro + p.e + 1u]) {
            let start = route[ro + p.e + 2u + 2u * wid.y];
            let ex = route[ro + p.e + 3u + 2u * wid.y];
            let end = route[ro + ex + 1u];
            info = vec4<u32>(start, min(T, end - start), ex, u32(ex >= p.e_lo && ex < p.e_hi));
        }
        tinfo = info;
    }
    let ti = workgroupUniformLoad(&tinfo);
    if (ti.w == 0u) {
        return;
    }
    let start = ti.x;
    let count = ti.y;
    let ex = ti.z - p.e_lo;
    let r0 = wid.x * T;
    let tx = li % 8u;
    let ty = li / 8u;
    // this invocation's x row (pairs 0..31 of the tile are loaded by invocations 32..63)
    var xrow = 0u;
    let bl = li - T;
    let has_x = li >= T && bl < count;
    if (has_x) {
        let pos = start + bl;
//#if GATE
        xrow = p.x_off + (route[p.route_off + p.perm_off + pos] / p.k) * p.cols;
//#else
        xrow = p.x_off + pos * p.cols;
//#endif
    }
    var acc: array<vec4<f32>, 4>;
//#if GATE
    var accu: array<vec4<f32>, 4>;
//#endif
    let nk = (p.cols + T - 1u) / T;
    for (var kc = 0u; kc < nk; kc++) {
        if (li < T) {
            let r = r0 + li;
            if (r < p.rows) {
                load_w(0u, ex * p.stride0 + p.off0 + r, kc, li);
//#if GATE
                load_w(1u, ex * p.stride1 + p.off1 + r, kc, li);
//#endif
            } else {
                for (var i = 0u; i < T; i++) {
                    put_w(0u, i, li, 0.0);
//#if GATE
                    put_w(1u, i, li, 0.0);
//#endif
                }
            }
        } else {
            for (var i = 0u; i < T; i++) {
                let k = kc * T + i;
                var v = 0.0;
                if (has_x && k < p.cols) {
                    v = xs[xrow + k];
                }
                xt[i * 8u + bl % 8u][bl / 8u] = v;
            }
        }
        workgroupBarrier();
        if (count <= 8u) {
            // a tile of at most 8 pairs (few tokens per expert): only acc[0] holds live pairs
            for (var k = 0u; k < T; k++) {
                let x0 = xt[k * 8u + ty].x;
                acc[0] += x0 * wt[k * 8u + tx];
//#if GATE
                accu[0] += x0 * ut[k * 8u + tx];
//#endif
            }
        } else {
            for (var k = 0u; k < T; k++) {
                let xv = xt[k * 8u + ty];
                let wv = wt[k * 8u + tx];
                acc[0] += xv.x * wv;
                acc[1] += xv.y * wv;
                acc[2] += xv.z * wv;
                acc[3] += xv.w * wv;
//#if GATE
                let uv = ut[k * 8u + tx];
                accu[0] += xv.x * uv;
                accu[1] += xv.y * uv;
                accu[2] += xv.z * uv;
                accu[3] += xv.w * uv;
//#endif
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let b = ty + 8u * i;
        for (var j = 0u; j < 4u; j++) {
            let r = r0 + tx + 8u * j;
            if (b < count && r < p.rows) {
                let o = p.y_off + (start + b) * p.rows + r;
//#if GATE
                ys[o] = gelu_tanh(acc[i][j]) * accu[i][j];
//#else
                ys[o] = acc[i][j];
//#endif
            }
        }
    }
}

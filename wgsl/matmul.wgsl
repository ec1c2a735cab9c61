// Tiled matrix-matrix product Y[b, row] = sum_k X[b, k] * W[row, k] over one row window of a
// weight matrix (prefill, vision tower). A 64-invocation workgroup computes a 32 (batch) x 32 (rows)
// output tile, each invocation 4 x 4 outputs; K is walked in tiles of 32: invocations 0..31
// dequantize one weight row's 32 values each into workgroup memory, invocations 32..63 load one
// x row's 32 values each; then every invocation accumulates its 4 x 4 block from workgroup memory.
// Both tiles are stored k-major as vec4s (the four rows an invocation needs at one k side by
// side): the inner loop is two vec4 loads and four vec4 FMAs; invocations of a SIMD group
// (consecutive tx) read consecutive weight vec4s and share the x vec4 (a broadcast).
// Same defines as matvec.wgsl: AFFINE with BITS, GROUP, SB_FMT (common/affine.wgsl); otherwise
// W_FMT (common/dense.wgsl).
// Grid: x = row tiles, y = batch tiles. No subgroup operations (one kernel for both paths).

struct Params {
    rows: u32,      // rows of this window
    cols: u32,
    row_words: u32, // affine: u32 words per row
    groups: u32,    // affine: groups per row
    x_off: u32,     // element offset of x[0, 0]
    y_off: u32,     // element offset of y[0, row_start]
    y_stride: u32,  // elements between consecutive batch rows of y
    batch: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> wq: array<u32>;
//#if AFFINE
@group(0) @binding(2) var<storage, read> sb: array<u32>;
@group(0) @binding(3) var<storage, read> xs: array<f32>;
@group(0) @binding(4) var<storage, read_write> ys: array<f32>;
//#else
@group(0) @binding(2) var<storage, read> xs: array<f32>;
@group(0) @binding(3) var<storage, read_write> ys: array<f32>;
//#endif

const T: u32 = 32u;   // tile edge (batch, rows, K)

// k-major tiles of vec4s: xt[k * 8 + i] = x rows (i, i + 8, i + 16, i + 24) at k; wt likewise for
// weight rows. One vec4 load per operand and k in the inner loop.
var<workgroup> xt: array<vec4<f32>, 256>;
var<workgroup> wt: array<vec4<f32>, 256>;

// Stores value v of tile row r (0..31) at k into a k-major vec4 tile.
fn put_w(k: u32, r: u32, v: f32) {
    wt[k * 8u + r % 8u][r / 8u] = v;
}

//#if AFFINE
//#include "common/affine.wgsl"

fn sb_word(m: u32, i: u32) -> u32 {
    return sb[i];
}

// Dequantizes the 32 values of K tile kc of row `row` into wt[slot].
fn load_w(row: u32, kc: u32, slot: u32) {
    let base = row * p.row_words + kc * BITS;
    var w: array<u32, {{BITS}}>;
    for (var i = 0u; i < BITS; i++) {
        w[i] = wq[base + i];
    }
    let s = scale_bias(0u, row * p.groups + (kc * T) / GROUP);
    for (var m = 0u; m < 8u; m++) {
        let d = vec4<f32>(chunk_codes4(&w, m)) * s.x + s.y;
        put_w(4u * m, slot, d.x);
        put_w(4u * m + 1u, slot, d.y);
        put_w(4u * m + 2u, slot, d.z);
        put_w(4u * m + 3u, slot, d.w);
    }
}
//#else
//#include "common/dense.wgsl"

fn wel(e: u32) -> f32 {
    return dense_value(wq[dense_word(e)], e);
}

fn load_w(row: u32, kc: u32, slot: u32) {
    let base = row * p.cols;
    for (var i = 0u; i < T; i++) {
        let k = kc * T + i;
        var v = 0.0;
        if (k < p.cols) {
            v = wel(base + k);
        }
        put_w(i, slot, v);
    }
}
//#endif

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r0 = wid.x * T;
    let b0 = wid.y * T;
    let tx = li % 8u;
    let ty = li / 8u;
    // acc[i][j]: batch row b0 + ty + 8 i, weight row r0 + tx + 8 j.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let nk = (p.cols + T - 1u) / T;
    for (var kc = 0u; kc < nk; kc++) {
        if (li < T) {
            let row = r0 + li;
            if (row < p.rows) {
                load_w(row, kc, li);
            } else {
                for (var i = 0u; i < T; i++) {
                    put_w(i, li, 0.0);
                }
            }
        } else {
            let bl = li - T;
            let b = b0 + bl;
            for (var i = 0u; i < T; i++) {
                let k = kc * T + i;
                var v = 0.0;
                if (b < p.batch && k < p.cols) {
                    v = xs[p.x_off + b * p.cols + k];
                }
                xt[i * 8u + bl % 8u][bl / 8u] = v;
            }
        }
        workgroupBarrier();
        // Invocations with consecutive tx read consecutive weights (one vector load on SIMD
        // backends, no bank conflicts on GPUs); the x values are the same for all of them.
        for (var k = 0u; k < T; k++) {
            let wv = wt[k * 8u + tx];
            let xv = xt[k * 8u + ty];
            acc0 += xv.x * wv;
            acc1 += xv.y * wv;
            acc2 += xv.z * wv;
            acc3 += xv.w * wv;
        }
        workgroupBarrier();
    }
    let acc = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        let b = b0 + ty + 8u * i;
        for (var j = 0u; j < 4u; j++) {
            let row = r0 + tx + 8u * j;
            if (b < p.batch && row < p.rows) {
                ys[p.y_off + b * p.y_stride + row] = acc[i][j];
            }
        }
    }
}

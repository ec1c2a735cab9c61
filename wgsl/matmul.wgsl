// Register-blocked matrix-matrix product Y[b, row] = sum_k X[b, k] * W[row, k] over one row
// window of a weight matrix (prefill, vision tower). A 64-invocation workgroup (8 x 8) computes a
// (8 BA) x (8 BR) output tile; invocation (tx, ty) owns the BA x BR block of batch rows
// b0 + ty + 8 i (i < BA) and weight rows r0 + tx + 8 j (j < BR), kept in BA * BR = 64
// registers. K is walked in steps of 8: the invocation gets its BA x rows' 8 values, then for
// each of its BR weight rows decodes that row's 8 values (straight from the packed words: two
// u32 per 8 affine codes at most, scales/biases once per 32 codes) and adds 8 FMAs into each of
// its BA accumulators of that row. Each x value thus feeds BR rows and each decoded weight BA
// x rows, with no workgroup memory or barriers (on CPU adapters a load costs far more than an
// FMA; GPUs cache the re-read x and weight lines).
// Block shapes (defines BA, BR): 4 x 16 on the portable path; 8 x 8 with SUBGROUP (subgroup
// sizes 8..64): the 8 invocations of a group (same ty) share their BA x rows, each loading
// BA / 4 of the group's 2 BA x vec4s and taking the others by subgroupShuffle, so an invocation
// loads BA values per 8 columns instead of 8 BA.
// Dense formats: K % 8 leftover columns by a scalar tail; f16/bf16 rows of odd width decode
// element by element. XVEC: x bound as vec4<f32> (its element offset and K are multiples of 4).
// Same defines as matvec.wgsl: AFFINE with BITS, GROUP, SB_FMT (common/affine.wgsl); otherwise
// W_FMT (common/dense.wgsl). Grid: x = row tiles, y = batch tiles. Every out-of-range row or
// batch index is clamped for loading (the values are discarded), so all invocations run the
// same uniform control flow (required by the shuffles).

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
//#if XVEC
@group(0) @binding(3) var<storage, read> xs: array<vec4<f32>>;
//#else
@group(0) @binding(3) var<storage, read> xs: array<f32>;
//#endif
@group(0) @binding(4) var<storage, read_write> ys: array<f32>;
//#else
//#if XVEC
@group(0) @binding(2) var<storage, read> xs: array<vec4<f32>>;
//#else
@group(0) @binding(2) var<storage, read> xs: array<f32>;
//#endif
@group(0) @binding(3) var<storage, read_write> ys: array<f32>;
//#endif

const BA: u32 = {{BA}}u; // batch rows per invocation
const BR: u32 = {{BR}}u; // weight rows per invocation
const TB: u32 = 8u * BA; // batch rows per workgroup
const TR: u32 = 8u * BR; // weight rows per workgroup
const NL: u32 = BA / 4u; // SUBGROUP: x vec4s each invocation loads per 8 columns

// The 8 x values k .. k + 7 of each of the invocation's batch rows.
struct X8 {
    a: array<vec4<f32>, BA>,
    b: array<vec4<f32>, BA>,
}

// One x vec4 at element offset o.
fn x4(o: u32) -> vec4<f32> {
//#if XVEC
    return xs[o / 4u];
//#else
    return vec4<f32>(xs[o], xs[o + 1u], xs[o + 2u], xs[o + 3u]);
//#endif
}

// xo: offsets of the invocation's BA x rows; xsh, sbase (SUBGROUP): the offsets of the NL x
// vec4s this invocation loads for its group of 8 (vec4 u = tx + 8 r of the group's 2 BA: row
// u / 2, half u % 2) and the group's first subgroup lane.
fn load_x8(
    xo: ptr<function, array<u32, BA>>,
    xsh: ptr<function, array<u32, NL>>,
    sbase: u32,
    k: u32,
) -> X8 {
    var x: X8;
//#if SUBGROUP
    var mine: array<vec4<f32>, NL>;
    for (var r = 0u; r < NL; r++) {
        mine[r] = x4((*xsh)[r] + k);
    }
    for (var i = 0u; i < BA; i++) {
        x.a[i] = subgroupShuffle(mine[(2u * i) / 8u], sbase + (2u * i) % 8u);
        x.b[i] = subgroupShuffle(mine[(2u * i + 1u) / 8u], sbase + (2u * i + 1u) % 8u);
    }
//#else
    for (var i = 0u; i < BA; i++) {
        let o = (*xo)[i] + k;
        x.a[i] = x4(o);
        x.b[i] = x4(o + 4u);
    }
//#endif
    return x;
}

//#if AFFINE
//#include "common/affine.wgsl"

fn sb_word(m: u32, i: u32) -> u32 {
    return sb[i];
}

// Code `bit / BITS` of a stream whose words from the code's word on are w0, w1 (bit < 64).
fn code_at(w0: u32, w1: u32, bit: u32) -> f32 {
    var v: u32;
    if (bit >= 32u) {
        v = w1 >> (bit - 32u);
    } else {
        v = w0 >> bit;
        if (bit + BITS > 32u) {
            v = v | (w1 << (32u - bit));
        }
    }
    return f32(v & MASK);
}
//#else
//#include "common/dense.wgsl"

fn wel(e: u32) -> f32 {
    return dense_value(wq[dense_word(e)], e);
}

// The 8 weights k .. k + 7 of the row starting at element e0 (k + 8 <= cols).
fn load_w8(e0: u32, k: u32) -> array<vec4<f32>, 2> {
    let e = e0 + k;
    if (W_FMT == 0u) {
        return array<vec4<f32>, 2>(
            vec4<f32>(bitcast<f32>(wq[e]), bitcast<f32>(wq[e + 1u]), bitcast<f32>(wq[e + 2u]),
                bitcast<f32>(wq[e + 3u])),
            vec4<f32>(bitcast<f32>(wq[e + 4u]), bitcast<f32>(wq[e + 5u]),
                bitcast<f32>(wq[e + 6u]), bitcast<f32>(wq[e + 7u])));
    }
    if ((p.cols & 1u) == 0u) {
        // e is even: four whole words
        let w = e / 2u;
        var v: array<vec2<f32>, 4>;
        for (var t = 0u; t < 4u; t++) {
            let word = wq[w + t];
            if (W_FMT == 1u) {
                v[t] = unpack2x16float(word);
            } else {
                v[t] = unpack2x_bf16(word);
            }
        }
        return array<vec4<f32>, 2>(vec4<f32>(v[0], v[1]), vec4<f32>(v[2], v[3]));
    }
    return array<vec4<f32>, 2>(
        vec4<f32>(wel(e), wel(e + 1u), wel(e + 2u), wel(e + 3u)),
        vec4<f32>(wel(e + 4u), wel(e + 5u), wel(e + 6u), wel(e + 7u)));
}
//#endif

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
//#if SUBGROUP
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_id) sg_id: u32,
//#endif
) {
//#if SUBGROUP
    // invocation index by subgroup (the host picks this path for subgroup sizes 8..64, so a
    // group of 8 consecutive indices lies in one subgroup)
    let lx = sg_id * sg_size + sg_lane;
    let sbase = sg_lane - lx % 8u;
//#else
    let lx = li;
    let sbase = 0u;
//#endif
    let tx = lx % 8u;
    let ty = lx / 8u;
    let r0 = wid.x * TR + tx;
    let b0 = wid.y * TB + ty;
    // acc[i * BR + j]: batch row b0 + 8 i, weight row r0 + 8 j
    var acc: array<f32, 64>; // zero-initialised
    var xo: array<u32, BA>;
    for (var i = 0u; i < BA; i++) {
        xo[i] = p.x_off + min(b0 + 8u * i, p.batch - 1u) * p.cols;
    }
    var xsh: array<u32, NL>;
    for (var r = 0u; r < NL; r++) {
        let u = tx + 8u * r;
        xsh[r] = p.x_off + min(b0 + 8u * (u / 2u), p.batch - 1u) * p.cols + 4u * (u % 2u);
    }
    var wr: array<u32, BR>;
    for (var j = 0u; j < BR; j++) {
        wr[j] = min(r0 + 8u * j, p.rows - 1u);
    }
//#if AFFINE
    let nc = p.cols / 32u;
    for (var c = 0u; c < nc; c++) {
        var s: array<vec2<f32>, BR>;
        for (var j = 0u; j < BR; j++) {
            s[j] = scale_bias(0u, wr[j] * p.groups + (c * 32u) / GROUP);
        }
        for (var h = 0u; h < 4u; h++) {
            let x = load_x8(&xo, &xsh, sbase, c * 32u + 8u * h);
            let bit0 = 8u * h * BITS;
            let wi = bit0 / 32u;
            let sh = bit0 % 32u;
            for (var j = 0u; j < BR; j++) {
                let base = wr[j] * p.row_words + c * BITS + wi;
                let w0 = wq[base];
                var w1 = 0u;
                if (sh + 8u * BITS > 32u) {
                    w1 = wq[base + 1u];
                }
                let qa = vec4<f32>(code_at(w0, w1, sh), code_at(w0, w1, sh + BITS),
                    code_at(w0, w1, sh + 2u * BITS), code_at(w0, w1, sh + 3u * BITS));
                let qb = vec4<f32>(code_at(w0, w1, sh + 4u * BITS),
                    code_at(w0, w1, sh + 5u * BITS), code_at(w0, w1, sh + 6u * BITS),
                    code_at(w0, w1, sh + 7u * BITS));
                let wa = qa * s[j].x + s[j].y;
                let wb = qb * s[j].x + s[j].y;
                for (var i = 0u; i < BA; i++) {
                    acc[i * BR + j] += dot(x.a[i], wa) + dot(x.b[i], wb);
                }
            }
        }
    }
//#else
    let n8 = p.cols / 8u;
    for (var c = 0u; c < n8; c++) {
        let x = load_x8(&xo, &xsh, sbase, 8u * c);
        for (var j = 0u; j < BR; j++) {
            let w = load_w8(wr[j] * p.cols, 8u * c);
            for (var i = 0u; i < BA; i++) {
                acc[i * BR + j] += dot(x.a[i], w[0]) + dot(x.b[i], w[1]);
            }
        }
    }
    for (var k = 8u * n8; k < p.cols; k++) {
        var xk: array<f32, BA>;
        for (var i = 0u; i < BA; i++) {
            let o = xo[i] + k;
//#if XVEC
            xk[i] = xs[o / 4u][o % 4u];
//#else
            xk[i] = xs[o];
//#endif
        }
        for (var j = 0u; j < BR; j++) {
            let w = wel(wr[j] * p.cols + k);
            for (var i = 0u; i < BA; i++) {
                acc[i * BR + j] += xk[i] * w;
            }
        }
    }
//#endif
    for (var i = 0u; i < BA; i++) {
        let b = b0 + 8u * i;
        for (var j = 0u; j < BR; j++) {
            let row = r0 + 8u * j;
            if (b < p.batch && row < p.rows) {
                ys[p.y_off + b * p.y_stride + row] = acc[i * BR + j];
            }
        }
    }
}

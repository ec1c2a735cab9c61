// Register-blocked matrix-matrix product Y[b, row] = sum_k X[b, k] * W[row, k] over one row
// window of a weight matrix (prefill, vision tower). A 64-invocation workgroup (8 x 8) computes a
// 32 (batch) x 128 (rows) output tile; invocation (tx, ty) = (li % 8, li / 8) owns the 4 x 16
// block of batch rows b0 + ty + 8 i (i < 4) and weight rows r0 + tx + 8 j (j < 16), kept in 64
// registers. K is walked in steps of 8: the invocation loads its 4 x rows' 8 values, then for
// each of its 16 weight rows decodes that row's 8 values (straight from the packed words: two
// u32 per 8 codes at most, scales/biases once per 32 codes) and adds 8 FMAs into each of the 4
// accumulators. So each x value loaded feeds 16 rows and each weight decoded feeds 4 x rows:
// 64 FMAs per (4 x 8 + 16 x words) values loaded, with no workgroup memory or barriers (on
// CPU adapters a load costs far more than an FMA; GPUs cache the re-read x and weight lines).
// Dense formats: K % 8 leftover columns by a scalar tail; f16/bf16 rows of odd width decode
// element by element. XVEC: x bound as vec4<f32> (its element offset and K are multiples of 4).
// Same defines as matvec.wgsl: AFFINE with BITS, GROUP, SB_FMT
// (common/affine.wgsl); otherwise W_FMT (common/dense.wgsl). Grid: x = row tiles, y = batch
// tiles. No subgroup operations (one kernel for both paths). Every out-of-range row or batch
// index is clamped for loading (the values are discarded), so all invocations run the same
// uniform control flow.

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

const BA: u32 = 4u;   // batch rows per invocation
const BR: u32 = 16u;  // weight rows per invocation
const TB: u32 = 32u;  // batch rows per workgroup (8 BA)
const TR: u32 = 128u; // weight rows per workgroup (8 BR)

// The 8 x values k .. k + 7 of each of the invocation's batch rows (x row offsets xo).
struct X8 {
    a: array<vec4<f32>, 4>,
    b: array<vec4<f32>, 4>,
}

fn load_x8(xo: ptr<function, array<u32, 4>>, k: u32) -> X8 {
    var x: X8;
    for (var i = 0u; i < BA; i++) {
        let o = (*xo)[i] + k;
//#if XVEC
        x.a[i] = xs[o / 4u];
        x.b[i] = xs[o / 4u + 1u];
//#else
        x.a[i] = vec4<f32>(xs[o], xs[o + 1u], xs[o + 2u], xs[o + 3u]);
        x.b[i] = vec4<f32>(xs[o + 4u], xs[o + 5u], xs[o + 6u], xs[o + 7u]);
//#endif
    }
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
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let tx = li % 8u;
    let ty = li / 8u;
    let r0 = wid.x * TR + tx;
    let b0 = wid.y * TB + ty;
    // acc[i * BR + j]: batch row b0 + 8 i, weight row r0 + 8 j
    var acc: array<f32, 64>; // zero-initialised
    var xo: array<u32, 4>;
    for (var i = 0u; i < BA; i++) {
        xo[i] = p.x_off + min(b0 + 8u * i, p.batch - 1u) * p.cols;
    }
    var wr: array<u32, 16>;
    for (var j = 0u; j < BR; j++) {
        wr[j] = min(r0 + 8u * j, p.rows - 1u);
    }
//#if AFFINE
    let nc = p.cols / 32u;
    for (var c = 0u; c < nc; c++) {
        var s: array<vec2<f32>, 16>;
        for (var j = 0u; j < BR; j++) {
            s[j] = scale_bias(0u, wr[j] * p.groups + (c * 32u) / GROUP);
        }
        for (var h = 0u; h < 4u; h++) {
            let x = load_x8(&xo, c * 32u + 8u * h);
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
        let x = load_x8(&xo, 8u * c);
        for (var j = 0u; j < BR; j++) {
            let w = load_w8(wr[j] * p.cols, 8u * c);
            for (var i = 0u; i < BA; i++) {
                acc[i * BR + j] += dot(x.a[i], w[0]) + dot(x.b[i], w[1]);
            }
        }
    }
    for (var k = 8u * n8; k < p.cols; k++) {
        var xk: array<f32, 4>;
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

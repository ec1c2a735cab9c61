// Decode matvec y[row] = sum_k W[row, k] * x[k] over one row window of a weight matrix.
//
// Defines: AFFINE (MLX affine codes, common/affine.wgsl) with BITS (2,3,4,5,6,8), GROUP
// (32,64,128) and SB_FMT (0 f16, 1 bf16, 2 f32 scales/biases); otherwise W_FMT (0 f32, 1 f16,
// 2 bf16; common/dense.wgsl). WVEC: weights
// bound as vec4<u32> (affine BITS 4/8; f32 with cols % 4 == 0; f16/bf16 with cols % 8 == 0).
// XVEC: x bound as vec4<f32> (its element offset is a multiple of 4 and chunks are 4-aligned).
// SUBGROUP: 32 rows per 64-invocation workgroup, each subgroup reducing 4 rows at a time (x and
// sum(x) of a chunk loaded once for the 4 rows; subgroupAdd, no workgroup memory; correct for any
// subgroup size); otherwise the same split over 8 groups of 8 invocations with one
// workgroup-memory reduction at the end. Affine rows are processed in chunks of 32 codes (BITS
// words, within one group): acc += scale * sum(q * x) + bias * sum(x).
// MAT2 / MAT3: two or three matrices of the same format and width, bound separately (binding
// numbers B_W1, B_S1, B_W2, B_S2, B_X, B_Y, B_E are substituted by the host). EPI selects the
// mode and epilogue:
//   EPI 0: y[v] = W_m[r] . x over "virtual rows" v: matrix 0's rows, then matrix 1's (from
//          rows0), then matrix 2's (from rows0 + rows1) -- e.g. fused q/k/v projections;
//   EPI 1: gated GELU over two matrices: y[r] = gelu_tanh(W_0[r] . x) * (W_1[r] . x);
//   EPI 2: y[r] = gelu_tanh(W_0[r] . x) * e[e_off + r].
// Workgroup index = wid.x + wid.y * num_workgroups.x (2-D grid beyond 65535 workgroups).
// Batch: NB x rows (x row b at x_off + b * cols, its outputs at y_off + b * y_stride, its
// epilogue operand at e_off + b * e_stride) are done one after another by every workgroup, so
// a workgroup's weight rows are fetched from memory once and re-read from cache for the other
// x rows, and each output is computed by exactly the same instructions for any NB (a batched
// decode gives the same bits as decoding each sequence alone).

struct Params {
    rows: u32,      // output rows of this window (EPI 0: total virtual rows)
    cols: u32,
    row_words: u32, // affine: u32 words per row
    groups: u32,    // affine: groups per row
    x_off: u32,     // element offset of x
    y_off: u32,     // element offset of y[row_start]
    nb: u32,        // x rows (batch)
    y_stride: u32,  // elements between the outputs of consecutive x rows
    rows0: u32,     // MAT2/MAT3 with EPI 0: rows of matrix 0
    rows1: u32,     // MAT3 with EPI 0: rows of matrix 1
    e_off: u32,     // EPI 2: element offset of e
    e_stride: u32,  // EPI 2: elements between the operands of consecutive x rows
}

@group(0) @binding(0) var<uniform> p: Params;
//#if WVEC
@group(0) @binding(1) var<storage, read> wq: array<vec4<u32>>;
//#if MAT2
@group(0) @binding({{B_W1}}) var<storage, read> wq1: array<vec4<u32>>;
//#endif
//#if MAT3
@group(0) @binding({{B_W2}}) var<storage, read> wq2: array<vec4<u32>>;
//#endif
//#else
@group(0) @binding(1) var<storage, read> wq: array<u32>;
//#if MAT2
@group(0) @binding({{B_W1}}) var<storage, read> wq1: array<u32>;
//#endif
//#if MAT3
@group(0) @binding({{B_W2}}) var<storage, read> wq2: array<u32>;
//#endif
//#endif
//#if AFFINE
@group(0) @binding(2) var<storage, read> sb: array<u32>;
//#if MAT2
@group(0) @binding({{B_S1}}) var<storage, read> sb1: array<u32>;
//#endif
//#if MAT3
@group(0) @binding({{B_S2}}) var<storage, read> sb2: array<u32>;
//#endif
//#endif
//#if XVEC
@group(0) @binding({{B_X}}) var<storage, read> xs: array<vec4<f32>>;
//#else
@group(0) @binding({{B_X}}) var<storage, read> xs: array<f32>;
//#endif
@group(0) @binding({{B_Y}}) var<storage, read_write> ys: array<f32>;
//#if EPI_E
@group(0) @binding({{B_E}}) var<storage, read> ev: array<f32>;
//#endif

// The x row being multiplied: element offsets of x, y and e for batch row b.
var<private> x_base: u32;
var<private> y_base: u32;
var<private> e_base: u32;

// Four consecutive x values starting at element k (k % 4 == 0 when XVEC).
fn x4(k: u32) -> vec4<f32> {
//#if XVEC
    return xs[(x_base + k) / 4u];
//#else
    let i = x_base + k;
    return vec4<f32>(xs[i], xs[i + 1u], xs[i + 2u], xs[i + 3u]);
//#endif
}

const EPI: u32 = {{EPI}}u;

// Weight word i of matrix m (m is uniform across a subgroup at every call site).
//#if WVEC
fn wget(m: u32, i: u32) -> vec4<u32> {
//#else
fn wget(m: u32, i: u32) -> u32 {
//#endif
//#if MAT3
    if (m == 2u) {
        return wq2[i];
    }
//#endif
//#if MAT2
    if (m == 1u) {
        return wq1[i];
    }
//#endif
    return wq[i];
}

//#if AFFINE
fn sb_word(m: u32, i: u32) -> u32 {
//#if MAT3
    if (m == 2u) {
        return sb2[i];
    }
//#endif
//#if MAT2
    if (m == 1u) {
        return sb1[i];
    }
//#endif
    return sb[i];
}
//#endif

// Matrix and row of accumulator slot j for the rows starting at row0 (rows past the end are
// clamped; the caller discards their results). EPI 1: slots 0..3 are rows of matrix 0, slots
// 4..7 the same rows of matrix 1; otherwise slots 0..3 are virtual rows row0 + j.
fn rowmap(row0: u32, j: u32) -> vec2<u32> {
    if (EPI == 1u) {
        return vec2<u32>(j / 4u, min(row0 + j % 4u, p.rows - 1u));
    }
    let v = min(row0 + j, p.rows - 1u);
//#if MAT3
    if (v >= p.rows0 + p.rows1) {
        return vec2<u32>(2u, v - p.rows0 - p.rows1);
    }
//#endif
//#if MAT2
    if (v >= p.rows0) {
        return vec2<u32>(1u, v - p.rows0);
    }
//#endif
    return vec2<u32>(0u, v);
}

//#if AFFINE
//#include "common/affine.wgsl"

//#if WVEC
// sum q * x over the 32 codes of chunk c of row `row` of matrix m (x of the chunk in xv).
// BITS 4 or 8: one or two vec4<u32> loads, decoded with constant shifts. (MLX's trick of
// masking codes in place against pre-scaled x measured ~10-25% slower on lavapipe.)
fn chunk_dot(m: u32, row: u32, c: u32, xv: ptr<function, array<vec4<f32>, 8>>) -> f32 {
    let base = (row * p.row_words + c * BITS) / 4u;
    let v = wget(m, base);
    if (BITS == 8u) {
        let u = wget(m, base + 1u);
        let z = vec4<f32>(0.0);
        return word_dot(v.x, (*xv)[0], z) + word_dot(v.y, (*xv)[1], z)
            + word_dot(v.z, (*xv)[2], z) + word_dot(v.w, (*xv)[3], z)
            + word_dot(u.x, (*xv)[4], z) + word_dot(u.y, (*xv)[5], z)
            + word_dot(u.z, (*xv)[6], z) + word_dot(u.w, (*xv)[7], z);
    }
    return word_dot(v.x, (*xv)[0], (*xv)[1]) + word_dot(v.y, (*xv)[2], (*xv)[3])
        + word_dot(v.z, (*xv)[4], (*xv)[5]) + word_dot(v.w, (*xv)[6], (*xv)[7]);
}
//#else
// sum q * x over the 32 codes of chunk c of row `row` of matrix m (x of the chunk in xv).
// Generic bit-stream decode (codes may straddle words for BITS 3, 5, 6).
fn chunk_dot(m: u32, row: u32, c: u32, xv: ptr<function, array<vec4<f32>, 8>>) -> f32 {
    let base = row * p.row_words + c * BITS;
    var w: array<u32, {{BITS}}>;
    for (var i = 0u; i < BITS; i++) {
        w[i] = wget(m, base + i);
    }
    var d = 0.0;
    for (var k = 0u; k < 8u; k++) {
        d += dot(vec4<f32>(chunk_codes4(&w, k)), (*xv)[k]);
    }
    return d;
}
//#endif

// Partial dot products of the accumulator slots of the rows starting at row0 (see rowmap) over
// the chunks lane, lane + step, ...: x and sum(x) of a chunk are loaded once for all slots.
fn rows_partial(row0: u32, lane: u32, step: u32, nr: u32) -> array<vec4<f32>, 2> {
    let nchunks = p.cols / 32u;
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    var xv: array<vec4<f32>, 8>;
    for (var c = lane; c < nchunks; c += step) {
        var sx4 = vec4<f32>(0.0);
        for (var k = 0u; k < 8u; k++) {
            xv[k] = x4(c * 32u + 4u * k);
            sx4 += xv[k];
        }
        let sx = sx4.x + sx4.y + sx4.z + sx4.w;
        let g = (c * 32u) / GROUP;
        for (var j = 0u; j < nr; j++) {
            let mr = rowmap(row0, j);
            let s = scale_bias(mr.x, mr.y * p.groups + g);
            lo[j] += s.x * chunk_dot(mr.x, mr.y, c, &xv) + s.y * sx;
            if (EPI == 1u) {
                let mu = rowmap(row0, j + 4u);
                let su = scale_bias(mu.x, mu.y * p.groups + g);
                hi[j] += su.x * chunk_dot(mu.x, mu.y, c, &xv) + su.y * sx;
            }
        }
    }
    return array<vec4<f32>, 2>(lo, hi);
}
//#else
//#include "common/dense.wgsl"

//#if WVEC
// Partial dot products of the accumulator slots of the rows starting at row0 (see rowmap) over
// the vec4 words lane, lane + step, ...; x is loaded once for all slots.
// Dot product of the W_FMT vec4 word v of row (mr) with x.
fn wdot(mr: vec2<u32>, nv: u32, v: u32, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
    let q = wget(mr.x, mr.y * nv + v);
    if (W_FMT == 0u) {
        return dot(bitcast<vec4<f32>>(q), xa);
    }
    var lo: vec4<f32>;
    var hi: vec4<f32>;
    if (W_FMT == 1u) {
        lo = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
        hi = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
    } else {
        lo = unpack4x_bf16(q.xy);
        hi = unpack4x_bf16(q.zw);
    }
    return dot(lo, xa) + dot(hi, xb);
}

fn rows_partial(row0: u32, lane: u32, step: u32, nr: u32) -> array<vec4<f32>, 2> {
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    // values per vec4 word: 4 (f32) or 8 (f16 / bf16)
    var per = 8u;
    if (W_FMT == 0u) {
        per = 4u;
    }
    let nv = p.cols / per;
    for (var v = lane; v < nv; v += step) {
        let xa = x4(per * v);
        var xb = vec4<f32>(0.0);
        if (W_FMT != 0u) {
            xb = x4(per * v + 4u);
        }
        for (var j = 0u; j < nr; j++) {
            lo[j] += wdot(rowmap(row0, j), nv, v, xa, xb);
            if (EPI == 1u) {
                hi[j] += wdot(rowmap(row0, j + 4u), nv, v, xa, xb);
            }
        }
    }
    return array<vec4<f32>, 2>(lo, hi);
}
//#else
// Weight element e (row-major index within the window) of matrix m.
fn wel(m: u32, e: u32) -> f32 {
    return dense_value(wget(m, dense_word(e)), e);
}

fn row_partial(m: u32, row: u32, lane: u32, step: u32) -> f32 {
    var acc = 0.0;
    let base = row * p.cols;
    for (var k = lane; k < p.cols; k += step) {
        acc += wel(m, base + k) * xs[x_base + k];
    }
    return acc;
}

fn rows_partial(row0: u32, lane: u32, step: u32, nr: u32) -> array<vec4<f32>, 2> {
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    for (var j = 0u; j < nr; j++) {
        let mr = rowmap(row0, j);
        lo[j] = row_partial(mr.x, mr.y, lane, step);
        if (EPI == 1u) {
            let mu = rowmap(row0, j + 4u);
            hi[j] = row_partial(mu.x, mu.y, lane, step);
        }
    }
    return array<vec4<f32>, 2>(lo, hi);
}
//#endif
//#endif

//#include "common/gelu.wgsl"

// Output i of the row group at row0 from the reduced slots.
fn epilogue(row0: u32, i: u32, s: array<vec4<f32>, 2>) -> f32 {
    if (EPI == 1u) {
        return gelu_tanh(s[0][i]) * s[1][i];
    }
//#if EPI_E
    return gelu_tanh(s[0][i]) * ev[e_base + row0 + i];
//#else
    return s[0][i];
//#endif
}

const WG: u32 = 64u;
// Rows per subgroup step and per workgroup (the host dispatches ceil(rows / RPW) workgroups).
const NR: u32 = 4u;
const RPW: u32 = 32u;
//#ifnot SUBGROUP
var<workgroup> red: array<array<vec4<f32>, 2>, 64>;
//#endif

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
//#if SUBGROUP
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) sgs: u32,
//#endif
) {
    let g = wid.x + wid.y * nwg.x;
    for (var b = 0u; b < p.nb; b++) {
        x_base = p.x_off + b * p.cols;
        y_base = p.y_off + b * p.y_stride;
        e_base = p.e_off + b * p.e_stride;
        rows_of_x(g, li
//#if SUBGROUP
            , lane, sgs
//#endif
        );
    }
}

// The workgroup's rows for the current x row (x_base / y_base / e_base).
fn rows_of_x(
    g: u32,
    li: u32,
//#if SUBGROUP
    lane: u32,
    sgs: u32,
//#endif
) {
//#if SUBGROUP
    // Subgroup index derived from the invocation index (subgroups of a 1-D workgroup are
    // consecutive); `first` is the same for every lane of a subgroup, so control flow stays
    // uniform within each subgroup.
    let first = subgroupBroadcastFirst(li);
    let sg = first / sgs;
    let nsg = (WG + sgs - 1u) / sgs;
    for (var j = sg * NR; j < RPW; j += nsg * NR) {
        let row0 = g * RPW + j;
        if (row0 >= p.rows) {
            break;
        }
        let part = rows_partial(row0, lane, sgs, NR);
        var s: array<vec4<f32>, 2>;
        s[0] = subgroupAdd(part[0]);
        if (EPI == 1u) {
            s[1] = subgroupAdd(part[1]);
        }
        if (lane == 0u) {
            for (var i = 0u; i < NR; i++) {
                if (row0 + i < p.rows) {
                    ys[y_base + row0 + i] = epilogue(row0, i, s);
                }
            }
        }
    }
//#else
    // Same work split without subgroups: 8 groups of 8 invocations, each group 4 rows; the 8
    // partial sums of a row are added through workgroup memory (one barrier, no loop).
    let lane = li % 8u;
    let row0 = g * RPW + (li / 8u) * NR;
    var part: array<vec4<f32>, 2>;
    if (row0 < p.rows) {
        part = rows_partial(row0, lane, 8u, NR);
    }
    red[li] = part;
    workgroupBarrier();
    if (lane == 0u && row0 < p.rows) {
        var s: array<vec4<f32>, 2>;
        for (var i = 0u; i < 8u; i++) {
            s[0] += red[li + i][0];
            s[1] += red[li + i][1];
        }
        for (var i = 0u; i < NR; i++) {
            if (row0 + i < p.rows) {
                ys[y_base + row0 + i] = epilogue(row0, i, s);
            }
        }
    }
    // `red` is written again for the next x row.
    workgroupBarrier();
//#endif
}

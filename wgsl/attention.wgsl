// Attention over a key/value store addressed by strides: the key of absolute position k of
// kv head g is the hd-vector at k_off + g * head_stride + (k % cap) * row_stride (in vec4 units
// here; V likewise at v_off). The KV cache [nkv, cap, hd] has head_stride = cap*hd/4,
// row_stride = hd/4; contiguous [L, nkv, hd] tensors have head_stride = hd/4, row_stride =
// nkv*hd/4. Queries and outputs are [L, n_heads, hd]; query head h reads kv head h / group.
// Query i (absolute position q_pos0 + i) sees keys lo <= k < hi:
//   causal:        hi = qpos + 1, lo = max(0, qpos + 1 - window) (window 0 = none)
//   BOUNDS:        as causal, then lo = min(lo, bounds[bound_off + 2i]) and
//                  hi = max(hi, bounds[bound_off + 2i + 1]) (the image-block overlay of
//                  bidirectional-vision models: a query inside an image block also sees the
//                  block's later keys, and under the 12B rule its keys before the window;
//                  (u32 max, qpos + 1) leaves a query causal)
//   bidirectional: lo = 0, hi = n_keys
// then clipped to the call's key interval klo <= k < khi (a store split into position windows:
// one call per window interval; the key of position k sits at local slot k % cap - slot0 of
// the window's buffer, head_stride being the window's slots * hd; one window: 0, u32 max, 0).
// score = scale * q.k, softmax in f32 with max subtraction (online, over tiles of 64 keys).
//
// Entry `main`, one workgroup (64 threads) per (chunk c, group of G query heads sharing one kv
// head, query i) = wid (x, y, z); the G heads share every K/V row read.
// The visible keys of a query are cut into n_chunks chunks of chunk_len keys.
//   PARTIAL: writes the chunk's running max m, sum l and unnormalised sum_k p_k v_k to the
//            scratch at chunk index c_base + c (flash-decode); `combine` merges the chunks.
//            With accum = 1 it first loads that state and continues it (a windowed store's
//            prefill: one call per window interval, then `combine` with one chunk normalises).
//   DIRECT:  single chunk, writes the normalised output (prefill).
// Entry `combine` (COMBINE), one workgroup per (head, query): merges the partials.
// Scores: SUBGROUP = one subgroup per key (lanes stride over hd, subgroupAdd; coalesced);
// portable = one thread per key. Only s_sh[0 .. n) of a tile is read.
// Workgroup memory: 8 KiB (q of G heads) + 2 KiB (scores). Two barriers per 64-key tile.
// All f32. hd is a multiple of 4, at most 512 (each thread owns output vec4s lid and lid + 64),
// G * hd <= 2048.

struct Params {
    n_heads: u32,
    group: u32,
    hd4: u32,
    cap: u32,
    head_stride4: u32,
    row_stride4: u32,
    q_off4: u32,
    k_off4: u32,
    v_off4: u32,
    out_off4: u32,
    q_pos0: u32,
    window: u32,
    n_keys: u32,
    causal: u32,
    chunk_len: u32,
    n_chunks: u32,
    max_chunks: u32,
    scale: f32,
    ml_off: u32,
    acc_off4: u32,
    bound_off: u32,
    klo: u32,
    khi: u32,
    slot0: u32,
    accum: u32,
    c_base: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
//#if COMBINE
@group(0) @binding(1) var<storage, read> ml_buf: array<f32>;
@group(0) @binding(2) var<storage, read> acc_buf: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out_buf: array<vec4<f32>>;
//#else
@group(0) @binding(1) var<storage, read> q_buf: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k_buf: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v_buf: array<vec4<f32>>;
//#if PARTIAL
@group(0) @binding(4) var<storage, read_write> ml_buf: array<f32>;
@group(0) @binding(5) var<storage, read_write> acc_buf: array<vec4<f32>>;
//#if BOUNDS
@group(0) @binding(6) var<storage, read> bounds: array<u32>;
//#endif
//#else
@group(0) @binding(4) var<storage, read_write> out_buf: array<vec4<f32>>;
//#if BOUNDS
// per query i of the call: (lowest visible key, exclusive upper bound), absolute positions
@group(0) @binding(5) var<storage, read> bounds: array<u32>;
//#endif
//#endif
//#endif

const TILE: u32 = 64u;
// "minus infinity" of the running max (finite: WGSL implementations may assume no infinities)
const NEG: f32 = -1.0e30;

// exp with the argument clamped, so that exp(NEG - m) never overflows inside the backend's
// exp2 lowering (fast-math backends may return NaN for an overflowing intermediate).
fn exp_c(x: f32) -> f32 {
    return exp(max(x, -87.0));
}

//#ifnot COMBINE
// G (a define: 1, 2, 4 or 8) query heads of one kv group per workgroup share every K/V row read.
const G: u32 = {{G}}u;
var<workgroup> q_sh: array<vec4<f32>, 512>; // [G][hd4], G * hd4 <= 512 (8 KiB)
var<workgroup> s_sh: array<f32, 512>;       // [G][TILE] scores of the current tile

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
//#if SUBGROUP
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) n_sg: u32,
//#endif
) {
    let c = wid.x;
    let h0 = wid.y * G;
    let qi = wid.z;
    let kvh = h0 / p.group;
    let qpos = p.q_pos0 + qi;
    var lo = 0u;
    var hi = p.n_keys;
    if (p.causal != 0u) {
        hi = qpos + 1u;
        if (p.window != 0u && hi > p.window) {
            lo = hi - p.window;
        }
//#if BOUNDS
        lo = min(lo, bounds[p.bound_off + 2u * qi]);
        hi = max(hi, bounds[p.bound_off + 2u * qi + 1u]);
//#endif
    }
    // this call's key interval (a window of a split store)
    lo = max(lo, p.klo);
    hi = max(min(hi, p.khi), lo);
    // chunk [start, end) of the visible range (possibly empty)
    let start = lo + c * p.chunk_len;
    var end = start;
    if (start < hi) {
        end = start + min(p.chunk_len, hi - start);
    }

    let qrow = p.q_off4 + (qi * p.n_heads + h0) * p.hd4;
    for (var d = lid; d < G * p.hd4; d += TILE) {
        q_sh[d] = q_buf[qrow + d] * p.scale;
    }
    workgroupBarrier();

    let kv_head = kvh * p.head_stride4;
    var m: array<f32, G>;
    var l: array<f32, G>;
    var acc0: array<vec4<f32>, G>;
    var acc1: array<vec4<f32>, G>;
    for (var g = 0u; g < G; g++) {
        m[g] = NEG;
        l[g] = 0.0;
        acc0[g] = vec4<f32>(0.0);
        acc1[g] = vec4<f32>(0.0);
    }
//#if PARTIAL
    if (p.accum != 0u) {
        for (var g = 0u; g < G; g++) {
            let idx = (qi * p.n_heads + h0 + g) * p.max_chunks + p.c_base + c;
            m[g] = ml_buf[p.ml_off + 2u * idx];
            l[g] = ml_buf[p.ml_off + 2u * idx + 1u];
            let ab = p.acc_off4 + idx * p.hd4;
            if (lid < p.hd4) {
                acc0[g] = acc_buf[ab + lid];
            }
            if (lid + TILE < p.hd4) {
                acc1[g] = acc_buf[ab + lid + TILE];
            }
        }
    }
//#endif
    for (var t0 = start; t0 < end; t0 += TILE) {
        let n = min(TILE, end - t0);
//#if SUBGROUP
        // one subgroup per key: coalesced reads of the key row, subgroupAdd
        for (var j = sg_id; j < n; j += n_sg) {
            let kb = p.k_off4 + kv_head + ((t0 + j) % p.cap - p.slot0) * p.row_stride4;
            for (var g = 0u; g < G; g++) {
                var dot4 = vec4<f32>(0.0);
                for (var d = sg_lane; d < p.hd4; d += sg_size) {
                    dot4 += q_sh[g * p.hd4 + d] * k_buf[kb + d];
                }
                let sc = subgroupAdd((dot4.x + dot4.y) + (dot4.z + dot4.w));
                if (sg_lane == 0u) {
                    s_sh[g * TILE + j] = sc;
                }
            }
        }
//#else
        // one thread per key
        let k = t0 + lid;
        if (k < end) {
            let kb = p.k_off4 + kv_head + (k % p.cap - p.slot0) * p.row_stride4;
            for (var g = 0u; g < G; g++) {
                var dot4 = vec4<f32>(0.0);
                for (var d = 0u; d < p.hd4; d++) {
                    dot4 += q_sh[g * p.hd4 + d] * k_buf[kb + d];
                }
                s_sh[g * TILE + lid] = (dot4.x + dot4.y) + (dot4.z + dot4.w);
            }
        }
//#endif
        workgroupBarrier();
        for (var g = 0u; g < G; g++) {
            var mt = m[g];
            for (var j = 0u; j < n; j++) {
                mt = max(mt, s_sh[g * TILE + j]);
            }
            let alpha = exp_c(m[g] - mt);
            l[g] *= alpha;
            acc0[g] *= alpha;
            acc1[g] *= alpha;
            m[g] = mt;
        }
        for (var j = 0u; j < n; j++) {
            let vb = p.v_off4 + kv_head + ((t0 + j) % p.cap - p.slot0) * p.row_stride4;
            var v0 = vec4<f32>(0.0);
            var v1 = vec4<f32>(0.0);
            if (lid < p.hd4) {
                v0 = v_buf[vb + lid];
            }
            if (lid + TILE < p.hd4) {
                v1 = v_buf[vb + lid + TILE];
            }
            for (var g = 0u; g < G; g++) {
                let pj = exp_c(s_sh[g * TILE + j] - m[g]);
                l[g] += pj;
                acc0[g] += pj * v0;
                acc1[g] += pj * v1;
            }
        }
        workgroupBarrier();
    }

    for (var g = 0u; g < G; g++) {
        let row = qi * p.n_heads + h0 + g;
//#if PARTIAL
        let idx = row * p.max_chunks + p.c_base + c;
        if (lid == 0u) {
            ml_buf[p.ml_off + 2u * idx] = m[g];
            ml_buf[p.ml_off + 2u * idx + 1u] = l[g];
        }
        let ab = p.acc_off4 + idx * p.hd4;
        if (lid < p.hd4) {
            acc_buf[ab + lid] = acc0[g];
        }
        if (lid + TILE < p.hd4) {
            acc_buf[ab + lid + TILE] = acc1[g];
        }
//#else
        var inv = 0.0;
        if (l[g] > 0.0) {
            inv = 1.0 / l[g];
        }
        let ob = p.out_off4 + row * p.hd4;
        if (lid < p.hd4) {
            out_buf[ob + lid] = acc0[g] * inv;
        }
        if (lid + TILE < p.hd4) {
            out_buf[ob + lid + TILE] = acc1[g] * inv;
        }
//#endif
    }
}
//#endif

//#if COMBINE
@compute @workgroup_size(64)
fn combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let qi = wid.y;
    let base = (qi * p.n_heads + h) * p.max_chunks;
    var mx = NEG;
    for (var c = 0u; c < p.n_chunks; c++) {
        mx = max(mx, ml_buf[p.ml_off + 2u * (base + c)]);
    }
    var l = 0.0;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    for (var c = 0u; c < p.n_chunks; c++) {
        let i = p.ml_off + 2u * (base + c);
        let w = exp_c(ml_buf[i] - mx);
        l += w * ml_buf[i + 1u];
        let ab = p.acc_off4 + (base + c) * p.hd4;
        if (lid < p.hd4) {
            a0 += w * acc_buf[ab + lid];
        }
        if (lid + TILE < p.hd4) {
            a1 += w * acc_buf[ab + lid + TILE];
        }
    }
    var inv = 0.0;
    if (l > 0.0) {
        inv = 1.0 / l;
    }
    let ob = p.out_off4 + (qi * p.n_heads + h) * p.hd4;
    if (lid < p.hd4) {
        out_buf[ob + lid] = a0 * inv;
    }
    if (lid + TILE < p.hd4) {
        out_buf[ob + lid + TILE] = a1 * inv;
    }
}
//#endif

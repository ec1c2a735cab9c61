// Multi-query attention with one query row per invocation, for small head dims (the vision
// towers: hd 64 on the E-series, 72 on the large tower). Same key/value addressing and masks as
// attention.wgsl: the key of absolute position k of kv head g is the hd-vector at
// k_off + g * head_stride + (k % cap) * row_stride (vec4 units; V likewise at v_off);
// queries and outputs are [L, n_heads, hd]; query head h reads kv head h / group.
// Query i (absolute position q_pos0 + i) sees keys lo <= k < hi:
//   causal:        hi = qpos + 1, lo = max(0, qpos + 1 - window) (window 0 = none)
//   bidirectional: lo = 0, hi = n_keys
// score = scale * q.k, softmax in f32 with max subtraction (online, per tile of KT keys).
//
// Entry `main`, one workgroup of 64 invocations per (64 consecutive queries, head) =
// wid (x, y). Invocation lid owns query 64 * wid.x + lid: its scaled q and its output
// accumulator (HD4 vec4 each) stay in registers. The workgroup walks the union of its queries'
// visible keys in tiles of KT keys: the tile's K and V rows are loaded once into workgroup
// memory (cooperatively, consecutive invocations read consecutive vec4s), then every
// invocation scores the tile against its own query, rescales its accumulator once per tile and
// adds the tile's weighted V rows. The former one-query-per-workgroup kernel left 60 of 64
// invocations idle at hd 16 and repeated the softmax bookkeeping in every invocation; here each
// key costs each query hd/2 vec4 operations.
//
// Defines: HD4 = hd / 4 (1 ..= 32, i.e. hd <= 128). Workgroup memory: 2 * KT * HD4 vec4s
// (at most 16 KiB). Two barriers per tile. All f32.
// SUBGROUP (subgroup sizes 8..64): no workgroup memory or barriers; every invocation needs the
// same key and value rows, so each group of 8 invocations of a subgroup loads a row together
// (invocation t the vec4s t, t + 8, ...) and every invocation takes the others by
// subgroupShuffle: a row costs an invocation HD4 / 8 loads instead of HD4 reads of workgroup
// memory (on CPU adapters a load costs far more than a register move). The same arithmetic in
// the same order (an invisible key adds exact zeros), so both paths agree.

struct Params {
    n_heads: u32,
    group: u32,
    cap: u32,
    head_stride4: u32,
    row_stride4: u32,
    q_off4: u32,
    k_off4: u32,
    v_off4: u32,
    out_off4: u32,
    q_pos0: u32,
    n_queries: u32,
    window: u32,
    n_keys: u32,
    causal: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q_buf: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k_buf: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v_buf: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out_buf: array<vec4<f32>>;

const WG: u32 = 64u;
const HD4: u32 = {{HD4}}u;
// keys per tile
const KT: u32 = 16u;

//#if SUBGROUP
// row vec4s each invocation loads for its group of 8
const NL: u32 = (HD4 + 7u) / 8u;

// vec4 d of the row at vec4 offset base, loaded by the group of 8 starting at subgroup lane
// sbase (invocation t loaded vec4s t + 8 r into mine[r]).
fn row_vec(mine: ptr<function, array<vec4<f32>, NL>>, sbase: u32, d: u32) -> vec4<f32> {
    return subgroupShuffle((*mine)[d / 8u], sbase + d % 8u);
}

// This invocation's share of the row at vec4 offset base: vec4s t + 8 r (clamped to the row).
fn row_share(buf: u32, base: u32, t: u32) -> array<vec4<f32>, NL> {
    var mine: array<vec4<f32>, NL>;
    for (var r = 0u; r < NL; r++) {
        let d = min(t + 8u * r, HD4 - 1u);
        if (buf == 0u) {
            mine[r] = k_buf[base + d];
        } else {
            mine[r] = v_buf[base + d];
        }
    }
    return mine;
}
//#else
var<workgroup> k_sh: array<vec4<f32>, 512>; // [KT][HD4]
var<workgroup> v_sh: array<vec4<f32>, 512>; // [KT][HD4]
//#endif

// exp with the argument clamped (see attention.wgsl)
fn exp_c(x: f32) -> f32 {
    return exp(max(x, -87.0));
}

// visible key range [lo, hi) of the query at absolute position qpos
fn visible(qpos: u32) -> vec2<u32> {
    if (p.causal == 0u) {
        return vec2<u32>(0u, p.n_keys);
    }
    let hi = qpos + 1u;
    var lo = 0u;
    if (p.window != 0u && hi > p.window) {
        lo = hi - p.window;
    }
    return vec2<u32>(lo, hi);
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
//#if SUBGROUP
    @builtin(subgroup_invocation_id) sg_lane: u32,
//#endif
) {
//#if SUBGROUP
    let t8 = sg_lane % 8u;
    let sbase = sg_lane - t8;
//#endif
    let h = wid.y;
    let q0 = wid.x * WG;
    let qi = q0 + lid;
    let live = qi < p.n_queries;
    let kv_head = (h / p.group) * p.head_stride4;

    // the workgroup's key range: from the first query's lo to the last valid query's hi
    let last = min(q0 + WG, p.n_queries) - 1u;
    let w_lo = visible(p.q_pos0 + q0).x;
    let w_hi = visible(p.q_pos0 + last).y;
    var mine = vec2<u32>(0u, 0u);
    if (live) {
        mine = visible(p.q_pos0 + qi);
    }

    var q: array<vec4<f32>, HD4>;
    var acc: array<vec4<f32>, HD4>;
    let qrow = p.q_off4 + (qi * p.n_heads + h) * HD4;
    for (var d = 0u; d < HD4; d++) {
        acc[d] = vec4<f32>(0.0);
        if (live) {
            q[d] = q_buf[qrow + d] * p.scale;
        } else {
            q[d] = vec4<f32>(0.0);
        }
    }
    var m = -1.0e30;
    var l = 0.0;

    for (var t0 = w_lo; t0 < w_hi; t0 += KT) {
        let n = min(KT, w_hi - t0);
//#ifnot SUBGROUP
        workgroupBarrier();
        for (var e = lid; e < n * HD4; e += WG) {
            let j = e / HD4;
            let d = e % HD4;
            let row = ((t0 + j) % p.cap) * p.row_stride4;
            k_sh[e] = k_buf[p.k_off4 + kv_head + row + d];
            v_sh[e] = v_buf[p.v_off4 + kv_head + row + d];
        }
        workgroupBarrier();
//#endif

        // scores of the tile; invisible keys are flagged, not given a sentinel score
        var s: array<f32, KT>;
        var mt = m;
        for (var j = 0u; j < KT; j++) {
            let key = t0 + j;
//#if SUBGROUP
            // every invocation takes part in the shuffles (a key past the tile: its last row)
            let row = (min(key, w_hi - 1u) % p.cap) * p.row_stride4;
            var kr = row_share(0u, p.k_off4 + kv_head + row, t8);
            var dot4 = vec4<f32>(0.0);
            for (var d = 0u; d < HD4; d++) {
                dot4 += q[d] * row_vec(&kr, sbase, d);
            }
            if (j < n && key >= mine.x && key < mine.y) {
                s[j] = (dot4.x + dot4.y) + (dot4.z + dot4.w);
                mt = max(mt, s[j]);
            }
//#else
            if (j < n && key >= mine.x && key < mine.y) {
                var dot4 = vec4<f32>(0.0);
                for (var d = 0u; d < HD4; d++) {
                    dot4 += q[d] * k_sh[j * HD4 + d];
                }
                s[j] = (dot4.x + dot4.y) + (dot4.z + dot4.w);
                mt = max(mt, s[j]);
            }
//#endif
        }
        let alpha = exp_c(m - mt);
        l *= alpha;
        for (var d = 0u; d < HD4; d++) {
            acc[d] *= alpha;
        }
        m = mt;
        for (var j = 0u; j < KT; j++) {
            let key = t0 + j;
//#if SUBGROUP
            let row = (min(key, w_hi - 1u) % p.cap) * p.row_stride4;
            var vr = row_share(1u, p.v_off4 + kv_head + row, t8);
            // the shuffles in uniform control flow: an invisible key adds exact zeros
            let pj = select(0.0, exp_c(s[j] - m), j < n && key >= mine.x && key < mine.y);
            l += pj;
            for (var d = 0u; d < HD4; d++) {
                acc[d] += pj * row_vec(&vr, sbase, d);
            }
//#else
            if (j < n && key >= mine.x && key < mine.y) {
                let pj = exp_c(s[j] - m);
                l += pj;
                for (var d = 0u; d < HD4; d++) {
                    acc[d] += pj * v_sh[j * HD4 + d];
                }
            }
//#endif
        }
    }

    if (live) {
        var inv = 0.0;
        if (l > 0.0) {
            inv = 1.0 / l;
        }
        let ob = p.out_off4 + (qi * p.n_heads + h) * HD4;
        for (var d = 0u; d < HD4; d++) {
            out_buf[ob + d] = acc[d] * inv;
        }
    }
}

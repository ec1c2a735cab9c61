// Selection over a logits vector: argmax, top-k and on-GPU sampling, in two passes.
//
// Every value is mapped to an order-preserving u32 key (NaN above +inf, -0 equal to +0), and
// candidates are (key, index) pairs ordered by key descending, then index ascending (ties go to
// the lower index, like torch.argmax / torch.topk). The sentinel (0, NONE) sorts below every real
// value (no f32 maps to key 0).
//
// PARTIAL pass: workgroup w selects the k best of its contiguous chunk of logits and writes them,
//   in order, to scratch[2 (w k + i) ..] as (key, index).
// Final pass (one workgroup): selects the k best of the parts * k partial candidates, then
//   TOPK writes values and indices, ARGMAX writes the index of the best, SAMPLE runs the sampler
//   (temperature softmax over the k candidates, min_p, top_p, inverse CDF with a host-drawn
//   uniform) on invocation 0.
//
// Selection is k rounds of a workgroup arg-max: each invocation keeps its own best remaining
// candidate and rescans its items only when that candidate wins a round. The reduction is a
// subgroup max/min plus one shared-memory slot per subgroup scanned by every invocation
// (SUBGROUP, one barrier per round), or one slot per invocation reduced in two levels of 8
// (portable path, two barriers per round). The slots are double-buffered, so no barrier is
// needed before they are rewritten in the next round.

struct Params {
    n: u32,
    k: u32,
    chunk: u32,
    parts: u32,
    in_off: u32,
    out_off: u32,
    out2_off: u32,
    _pad: u32,
    inv_temp: f32,
    top_p: f32,
    min_p: f32,
    uniform: f32,
}

const WG: u32 = 64u;
const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: Params;
//#if PARTIAL
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> scratch: array<u32>;
//#else
@group(0) @binding(1) var<storage, read> scratch: array<u32>;
//#if TOPK
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> values_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> indices_out: array<u32>;
//#else
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
//#endif
//#endif

var<workgroup> red_key: array<array<u32, 64>, 2>;
var<workgroup> red_idx: array<array<u32, 64>, 2>;
//#ifnot SUBGROUP
var<workgroup> part_key: array<array<u32, 8>, 2>;
var<workgroup> part_idx: array<array<u32, 8>, 2>;
//#endif
//#if SAMPLE
var<workgroup> cand_key: array<u32, 64>;
var<workgroup> cand_idx: array<u32, 64>;
//#endif

// Order-preserving key of an f32: NaN -> NONE (largest), -0 -> key of +0.
fn to_key(v: f32) -> u32 {
    var bits = bitcast<u32>(v);
    if (bits == 0x80000000u) {
        bits = 0u;
    }
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return NONE;
    }
    if ((bits & 0x80000000u) != 0u) {
        return ~bits;
    }
    return bits | 0x80000000u;
}

fn from_key(k: u32) -> f32 {
    if ((k & 0x80000000u) != 0u) {
        return bitcast<f32>(k & 0x7fffffffu);
    }
    return bitcast<f32>(~k);
}

// a comes before b: larger key, or equal key and lower index.
fn better(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.x > b.x || (a.x == b.x && a.y < b.y);
}

fn item(start: u32, j: u32) -> vec2<u32> {
//#if PARTIAL
    let g = start + j;
    return vec2<u32>(to_key(logits[p.in_off + g]), g);
//#else
    return vec2<u32>(scratch[2u * j], scratch[2u * j + 1u]);
//#endif
}

// This invocation's best item (items lid, lid + WG, ... below len) that comes after `last`.
fn best_after(lid: u32, start: u32, len: u32, has_last: bool, last: vec2<u32>) -> vec2<u32> {
    var best = vec2<u32>(0u, NONE);
    for (var j = lid; j < len; j += WG) {
        let c = item(start, j);
        if ((!has_last || better(last, c)) && better(c, best)) {
            best = c;
        }
    }
    return best;
}

//#if SAMPLE
// Invocation 0: the sampler over the k candidates in cand_key / cand_idx (descending order).
fn sample_candidates() -> u32 {
    let kk = p.k;
    let top = cand_key[0];
    // temperature 0, a single candidate, or a top value that is +inf / NaN / -inf: argmax
    if (!(p.inv_temp > 0.0) || kk <= 1u || top >= 0xff800000u || top <= 0x007fffffu) {
        return cand_idx[0];
    }
    let v0 = from_key(top);
    var w: array<f32, 64>;
    for (var i = 0u; i < kk; i++) {
        w[i] = exp((from_key(cand_key[i]) - v0) * p.inv_temp);
    }
    // min_p: p_i / p_max = w_i; the kept candidates are a prefix
    var m = 1u;
    while (m < kk && w[m] >= p.min_p) {
        m++;
    }
    var cut = m;
    if (p.top_p < 1.0) {
        var total = 0.0;
        for (var i = 0u; i < m; i++) {
            total += w[i];
        }
        let thr = p.top_p * total;
        var cum = 0.0;
        for (var i = 0u; i < m; i++) {
            cum += w[i];
            if (cum >= thr) {
                cut = i + 1u;
                break;
            }
        }
    }
    var mass = 0.0;
    for (var i = 0u; i < cut; i++) {
        mass += w[i];
    }
    let goal = p.uniform * mass;
    var acc = 0.0;
    var pick = cut - 1u;
    for (var i = 0u; i < cut; i++) {
        acc += w[i];
        if (goal < acc) {
            pick = i;
            break;
        }
    }
    return cand_idx[pick];
}
//#endif

@compute @workgroup_size(64)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
//#if SUBGROUP
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) n_sg: u32,
//#endif
) {
//#if PARTIAL
    let start = wid.x * p.chunk;
    var len = 0u;
    if (start < p.n) {
        len = min(p.chunk, p.n - start);
    }
//#else
    let start = 0u;
    let len = p.parts * p.k;
//#endif
    var mine = best_after(lid, start, len, false, vec2<u32>(0u, NONE));
    for (var it = 0u; it < p.k; it++) {
        let b = it & 1u;
//#if SUBGROUP
        let mk = subgroupMax(mine.x);
        let mi = subgroupMin(select(NONE, mine.y, mine.x == mk));
        if (sg_lane == 0u) {
            red_key[b][sg_id] = mk;
            red_idx[b][sg_id] = mi;
        }
        workgroupBarrier();
        var win = vec2<u32>(red_key[b][0], red_idx[b][0]);
        for (var t = 1u; t < n_sg; t++) {
            let c = vec2<u32>(red_key[b][t], red_idx[b][t]);
            if (better(c, win)) {
                win = c;
            }
        }
//#else
        // portable: 8 invocations reduce 8 slots each, then every invocation scans those 8
        red_key[b][lid] = mine.x;
        red_idx[b][lid] = mine.y;
        workgroupBarrier();
        if (lid < 8u) {
            var w8 = vec2<u32>(red_key[b][lid * 8u], red_idx[b][lid * 8u]);
            for (var t = 1u; t < 8u; t++) {
                let c = vec2<u32>(red_key[b][lid * 8u + t], red_idx[b][lid * 8u + t]);
                if (better(c, w8)) {
                    w8 = c;
                }
            }
            part_key[b][lid] = w8.x;
            part_idx[b][lid] = w8.y;
        }
        workgroupBarrier();
        var win = vec2<u32>(part_key[b][0], part_idx[b][0]);
        for (var t = 1u; t < 8u; t++) {
            let c = vec2<u32>(part_key[b][t], part_idx[b][t]);
            if (better(c, win)) {
                win = c;
            }
        }
//#endif
        if (all(mine == win)) {
            mine = best_after(lid, start, len, true, win);
        }
        if (lid == 0u) {
//#if PARTIAL
            let o = 2u * (wid.x * p.k + it);
            scratch[o] = win.x;
            scratch[o + 1u] = win.y;
//#endif
//#if TOPK
            values_out[p.out_off + it] = logits[p.in_off + win.y];
            indices_out[p.out2_off + it] = win.y;
//#endif
//#if ARGMAX
            out[p.out_off] = win.y;
//#endif
//#if SAMPLE
            cand_key[it] = win.x;
            cand_idx[it] = win.y;
//#endif
        }
    }
//#if SAMPLE
    if (lid == 0u) {
        out[p.out_off] = sample_candidates();
    }
//#endif
}

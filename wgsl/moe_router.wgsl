// Mixture-of-experts routing, one token per workgroup (transformers' Gemma4TextRouter after the
// projection): p = softmax(logits[t, :]) over the E experts (exp(l - max) / sum), the k largest
// probabilities in descending order (ties: lower expert index first), renormalised to sum 1 and
// multiplied by per_expert_scale[id]:
//   ids[t, r] = expert of rank r, weights[t, r] = p[id] / sum_{r' < k} p[rank r'] * scale[id].
// 256 invocations, one expert each (E <= 256, 1 <= k <= E): max and sum by a workgroup-memory
// tree (fixed order), rank of expert e = #{j : p_j > p_e or (p_j == p_e and j < e)} (so the
// selection needs no sort and is deterministic), the renormalising sum in rank order.
// No subgroup operations (one kernel for both paths). Workgroup index = wid.x + wid.y *
// num_workgroups.x (2-D grid beyond 65535 tokens).

struct Params {
    t: u32,          // tokens
    e: u32,          // experts
    k: u32,          // experts per token
    logits_off: u32, // element offset of logits [t, e]
    scale_off: u32,  // element offset of per_expert_scale [e]
    ids_off: u32,    // element offset of ids [t, k]
    w_off: u32,      // element offset of weights [t, k]
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> scale: array<f32>;
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> weights: array<f32>;

const WG: u32 = 256u;
const LOWEST: f32 = -3.4028234e38;

var<workgroup> red: array<f32, 256>;
var<workgroup> prob: array<f32, 256>;
var<workgroup> sel_p: array<f32, 256>;
var<workgroup> sel_id: array<u32, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= p.t) {
        return;
    }
    let live = li < p.e;
    var v = LOWEST;
    if (live) {
        v = logits[p.logits_off + t * p.e + li];
    }
    red[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] = max(red[li], red[li + s]);
        }
        workgroupBarrier();
    }
    let m = red[0];
    workgroupBarrier();
    var ex = 0.0;
    if (live) {
        ex = exp(v - m);
    }
    red[li] = ex;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] = red[li] + red[li + s];
        }
        workgroupBarrier();
    }
    let pv = ex / red[0];
    prob[li] = pv;
    workgroupBarrier();
    if (live) {
        var rank = 0u;
        for (var j = 0u; j < p.e; j++) {
            let q = prob[j];
            if (q > pv || (q == pv && j < li)) {
                rank += 1u;
            }
        }
        if (rank < p.k) {
            sel_p[rank] = pv;
            sel_id[rank] = li;
        }
    }
    workgroupBarrier();
    if (li < p.k) {
        var total = 0.0;
        for (var r = 0u; r < p.k; r++) {
            total += sel_p[r];
        }
        let id = sel_id[li];
        ids[p.ids_off + t * p.k + li] = id;
        weights[p.w_off + t * p.k + li] = sel_p[li] / total * scale[p.scale_off + id];
    }
}

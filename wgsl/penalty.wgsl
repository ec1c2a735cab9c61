// Repetition penalty (HF `RepetitionPenaltyLogitsProcessor`), in place on one logits row:
// for every id t in ids[0..n_ids]: logits[t] = logits[t] > 0 ? logits[t] / penalty : logits[t] * penalty.
// One invocation per id; the ids must be distinct (the caller keeps a set), so no two invocations
// touch the same logit. Ids outside the vocabulary are ignored. Portable (no subgroups, no f16).

struct Params {
    n_ids: u32,
    vocab: u32,
    logits_off: u32,
    ids_off: u32,
    penalty: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.n_ids) {
        return;
    }
    let t = ids[p.ids_off + i];
    if (t >= p.vocab) {
        return;
    }
    let j = p.logits_off + t;
    let x = logits[j];
    logits[j] = select(x * p.penalty, x / p.penalty, x > 0.0);
}

// Attention input of a decoder layer, after the (fused) q/k/v projection. For every token and
// head slot: RMSNorm over the head (q with q_norm, k with k_norm, v weightless), RoPE on q and k
// at absolute position pos0 + token (NeoX rotate-half, the angle range-reduced: common/rope.wgsl),
// then q goes to its own buffer [tokens, nh, hd] and k / v into the KV-cache rings
// [nkv, cap, hd] at slot (pos0 + token) % cap. A ring split into position windows (a cache
// larger than one binding) takes one call per window it touches: the window holds the slots
// slot0 .. slot0 + wslots as [nkv, wslots, hd]; rows of other slots are skipped, and with
// q_skip = 1 the call writes k / v only (q was written by the window's first call). Head slots per token: nh query heads, then (when
// p.kv == 1) nkv key heads and nkv value heads. The source row of a token holds the q
// projection, then k (at nh * hd), then v (at v_src; equal to the k offset for k_eq_v layers,
// whose v is the raw k projection). One 64-invocation workgroup per (token, slot); 2-D grid.
// Reduction through workgroup memory with one barrier (no loops around barriers).

struct Params {
    tokens: u32,
    nh: u32,
    nkv: u32,
    hd: u32,
    src_off: u32,    // element offset of token 0's row
    src_stride: u32, // elements per token row
    v_src: u32,      // offset of the v projection within a row
    q_off: u32,      // element offset of q out
    pos0: u32,
    cap: u32,
    k_off: u32,      // element offset of the k cache
    v_off: u32,      // element offset of the v cache
    kv: u32,         // 1: write k / v slots; 0: q only (KV-shared layer)
    eps: f32,
    f_off: u32,      // inv_freq offset (hd / 2 values)
    qn_off: u32,
    kn_off: u32,
    slot0: u32,
    wslots: u32,
    q_skip: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(5) var<storage, read> freq: array<f32>;
@group(0) @binding(6) var<storage, read> q_norm: array<f32>;
@group(0) @binding(7) var<storage, read> k_norm: array<f32>;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

//#include "common/rope.wgsl"

// kind 0: q head, 1: k head, 2: v head.
fn norm_weight(kind: u32, i: u32) -> f32 {
    if (kind == 0u) {
        return q_norm[p.qn_off + i];
    }
    if (kind == 1u) {
        return k_norm[p.kn_off + i];
    }
    return 1.0;
}

fn store(kind: u32, head: u32, token: u32, d: u32, v: f32) {
    if (kind == 0u) {
        q_out[p.q_off + (token * p.nh + head) * p.hd + d] = v;
        return;
    }
    let slot = (p.pos0 + token) % p.cap - p.slot0;
    let i = (head * p.wslots + slot) * p.hd + d;
    if (kind == 1u) {
        k_cache[p.k_off + i] = v;
    } else {
        v_cache[p.v_off + i] = v;
    }
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let first = p.nh * p.q_skip;
    let slots = p.nh + 2u * p.nkv * p.kv - first;
    let w = wid.x + wid.y * nwg.x;
    // `w` is uniform over the workgroup, so these early exits keep the barrier uniform.
    if (w >= p.tokens * slots) {
        return;
    }
    let token = w / slots;
    let slot = w % slots + first;
    let ring = (p.pos0 + token) % p.cap;
    if (slot >= p.nh && (ring < p.slot0 || ring >= p.slot0 + p.wslots)) {
        return;
    }
    var kind = 0u;
    var head = slot;
    var base = p.src_off + token * p.src_stride + slot * p.hd;
    if (slot >= p.nh + p.nkv) {
        kind = 2u;
        head = slot - p.nh - p.nkv;
        base = p.src_off + token * p.src_stride + p.v_src + head * p.hd;
    } else if (slot >= p.nh) {
        kind = 1u;
        head = slot - p.nh;
    }
    var s = 0.0;
    for (var i = lid; i < p.hd; i += WG) {
        let v = src[base + i];
        s += v * v;
    }
    partial[lid] = s;
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < WG; i++) {
        total += partial[i];
    }
    let r = inverseSqrt(total / f32(p.hd) + p.eps);
    let half = p.hd / 2u;
    let pos = f32(p.pos0 + token);
    for (var j = lid; j < half; j += WG) {
        var x0 = src[base + j] * r * norm_weight(kind, j);
        var x1 = src[base + j + half] * r * norm_weight(kind, j + half);
        if (kind != 2u) {
            let y = rope_rotate(x0, x1, pos * freq[p.f_off + j]);
            x0 = y.x;
            x1 = y.y;
        }
        store(kind, head, token, j, x0);
        store(kind, head, token, j + half, x1);
    }
}

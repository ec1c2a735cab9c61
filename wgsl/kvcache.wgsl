// KV-cache write: src [n, nkv, hd] row i (absolute position pos0 + i) goes to slot
// (pos0 + i) % cap of every kv head of cache [nkv, cap, hd]. One thread per element,
// 2-D grid of workgroups. The host skips rows that a later row of the same call overwrites,
// so no two threads write one slot.

struct Params {
    n_elems: u32,   // n * nkv * hd
    nkv: u32,
    hd: u32,
    cap: u32,
    pos0: u32,
    src_off: u32,
    cache_off: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> cache: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 256u;
    if (e >= p.n_elems) {
        return;
    }
    let d = e % p.hd;
    let rh = e / p.hd;
    let g = rh % p.nkv;
    let i = rh / p.nkv;
    let slot = (p.pos0 + i) % p.cap;
    cache[p.cache_off + (g * p.cap + slot) * p.hd + d] = src[p.src_off + e];
}

// Prefill expert combine: y[t, c] = sum_j weights[t, j] * ds[inv[t * k + j], c] for j = 0 .. k in
// order (deterministic, no atomics), where ds [T * k, h] holds the down projections at the
// sorted positions of moe_route_sort.wgsl and inv (in the route table) maps a slot to its sorted
// position (slots with inv = 0xffffffff, an invalid expert id, contribute nothing).
// One invocation per output element, 256 per workgroup; workgroup index = wid.x + wid.y *
// num_workgroups.x. No subgroup operations.

struct Params {
    t: u32,        // tokens
    h: u32,        // output width
    k: u32,        // experts per token
    inv_off: u32,  // element offset of inv in the route buffer
    w_off: u32,    // element offset of weights [t, k]
    d_off: u32,    // element offset of ds
    y_off: u32,    // element offset of y [t, h]
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> route: array<u32>;
@group(0) @binding(2) var<storage, read> wts: array<f32>;
@group(0) @binding(3) var<storage, read> ds: array<f32>;
@group(0) @binding(4) var<storage, read_write> ys: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + li;
    if (i >= p.t * p.h) {
        return;
    }
    let t = i / p.h;
    let c = i % p.h;
    var acc = 0.0;
    for (var j = 0u; j < p.k; j++) {
        let s = t * p.k + j;
        let pos = route[p.inv_off + s];
        if (pos != 0xffffffffu) {
            acc += wts[p.w_off + s] * ds[p.d_off + pos * p.h + c];
        }
    }
    ys[p.y_off + i] = acc;
}

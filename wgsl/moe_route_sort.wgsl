// Prefill routing table: the n = T * k (token, slot) pairs of ids [T, k] (flat slot s = t * k + j)
// grouped by expert, stably (within an expert, increasing s), in one workgroup of 256
// invocations, written into `route` (u32, starting at route_off):
//   [0, E]                 offsets: expert e's pairs are sorted positions offsets[e] ..
//                          offsets[e + 1] (offsets[E] = pairs with a valid id)
//   [E + 1]                ntiles: the number of GEMM tiles
//   [E + 2, + 2 max_tiles) tiles: (first sorted position, expert) of each tile of up to 32
//                          consecutive pairs of one expert, experts in order
//   perm_off + pos         slot s at sorted position pos
//   inv_off + s            sorted position of slot s (0xffffffff for an id >= E, skipped)
// 1) per-expert counts (workgroup atomics, exact integers), 2) prefix sum and tile list by
// invocation 0, 3) the slots in blocks of 256: each slot's rank among the earlier slots of its
// expert in the block gives its position (no atomics on the positions: deterministic).
// No subgroup operations (one kernel for both paths).

struct Params {
    n: u32,        // pairs (T * k)
    e: u32,        // experts (<= 256)
    ids_off: u32,  // element offset of ids
    route_off: u32,
    perm_off: u32, // offset of perm within route
    inv_off: u32,  // offset of inv within route
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> route: array<u32>;

const WG: u32 = 256u;
const TILE: u32 = 32u;
const NONE: u32 = 0xffffffffu;

var<workgroup> cnt: array<atomic<u32>, 256>;
var<workgroup> base: array<u32, 256>;
var<workgroup> blk: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32) {
    atomicStore(&cnt[li], 0u);
    workgroupBarrier();
    for (var s = li; s < p.n; s += WG) {
        let e = ids[p.ids_off + s];
        if (e < p.e) {
            atomicAdd(&cnt[e], 1u);
        }
    }
    workgroupBarrier();
    if (li == 0u) {
        var off = 0u;
        var nt = 0u;
        let tiles = p.route_off + p.e + 2u;
        for (var e = 0u; e < p.e; e++) {
            let c = atomicLoad(&cnt[e]);
            route[p.route_off + e] = off;
            base[e] = off;
            for (var t0 = 0u; t0 < c; t0 += TILE) {
                route[tiles + 2u * nt] = off + t0;
                route[tiles + 2u * nt + 1u] = e;
                nt += 1u;
            }
            off += c;
        }
        route[p.route_off + p.e] = off;
        route[p.route_off + p.e + 1u] = nt;
    }
    workgroupBarrier();
    for (var b0 = 0u; b0 < p.n; b0 += WG) {
        let s = b0 + li;
        var e = NONE;
        if (s < p.n) {
            e = ids[p.ids_off + s];
            if (e >= p.e) {
                e = NONE;
                route[p.route_off + p.inv_off + s] = NONE;
            }
        }
        blk[li] = e;
        workgroupBarrier();
        var before = 0u;
        var after = 0u;
        if (e != NONE) {
            for (var j = 0u; j < WG; j++) {
                if (blk[j] == e) {
                    if (j < li) {
                        before += 1u;
                    } else if (j > li) {
                        after += 1u;
                    }
                }
            }
            let pos = base[e] + before;
            route[p.route_off + p.perm_off + pos] = s;
            route[p.route_off + p.inv_off + s] = pos;
        }
        workgroupBarrier();
        if (e != NONE && after == 0u) {
            base[e] += before + 1u;
        }
        workgroupBarrier();
    }
}

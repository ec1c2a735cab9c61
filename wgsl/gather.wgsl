// Embedding gather over one row window of a weight matrix:
// out[i, k] = W[ids[i], k] * scale for every id inside the window (rows row_start .. row_start +
// rows); other ids are skipped (another window's dispatch writes them). One invocation per output
// element, 256 per workgroup; workgroup index = wid.x + wid.y * num_workgroups.x.
// Same format defines as matvec.wgsl: AFFINE with BITS, GROUP, SB_FMT (common/affine.wgsl);
// otherwise W_FMT (common/dense.wgsl).

// 32 bytes: the recorder's parameter slots are only guaranteed to hold 32 bytes.
struct Params {
    n: u32,         // number of ids
    cols: u32,
    row_words: u32, // affine: u32 words per row
    row_start: u32, // first row of this window
    rows: u32,      // rows of this window
    ids_off: u32,   // element offset of ids
    out_off: u32,   // element offset of out
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> wq: array<u32>;
//#if AFFINE
@group(0) @binding(2) var<storage, read> sb: array<u32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> outs: array<f32>;
//#else
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> outs: array<f32>;
//#endif

//#if AFFINE
//#include "common/affine.wgsl"

fn sb_word(m: u32, i: u32) -> u32 {
    return sb[i];
}

fn value(r: u32, k: u32) -> f32 {
    let bit = k * BITS;
    let wi = r * p.row_words + bit / 32u;
    let sh = bit % 32u;
    var v = wq[wi] >> sh;
    if (sh + BITS > 32u) {
        v = v | (wq[wi + 1u] << (32u - sh));
    }
    let s = scale_bias(0u, r * (p.cols / GROUP) + k / GROUP);
    return s.x * f32(v & MASK) + s.y;
}
//#else
//#include "common/dense.wgsl"

fn value(r: u32, k: u32) -> f32 {
    let e = r * p.cols + k;
    return dense_value(wq[dense_word(e)], e);
}
//#endif

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 256u;
    if (t >= p.n * p.cols) {
        return;
    }
    let i = t / p.cols;
    let k = t - i * p.cols;
    let id = ids[p.ids_off + i];
    if (id < p.row_start || id - p.row_start >= p.rows) {
        return;
    }
    outs[p.out_off + t] = value(id - p.row_start, k) * p.scale;
}

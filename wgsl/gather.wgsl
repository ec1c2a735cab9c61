// Embedding gather over one row window of a weight matrix:
// out[i, k] = W[ids[i], k] * scale for every id inside the window (rows row_start .. row_start +
// rows); other ids are skipped (another window's dispatch writes them). One invocation per output
// element, 256 per workgroup; workgroup index = wid.x + wid.y * num_workgroups.x.
// Same format defines as matvec.wgsl: AFFINE with BITS, GROUP, SB_FMT; otherwise W_FMT.

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
const BITS: u32 = {{BITS}}u;
const GROUP: u32 = {{GROUP}}u;
const SB_FMT: u32 = {{SB_FMT}}u;
const MASK: u32 = (1u << BITS) - 1u;

fn scale_bias(i: u32) -> vec2<f32> {
    if (SB_FMT == 2u) {
        return vec2<f32>(bitcast<f32>(sb[2u * i]), bitcast<f32>(sb[2u * i + 1u]));
    }
    let w = sb[i];
    if (SB_FMT == 1u) {
        return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));
    }
    return unpack2x16float(w);
}

fn value(r: u32, k: u32) -> f32 {
    let bit = k * BITS;
    let wi = r * p.row_words + bit / 32u;
    let sh = bit % 32u;
    var v = wq[wi] >> sh;
    if (sh + BITS > 32u) {
        v = v | (wq[wi + 1u] << (32u - sh));
    }
    let s = scale_bias(r * (p.cols / GROUP) + k / GROUP);
    return s.x * f32(v & MASK) + s.y;
}
//#else
const W_FMT: u32 = {{W_FMT}}u;

fn value(r: u32, k: u32) -> f32 {
    let e = r * p.cols + k;
    if (W_FMT == 0u) {
        return bitcast<f32>(wq[e]);
    }
    let w = wq[e / 2u];
    if (W_FMT == 1u) {
        let h = unpack2x16float(w);
        return select(h.x, h.y, (e & 1u) == 1u);
    }
    return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (e & 1u) == 1u));
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

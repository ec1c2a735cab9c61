// Rotary position embedding, NeoX "rotate-half" layout, in place on x [tokens, heads, hd].
// The head is cut into `n_seg` segments of `seg` dims (1 segment: ordinary RoPE; 2 segments:
// the vision tower's axial 2-D RoPE, segment s rotating with coordinate s of the position).
// Inside a segment, element j pairs with j + seg/2 (j < seg/2):
//   angle = f32(pos) * inv_freq[j]
//   y_j          = x_j cos - x_{j+seg/2} sin
//   y_{j+seg/2}  = x_{j+seg/2} cos + x_j sin
// Proportional RoPE is inv_freq[j] = 0 beyond rope_angles (cos 1, sin 0: exact pass-through).
// One thread per pair; 2-D grid of workgroups (wid.x + wid.y * nwg.x).
// The f32 angle is range-reduced before cos/sin (common/rope.wgsl).

struct Params {
    n_pairs: u32,   // tokens * heads * hd / 2
    hd: u32,
    seg: u32,       // segment width (hd or hd / 2)
    pos_stride: u32,// u32 positions per token (1 or 2)
    x_off: u32,
    pos_off: u32,
    f_off: u32,
    heads: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x_buf: array<f32>;
@group(0) @binding(2) var<storage, read> pos_buf: array<u32>;
@group(0) @binding(3) var<storage, read> freq_buf: array<f32>;

//#include "common/rope.wgsl"

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n_pairs) {
        return;
    }
    let half_hd = p.hd / 2u;
    let half_seg = p.seg / 2u;
    let row = i / half_hd;            // token * heads + head
    let pr = i % half_hd;             // pair index inside the head
    let s = pr / half_seg;            // segment
    let j = pr % half_seg;            // pair index inside the segment
    let token = row / p.heads;
    let pos = pos_buf[p.pos_off + token * p.pos_stride + s];
    let i0 = p.x_off + row * p.hd + s * p.seg + j;
    let i1 = i0 + half_seg;
    let y = rope_rotate(x_buf[i0], x_buf[i1], f32(pos) * freq_buf[p.f_off + j]);
    x_buf[i0] = y.x;
    x_buf[i1] = y.y;
}

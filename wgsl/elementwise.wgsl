// Elementwise kernels over flat f32 arrays: out[i] = EXPR(a[i], b[...]), or in place a[i] = EXPR(a[i], b[...]).
// Operands are whole buffers plus element offsets (no binding-offset alignment constraints).
// EXPR is substituted per op (add, mul, scale, gelu_tanh, gated gelu, clamp, softcap).
// Works identically on every backend (no subgroups, no f16).

struct Params {
    n: u32,
    b_cols: u32,
    s0: f32,
    s1: f32,
    a_off: u32,
    b_off: u32,
    out_off: u32,
    b_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
//#if IN_PLACE
// a is updated in place: out aliases a (one read_write binding).
@group(0) @binding(1) var<storage, read_write> a_buf: array<f32>;
//#if BINARY
@group(0) @binding(2) var<storage, read> b_buf: array<f32>;
//#endif
//#else
@group(0) @binding(1) var<storage, read> a_buf: array<f32>;
//#if BINARY
@group(0) @binding(2) var<storage, read> b_buf: array<f32>;
@group(0) @binding(3) var<storage, read_write> out_buf: array<f32>;
//#else
@group(0) @binding(2) var<storage, read_write> out_buf: array<f32>;
//#endif
//#endif

//#include "common/gelu.wgsl"

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    let a = a_buf[p.a_off + i];
//#if BINARY
    // b is read as rows of b_cols values placed b_stride apart (b_stride 0 broadcasts one row)
    let b = b_buf[p.b_off + (i / p.b_cols) * p.b_stride + i % p.b_cols];
//#endif
//#if IN_PLACE
    a_buf[p.a_off + i] = {{EXPR}};
//#else
    out_buf[p.out_off + i] = {{EXPR}};
//#endif
}

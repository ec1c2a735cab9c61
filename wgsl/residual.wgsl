// Residual add with the block's post-norm, an optional scale, and the next block's pre-norm:
//   h   = (h + RMSNorm_w(o)) * scale
//   xn  = RMSNorm_w2(h)            (when p.next == 1)
// per row of `dim` values, RMSNorm(x) = x * inverseSqrt(mean(x^2) + eps) * w. One workgroup of
// 64 invocations per row (2-D grid); each reduction goes through workgroup memory with one
// barrier, none in loops: SUBGROUP = subgroupAdd, then one value per subgroup; portable = every
// invocation's partial (each invocation then reads the partials: 64 rather than the former
// 256, which made this kernel ~1 ms per dispatch on lavapipe). Every invocation re-reads only
// the elements it wrote itself.

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    scale: f32,
    h_off: u32,
    o_off: u32,
    w_off: u32,
    w2_off: u32,
    xn_off: u32,
    next: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> h: array<f32>;
@group(0) @binding(2) var<storage, read> o: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> w2: array<f32>;
@group(0) @binding(5) var<storage, read_write> xn: array<f32>;

const WG: u32 = 64u;
// partials of the two reductions: [0, 64) o's, [64, 128) h's (separate, so the second
// reduction's writes never race the first's reads)
var<workgroup> part: array<f32, 128>;

// Which invocation this is, for the row reductions.
struct Lanes {
    lid: u32,
    sg_lane: u32,
    sg_id: u32,
    n_sg: u32,
}

// The workgroup's total of v (one value per invocation), through part[base ..]; one barrier.
fn row_total(v: f32, base: u32, ln: Lanes) -> f32 {
//#if SUBGROUP
    let t = subgroupAdd(v);
    if (ln.sg_lane == 0u) {
        part[base + ln.sg_id] = t;
    }
    workgroupBarrier();
    var tot = 0.0;
    for (var k = 0u; k < ln.n_sg; k++) {
        tot += part[base + k];
    }
    return tot;
//#else
    part[base + ln.lid] = v;
    workgroupBarrier();
    // eight independent partial sums, combined
    var acc = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    for (var i = 0u; i < WG; i += 8u) {
        let j = base + i;
        acc += vec4<f32>(part[j], part[j + 1u], part[j + 2u], part[j + 3u]);
        acc2 += vec4<f32>(part[j + 4u], part[j + 5u], part[j + 6u], part[j + 7u]);
    }
    let a = acc + acc2;
    return (a.x + a.y) + (a.z + a.w);
//#endif
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
//#if SUBGROUP
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) n_sg: u32,
//#endif
) {
//#if SUBGROUP
    let ln = Lanes(lid, sg_lane, sg_id, n_sg);
//#else
    let ln = Lanes(lid, 0u, 0u, 1u);
//#endif
    let row = wid.x + wid.y * nwg.x;
    // `row` is uniform over the workgroup, so this early exit keeps the barriers uniform.
    if (row >= p.rows) {
        return;
    }
    let ob = p.o_off + row * p.dim;
    let hb = p.h_off + row * p.dim;
    var so = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        let v = o[ob + i];
        so += v * v;
    }
    let tot_o = row_total(so, 0u, ln);
    let ro = inverseSqrt(tot_o / f32(p.dim) + p.eps);
    var sh = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        let v = (h[hb + i] + o[ob + i] * ro * w[p.w_off + i]) * p.scale;
        h[hb + i] = v;
        sh += v * v;
    }
    if (p.next == 0u) {
        return;
    }
    let tot_h = row_total(sh, 64u, ln);
    let rh = inverseSqrt(tot_h / f32(p.dim) + p.eps);
    let xb = p.xn_off + row * p.dim;
    for (var i = lid; i < p.dim; i += WG) {
        xn[xb + i] = h[hb + i] * rh * w2[p.w2_off + i];
    }
}

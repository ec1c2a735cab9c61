//! The fused decoder-layer kernels against CPU references: multi-matrix and epilogue matvecs
//! (q/k/v, gated GELU, GELU × per-layer input), the attention input (per-head norms, RoPE and
//! the KV-ring write) and the residual add with post-norm, scale and next pre-norm. Both kernel
//! paths; awkward shapes (rows not a multiple of 32, widths not a multiple of 64, ring wrap).

use crate::common;

use common::{Rng, assert_close, paths};
use gemma_wgpu::gpu::ops::{
    AttnInput, KvTarget, KvWindows, MATVEC_MAX_ROWS, attention_input, fusable, linear,
    linear_gelu_gate, linear_gelu_mul, linear_multi, residual_norm,
};
use gemma_wgpu::gpu::{
    GpuContext, GpuTensor, HostMatrix, Matrix, ScaleDType, WeightFormat, reference,
};
use gemma_wgpu::quant;

struct Host {
    m: Matrix,
    w: Vec<f32>,
}

fn bytes16(v: &[f32], bf: bool) -> Vec<u8> {
    v.iter()
        .flat_map(|&s| {
            if bf {
                half::bf16::from_f32(s).to_le_bytes()
            } else {
                half::f16::from_f32(s).to_le_bytes()
            }
        })
        .collect()
}

fn make(ctx: &GpuContext, rng: &mut Rng, rows: usize, cols: usize, f: WeightFormat) -> Host {
    let w = rng.normals(rows * cols, 0.5);
    let (data, scales, biases) = match f {
        WeightFormat::F32 => (bytemuck::cast_slice(&w).to_vec(), None, None),
        WeightFormat::F16 => (bytes16(&w, false), None, None),
        WeightFormat::BF16 => (bytes16(&w, true), None, None),
        WeightFormat::Affine {
            bits,
            group,
            scales,
        } => {
            let (p, s, b) = quant::quantize_affine(&w, rows, cols, bits, group as usize);
            let sb = |v: &[f32]| match scales {
                ScaleDType::F32 => bytemuck::cast_slice(v).to_vec(),
                ScaleDType::F16 => bytes16(v, false),
                ScaleDType::BF16 => bytes16(v, true),
            };
            (
                bytemuck::cast_slice(&p).to_vec(),
                Some(sb(&s)),
                Some(sb(&b)),
            )
        }
    };
    let hm = HostMatrix {
        rows,
        cols,
        format: f,
        data: &data,
        scales: scales.as_deref(),
        biases: biases.as_deref(),
    };
    let dq = reference::host_matrix_f32(&hm).unwrap();
    Host {
        m: Matrix::upload(ctx, "w", &hm, None).unwrap(),
        w: dq,
    }
}

fn q(bits: u32, group: u32) -> WeightFormat {
    WeightFormat::Affine {
        bits,
        group,
        scales: ScaleDType::BF16,
    }
}

fn formats() -> Vec<(WeightFormat, usize)> {
    // (format, cols): K = 160 and 96 are not multiples of 64.
    vec![
        (q(4, 32), 160),
        (q(8, 64), 192),
        (q(3, 32), 96),
        (WeightFormat::BF16, 72),
        (WeightFormat::F16, 40),
        (WeightFormat::F32, 30),
    ]
}

fn atol(k: usize) -> f32 {
    1e-4 * (k as f32).sqrt()
}

fn tensor(ctx: &GpuContext, v: &[f32], off: usize, shape: &[usize]) -> (GpuTensor, GpuTensor) {
    let mut all = vec![-7.0f32; off];
    all.extend_from_slice(v);
    all.extend_from_slice(&[-7.0; 3]);
    let t = GpuTensor::from_f32(ctx, &[all.len()], &all).unwrap();
    let view = t.view(off, shape);
    (t, view)
}

#[test]
fn linear_multi_matches_concatenated_reference() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(11);
        for (f, cols) in formats() {
            // q/k/v-like: 40 + 17 + 17 rows (boundaries inside a 32-row workgroup).
            let mats: Vec<Host> = [40, 17, 17]
                .iter()
                .map(|&r| make(&ctx, &mut rng, r, cols, f))
                .collect();
            for nmat in [2, 3] {
                let ms: Vec<&Matrix> = mats[..nmat].iter().map(|h| &h.m).collect();
                assert!(fusable(&ctx, &ms), "{path} {f:?} should fuse");
                let total: usize = ms.iter().map(|m| m.rows).sum();
                for batch in [1, 3, 17] {
                    let x = rng.normals(batch * cols, 1.0);
                    let (_xa, xt) = tensor(&ctx, &x, 4, &[batch, cols]);
                    let (ya, yt) = tensor(&ctx, &vec![0.0; batch * total], 5, &[batch, total]);
                    let mut rec = ctx.recorder();
                    linear_multi(&mut rec, &ms, &xt, &yt).unwrap();
                    let st = rec.stats();
                    rec.finish().unwrap();
                    if batch <= MATVEC_MAX_ROWS {
                        assert_eq!(st.dispatches, 1, "{path} {f:?}: one fused dispatch");
                    }
                    let mut want = vec![0f32; batch * total];
                    let mut col0 = 0;
                    for h in &mats[..nmat] {
                        let r = reference::linear_ref(&h.w, h.m.rows, cols, &x, batch);
                        for b in 0..batch {
                            want[b * total + col0..b * total + col0 + h.m.rows]
                                .copy_from_slice(&r[b * h.m.rows..(b + 1) * h.m.rows]);
                        }
                        col0 += h.m.rows;
                    }
                    let all = ya.to_f32(&ctx).unwrap();
                    let what = format!("{path} {f:?} nmat {nmat} batch {batch}");
                    assert_close(&what, &all[5..5 + batch * total], &want, atol(cols), 1e-5);
                    assert!(
                        all[..5].iter().all(|&v| v == -7.0),
                        "{what}: wrote before y"
                    );
                    assert!(
                        all[5 + batch * total..].iter().all(|&v| v == -7.0),
                        "{what}: wrote after y"
                    );
                }
            }
        }
    }
}

#[test]
fn mixed_formats_fall_back_to_separate_dispatches() {
    let Some(ctx) = common::gpu() else {
        return;
    };
    let mut rng = Rng::new(5);
    let a = make(&ctx, &mut rng, 33, 64, q(4, 32));
    let b = make(&ctx, &mut rng, 9, 64, q(8, 32));
    assert!(!fusable(&ctx, &[&a.m, &b.m]));
    let x = rng.normals(64, 1.0);
    let (_xa, xt) = tensor(&ctx, &x, 0, &[64]);
    let (ya, yt) = tensor(&ctx, &[0.0; 42], 0, &[42]);
    let mut rec = ctx.recorder();
    linear_multi(&mut rec, &[&a.m, &b.m], &xt, &yt).unwrap();
    assert_eq!(rec.stats().dispatches, 2);
    rec.finish().unwrap();
    let mut want = reference::linear_ref(&a.w, 33, 64, &x, 1);
    want.extend(reference::linear_ref(&b.w, 9, 64, &x, 1));
    assert_close(
        "mixed",
        &ya.to_f32(&ctx).unwrap()[..42],
        &want,
        atol(64),
        1e-5,
    );
}

#[test]
fn gelu_gate_and_gelu_mul_epilogues() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(23);
        for (f, cols) in formats() {
            let rows = 45;
            let g = make(&ctx, &mut rng, rows, cols, f);
            let u = make(&ctx, &mut rng, rows, cols, f);
            for batch in [1, 2, 17] {
                let x = rng.normals(batch * cols, 1.0);
                let (_xa, xt) = tensor(&ctx, &x, 8, &[batch, cols]);
                let (ya, yt) = tensor(&ctx, &vec![0.0; batch * rows], 3, &[batch, rows]);
                let scratch =
                    GpuTensor::from_f32(&ctx, &[batch, rows], &vec![0.0; batch * rows]).unwrap();
                let mut rec = ctx.recorder();
                linear_gelu_gate(&mut rec, &g.m, &u.m, &xt, &yt, &scratch).unwrap();
                let st = rec.stats();
                rec.finish().unwrap();
                if batch <= MATVEC_MAX_ROWS {
                    assert_eq!(st.dispatches, 1);
                }
                let gr = reference::linear_ref(&g.w, rows, cols, &x, batch);
                let ur = reference::linear_ref(&u.w, rows, cols, &x, batch);
                let want: Vec<f32> = gr
                    .iter()
                    .zip(&ur)
                    .map(|(&a, &b)| reference::gelu_tanh(a) * b)
                    .collect();
                let what = format!("{path} {f:?} gelu gate batch {batch}");
                let all = ya.to_f32(&ctx).unwrap();
                assert_close(
                    &what,
                    &all[3..3 + batch * rows],
                    &want,
                    2.0 * atol(cols),
                    1e-4,
                );

                // gelu(W x) * e, e rows placed 100 elements apart at offset 6
                let stride = 100;
                let e = rng.normals(6 + (batch - 1) * stride + rows, 1.0);
                let et_all = GpuTensor::from_f32(&ctx, &[e.len()], &e).unwrap();
                let et = et_all.view(6, &[(batch - 1) * stride + rows]);
                let mut rec = ctx.recorder();
                linear_gelu_mul(&mut rec, &g.m, &xt, &et, stride, &yt).unwrap();
                rec.finish().unwrap();
                let want: Vec<f32> = (0..batch * rows)
                    .map(|i| {
                        let (b, r) = (i / rows, i % rows);
                        reference::gelu_tanh(gr[i]) * e[6 + b * stride + r]
                    })
                    .collect();
                let what = format!("{path} {f:?} gelu mul batch {batch}");
                let all = ya.to_f32(&ctx).unwrap();
                assert_close(
                    &what,
                    &all[3..3 + batch * rows],
                    &want,
                    2.0 * atol(cols),
                    1e-4,
                );
            }
        }
    }
}

/// Runs `f` (recording into `y`) and returns y's values.
fn run(
    ctx: &GpuContext,
    y: &GpuTensor,
    f: impl FnOnce(&mut gemma_wgpu::gpu::Recorder),
) -> Vec<f32> {
    let mut rec = ctx.recorder();
    f(&mut rec);
    rec.finish().unwrap();
    y.to_f32(ctx).unwrap()
}

#[test]
fn batched_matvec_rows_are_bit_identical_to_single_rows() {
    // A batched decode must give every sequence exactly what decoding it alone gives: each row
    // of a batch of up to MATVEC_MAX_ROWS rows equals, bit for bit, the same row run alone, for
    // the plain, multi-matrix and both epilogue forms.
    for (path, ctx) in paths() {
        let mut rng = Rng::new(31);
        for (f, cols) in formats() {
            let mats: Vec<Host> = [45, 45, 17]
                .iter()
                .map(|&r| make(&ctx, &mut rng, r, cols, f))
                .collect();
            let (g, u) = (&mats[0].m, &mats[1].m);
            let (rows, total) = (g.rows, 45 + 45 + 17);
            let ms: Vec<&Matrix> = mats.iter().map(|h| &h.m).collect();
            for batch in [5, MATVEC_MAX_ROWS] {
                let x = rng.normals(batch * cols, 1.0);
                let (_xa, xt) = tensor(&ctx, &x, 4, &[batch, cols]);
                let stride = rows + 3;
                let e = rng.normals(batch * stride, 1.0);
                let et = GpuTensor::from_f32(&ctx, &[e.len()], &e).unwrap();
                let ym =
                    GpuTensor::from_f32(&ctx, &[batch, total], &vec![0.0; batch * total]).unwrap();
                let yr =
                    || GpuTensor::from_f32(&ctx, &[batch, rows], &vec![0.0; batch * rows]).unwrap();
                let (yl, yg, ye, sc) = (yr(), yr(), yr(), yr());
                let all_multi = run(&ctx, &ym, |r| linear_multi(r, &ms, &xt, &ym).unwrap());
                let all_lin = run(&ctx, &yl, |r| linear(r, g, &xt, &yl).unwrap());
                let all_gate = run(&ctx, &yg, |r| {
                    linear_gelu_gate(r, g, u, &xt, &yg, &sc).unwrap()
                });
                let all_mul = run(&ctx, &ye, |r| {
                    linear_gelu_mul(r, g, &xt, &et, stride, &ye).unwrap()
                });
                for b in 0..batch {
                    let x1 = xt.rows(b, 1);
                    let what = format!("{path} {f:?} batch {batch} row {b}");
                    let y1 = ym.rows(0, 1);
                    let one = run(&ctx, &y1, |r| linear_multi(r, &ms, &x1, &y1).unwrap());
                    assert!(
                        bits_eq(&one, &all_multi[b * total..(b + 1) * total]),
                        "{what}: linear_multi"
                    );
                    let y1 = yl.rows(0, 1);
                    let one = run(&ctx, &y1, |r| linear(r, g, &x1, &y1).unwrap());
                    assert!(
                        bits_eq(&one, &all_lin[b * rows..(b + 1) * rows]),
                        "{what}: linear"
                    );
                    let (y1, s1) = (yg.rows(0, 1), sc.rows(0, 1));
                    let one = run(&ctx, &y1, |r| {
                        linear_gelu_gate(r, g, u, &x1, &y1, &s1).unwrap()
                    });
                    assert!(
                        bits_eq(&one, &all_gate[b * rows..(b + 1) * rows]),
                        "{what}: gelu gate"
                    );
                    let y1 = ye.rows(0, 1);
                    let e1 = et.view(b * stride, &[rows]);
                    let one = run(&ctx, &y1, |r| {
                        linear_gelu_mul(r, g, &x1, &e1, stride, &y1).unwrap()
                    });
                    assert!(
                        bits_eq(&one, &all_mul[b * rows..(b + 1) * rows]),
                        "{what}: gelu mul"
                    );
                }
            }
        }
    }
}

fn bits_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// CPU reference of the attention input (see `ops::attention_input`).
#[allow(clippy::too_many_arguments)]
fn attn_in_ref(
    qkv: &[f32],
    tokens: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    pos0: usize,
    qn: &[f32],
    kn: &[f32],
    freq: &[f32],
    kv: bool,
    v_from_k: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let row = nh * hd
        + if !kv {
            0
        } else if v_from_k {
            nkv * hd
        } else {
            2 * nkv * hd
        };
    let eps = 1e-6;
    let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
    let pos: Vec<u32> = (0..tokens).map(|t| (pos0 + t) as u32).collect();
    for t in 0..tokens {
        let r = &qkv[t * row..(t + 1) * row];
        let qh = reference::rms_norm_ref(&r[..nh * hd], Some(qn), hd, eps);
        q.extend(reference::rope_ref(&qh, nh, hd, &pos[t..t + 1], freq));
        if kv {
            let kraw = &r[nh * hd..nh * hd + nkv * hd];
            let kh = reference::rms_norm_ref(kraw, Some(kn), hd, eps);
            k.extend(reference::rope_ref(&kh, nkv, hd, &pos[t..t + 1], freq));
            let vraw = if v_from_k {
                kraw
            } else {
                &r[nh * hd + nkv * hd..]
            };
            v.extend(reference::rms_norm_ref(vraw, None, hd, eps));
        }
    }
    (q, k, v)
}

#[test]
fn attention_input_norms_rotates_and_writes_the_ring() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(31);
        // (tokens, nh, nkv, hd, pos0, cap, kv, v_from_k)
        let cases = [
            (1, 3, 1, 12, 5, 7, true, false),
            (3, 2, 2, 130, 5, 7, true, false), // ring wrap (slots 5, 6, 0); hd/2 > 64
            (2, 4, 1, 16, 1000, 2048, true, true),
            (2, 3, 1, 12, 9, 16, false, false),
        ];
        for (tokens, nh, nkv, hd, pos0, cap, kv, v_from_k) in cases {
            let row = nh * hd
                + if !kv {
                    0
                } else if v_from_k {
                    nkv * hd
                } else {
                    2 * nkv * hd
                };
            let qkv = rng.normals(tokens * row, 2.0);
            let qn = rng.normals(hd, 1.0);
            let kn = rng.normals(hd, 1.0);
            let mut freq: Vec<f32> = (0..hd / 2)
                .map(|j| 10000f32.powf(-2.0 * j as f32 / hd as f32))
                .collect();
            freq[hd / 2 - 1] = 0.0; // proportional RoPE: unrotated pairs
            let (_qa, qkv_t) = tensor(&ctx, &qkv, 3, &[tokens, row]);
            let (qo_a, qo) = tensor(&ctx, &vec![0.0; tokens * nh * hd], 1, &[tokens, nh, hd]);
            let (_qn_a, qn_t) = tensor(&ctx, &qn, 2, &[hd]);
            let (_kn_a, kn_t) = tensor(&ctx, &kn, 0, &[hd]);
            let (_f_a, f_t) = tensor(&ctx, &freq, 0, &[hd / 2]);
            let kc =
                GpuTensor::from_f32(&ctx, &[nkv, cap, hd], &vec![-1.0; nkv * cap * hd]).unwrap();
            let vc =
                GpuTensor::from_f32(&ctx, &[nkv, cap, hd], &vec![-1.0; nkv * cap * hd]).unwrap();
            let mut rec = ctx.recorder();
            attention_input(
                &mut rec,
                &AttnInput {
                    qkv: &qkv_t,
                    q_out: &qo,
                    q_norm: &qn_t,
                    inv_freq: &f_t,
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: hd,
                    pos0,
                    eps: 1e-6,
                    kv: kv.then_some(KvTarget {
                        k_norm: &kn_t,
                        store: KvWindows::whole(&kc, &vc, cap as u32),
                        cap,
                        v_from_k,
                    }),
                },
            )
            .unwrap();
            rec.finish().unwrap();
            let (wq, wk, wv) = attn_in_ref(
                &qkv, tokens, nh, nkv, hd, pos0, &qn, &kn, &freq, kv, v_from_k,
            );
            let what = format!("{path} tokens {tokens} nh {nh} nkv {nkv} hd {hd} pos0 {pos0}");
            let qa = qo_a.to_f32(&ctx).unwrap();
            assert_close(&format!("{what} q"), &qa[1..1 + wq.len()], &wq, 2e-5, 1e-4);
            let (kg, vg) = (kc.to_f32(&ctx).unwrap(), vc.to_f32(&ctx).unwrap());
            let mut written = vec![false; nkv * cap];
            if kv {
                for t in 0..tokens {
                    let slot = (pos0 + t) % cap;
                    for g in 0..nkv {
                        written[g * cap + slot] = true;
                        let at = (g * cap + slot) * hd;
                        let src = (t * nkv + g) * hd;
                        assert_close(
                            &format!("{what} k t{t} g{g}"),
                            &kg[at..at + hd],
                            &wk[src..src + hd],
                            2e-5,
                            1e-4,
                        );
                        assert_close(
                            &format!("{what} v t{t} g{g}"),
                            &vg[at..at + hd],
                            &wv[src..src + hd],
                            2e-5,
                            1e-4,
                        );
                    }
                }
            }
            for (s, &w) in written.iter().enumerate() {
                if !w {
                    assert!(
                        kg[s * hd..(s + 1) * hd].iter().all(|&v| v == -1.0)
                            && vg[s * hd..(s + 1) * hd].iter().all(|&v| v == -1.0),
                        "{what}: slot {s} should be untouched"
                    );
                }
            }
        }
    }
}

#[test]
fn residual_norm_adds_scales_and_normalises() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(41);
        for (rows, dim) in [(1, 300), (3, 1536), (2, 7)] {
            for (scale, next) in [(1.0f32, true), (0.7, true), (0.5, false)] {
                let h = rng.normals(rows * dim, 3.0);
                let o = rng.normals(rows * dim, 0.2);
                let w = rng.normals(dim, 1.0);
                let w2 = rng.normals(dim, 1.0);
                let eps = 1e-6;
                let (ha, ht) = tensor(&ctx, &h, 2, &[rows, dim]);
                let (_oa, ot) = tensor(&ctx, &o, 1, &[rows, dim]);
                let (_wa, wt) = tensor(&ctx, &w, 3, &[dim]);
                let (_w2a, w2t) = tensor(&ctx, &w2, 0, &[dim]);
                let (xa, xt) = tensor(&ctx, &vec![0.0; rows * dim], 4, &[rows, dim]);
                let mut rec = ctx.recorder();
                residual_norm(
                    &mut rec,
                    &ht,
                    &ot,
                    &wt,
                    scale,
                    next.then_some((&w2t, &xt)),
                    eps,
                )
                .unwrap();
                rec.finish().unwrap();
                let on = reference::rms_norm_ref(&o, Some(&w), dim, eps);
                let hw: Vec<f32> = h.iter().zip(&on).map(|(&a, &b)| (a + b) * scale).collect();
                let what = format!("{path} rows {rows} dim {dim} scale {scale}");
                let hg = ha.to_f32(&ctx).unwrap();
                assert_close(
                    &format!("{what} h"),
                    &hg[2..2 + rows * dim],
                    &hw,
                    1e-5,
                    1e-5,
                );
                let xg = xa.to_f32(&ctx).unwrap();
                if next {
                    let xw = reference::rms_norm_ref(&hw, Some(&w2), dim, eps);
                    assert_close(
                        &format!("{what} xn"),
                        &xg[4..4 + rows * dim],
                        &xw,
                        1e-5,
                        1e-5,
                    );
                } else {
                    assert!(
                        xg[4..4 + rows * dim].iter().all(|&v| v == 0.0),
                        "{what}: xn written"
                    );
                }
            }
        }
    }
}

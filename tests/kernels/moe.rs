//! The mixture-of-experts kernels against their CPU references: routing (softmax, top-k with
//! ties, renormalise, per-expert scale), the decode gathered-expert matvec and the prefill
//! grouped GEMM (routing table, tiles, combine) in every weight format, both weight layouts
//! (separate gate/up stacks and HF's gate_up halves), awkward shapes (experts not a multiple of
//! the workgroup, k = 1, k = E, widths not a multiple of 64), matrices over several windows.

use crate::common;

use common::{Rng, assert_close, paths};
use gemma_wgpu::gpu::ops::moe::{
    self, ExpertProj, PrefillScratch, RouteLayout, experts_decode, experts_prefill, route,
    route_sort,
};
use gemma_wgpu::gpu::{
    DType, GpuContext, GpuError, GpuTensor, Matrix, ScaleDType, WeightFormat, reference,
};

/// The MoE kernels have one specialisation for both paths (no subgroup operations, no f16
/// arithmetic), so the format sweeps run on one context (the first path); the routing, table,
/// window and chain tests run on both.
fn one_path() -> Vec<(&'static str, GpuContext)> {
    paths().into_iter().take(1).collect()
}

use crate::host::{Host, scale_bytes};

fn make(rng: &mut Rng, rows: usize, cols: usize, format: WeightFormat) -> Host {
    crate::host::make(rng, rows, cols, format, 0.15)
}

fn affine(bits: u32, group: u32, scales: ScaleDType) -> WeightFormat {
    WeightFormat::Affine {
        bits,
        group,
        scales,
    }
}

/// (format, hidden H, expert width I): widths not a multiple of 64 where the format allows.
fn format_cases() -> Vec<(WeightFormat, usize, usize)> {
    vec![
        (WeightFormat::F32, 50, 37),
        (WeightFormat::F16, 72, 45),
        (WeightFormat::BF16, 33, 70),
        (affine(4, 64, ScaleDType::BF16), 192, 64),
        (affine(8, 32, ScaleDType::F16), 96, 160),
        (affine(3, 32, ScaleDType::F32), 160, 96),
        (affine(2, 128, ScaleDType::F16), 128, 256),
        (affine(5, 64, ScaleDType::BF16), 64, 128),
        (affine(6, 32, ScaleDType::BF16), 32, 96),
        (affine(4, 32, ScaleDType::F16), 224, 32),
    ]
}

/// One expert block on the GPU with its dequantized reference weights.
struct Block {
    /// HF layout: one gate_up matrix (gate rows, then up rows per expert); else separate.
    combined: bool,
    gate: Matrix,
    up: Option<Matrix>,
    down: Matrix,
    gate_w: Vec<f32>,
    up_w: Vec<f32>,
    down_w: Vec<f32>,
    experts: usize,
    hidden: usize,
    inter: usize,
}

impl Block {
    #[allow(clippy::too_many_arguments)]
    fn new(
        ctx: &GpuContext,
        rng: &mut Rng,
        format: WeightFormat,
        experts: usize,
        hidden: usize,
        inter: usize,
        combined: bool,
        window_experts: Option<usize>,
    ) -> Block {
        let win = |rpe: usize| window_experts.map(|n| n * rpe);
        let down_h = make(rng, experts * hidden, inter, format);
        let down =
            Matrix::upload_stacked(ctx, "down", &down_h.view(), hidden, win(hidden)).unwrap();
        if combined {
            let gu = make(rng, experts * 2 * inter, hidden, format);
            let gate =
                Matrix::upload_stacked(ctx, "gate_up", &gu.view(), 2 * inter, win(2 * inter))
                    .unwrap();
            let w = gu.dequant();
            Block {
                combined,
                gate,
                up: None,
                down,
                gate_w: w.clone(),
                up_w: w,
                down_w: down_h.dequant(),
                experts,
                hidden,
                inter,
            }
        } else {
            let g = make(rng, experts * inter, hidden, format);
            let u = make(rng, experts * inter, hidden, format);
            let gate = Matrix::upload_stacked(ctx, "gate", &g.view(), inter, win(inter)).unwrap();
            let up = Matrix::upload_stacked(ctx, "up", &u.view(), inter, win(inter)).unwrap();
            Block {
                combined,
                gate,
                up: Some(up),
                down,
                gate_w: g.dequant(),
                up_w: u.dequant(),
                down_w: down_h.dequant(),
                experts,
                hidden,
                inter,
            }
        }
    }

    fn projs(&self) -> (ExpertProj<'_>, ExpertProj<'_>, ExpertProj<'_>) {
        let down = ExpertProj::stacked(&self.down, self.experts).unwrap();
        if self.combined {
            let (g, u) = ExpertProj::gate_up_halves(&self.gate, self.experts).unwrap();
            (g, u, down)
        } else {
            (
                ExpertProj::stacked(&self.gate, self.experts).unwrap(),
                ExpertProj::stacked(self.up.as_ref().unwrap(), self.experts).unwrap(),
                down,
            )
        }
    }

    fn reference(&self, x: &[f32], ids: &[u32], weights: &[f32], k: usize) -> Vec<f32> {
        let (gs, us, uo) = if self.combined {
            (2 * self.inter, 2 * self.inter, self.inter)
        } else {
            (self.inter, self.inter, 0)
        };
        let w = reference::ExpertsRef {
            gate: &self.gate_w,
            gate_stride: gs,
            gate_off: 0,
            up: &self.up_w,
            up_stride: us,
            up_off: uo,
            down: &self.down_w,
            hidden: self.hidden,
            inter: self.inter,
        };
        reference::moe_experts_ref(&w, x, ids, weights, k)
    }
}

/// Random routing: k distinct experts per token, weights in (0, 1).
fn random_routing(rng: &mut Rng, tokens: usize, experts: usize, k: usize) -> (Vec<u32>, Vec<f32>) {
    let mut ids = Vec::new();
    let mut w = Vec::new();
    for _ in 0..tokens {
        let mut all: Vec<u32> = (0..experts as u32).collect();
        for i in 0..k {
            let j = i + rng.below((experts - i) as u64) as usize;
            all.swap(i, j);
        }
        ids.extend_from_slice(&all[..k]);
        w.extend((0..k).map(|_| 0.05 + rng.uniform()));
    }
    (ids, w)
}

/// A u32 tensor holding `v` after `pad` sentinel elements (tests offsets).
fn u32_at(ctx: &GpuContext, v: &[u32], pad: usize) -> GpuTensor {
    let mut all = vec![0xdead_beefu32; pad];
    all.extend_from_slice(v);
    GpuTensor::from_u32(ctx, &[all.len()], &all)
        .unwrap()
        .view(pad, &[v.len()])
}

/// An f32 tensor holding `v` after `pad` sentinel elements.
fn f32_at(ctx: &GpuContext, v: &[f32], pad: usize) -> GpuTensor {
    let mut all = vec![-7.0f32; pad];
    all.extend_from_slice(v);
    GpuTensor::from_f32(ctx, &[all.len()], &all)
        .unwrap()
        .view(pad, &[v.len()])
}

/// atol of an expert block's output: f32 accumulation over H then I terms.
fn atol(hidden: usize, inter: usize) -> f32 {
    2e-5 * ((hidden + inter) as f32).sqrt()
}

fn run_decode(
    ctx: &GpuContext,
    b: &Block,
    x: &[f32],
    ids: &[u32],
    weights: &[f32],
) -> Result<Vec<f32>, GpuError> {
    let k = ids.len();
    let (g, u, d) = b.projs();
    let xt = f32_at(ctx, x, 3);
    let idt = u32_at(ctx, ids, 1);
    let wt = f32_at(ctx, weights, 2);
    let h = GpuTensor::zeros(ctx, &[k, b.inter], DType::F32)?;
    let y = GpuTensor::from_f32(ctx, &[b.hidden], &vec![123.0; b.hidden])?;
    let mut rec = ctx.recorder();
    experts_decode(&mut rec, &xt, &g, &u, &d, &idt, &wt, &h, &y)?;
    assert_eq!(
        rec.stats().dispatches as usize,
        moe::decode_dispatches(&g, &d)
    );
    rec.finish()?;
    y.to_f32(ctx)
}

fn run_prefill(
    ctx: &GpuContext,
    b: &Block,
    x: &[f32],
    ids: &[u32],
    weights: &[f32],
    k: usize,
) -> Result<Vec<f32>, GpuError> {
    let tokens = x.len() / b.hidden;
    let (g, u, d) = b.projs();
    let xt = f32_at(ctx, x, 4).reshape(&[tokens, b.hidden]);
    let idt = u32_at(ctx, ids, 3);
    let wt = f32_at(ctx, weights, 1);
    let scratch = PrefillScratch::new(ctx, tokens, b.experts, k, b.hidden, b.inter)?;
    let y = GpuTensor::from_f32(ctx, &[tokens, b.hidden], &vec![55.0; tokens * b.hidden])?;
    let mut rec = ctx.recorder();
    experts_prefill(&mut rec, &xt, &g, &u, &d, &idt, &wt, &scratch, &y)?;
    assert_eq!(
        rec.stats().dispatches as usize,
        moe::prefill_dispatches(&g, &d)
    );
    rec.finish()?;
    y.to_f32(ctx)
}

#[test]
fn moe_route_matches_reference() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(11);
        // (tokens, experts, k, ties): experts not a multiple of the workgroup, k = 1, k = E
        let cases = [
            (1usize, 6usize, 1usize, false),
            (7, 13, 5, false),
            (37, 130, 8, false),
            (3, 256, 256, false),
            (5, 6, 6, true),
            (9, 13, 4, true),
            (4, 130, 8, true),
            (2, 1, 1, false),
            (70, 128, 8, false),
        ];
        for (tokens, experts, k, ties) in cases {
            let logits: Vec<f32> = (0..tokens * experts)
                .map(|_| {
                    if ties {
                        // few distinct values: ties inside and across the top-k boundary
                        rng.below(3) as f32 * 0.5
                    } else {
                        rng.normal() * 2.0
                    }
                })
                .collect();
            let scale: Vec<f32> = (0..experts).map(|_| 0.5 + rng.uniform()).collect();
            let lt = f32_at(&ctx, &logits, 5);
            let st = f32_at(&ctx, &scale, 2);
            let ids = u32_at(&ctx, &vec![0; tokens * k], 1);
            let w = f32_at(&ctx, &vec![0.0; tokens * k], 3);
            let mut rec = ctx.recorder();
            route(&mut rec, &lt, &st, &ids, &w, tokens, experts, k).unwrap();
            assert_eq!(rec.stats().dispatches, 1);
            rec.finish().unwrap();
            let (want_ids, want_w) = reference::moe_route_ref(&logits, &scale, tokens, experts, k);
            let what = format!("{path} route t {tokens} e {experts} k {k} ties {ties}");
            assert_eq!(ids.to_u32(&ctx).unwrap(), want_ids, "{what}: ids");
            assert_close(&what, &w.to_f32(&ctx).unwrap(), &want_w, 1e-6, 1e-5);
        }
    }
}

#[test]
fn moe_route_rejects_bad_shapes() {
    let Some((_, ctx)) = paths().into_iter().next() else {
        return;
    };
    let lt = GpuTensor::zeros(&ctx, &[2 * 300], DType::F32).unwrap();
    let st = GpuTensor::zeros(&ctx, &[300], DType::F32).unwrap();
    let ids = GpuTensor::zeros(&ctx, &[2 * 8], DType::U32).unwrap();
    let w = GpuTensor::zeros(&ctx, &[2 * 8], DType::F32).unwrap();
    let mut rec = ctx.recorder();
    // more experts than the kernel handles
    assert!(route(&mut rec, &lt, &st, &ids, &w, 2, 300, 8).is_err());
    // k > E, k = 0, wrong lengths, ids as f32
    let lt = GpuTensor::zeros(&ctx, &[2 * 6], DType::F32).unwrap();
    let st = GpuTensor::zeros(&ctx, &[6], DType::F32).unwrap();
    assert!(route(&mut rec, &lt, &st, &ids, &w, 2, 6, 8).is_err());
    assert!(route(&mut rec, &lt, &st, &ids, &w, 2, 6, 0).is_err());
    assert!(route(&mut rec, &lt, &st, &ids, &w, 2, 6, 4).is_err());
    assert!(route(&mut rec, &lt, &st, &w, &ids, 2, 6, 8).is_err());
    assert_eq!(rec.stats().dispatches, 0);
}

#[test]
fn moe_decode_every_format_matches_reference() {
    for (path, ctx) in one_path() {
        let mut rng = Rng::new(12);
        for (i, (format, hidden, inter)) in format_cases().into_iter().enumerate() {
            let experts = [6usize, 13, 130][i % 3];
            let combined = i % 2 == 0;
            let b = Block::new(
                &ctx, &mut rng, format, experts, hidden, inter, combined, None,
            );
            for k in [1, 8.min(experts), experts.min(13)] {
                let x = rng.normals(hidden, 1.0);
                let (ids, w) = random_routing(&mut rng, 1, experts, k);
                let got = run_decode(&ctx, &b, &x, &ids, &w).unwrap();
                let want = b.reference(&x, &ids, &w, k);
                let what = format!(
                    "{path} decode {format:?} E {experts} k {k} H {hidden} I {inter} combined \
                     {combined}"
                );
                assert_close(&what, &got, &want, atol(hidden, inter), 1e-4);
            }
        }
    }
}

#[test]
fn moe_prefill_every_format_matches_reference_and_decode() {
    for (path, ctx) in one_path() {
        let mut rng = Rng::new(13);
        for (i, (format, hidden, inter)) in format_cases().into_iter().enumerate() {
            let experts = [13usize, 6, 130][i % 3];
            let combined = i % 2 == 1;
            let b = Block::new(
                &ctx, &mut rng, format, experts, hidden, inter, combined, None,
            );
            let tokens = [1usize, 7, 37][i % 3];
            let k = [4usize, 1, 8, 6][i % 4].min(experts);
            let x = rng.normals(tokens * hidden, 1.0);
            let (ids, w) = random_routing(&mut rng, tokens, experts, k);
            let got = run_prefill(&ctx, &b, &x, &ids, &w, k).unwrap();
            let want = b.reference(&x, &ids, &w, k);
            let what = format!(
                "{path} prefill {format:?} T {tokens} E {experts} k {k} H {hidden} I {inter} \
                 combined {combined}"
            );
            assert_close(&what, &got, &want, atol(hidden, inter), 1e-4);
            // the decode path on each token gives the same rows
            for t in [0, tokens - 1] {
                let dec = run_decode(
                    &ctx,
                    &b,
                    &x[t * hidden..(t + 1) * hidden],
                    &ids[t * k..(t + 1) * k],
                    &w[t * k..(t + 1) * k],
                )
                .unwrap();
                assert_close(
                    &format!("{what}: decode of token {t}"),
                    &got[t * hidden..(t + 1) * hidden],
                    &dec,
                    atol(hidden, inter),
                    1e-4,
                );
            }
        }
    }
}

/// Every expert used (k = E) and all tokens on one expert: the largest and the smallest number
/// of GEMM tiles, segments longer than one tile.
#[test]
fn moe_prefill_extreme_routings() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(14);
        let format = affine(4, 32, ScaleDType::BF16);
        let (experts, hidden, inter) = (6, 64, 96);
        let b = Block::new(&ctx, &mut rng, format, experts, hidden, inter, true, None);
        let tokens = 37;
        let x = rng.normals(tokens * hidden, 1.0);
        // k = E
        let (ids, w) = random_routing(&mut rng, tokens, experts, experts);
        let got = run_prefill(&ctx, &b, &x, &ids, &w, experts).unwrap();
        let want = b.reference(&x, &ids, &w, experts);
        assert_close(
            &format!("{path} k = E"),
            &got,
            &want,
            atol(hidden, inter),
            1e-4,
        );
        // every token on expert 4 (two full tiles and a partial one), k = 1
        let ids = vec![4u32; tokens];
        let w: Vec<f32> = (0..tokens).map(|_| rng.uniform()).collect();
        let got = run_prefill(&ctx, &b, &x, &ids, &w, 1).unwrap();
        let want = b.reference(&x, &ids, &w, 1);
        assert_close(
            &format!("{path} one expert"),
            &got,
            &want,
            atol(hidden, inter),
            1e-4,
        );
    }
}

/// The routing table: offsets, stable permutation and its inverse, the tile list; an id >= E is
/// left out.
#[test]
fn moe_route_sort_table() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(15);
        for (tokens, experts, k) in [
            (1usize, 6usize, 2usize),
            (37, 13, 5),
            (300, 130, 8),
            (70, 256, 4),
        ] {
            let mut ids: Vec<u32> = (0..tokens * k)
                .map(|_| rng.below(experts as u64) as u32)
                .collect();
            // a skewed expert (segments longer than a tile) and one invalid id
            for (i, id) in ids.iter_mut().enumerate() {
                if i % 3 == 0 {
                    *id = (experts - 1) as u32;
                }
            }
            if ids.len() > 3 {
                ids[2] = experts as u32 + 5;
            }
            let layout = RouteLayout::new(tokens, experts, k);
            let idt = u32_at(&ctx, &ids, 2);
            let rt_all = GpuTensor::zeros(&ctx, &[layout.len + 3], DType::U32).unwrap();
            let rt = rt_all.view(3, &[layout.len]);
            let mut rec = ctx.recorder();
            route_sort(&mut rec, &idt, &rt, &layout).unwrap();
            rec.finish().unwrap();
            let got = rt.to_u32(&ctx).unwrap();
            // CPU: stable sort of the valid slots by expert
            let mut order: Vec<usize> = (0..ids.len())
                .filter(|&s| (ids[s] as usize) < experts)
                .collect();
            order.sort_by_key(|&s| ids[s]);
            let mut offsets = vec![0u32; experts + 1];
            for &s in &order {
                offsets[ids[s] as usize + 1] += 1;
            }
            for e in 0..experts {
                offsets[e + 1] += offsets[e];
            }
            let what = format!("{path} route table t {tokens} e {experts} k {k}");
            assert_eq!(&got[..=experts], &offsets[..], "{what}: offsets");
            let mut tiles = Vec::new();
            for e in 0..experts {
                let mut s = offsets[e];
                while s < offsets[e + 1] {
                    tiles.extend([s, e as u32]);
                    s += moe::ROUTE_TILE as u32;
                }
            }
            assert!(tiles.len() / 2 <= layout.max_tiles, "{what}: tile bound");
            assert_eq!(got[experts + 1] as usize, tiles.len() / 2, "{what}: ntiles");
            assert_eq!(
                &got[experts + 2..experts + 2 + tiles.len()],
                &tiles[..],
                "{what}: tiles"
            );
            let perm: Vec<u32> = order.iter().map(|&s| s as u32).collect();
            assert_eq!(
                &got[layout.perm_off..layout.perm_off + perm.len()],
                &perm[..],
                "{what}: perm"
            );
            for (s, &id) in ids.iter().enumerate() {
                let inv = got[layout.inv_off + s];
                if (id as usize) < experts {
                    assert_eq!(perm[inv as usize] as usize, s, "{what}: inv of slot {s}");
                } else {
                    assert_eq!(inv, u32::MAX, "{what}: invalid id slot {s}");
                }
            }
        }
    }
}

/// Stacked matrices forced into several row windows (whole experts each): decode and prefill
/// still match the reference; a window size below one expert, or windows off the expert
/// boundaries, are typed errors.
#[test]
fn moe_over_several_windows() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(16);
        for (format, hidden, inter, combined) in [
            (WeightFormat::F16, 40, 24, true),
            (affine(4, 64, ScaleDType::F16), 128, 64, false),
            (affine(3, 32, ScaleDType::BF16), 64, 96, true),
        ] {
            let experts = 13;
            let b = Block::new(
                &ctx,
                &mut rng,
                format,
                experts,
                hidden,
                inter,
                combined,
                Some(3),
            );
            assert_eq!(b.gate.windows.len(), 5, "13 experts in windows of 3");
            assert_eq!(b.down.windows.len(), 5);
            let (g, _, d) = b.projs();
            assert_eq!(moe::decode_dispatches(&g, &d), 10);
            assert_eq!(moe::layer_dispatches(&g, &d, false), 11);
            assert_eq!(moe::layer_dispatches(&g, &d, true), 13);
            for k in [1usize, 5, 13] {
                let x = rng.normals(hidden, 1.0);
                let (ids, w) = random_routing(&mut rng, 1, experts, k);
                let got = run_decode(&ctx, &b, &x, &ids, &w).unwrap();
                let want = b.reference(&x, &ids, &w, k);
                let what = format!("{path} windowed decode {format:?} k {k}");
                assert_close(&what, &got, &want, atol(hidden, inter), 1e-4);
            }
            let tokens = 7;
            let k = 4;
            let x = rng.normals(tokens * hidden, 1.0);
            let (ids, w) = random_routing(&mut rng, tokens, experts, k);
            let got = run_prefill(&ctx, &b, &x, &ids, &w, k).unwrap();
            let want = b.reference(&x, &ids, &w, k);
            let what = format!("{path} windowed prefill {format:?}");
            assert_close(&what, &got, &want, atol(hidden, inter), 1e-4);
        }
        // errors
        let h = make(&mut rng, 6 * 10, 32, WeightFormat::F32);
        assert!(Matrix::upload_stacked(&ctx, "w", &h.view(), 10, Some(9)).is_err());
        assert!(Matrix::upload_stacked(&ctx, "w", &h.view(), 7, None).is_err());
        assert!(Matrix::upload_stacked(&ctx, "w", &h.view(), 0, None).is_err());
        let m = Matrix::upload_stacked(&ctx, "w", &h.view(), 10, Some(25)).unwrap();
        assert_eq!(
            m.windows.iter().map(|w| w.rows).collect::<Vec<_>>(),
            [20, 20, 20]
        );
        // a plain upload with windows of 16 rows cuts experts of 10 rows
        let plain = Matrix::upload(&ctx, "w", &h.view(), Some(16)).unwrap();
        let down_h = make(&mut rng, 6 * 32, 5, WeightFormat::F32);
        let down = Matrix::upload_stacked(&ctx, "d", &down_h.view(), 32, None).unwrap();
        let g = ExpertProj::stacked(&plain, 6).unwrap();
        let d = ExpertProj::stacked(&down, 6).unwrap();
        let x = GpuTensor::zeros(&ctx, &[32], DType::F32).unwrap();
        let ids = GpuTensor::zeros(&ctx, &[2], DType::U32).unwrap();
        let w = GpuTensor::zeros(&ctx, &[2], DType::F32).unwrap();
        let hs = GpuTensor::zeros(&ctx, &[2 * 10], DType::F32).unwrap();
        let y = GpuTensor::zeros(&ctx, &[32], DType::F32).unwrap();
        let mut rec = ctx.recorder();
        let e = experts_decode(&mut rec, &x, &g, &g, &d, &ids, &w, &hs, &y);
        assert!(e.is_err(), "windows off expert boundaries");
        let ok = Matrix::upload_stacked(&ctx, "w", &h.view(), 10, None).unwrap();
        let g = ExpertProj::stacked(&ok, 6).unwrap();
        // down of the wrong width (5 columns for I = 10)
        assert!(experts_decode(&mut rec, &x, &g, &g, &d, &ids, &w, &hs, &y).is_err());
        assert_eq!(rec.stats().dispatches, 0);
    }
}

/// Router on the GPU feeding the experts on the GPU: ids never leave the device; the result
/// equals the CPU route + experts; the decode output is bitwise deterministic.
#[test]
fn moe_route_then_experts_on_gpu() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(17);
        let format = affine(4, 64, ScaleDType::BF16);
        let (experts, hidden, inter, k) = (130, 128, 64, 8);
        let b = Block::new(&ctx, &mut rng, format, experts, hidden, inter, true, None);
        let (g, u, d) = b.projs();
        for tokens in [1usize, 7] {
            let x = rng.normals(tokens * hidden, 1.0);
            let logits = rng.normals(tokens * experts, 1.5);
            let scale: Vec<f32> = (0..experts).map(|_| 0.5 + rng.uniform()).collect();
            let xt = GpuTensor::from_f32(&ctx, &[tokens, hidden], &x).unwrap();
            let lt = GpuTensor::from_f32(&ctx, &[tokens, experts], &logits).unwrap();
            let st = GpuTensor::from_f32(&ctx, &[experts], &scale).unwrap();
            let ids = GpuTensor::zeros(&ctx, &[tokens, k], DType::U32).unwrap();
            let w = GpuTensor::zeros(&ctx, &[tokens, k], DType::F32).unwrap();
            let y = GpuTensor::zeros(&ctx, &[tokens, hidden], DType::F32).unwrap();
            let mut rec = ctx.recorder();
            route(&mut rec, &lt, &st, &ids, &w, tokens, experts, k).unwrap();
            if tokens == 1 {
                let h = GpuTensor::zeros(&ctx, &[k, inter], DType::F32).unwrap();
                experts_decode(&mut rec, &xt, &g, &u, &d, &ids, &w, &h, &y).unwrap();
                assert_eq!(
                    rec.stats().dispatches as usize,
                    moe::layer_dispatches(&g, &d, false)
                );
            } else {
                let s = PrefillScratch::new(&ctx, tokens, experts, k, hidden, inter).unwrap();
                experts_prefill(&mut rec, &xt, &g, &u, &d, &ids, &w, &s, &y).unwrap();
                assert_eq!(
                    rec.stats().dispatches as usize,
                    moe::layer_dispatches(&g, &d, true)
                );
            }
            assert_eq!(rec.stats().readback_bytes, 0);
            rec.finish().unwrap();
            let got = y.to_f32(&ctx).unwrap();
            let (rids, rw) = reference::moe_route_ref(&logits, &scale, tokens, experts, k);
            assert_eq!(
                ids.to_u32(&ctx).unwrap(),
                rids,
                "{path} T {tokens}: routed ids"
            );
            let want = b.reference(&x, &rids, &rw, k);
            assert_close(
                &format!("{path} route + experts T {tokens}"),
                &got,
                &want,
                atol(hidden, inter),
                1e-4,
            );
        }
        // determinism: the same decode twice is bitwise equal
        let x = rng.normals(hidden, 1.0);
        let (ids, w) = random_routing(&mut rng, 1, experts, k);
        let a = run_decode(&ctx, &b, &x, &ids, &w).unwrap();
        let c = run_decode(&ctx, &b, &x, &ids, &w).unwrap();
        assert_eq!(
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            c.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{path}: decode not deterministic"
        );
    }
}

/// Wall-clock timing at 26B-A4B's expert sizes (H 2816, I 704, k 8; 32 experts instead of 128 to
/// save memory: only the k routed experts are read), 4-bit g64 bf16 scales, next to the dense
/// matvec over the same bytes. Run by hand:
/// `cargo test --release --features desktop --test kernels moe_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn moe_timing_real_dims() {
    let Some((path, ctx)) = paths().into_iter().next() else {
        return;
    };
    let (experts, hidden, inter, k) = (32usize, 2816usize, 704usize, 8usize);
    let format = affine(4, 64, ScaleDType::BF16);
    let mut rng = Rng::new(18);
    let random = |rng: &mut Rng, rows: usize, cols: usize| -> Host {
        let words = rows * cols / 8;
        let data: Vec<u32> = (0..words).map(|_| rng.next_u64() as u32).collect();
        let ng = rows * cols / 64;
        let s: Vec<f32> = (0..ng).map(|_| rng.normal() * 0.01).collect();
        let b: Vec<f32> = (0..ng).map(|_| rng.normal() * 0.05).collect();
        Host {
            rows,
            cols,
            format,
            data: bytemuck::cast_slice(&data).to_vec(),
            scales: Some(scale_bytes(&s, ScaleDType::BF16)),
            biases: Some(scale_bytes(&b, ScaleDType::BF16)),
        }
    };
    let gu_h = random(&mut rng, experts * 2 * inter, hidden);
    let down_h = random(&mut rng, experts * hidden, inter);
    let gu = Matrix::upload_stacked(&ctx, "gate_up", &gu_h.view(), 2 * inter, None).unwrap();
    let down = Matrix::upload_stacked(&ctx, "down", &down_h.view(), hidden, None).unwrap();
    let (g, u) = ExpertProj::gate_up_halves(&gu, experts).unwrap();
    let d = ExpertProj::stacked(&down, experts).unwrap();
    // the dense matvec over the same bytes: k experts' gate_up rows and a [H, k I] down
    let dense_gu = random(&mut rng, k * 2 * inter, hidden);
    let dense_down = random(&mut rng, hidden, k * inter);
    let dgu = Matrix::upload(&ctx, "dgu", &dense_gu.view(), None).unwrap();
    let ddown = Matrix::upload(&ctx, "ddown", &dense_down.view(), None).unwrap();
    let time = |what: &str, n: usize, f: &mut dyn FnMut(&mut gemma_wgpu::gpu::Recorder)| {
        let mut rec = ctx.recorder();
        f(&mut rec);
        rec.finish().unwrap();
        let t0 = std::time::Instant::now();
        for _ in 0..n {
            let mut rec = ctx.recorder();
            f(&mut rec);
            rec.finish().unwrap();
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3 / n as f64;
        eprintln!("{path} {what}: {ms:.2} ms");
    };
    let logits = GpuTensor::from_f32(&ctx, &[experts], &rng.normals(experts, 1.0)).unwrap();
    let scale = GpuTensor::from_f32(&ctx, &[experts], &vec![1.0; experts]).unwrap();
    let ids = GpuTensor::zeros(&ctx, &[k], DType::U32).unwrap();
    let w = GpuTensor::zeros(&ctx, &[k], DType::F32).unwrap();
    let x = GpuTensor::from_f32(&ctx, &[hidden], &rng.normals(hidden, 1.0)).unwrap();
    let h = GpuTensor::zeros(&ctx, &[k, inter], DType::F32).unwrap();
    let h2 = GpuTensor::zeros(&ctx, &[k * 2 * inter], DType::F32).unwrap();
    let y = GpuTensor::zeros(&ctx, &[hidden], DType::F32).unwrap();
    time("route T 1", 20, &mut |rec| {
        route(rec, &logits, &scale, &ids, &w, 1, experts, k).unwrap()
    });
    time("experts_decode (2 dispatches)", 10, &mut |rec| {
        experts_decode(rec, &x, &g, &u, &d, &ids, &w, &h, &y).unwrap()
    });
    time("dense matvec, same bytes (2 dispatches)", 10, &mut |rec| {
        gemma_wgpu::gpu::ops::linear(rec, &dgu, &x, &h2).unwrap();
        gemma_wgpu::gpu::ops::linear(rec, &ddown, &h.reshape(&[k * inter]), &y).unwrap();
    });
    for tokens in [16usize, 128] {
        let xs = GpuTensor::from_f32(&ctx, &[tokens, hidden], &rng.normals(tokens * hidden, 1.0))
            .unwrap();
        let lt = GpuTensor::from_f32(
            &ctx,
            &[tokens, experts],
            &rng.normals(tokens * experts, 1.0),
        )
        .unwrap();
        let ids = GpuTensor::zeros(&ctx, &[tokens, k], DType::U32).unwrap();
        let w = GpuTensor::zeros(&ctx, &[tokens, k], DType::F32).unwrap();
        let ys = GpuTensor::zeros(&ctx, &[tokens, hidden], DType::F32).unwrap();
        let s = PrefillScratch::new(&ctx, tokens, experts, k, hidden, inter).unwrap();
        time(
            &format!("route + experts_prefill T {tokens} (5 dispatches)"),
            1,
            &mut |rec| {
                route(rec, &lt, &scale, &ids, &w, tokens, experts, k).unwrap();
                experts_prefill(rec, &xs, &g, &u, &d, &ids, &w, &s, &ys).unwrap();
            },
        );
        // the dense tiled matmul doing the same multiply-adds (T x k rows through [k 2I, H] and
        // [H, k I]) at full tile occupancy
        let hs = GpuTensor::zeros(&ctx, &[tokens, k * 2 * inter], DType::F32).unwrap();
        let hd = GpuTensor::zeros(&ctx, &[tokens, k * inter], DType::F32).unwrap();
        time(
            &format!("dense matmul, same multiply-adds T {tokens}"),
            1,
            &mut |rec| {
                gemma_wgpu::gpu::ops::linear(rec, &dgu, &xs, &hs).unwrap();
                gemma_wgpu::gpu::ops::linear(rec, &ddown, &hd, &ys).unwrap();
            },
        );
    }
}

/// The decode step records no GPU objects once warm: route + experts reuse cached pipelines and
/// bind groups (the ids stay in their buffer between the kernels).
#[test]
fn moe_decode_steady_state_allocates_nothing() {
    for (path, ctx) in one_path() {
        // a private context (own counters), so parallel tests do not disturb the count
        let ctx = ctx.fallback();
        let mut rng = Rng::new(19);
        let (experts, hidden, inter, k) = (13, 64, 96, 4);
        let format = affine(4, 32, ScaleDType::F16);
        let b = Block::new(
            &ctx,
            &mut rng,
            format,
            experts,
            hidden,
            inter,
            false,
            Some(5),
        );
        let (g, u, d) = b.projs();
        let logits = GpuTensor::from_f32(&ctx, &[experts], &rng.normals(experts, 1.0)).unwrap();
        let scale = GpuTensor::from_f32(&ctx, &[experts], &vec![1.0; experts]).unwrap();
        let ids = GpuTensor::zeros(&ctx, &[k], DType::U32).unwrap();
        let w = GpuTensor::zeros(&ctx, &[k], DType::F32).unwrap();
        let x = GpuTensor::from_f32(&ctx, &[hidden], &rng.normals(hidden, 1.0)).unwrap();
        let h = GpuTensor::zeros(&ctx, &[k, inter], DType::F32).unwrap();
        let y = GpuTensor::zeros(&ctx, &[hidden], DType::F32).unwrap();
        let step = || {
            let mut rec = ctx.recorder();
            route(&mut rec, &logits, &scale, &ids, &w, 1, experts, k).unwrap();
            experts_decode(&mut rec, &x, &g, &u, &d, &ids, &w, &h, &y).unwrap();
            let stats = rec.stats();
            rec.finish().unwrap();
            stats
        };
        step();
        let before = ctx.counters().allocations();
        let (_, submits0) = ctx.counters().snapshot();
        let stats = step();
        assert_eq!(
            ctx.counters().snapshot().1 - submits0,
            1,
            "{path}: one submit"
        );
        assert_eq!(
            ctx.counters().allocations(),
            before,
            "{path}: allocations per step"
        );
        // 3 windows of 5, 5 and 3 experts: route + 3 gate/up + 3 down
        assert_eq!(stats.dispatches, 7);
        assert_eq!(moe::layer_dispatches(&g, &d, false), 7);
    }
}

//! A KV cache split into position windows (a ring larger than one storage binding): the
//! attention input writes each key and value into the window of its slot, and decode and
//! prefill attention (causal, sliding ring, image-block masks) over the windows equal the CPU
//! reference over the same keys; the windows hold exactly what one whole ring holds.

use crate::common;

use common::{Rng, assert_close, paths};
use gemma_wgpu::config::ImageBlockMask;
use gemma_wgpu::gpu::ops::{
    AttnInput, AttnMask, AttnScratch, AttnShape, KvLayout, KvTarget, KvWindows, attention_decode,
    attention_decode_windows, attention_input, attention_prefill, attention_prefill_bounded,
    attention_prefill_windows,
};
use gemma_wgpu::gpu::{DType, GpuContext, GpuTensor, reference};
use gemma_wgpu::model::media;

const IMG: u32 = 7;

struct WinCase {
    nh: usize,
    nkv: usize,
    hd: usize,
    window: Option<u32>,
    /// Slots per window.
    slots: usize,
    /// Tokens per step (1: a decode step).
    steps: Vec<usize>,
    /// (first, last + 1) of each image run and the mask rule (prefill steps only).
    images: Vec<(usize, usize)>,
    rule: Option<ImageBlockMask>,
    v_from_k: bool,
}

fn windows(ctx: &GpuContext, nkv: usize, cap: usize, slots: usize, hd: usize) -> Vec<GpuTensor> {
    (0..cap.div_ceil(slots))
        .map(|w| {
            let n = slots.min(cap - w * slots);
            GpuTensor::from_f32(ctx, &[nkv, n, hd], &vec![-1.0; nkv * n * hd]).unwrap()
        })
        .collect()
}

/// The whole ring `[nkv, cap, hd]` assembled from its windows.
fn assemble(ctx: &GpuContext, win: &[GpuTensor], nkv: usize, slots: usize, hd: usize) -> Vec<f32> {
    let cap: usize = win.iter().map(|t| t.shape[1]).sum();
    let mut out = vec![0f32; nkv * cap * hd];
    for (w, t) in win.iter().enumerate() {
        let n = t.shape[1];
        let data = t.to_f32(ctx).unwrap();
        for g in 0..nkv {
            for s in 0..n {
                let dst = (g * cap + w * slots + s) * hd;
                out[dst..dst + hd].copy_from_slice(&data[(g * n + s) * hd..][..hd]);
            }
        }
    }
    out
}

fn run(path: &str, ctx: &GpuContext, c: &WinCase, seed: u64) {
    let (nh, nkv, hd) = (c.nh, c.nkv, c.hd);
    let total: usize = c.steps.iter().sum();
    let max_step = *c.steps.iter().max().unwrap();
    let cap = c.window.map_or(total, |w| w as usize + max_step).min(total);
    let row = nh * hd + if c.v_from_k { nkv * hd } else { 2 * nkv * hd };
    let mut rng = Rng::new(seed);
    let qn = GpuTensor::from_f32(ctx, &[hd], &rng.normals(hd, 1.0)).unwrap();
    let kn = GpuTensor::from_f32(ctx, &[hd], &rng.normals(hd, 1.0)).unwrap();
    let freq: Vec<f32> = (0..hd / 2)
        .map(|j| 10000f32.powf(-2.0 * j as f32 / hd as f32))
        .collect();
    let freq = GpuTensor::from_f32(ctx, &[hd / 2], &freq).unwrap();
    let (kc, vc) = (
        GpuTensor::zeros(ctx, &[nkv, cap, hd], DType::F32).unwrap(),
        GpuTensor::zeros(ctx, &[nkv, cap, hd], DType::F32).unwrap(),
    );
    let (kw, vw) = (
        windows(ctx, nkv, cap, c.slots, hd),
        windows(ctx, nkv, cap, c.slots, hd),
    );
    let store = KvWindows {
        k: &kw,
        v: &vw,
        slots: c.slots as u32,
    };
    let n_win = kw.len();
    let decode_scratch = AttnScratch::new(ctx, nh, 2 * n_win + 4, hd).unwrap();
    let prefill_scratch = AttnScratch::for_prefill(ctx, max_step, nh, hd).unwrap();
    let tiny_scratch = AttnScratch::new(ctx, nh, 2, hd).unwrap();
    let mut ids = vec![1u32; total];
    for &(s, e) in &c.images {
        ids[s..e].iter_mut().for_each(|t| *t = IMG);
    }
    let blocks = media::image_blocks(&ids, IMG);
    let block_ids =
        reference::block_sequence_ids_ref(&ids.iter().map(|&t| t == IMG).collect::<Vec<_>>());
    let mut pos = 0usize;
    for &n in &c.steps {
        let qkv = GpuTensor::from_f32(ctx, &[n, row], &rng.normals(n * row, 2.0)).unwrap();
        let (q_whole, q_win) = (
            GpuTensor::zeros(ctx, &[n, nh, hd], DType::F32).unwrap(),
            GpuTensor::zeros(ctx, &[n, nh, hd], DType::F32).unwrap(),
        );
        let (out_whole, out_win) = (
            GpuTensor::zeros(ctx, &[n, nh, hd], DType::F32).unwrap(),
            GpuTensor::zeros(ctx, &[n, nh, hd], DType::F32).unwrap(),
        );
        let bounded = c.rule.is_some() && n > 1;
        let mut bounds = Vec::new();
        if let Some(rule) = c.rule {
            media::block_bounds(&blocks, 0, pos..pos + n, rule, &mut bounds);
        }
        let bt = GpuTensor::from_u32(ctx, &[bounds.len().max(2)], &{
            let mut b = bounds.clone();
            b.resize(b.len().max(2), 0);
            b
        })
        .unwrap();
        let shape = AttnShape {
            n_heads: nh as u32,
            n_kv_heads: nkv as u32,
            head_dim: hd as u32,
            cap: cap as u32,
            scale: 1.0,
            mask: if bounded {
                AttnMask::CausalBounded { window: c.window }
            } else {
                AttnMask::Causal { window: c.window }
            },
            layout: KvLayout::HeadMajor,
        };
        let mut rec = ctx.recorder();
        for (q_out, st) in [
            (&q_whole, KvWindows::whole(&kc, &vc, cap as u32)),
            (&q_win, store),
        ] {
            let input = AttnInput {
                qkv: &qkv,
                q_out,
                q_norm: &qn,
                inv_freq: &freq,
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                pos0: pos,
                eps: 1e-6,
                kv: Some(KvTarget {
                    k_norm: &kn,
                    store: st,
                    cap,
                    v_from_k: c.v_from_k,
                }),
            };
            attention_input(&mut rec, &input).unwrap();
        }
        let p0 = pos as u32;
        if n == 1 {
            attention_decode(
                &mut rec,
                &q_whole,
                &kc,
                &vc,
                &out_whole,
                &shape,
                p0,
                &decode_scratch,
            )
            .unwrap();
            // flash-decode chunks per window interval, or (too few chunks) window by window
            let (sc, st) = if pos.is_multiple_of(2) {
                (&decode_scratch, None)
            } else {
                (&tiny_scratch, Some(&prefill_scratch))
            };
            attention_decode_windows(&mut rec, &q_win, &store, &out_win, &shape, p0, sc, st)
                .unwrap();
        } else {
            if bounded {
                attention_prefill_bounded(
                    &mut rec, &q_whole, &kc, &vc, &out_whole, &shape, p0, &bt,
                )
                .unwrap();
            } else {
                attention_prefill(&mut rec, &q_whole, &kc, &vc, &out_whole, &shape, p0).unwrap();
            }
            let b = bounded.then_some(&bt);
            let scratch = Some(&prefill_scratch);
            attention_prefill_windows(&mut rec, &q_win, &store, &out_win, &shape, p0, b, scratch)
                .unwrap();
        }
        rec.finish().unwrap();
        let what = format!(
            "{path} heads {nh}/{nkv} hd {hd} window {:?} cap {cap} in {n_win} windows of {} \
             images {:?} rule {:?} queries {pos}..{}",
            c.window,
            c.slots,
            c.images,
            c.rule,
            pos + n
        );
        // the windows hold what the whole ring holds, slot for slot
        let (kg, vg) = (kc.to_f32(ctx).unwrap(), vc.to_f32(ctx).unwrap());
        let first = (pos + n).saturating_sub(cap);
        for p in first..pos + n {
            let s = p % cap;
            for (name, whole, win) in [("k", &kg, &kw), ("v", &vg, &vw)] {
                let got = assemble(ctx, win, nkv, c.slots, hd);
                for g in 0..nkv {
                    let at = (g * cap + s) * hd;
                    assert_eq!(
                        &got[at..at + hd],
                        &whole[at..at + hd],
                        "{what}: {name} of position {p} head {g}"
                    );
                }
            }
        }
        assert_eq!(
            q_win.to_f32(ctx).unwrap(),
            q_whole.to_f32(ctx).unwrap(),
            "{what}: q"
        );
        // the reference over the keys the ring holds
        let q = q_whole.to_f32(ctx).unwrap();
        let key = |g: usize, p: u32| kg[(g * cap + p as usize % cap) * hd..][..hd].to_vec();
        let value = |g: usize, p: u32| vg[(g * cap + p as usize % cap) * hd..][..hd].to_vec();
        let want = match c.rule {
            Some(rule) if bounded => {
                let visible = |qp: u32, kp: u32| match rule {
                    ImageBlockMask::SlidingLayers => {
                        reference::vision_sliding_visible(&block_ids, c.window, qp, kp)
                    }
                    ImageBlockMask::EveryLayer => {
                        reference::vision_every_layer_visible(&block_ids, c.window, qp, kp)
                    }
                };
                reference::attention_masked_ref(
                    &q,
                    nh,
                    nkv,
                    hd,
                    1.0,
                    p0,
                    (pos + n) as u32,
                    &visible,
                    &key,
                    &value,
                )
            }
            _ => {
                reference::attention_ref(&q, nh, nkv, hd, 1.0, p0, true, c.window, 0, &key, &value)
            }
        };
        assert_close(&what, &out_win.to_f32(ctx).unwrap(), &want, 2e-5, 1e-4);
        assert_close(
            &format!("{what} (whole ring)"),
            &out_whole.to_f32(ctx).unwrap(),
            &want,
            2e-5,
            1e-4,
        );
        pos += n;
    }
}

#[test]
fn a_kv_cache_in_windows_matches_the_reference() {
    let cases = [
        // a full-attention store (no ring) in 8 windows of 7 slots, the last holding 1;
        // prefill chunks across window edges, decode steps in between; GQA 4/2
        WinCase {
            nh: 4,
            nkv: 2,
            hd: 16,
            window: None,
            slots: 7,
            steps: vec![13, 1, 1, 20, 1, 14],
            images: vec![],
            rule: None,
            v_from_k: false,
        },
        // a sliding ring (window 8, cap 21) in windows of 5 that wraps several times, hd 72,
        // k = v (the raw k projection)
        WinCase {
            nh: 4,
            nkv: 1,
            hd: 72,
            window: Some(8),
            slots: 5,
            steps: vec![13, 1, 1, 13, 1, 9, 13, 1],
            images: vec![],
            rule: None,
            v_from_k: true,
        },
        // one slot per window; a single-head group
        WinCase {
            nh: 2,
            nkv: 2,
            hd: 8,
            window: Some(4),
            slots: 1,
            steps: vec![3, 1, 5, 1, 1],
            images: vec![],
            rule: None,
            v_from_k: false,
        },
        // image blocks on a sliding layer (gemma4): a block longer than the window, the
        // chunk holding it whole, decode after it
        WinCase {
            nh: 4,
            nkv: 1,
            hd: 72,
            window: Some(8),
            slots: 6,
            steps: vec![3, 17, 5, 1, 1],
            images: vec![(3, 16), (21, 24)],
            rule: Some(ImageBlockMask::SlidingLayers),
            v_from_k: false,
        },
        // the 12B rule on a full store: a block sees its keys before the window too
        WinCase {
            nh: 8,
            nkv: 2,
            hd: 32,
            window: Some(6),
            slots: 4,
            steps: vec![4, 14, 1, 9],
            images: vec![(5, 17), (19, 25)],
            rule: Some(ImageBlockMask::EveryLayer),
            v_from_k: false,
        },
    ];
    for (path, ctx) in paths() {
        for (i, c) in cases.iter().enumerate() {
            run(path, &ctx, c, 500 + i as u64);
        }
    }
}

#[test]
fn windowed_attention_refuses_what_it_cannot_run() {
    for (_, ctx) in paths() {
        let (nh, nkv, hd, cap) = (2usize, 1usize, 8usize, 10usize);
        let kw = windows(&ctx, nkv, cap, 4, hd);
        let vw = windows(&ctx, nkv, cap, 4, hd);
        let q = GpuTensor::zeros(&ctx, &[1, nh, hd], DType::F32).unwrap();
        let out = GpuTensor::zeros(&ctx, &[1, nh, hd], DType::F32).unwrap();
        let shape = AttnShape {
            n_heads: nh as u32,
            n_kv_heads: nkv as u32,
            head_dim: hd as u32,
            cap: cap as u32,
            scale: 1.0,
            mask: AttnMask::Causal { window: None },
            layout: KvLayout::HeadMajor,
        };
        let mut rec = ctx.recorder();
        let good = KvWindows {
            k: &kw,
            v: &vw,
            slots: 4,
        };
        let scratch = AttnScratch::new(&ctx, nh, 8, hd).unwrap();
        let dec = |rec: &mut _, kv: &KvWindows<'_>, sc: &AttnScratch, st: Option<&AttnScratch>| {
            attention_decode_windows(rec, &q, kv, &out, &shape, 9, sc, st)
        };
        assert!(dec(&mut rec, &good, &scratch, None).is_ok());
        // windows that do not cover the store
        let short = KvWindows {
            k: &kw[..2],
            v: &vw[..2],
            slots: 4,
        };
        assert!(dec(&mut rec, &short, &scratch, None).is_err());
        let wrong = KvWindows { slots: 3, ..good };
        assert!(dec(&mut rec, &wrong, &scratch, None).is_err());
        // a scratch with no more chunks than window intervals needs a state (for all heads)
        let small = AttnScratch::new(&ctx, nh, 3, hd).unwrap();
        assert!(dec(&mut rec, &good, &small, None).is_err());
        let st_one_head = AttnScratch::for_prefill(&ctx, 1, 1, hd).unwrap();
        assert!(dec(&mut rec, &good, &small, Some(&st_one_head)).is_err());
        let st = AttnScratch::for_prefill(&ctx, 1, nh, hd).unwrap();
        assert!(dec(&mut rec, &good, &small, Some(&st)).is_ok());
        // prefill over several windows needs its scratch, sized for the queries
        let q2 = GpuTensor::zeros(&ctx, &[2, nh, hd], DType::F32).unwrap();
        let out2 = GpuTensor::zeros(&ctx, &[2, nh, hd], DType::F32).unwrap();
        assert!(
            attention_prefill_windows(&mut rec, &q2, &good, &out2, &shape, 3, None, None).is_err()
        );
        let one = AttnScratch::for_prefill(&ctx, 1, nh, hd).unwrap();
        let two = AttnScratch::for_prefill(&ctx, 2, nh, hd).unwrap();
        assert!(
            attention_prefill_windows(&mut rec, &q2, &good, &out2, &shape, 3, None, Some(&one))
                .is_err()
        );
        assert!(
            attention_prefill_windows(&mut rec, &q2, &good, &out2, &shape, 3, None, Some(&two))
                .is_ok()
        );
        // a bidirectional store must be whole
        let bidir = AttnShape {
            mask: AttnMask::Bidirectional { n_keys: 10 },
            ..shape
        };
        assert!(
            attention_prefill_windows(&mut rec, &q2, &good, &out2, &bidir, 0, None, Some(&two))
                .is_err()
        );
        rec.finish().unwrap();
    }
}

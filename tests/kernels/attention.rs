//! KV-cache writes and attention (decode and prefill, causal with and without a sliding window on
//! a wrapping ring, bidirectional, the image-block mask of bidirectional-vision models) against
//! the CPU reference, on both kernel paths.

use crate::common;

use common::{Rng, assert_close, paths};
use gemma_wgpu::config::ImageBlockMask;
use gemma_wgpu::gpu::ops::{
    AttnMask, AttnScratch, AttnShape, KvLayout, attention_decode, attention_prefill,
    attention_prefill_bounded, kv_write,
};
use gemma_wgpu::gpu::{DType, GpuContext, GpuTensor, reference};
use gemma_wgpu::model::media;

/// One step of a causal run: write `n` new positions into the cache, then attend with them
/// (`Attend::Prefill`), as a single decode query (`Attend::Decode`, n = 1) or not at all.
#[derive(Clone, Copy, PartialEq)]
enum Attend {
    None,
    Prefill,
    Decode,
}

struct Case {
    n_heads: usize,
    nkv: usize,
    hd: usize,
    scale: f32,
    window: Option<u32>,
    cap: usize,
    steps: Vec<(usize, Attend)>,
    max_chunks: usize,
}

fn run_causal(path: &str, ctx: &GpuContext, case: &Case, seed: u64) {
    let Case {
        n_heads,
        nkv,
        hd,
        scale,
        window,
        cap,
        max_chunks,
        ..
    } = *case;
    let total: usize = case.steps.iter().map(|s| s.0).sum();
    let mut rng = Rng::new(seed);
    let k = rng.normals(total * nkv * hd, 1.0);
    let v = rng.normals(total * nkv * hd, 1.0);
    let q = rng.normals(total * n_heads * hd, 0.3);
    let kt = GpuTensor::from_f32(ctx, &[total, nkv, hd], &k).unwrap();
    let vt = GpuTensor::from_f32(ctx, &[total, nkv, hd], &v).unwrap();
    let qt = GpuTensor::from_f32(ctx, &[total, n_heads, hd], &q).unwrap();
    // k and v caches share one buffer (k first), as a model may allocate them
    let kv = GpuTensor::zeros(ctx, &[2 * nkv * cap * hd], DType::F32).unwrap();
    let kc = kv.view(0, &[nkv, cap, hd]);
    let vc = kv.view(nkv * cap * hd, &[nkv, cap, hd]);
    let scratch = AttnScratch::new(ctx, n_heads, max_chunks, hd).unwrap();
    let shape = AttnShape {
        n_heads: n_heads as u32,
        n_kv_heads: nkv as u32,
        head_dim: hd as u32,
        cap: cap as u32,
        scale,
        mask: AttnMask::Causal { window },
        layout: KvLayout::HeadMajor,
    };
    let key = |g: usize, p: u32| k[(p as usize * nkv + g) * hd..][..hd].to_vec();
    let value = |g: usize, p: u32| v[(p as usize * nkv + g) * hd..][..hd].to_vec();
    let mut pos = 0usize;
    for &(n, attend) in &case.steps {
        let mut rec = ctx.recorder();
        kv_write(
            &mut rec,
            &kt.view(pos * nkv * hd, &[n, nkv, hd]),
            &kc,
            pos as u32,
        )
        .unwrap();
        kv_write(
            &mut rec,
            &vt.view(pos * nkv * hd, &[n, nkv, hd]),
            &vc,
            pos as u32,
        )
        .unwrap();
        let qv = qt.view(pos * n_heads * hd, &[n, n_heads, hd]);
        let out = GpuTensor::zeros(ctx, &[n, n_heads, hd], DType::F32).unwrap();
        match attend {
            Attend::None => {}
            Attend::Prefill => {
                attention_prefill(&mut rec, &qv, &kc, &vc, &out, &shape, pos as u32).unwrap()
            }
            Attend::Decode => {
                assert_eq!(n, 1);
                attention_decode(&mut rec, &qv, &kc, &vc, &out, &shape, pos as u32, &scratch)
                    .unwrap()
            }
        }
        rec.finish().unwrap();
        if attend != Attend::None {
            let want = reference::attention_ref(
                &q[pos * n_heads * hd..(pos + n) * n_heads * hd],
                n_heads,
                nkv,
                hd,
                scale,
                pos as u32,
                true,
                window,
                0,
                &key,
                &value,
            );
            let what = format!(
                "{path} heads {n_heads}/{nkv} hd {hd} window {window:?} cap {cap} scale {scale} \
                 queries {pos}..{}",
                pos + n
            );
            let g = out.to_f32(ctx).unwrap();
            assert_close(&what, &g, &want, 2e-5, 1e-4);
        }
        pos += n;
    }
    // the cache holds the last `cap` positions, each in slot p % cap
    let got = kc.to_f32(ctx).unwrap();
    for p in total.saturating_sub(cap)..total {
        for g in 0..nkv {
            let slot = &got[(g * cap + p % cap) * hd..][..hd];
            assert_eq!(
                slot,
                &key(g, p as u32)[..],
                "{path}: cache slot of position {p}"
            );
        }
    }
}

use Attend::{Decode as D, None as W, Prefill as P};

#[test]
fn causal_full_small_heads() {
    for (path, ctx) in paths() {
        // hd 16, GQA 4:1, no window
        run_causal(
            path,
            &ctx,
            &Case {
                n_heads: 4,
                nkv: 1,
                hd: 16,
                scale: 0.125,
                window: None,
                cap: 128,
                steps: vec![(37, P), (1, D), (1, P), (5, P), (1, D)],
                max_chunks: 16,
            },
            10,
        );
        // hd 256, MHA 1:1
        run_causal(
            path,
            &ctx,
            &Case {
                n_heads: 2,
                nkv: 2,
                hd: 256,
                scale: 1.0,
                window: None,
                cap: 80,
                steps: vec![(1, P), (37, P), (1, D), (1, D)],
                max_chunks: 16,
            },
            11,
        );
        // E2B full layer: hd 512, GQA 8:1 (two workgroups of 4 heads per kv head)
        run_causal(
            path,
            &ctx,
            &Case {
                n_heads: 8,
                nkv: 1,
                hd: 512,
                scale: 1.0,
                window: None,
                cap: 16,
                steps: vec![(5, P), (1, D)],
                max_chunks: 4,
            },
            16,
        );
        // GQA 2:1
        run_causal(
            path,
            &ctx,
            &Case {
                n_heads: 4,
                nkv: 2,
                hd: 64,
                scale: 0.125,
                window: None,
                cap: 16,
                steps: vec![(9, P), (1, D)],
                max_chunks: 4,
            },
            17,
        );
    }
}

#[test]
fn sliding_window_ring_wraps() {
    for (path, ctx) in paths() {
        // hd 64, GQA 8:1, window 24, ring cap = window + chunk (16)
        run_causal(
            path,
            &ctx,
            &Case {
                n_heads: 8,
                nkv: 1,
                hd: 64,
                scale: 1.0,
                window: Some(24),
                cap: 40,
                steps: vec![
                    (16, P),
                    (16, P),
                    (16, P),
                    (1, D),
                    (1, D),
                    (1, P),
                    (10, P),
                    (16, P),
                    (1, D),
                ],
                max_chunks: 4,
            },
            12,
        );
        // hd 512, GQA 4:1, window 20, L = 37 chunks, cap = 20 + 37
        run_causal(
            path,
            &ctx,
            &Case {
                n_heads: 4,
                nkv: 1,
                hd: 512,
                scale: 0.125,
                window: Some(20),
                cap: 57,
                steps: vec![(37, P), (1, D), (37, P), (1, D), (1, P)],
                max_chunks: 8,
            },
            13,
        );
    }
}

#[test]
fn decode_over_many_keys() {
    for (path, ctx) in paths() {
        for &max_chunks in &[64usize, 4] {
            // 3000 keys: 47 chunks of 64 keys, or 4 chunks of 768 keys (12 tiles each)
            run_causal(
                path,
                &ctx,
                &Case {
                    n_heads: 8,
                    nkv: 2,
                    hd: 64,
                    scale: 0.125,
                    window: None,
                    cap: 3072,
                    steps: vec![(2999, W), (1, D), (1, D)],
                    max_chunks,
                },
                14,
            );
        }
        // a sliding ring filled by one write longer than the ring (only the last cap rows land)
        run_causal(
            path,
            &ctx,
            &Case {
                n_heads: 4,
                nkv: 1,
                hd: 256,
                scale: 1.0,
                window: Some(512),
                cap: 513,
                steps: vec![(3000, W), (1, D), (1, D)],
                max_chunks: 64,
            },
            15,
        );
    }
}

#[test]
fn bidirectional_token_major() {
    for (path, ctx) in paths() {
        for &(l, n_store, n_keys, heads, hd) in &[
            (37usize, 37usize, 37u32, 3usize, 64usize),
            (37, 37, 30, 2, 16),
            (5, 70, 67, 2, 64),
        ] {
            let mut rng = Rng::new(20 + l as u64 + n_keys as u64);
            let k = rng.normals(n_store * heads * hd, 1.0);
            let v = rng.normals(n_store * heads * hd, 1.0);
            let q = rng.normals(l * heads * hd, 0.5);
            let kt = GpuTensor::from_f32(&ctx, &[n_store, heads, hd], &k).unwrap();
            let vt = GpuTensor::from_f32(&ctx, &[n_store, heads, hd], &v).unwrap();
            let qt = GpuTensor::from_f32(&ctx, &[l, heads, hd], &q).unwrap();
            let out = GpuTensor::zeros(&ctx, &[l, heads, hd], DType::F32).unwrap();
            let shape = AttnShape {
                n_heads: heads as u32,
                n_kv_heads: heads as u32,
                head_dim: hd as u32,
                cap: n_store as u32,
                scale: 1.0,
                mask: AttnMask::Bidirectional { n_keys },
                layout: KvLayout::TokenMajor,
            };
            let mut rec = ctx.recorder();
            attention_prefill(&mut rec, &qt, &kt, &vt, &out, &shape, 0).unwrap();
            rec.finish().unwrap();
            let key = |g: usize, p: u32| k[(p as usize * heads + g) * hd..][..hd].to_vec();
            let value = |g: usize, p: u32| v[(p as usize * heads + g) * hd..][..hd].to_vec();
            let want = reference::attention_ref(
                &q, heads, heads, hd, 1.0, 0, false, None, n_keys, &key, &value,
            );
            let what = format!("{path} bidirectional L {l} keys {n_keys}/{n_store} hd {hd}");
            assert_close(&what, &out.to_f32(&ctx).unwrap(), &want, 2e-5, 1e-4);

            // the decode path with the same mask (one query)
            let scratch = AttnScratch::new(&ctx, heads, 8, hd).unwrap();
            let out1 = GpuTensor::zeros(&ctx, &[1, heads, hd], DType::F32).unwrap();
            let mut rec = ctx.recorder();
            attention_decode(
                &mut rec,
                &qt.view(0, &[1, heads, hd]),
                &kt,
                &vt,
                &out1,
                &shape,
                0,
                &scratch,
            )
            .unwrap();
            rec.finish().unwrap();
            assert_close(
                &format!("{what} decode"),
                &out1.to_f32(&ctx).unwrap(),
                &want[..heads * hd],
                2e-5,
                1e-4,
            );
        }
    }
}

#[test]
fn rejects_bad_shapes() {
    let Some((_, ctx)) = paths().into_iter().next() else {
        return;
    };
    let q = GpuTensor::zeros(&ctx, &[1, 2, 12], DType::F32).unwrap();
    let kc = GpuTensor::zeros(&ctx, &[1, 8, 12], DType::F32).unwrap();
    let out = GpuTensor::zeros(&ctx, &[1, 2, 12], DType::F32).unwrap();
    let mut shape = AttnShape {
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 12,
        cap: 8,
        scale: 1.0,
        mask: AttnMask::Causal { window: None },
        layout: KvLayout::HeadMajor,
    };
    let mut rec = ctx.recorder();
    assert!(attention_prefill(&mut rec, &q, &kc, &kc, &out, &shape, 0).is_ok());
    shape.head_dim = 10;
    assert!(attention_prefill(&mut rec, &q, &kc, &kc, &out, &shape, 0).is_err());
    shape.head_dim = 12;
    shape.n_kv_heads = 3;
    assert!(attention_prefill(&mut rec, &q, &kc, &kc, &out, &shape, 0).is_err());
    shape.n_kv_heads = 1;
    assert!(attention_prefill(&mut rec, &q, &kc, &kc, &q, &shape, 0).is_err());
    rec.finish().unwrap();
}

/// Thousands of decodes in one recorder: the 80-byte parameter structs span several uniform
/// alignment slots and overflow the parameter arena (forcing intermediate submits); two
/// interleaved query positions must each keep their own parameters.
#[test]
fn many_dispatches_in_one_recorder() {
    for (path, ctx) in paths() {
        let (heads, nkv, hd, cap) = (2usize, 1usize, 16usize, 8usize);
        let mut rng = Rng::new(30);
        let k = rng.normals(cap * nkv * hd, 1.0);
        let v = rng.normals(cap * nkv * hd, 1.0);
        let q = rng.normals(heads * hd, 0.5);
        let kc = GpuTensor::from_f32(&ctx, &[nkv, cap, hd], &k).unwrap();
        let vc = GpuTensor::from_f32(&ctx, &[nkv, cap, hd], &v).unwrap();
        let qt = GpuTensor::from_f32(&ctx, &[1, heads, hd], &q).unwrap();
        let outs = [
            GpuTensor::zeros(&ctx, &[1, heads, hd], DType::F32).unwrap(),
            GpuTensor::zeros(&ctx, &[1, heads, hd], DType::F32).unwrap(),
        ];
        let scratch = AttnScratch::new(&ctx, heads, 4, hd).unwrap();
        let shape = AttnShape {
            n_heads: heads as u32,
            n_kv_heads: nkv as u32,
            head_dim: hd as u32,
            cap: cap as u32,
            scale: 1.0,
            mask: AttnMask::Causal { window: None },
            layout: KvLayout::HeadMajor,
        };
        let q_pos = [3u32, 7];
        let mut rec = ctx.recorder();
        for i in 0..9000 {
            let o = &outs[i % 2];
            attention_decode(&mut rec, &qt, &kc, &vc, o, &shape, q_pos[i % 2], &scratch).unwrap();
        }
        rec.finish().unwrap();
        let key = |g: usize, p: u32| k[(g * cap + p as usize) * hd..][..hd].to_vec();
        let value = |g: usize, p: u32| v[(g * cap + p as usize) * hd..][..hd].to_vec();
        for (o, &qp) in outs.iter().zip(&q_pos) {
            let want =
                reference::attention_ref(&q, heads, nkv, hd, 1.0, qp, true, None, 0, &key, &value);
            let what = format!("{path} repeated decode at {qp}");
            assert_close(&what, &o.to_f32(&ctx).unwrap(), &want, 2e-5, 1e-4);
        }
    }
}

/// The image-block mask of bidirectional-vision models on sliding layers: chunks of a token
/// sequence (image soft tokens marked) are written into a wrapping ring (`cap = W + chunk`) and
/// attended with [`attention_prefill_bounded`], the bounds made by the model's own
/// `block_bounds` from the image runs; the reference is transformers' rule
/// `window AND (causal OR same block)` over block ids computed as transformers does.
struct BlockCase {
    n_heads: usize,
    nkv: usize,
    hd: usize,
    window: Option<u32>,
    /// (first, last + 1) of each image run of the sequence.
    images: Vec<(usize, usize)>,
    /// Chunk lengths (their sum is the sequence length).
    chunks: Vec<usize>,
    /// The model class's rule (gemma4 sliding layers, or gemma4_unified's every layer).
    rule: ImageBlockMask,
}

fn run_blocks(path: &str, ctx: &GpuContext, case: &BlockCase, seed: u64) {
    const IMG: u32 = 7;
    let (n_heads, nkv, hd, window) = (case.n_heads, case.nkv, case.hd, case.window);
    let total: usize = case.chunks.iter().sum();
    let mut ids = vec![1u32; total];
    for &(s, e) in &case.images {
        ids[s..e].iter_mut().for_each(|t| *t = IMG);
    }
    let blocks = media::image_blocks(&ids, IMG);
    let block_ids =
        reference::block_sequence_ids_ref(&ids.iter().map(|&t| t == IMG).collect::<Vec<_>>());
    let max_chunk = *case.chunks.iter().max().unwrap();
    let cap = window.map_or(total, |w| w as usize + max_chunk).min(total);
    let mut rng = Rng::new(seed);
    let k = rng.normals(total * nkv * hd, 1.0);
    let v = rng.normals(total * nkv * hd, 1.0);
    let q = rng.normals(total * n_heads * hd, 0.4);
    let kt = GpuTensor::from_f32(ctx, &[total, nkv, hd], &k).unwrap();
    let vt = GpuTensor::from_f32(ctx, &[total, nkv, hd], &v).unwrap();
    let qt = GpuTensor::from_f32(ctx, &[total, n_heads, hd], &q).unwrap();
    let kc = GpuTensor::zeros(ctx, &[nkv, cap, hd], DType::F32).unwrap();
    let vc = GpuTensor::zeros(ctx, &[nkv, cap, hd], DType::F32).unwrap();
    // bounds at a non-zero offset of a larger buffer, as the workspace's rows views are
    let bounds_buf = GpuTensor::zeros(ctx, &[2 * max_chunk + 3], DType::U32).unwrap();
    let shape = AttnShape {
        n_heads: n_heads as u32,
        n_kv_heads: nkv as u32,
        head_dim: hd as u32,
        cap: cap as u32,
        scale: 1.0,
        mask: AttnMask::CausalBounded { window },
        layout: KvLayout::HeadMajor,
    };
    let key = |g: usize, p: u32| k[(p as usize * nkv + g) * hd..][..hd].to_vec();
    let value = |g: usize, p: u32| v[(p as usize * nkv + g) * hd..][..hd].to_vec();
    let visible = |qp: u32, kp: u32| match case.rule {
        ImageBlockMask::SlidingLayers => {
            reference::vision_sliding_visible(&block_ids, window, qp, kp)
        }
        ImageBlockMask::EveryLayer => {
            reference::vision_every_layer_visible(&block_ids, window, qp, kp)
        }
    };
    let mut pos = 0usize;
    let mut bounds = Vec::new();
    for &n in &case.chunks {
        media::block_bounds(&blocks, 0, pos..pos + n, case.rule, &mut bounds);
        let bt = bounds_buf.rows(3, 2 * n);
        bt.write_u32(ctx, &bounds).unwrap();
        let mut rec = ctx.recorder();
        let rows = |t: &GpuTensor, w: usize| t.view(pos * w * hd, &[n, w, hd]);
        kv_write(&mut rec, &rows(&kt, nkv), &kc, pos as u32).unwrap();
        kv_write(&mut rec, &rows(&vt, nkv), &vc, pos as u32).unwrap();
        let out = GpuTensor::zeros(ctx, &[n, n_heads, hd], DType::F32).unwrap();
        attention_prefill_bounded(
            &mut rec,
            &rows(&qt, n_heads),
            &kc,
            &vc,
            &out,
            &shape,
            pos as u32,
            &bt,
        )
        .unwrap();
        rec.finish().unwrap();
        let want = reference::attention_masked_ref(
            &q[pos * n_heads * hd..(pos + n) * n_heads * hd],
            n_heads,
            nkv,
            hd,
            1.0,
            pos as u32,
            total as u32,
            &visible,
            &key,
            &value,
        );
        let what = format!(
            "{path} heads {n_heads}/{nkv} hd {hd} window {window:?} cap {cap} images {:?} \
             queries {pos}..{}",
            case.images,
            pos + n
        );
        assert_close(&what, &out.to_f32(ctx).unwrap(), &want, 2e-5, 1e-4);
        pos += n;
    }
}

#[test]
fn image_blocks_see_their_later_tokens_on_sliding_layers() {
    let cases = [
        // a block longer than the window (the window still limits the past), GQA 4/1, hd 72
        BlockCase {
            n_heads: 4,
            nkv: 1,
            hd: 72,
            window: Some(8),
            images: vec![(3, 16)],
            chunks: vec![3, 17, 5],
            rule: ImageBlockMask::SlidingLayers,
        },
        // two blocks in one chunk, one at the chunk's start, one at its end; ring wraps
        BlockCase {
            n_heads: 8,
            nkv: 2,
            hd: 16,
            window: Some(6),
            images: vec![(10, 14), (16, 21)],
            chunks: vec![10, 11, 4, 9],
            rule: ImageBlockMask::SlidingLayers,
        },
        // more than 64 keys visible (tiles), a 70-token block crossing a 24-token window
        BlockCase {
            n_heads: 2,
            nkv: 2,
            hd: 72,
            window: Some(24),
            images: vec![(5, 75), (76, 79)],
            chunks: vec![5, 71, 4, 3],
            rule: ImageBlockMask::SlidingLayers,
        },
        // no window (blockwise overlay on a causal mask), 130 keys, two images back to back
        // separated by one text token
        BlockCase {
            n_heads: 4,
            nkv: 2,
            hd: 32,
            window: None,
            images: vec![(1, 66), (67, 130)],
            chunks: vec![66, 64, 1],
            rule: ImageBlockMask::SlidingLayers,
        },
        // the 12B rule on a sliding layer: a 70-token block crossing a 24-token window sees
        // its whole block, before the window too; two blocks in one chunk; GQA, hd 72
        BlockCase {
            n_heads: 4,
            nkv: 1,
            hd: 72,
            window: Some(24),
            images: vec![(5, 75), (76, 79)],
            chunks: vec![5, 71, 4, 3],
            rule: ImageBlockMask::EveryLayer,
        },
        BlockCase {
            n_heads: 8,
            nkv: 2,
            hd: 16,
            window: Some(6),
            images: vec![(10, 14), (16, 21)],
            chunks: vec![10, 11, 4, 9],
            rule: ImageBlockMask::EveryLayer,
        },
        // the 12B rule on a full layer (no window): blocks see their later keys
        BlockCase {
            n_heads: 4,
            nkv: 2,
            hd: 32,
            window: None,
            images: vec![(1, 66), (67, 130)],
            chunks: vec![66, 64, 1],
            rule: ImageBlockMask::EveryLayer,
        },
    ];
    for (path, ctx) in paths() {
        for (i, c) in cases.iter().enumerate() {
            run_blocks(path, &ctx, c, 40 + i as u64);
        }
    }
}

#[test]
fn bounded_mask_needs_its_bounds_and_prefill() {
    let Some((_, ctx)) = paths().into_iter().next() else {
        return;
    };
    let q = GpuTensor::zeros(&ctx, &[2, 2, 12], DType::F32).unwrap();
    let kc = GpuTensor::zeros(&ctx, &[1, 8, 12], DType::F32).unwrap();
    let out = GpuTensor::zeros(&ctx, &[2, 2, 12], DType::F32).unwrap();
    // two queries: a (lo, hi) pair each
    let b = GpuTensor::zeros(&ctx, &[4], DType::U32).unwrap();
    let bf = GpuTensor::zeros(&ctx, &[4], DType::F32).unwrap();
    let mut shape = AttnShape {
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 12,
        cap: 8,
        scale: 1.0,
        mask: AttnMask::CausalBounded { window: Some(4) },
        layout: KvLayout::HeadMajor,
    };
    let scratch = AttnScratch::new(&ctx, 2, 4, 12).unwrap();
    let mut rec = ctx.recorder();
    assert!(attention_prefill_bounded(&mut rec, &q, &kc, &kc, &out, &shape, 0, &b).is_ok());
    assert!(attention_prefill(&mut rec, &q, &kc, &kc, &out, &shape, 0).is_err());
    assert!(attention_prefill_bounded(&mut rec, &q, &kc, &kc, &out, &shape, 0, &bf).is_err());
    assert!(
        attention_prefill_bounded(&mut rec, &q, &kc, &kc, &out, &shape, 0, &b.rows(0, 3)).is_err()
    );
    let q1 = q.view(0, &[1, 2, 12]);
    let o1 = out.view(0, &[1, 2, 12]);
    assert!(attention_decode(&mut rec, &q1, &kc, &kc, &o1, &shape, 0, &scratch).is_err());
    shape.mask = AttnMask::Causal { window: Some(4) };
    assert!(attention_prefill_bounded(&mut rec, &q, &kc, &kc, &out, &shape, 0, &b).is_err());
    rec.finish().unwrap();
}

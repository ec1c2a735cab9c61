//! The one-query-per-invocation attention (`attention_rows`) against the CPU reference:
//! bidirectional over token-major stores (the vision towers, incl. the large tower's hd 72),
//! causal with and without a sliding window over a wrapping head-major ring, GQA, query counts
//! that are not multiples of the 64-query workgroup, a single query, and its refusals.

use crate::common;

use common::{Rng, assert_close, paths};
use gemma_wgpu::gpu::ops::{
    AttnMask, AttnShape, KvLayout, MAX_ROWS_HEAD_DIM, attention_prefill, attention_rows,
};
use gemma_wgpu::gpu::{DType, GpuTensor, reference};

#[test]
fn bidirectional_token_major_matches_the_reference() {
    // (queries, store rows, valid keys, heads, kv heads, head dim)
    let cases: &[(usize, usize, u32, usize, usize, usize)] = &[
        (37, 37, 37, 3, 3, 64),
        (130, 130, 129, 2, 1, 72),
        (1, 5, 5, 1, 1, 4),
        (65, 70, 67, 4, 2, 16),
        (64, 64, 64, 2, 2, 128),
        (200, 211, 200, 2, 2, 72),
    ];
    for (path, ctx) in paths() {
        for &(l, n_store, n_keys, heads, nkv, hd) in cases {
            let mut rng = Rng::new(7 + l as u64 * 31 + hd as u64);
            let k = rng.normals(n_store * nkv * hd, 1.0);
            let v = rng.normals(n_store * nkv * hd, 1.0);
            let q = rng.normals(l * heads * hd, 0.5);
            let kt = GpuTensor::from_f32(&ctx, &[n_store, nkv, hd], &k).unwrap();
            let vt = GpuTensor::from_f32(&ctx, &[n_store, nkv, hd], &v).unwrap();
            let qt = GpuTensor::from_f32(&ctx, &[l, heads, hd], &q).unwrap();
            let out = GpuTensor::zeros(&ctx, &[l, heads, hd], DType::F32).unwrap();
            let shape = AttnShape {
                n_heads: heads as u32,
                n_kv_heads: nkv as u32,
                head_dim: hd as u32,
                cap: n_store as u32,
                scale: 0.7,
                mask: AttnMask::Bidirectional { n_keys },
                layout: KvLayout::TokenMajor,
            };
            let mut rec = ctx.recorder();
            attention_rows(&mut rec, &qt, &kt, &vt, &out, &shape, 0).unwrap();
            rec.finish().unwrap();
            let key = |g: usize, p: u32| k[(p as usize * nkv + g) * hd..][..hd].to_vec();
            let value = |g: usize, p: u32| v[(p as usize * nkv + g) * hd..][..hd].to_vec();
            let want = reference::attention_ref(
                &q, heads, nkv, hd, 0.7, 0, false, None, n_keys, &key, &value,
            );
            let what = format!(
                "{path} rows bidirectional L {l} keys {n_keys}/{n_store} heads {heads}/{nkv} hd {hd}"
            );
            assert_close(&what, &out.to_f32(&ctx).unwrap(), &want, 2e-5, 1e-4);
        }
    }
}

#[test]
fn causal_ring_with_and_without_window_matches_the_reference() {
    // (first query position, queries, window, ring slots, heads, kv heads, head dim)
    type Case = (usize, usize, Option<u32>, usize, usize, usize, usize);
    let cases: &[Case] = &[
        (100, 50, Some(20), 69, 4, 2, 72),
        (0, 70, Some(8), 77, 2, 1, 16),
        (3, 1, Some(5), 5, 2, 2, 64),
        (0, 129, None, 129, 2, 2, 32),
        (40, 30, None, 80, 3, 1, 8),
    ];
    for (path, ctx) in paths() {
        for &(p0, l, window, cap, heads, nkv, hd) in cases {
            let total = p0 + l;
            let mut rng = Rng::new(99 + p0 as u64 + l as u64 * 7);
            let k = rng.normals(total * nkv * hd, 1.0);
            let v = rng.normals(total * nkv * hd, 1.0);
            let q = rng.normals(l * heads * hd, 0.5);
            // head-major ring [nkv, cap, hd]: position p in slot p % cap; write the positions the
            // queries can see (the last `cap` ones), oldest first, as the KV cache would hold them
            let mut kc = vec![0f32; nkv * cap * hd];
            let mut vc = vec![0f32; nkv * cap * hd];
            for p in total.saturating_sub(cap)..total {
                for g in 0..nkv {
                    let src = (p * nkv + g) * hd;
                    let dst = (g * cap + p % cap) * hd;
                    kc[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                    vc[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
                }
            }
            let kt = GpuTensor::from_f32(&ctx, &[nkv, cap, hd], &kc).unwrap();
            let vt = GpuTensor::from_f32(&ctx, &[nkv, cap, hd], &vc).unwrap();
            let qt = GpuTensor::from_f32(&ctx, &[l, heads, hd], &q).unwrap();
            let out = GpuTensor::zeros(&ctx, &[l, heads, hd], DType::F32).unwrap();
            let shape = AttnShape {
                n_heads: heads as u32,
                n_kv_heads: nkv as u32,
                head_dim: hd as u32,
                cap: cap as u32,
                scale: 1.0,
                mask: AttnMask::Causal { window },
                layout: KvLayout::HeadMajor,
            };
            let mut rec = ctx.recorder();
            attention_rows(&mut rec, &qt, &kt, &vt, &out, &shape, p0 as u32).unwrap();
            rec.finish().unwrap();
            let key = |g: usize, p: u32| k[(p as usize * nkv + g) * hd..][..hd].to_vec();
            let value = |g: usize, p: u32| v[(p as usize * nkv + g) * hd..][..hd].to_vec();
            let want = reference::attention_ref(
                &q, heads, nkv, hd, 1.0, p0 as u32, true, window, 0, &key, &value,
            );
            let what = format!(
                "{path} rows causal queries {p0}..{total} window {window:?} cap {cap} heads \
                 {heads}/{nkv} hd {hd}"
            );
            assert_close(&what, &out.to_f32(&ctx).unwrap(), &want, 2e-5, 1e-4);

            // the one-workgroup-per-query kernel gives the same
            let out2 = GpuTensor::zeros(&ctx, &[l, heads, hd], DType::F32).unwrap();
            let mut rec = ctx.recorder();
            attention_prefill(&mut rec, &qt, &kt, &vt, &out2, &shape, p0 as u32).unwrap();
            rec.finish().unwrap();
            assert_close(
                &format!("{what} vs attention_prefill"),
                &out.to_f32(&ctx).unwrap(),
                &out2.to_f32(&ctx).unwrap(),
                2e-5,
                1e-4,
            );
        }
    }
}

#[test]
fn rows_refuses_what_it_cannot_run() {
    let Some(ctx) = common::gpu() else { return };
    let mk = |hd: usize, l: usize| {
        (
            GpuTensor::zeros(&ctx, &[l, 2, hd], DType::F32).unwrap(),
            GpuTensor::zeros(&ctx, &[8, 2, hd], DType::F32).unwrap(),
            GpuTensor::zeros(&ctx, &[l, 2, hd], DType::F32).unwrap(),
        )
    };
    let shape = |hd: usize, n_keys: u32| AttnShape {
        n_heads: 2,
        n_kv_heads: 2,
        head_dim: hd as u32,
        cap: 8,
        scale: 1.0,
        mask: AttnMask::Bidirectional { n_keys },
        layout: KvLayout::TokenMajor,
    };
    let mut rec = ctx.recorder();
    let (q, kv, out) = mk(16, 3);
    assert!(attention_rows(&mut rec, &q, &kv, &kv, &out, &shape(16, 8), 0).is_ok());
    // more valid keys than slots
    assert!(attention_rows(&mut rec, &q, &kv, &kv, &out, &shape(16, 9), 0).is_err());
    // out aliasing q
    assert!(attention_rows(&mut rec, &q, &kv, &kv, &q, &shape(16, 8), 0).is_err());
    // a head dim above the register budget, and one that is not a multiple of 4
    let big = MAX_ROWS_HEAD_DIM as usize + 4;
    let (q, kv, out) = mk(big, 3);
    let e = attention_rows(&mut rec, &q, &kv, &kv, &out, &shape(big, 8), 0).unwrap_err();
    assert!(e.to_string().contains("head dim"), "{e}");
    let (q, kv, out) = mk(18, 3);
    assert!(attention_rows(&mut rec, &q, &kv, &kv, &out, &shape(18, 8), 0).is_err());
    rec.finish().unwrap();
}

//! RMSNorm, RoPE (default, proportional, 2-D) against the CPU references, on both kernel paths.

use crate::common;

use common::{Rng, assert_close, paths};
use gemma_wgpu::gpu::ops::{rms_norm, rope, rope_2d, rope_2d_inv_freq, rope_inv_freq};
use gemma_wgpu::gpu::{GpuTensor, reference};

#[test]
fn rms_norm_matches_reference() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(1);
        for &dim in &[16usize, 64, 100, 1536] {
            for &rows in &[1usize, 3, 77] {
                let x = rng.normals(rows * dim, 2.0);
                let w = rng.normals(dim, 1.0);
                let xt = GpuTensor::from_f32(&ctx, &[rows, dim], &x).unwrap();
                let wt = GpuTensor::from_f32(&ctx, &[dim], &w).unwrap();
                for weighted in [true, false] {
                    let wopt = weighted.then_some(&wt);
                    let want = reference::rms_norm_ref(&x, weighted.then_some(&w[..]), dim, 1e-6);
                    // out of place
                    let out =
                        GpuTensor::zeros(&ctx, &[rows, dim], gemma_wgpu::gpu::DType::F32).unwrap();
                    let mut rec = ctx.recorder();
                    rms_norm(&mut rec, &xt, wopt, &out, 1e-6).unwrap();
                    rec.finish().unwrap();
                    let what = format!("{path} rms_norm rows {rows} dim {dim} weight {weighted}");
                    assert_close(&what, &out.to_f32(&ctx).unwrap(), &want, 1e-5, 1e-4);
                    // in place, on a view at an odd offset
                    let mut padded = vec![7.0f32; 3];
                    padded.extend_from_slice(&x);
                    let buf = GpuTensor::from_f32(&ctx, &[padded.len()], &padded).unwrap();
                    let view = buf.view(3, &[rows, dim]);
                    let mut rec = ctx.recorder();
                    rms_norm(&mut rec, &view, wopt, &view, 1e-6).unwrap();
                    rec.finish().unwrap();
                    let got = buf.to_f32(&ctx).unwrap();
                    assert_eq!(
                        &got[..3],
                        &[7.0; 3],
                        "{what}: in place wrote before the view"
                    );
                    assert_close(&format!("{what} in place"), &got[3..], &want, 1e-5, 1e-4);
                    // x and out disjoint views of one buffer
                    let mut two = x.clone();
                    two.extend(std::iter::repeat_n(0.0, rows * dim));
                    let buf = GpuTensor::from_f32(&ctx, &[two.len()], &two).unwrap();
                    let (xv, ov) = (
                        buf.view(0, &[rows, dim]),
                        buf.view(rows * dim, &[rows, dim]),
                    );
                    let mut rec = ctx.recorder();
                    rms_norm(&mut rec, &xv, wopt, &ov, 1e-6).unwrap();
                    rec.finish().unwrap();
                    let got = buf.to_f32(&ctx).unwrap();
                    assert_eq!(&got[..rows * dim], &x[..], "{what}: one buffer: x changed");
                    assert_close(
                        &format!("{what} one buffer"),
                        &got[rows * dim..],
                        &want,
                        1e-5,
                        1e-4,
                    );
                }
            }
        }
    }
}

#[test]
fn inv_freq_like_transformers() {
    let f = rope_inv_freq(256, 10000.0, None);
    assert_eq!(f.len(), 128);
    assert_eq!(f[0], 1.0);
    assert!((f[1] as f64 - 10000f64.powf(-2.0 / 256.0)).abs() < 1e-7);
    let p = rope_inv_freq(512, 1e6, Some(0.25));
    assert_eq!(p.len(), 256);
    assert!((p[63] as f64 - 1e6f64.powf(-126.0 / 512.0)).abs() < 1e-7);
    assert!(p[63] > 0.0 && p[64..].iter().all(|&v| v == 0.0));
    let v = rope_2d_inv_freq(64, 100.0);
    assert_eq!(v.len(), 16);
    assert!((v[3] as f64 - 100f64.powf(-6.0 / 32.0)).abs() < 1e-7);
}

#[test]
fn rope_matches_reference() {
    let positions: Vec<u32> = vec![0, 1, 5000, 9000, 17, 131071];
    let tokens = positions.len();
    for (path, ctx) in paths() {
        let mut rng = Rng::new(2);
        // (hd, heads, theta, partial factor)
        for &(hd, heads, theta, partial) in &[
            (16usize, 3usize, 10000.0, None),
            (256, 2, 10000.0, None),
            (64, 2, 1e6, Some(0.25f32)),
            (512, 2, 1e6, Some(0.25)),
        ] {
            let inv = rope_inv_freq(hd, theta, partial);
            let x = rng.normals(tokens * heads * hd, 1.0);
            let want = reference::rope_ref(&x, heads, hd, &positions, &inv);
            let mut padded = vec![0.5f32; 5];
            padded.extend_from_slice(&x);
            let buf = GpuTensor::from_f32(&ctx, &[padded.len()], &padded).unwrap();
            let xt = buf.view(5, &[tokens, heads, hd]);
            let pt = GpuTensor::from_u32(&ctx, &[tokens], &positions).unwrap();
            let ft = GpuTensor::from_f32(&ctx, &[hd / 2], &inv).unwrap();
            let mut rec = ctx.recorder();
            rope(&mut rec, &xt, &pt, &ft).unwrap();
            rec.finish().unwrap();
            let got = buf.to_f32(&ctx).unwrap();
            assert_eq!(&got[..5], &[0.5; 5]);
            let got = &got[5..];
            let what = format!("{path} rope hd {hd} partial {partial:?}");
            assert_close(&what, got, &want, 2e-5, 1e-4);
            if let Some(f) = partial {
                let angles = (f * hd as f32 / 2.0) as usize;
                for (r, (g, x0)) in got.chunks(hd).zip(x.chunks(hd)).enumerate() {
                    for j in angles..hd / 2 {
                        assert_eq!(g[j], x0[j], "{what}: row {r} dim {j} must pass through");
                        assert_eq!(
                            g[j + hd / 2],
                            x0[j + hd / 2],
                            "{what}: row {r} dim {j}+hd/2"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn rope_2d_matches_reference() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(3);
        for &(hd, heads) in &[(64usize, 3usize), (16, 2)] {
            let tokens = 13;
            let positions: Vec<u32> = (0..tokens as u32)
                .flat_map(|t| [t % 5, t / 5 + 40])
                .collect();
            let inv = rope_2d_inv_freq(hd, 100.0);
            let x = rng.normals(tokens * heads * hd, 1.0);
            let want = reference::rope_2d_ref(&x, heads, hd, &positions, &inv);
            let xt = GpuTensor::from_f32(&ctx, &[tokens, heads, hd], &x).unwrap();
            let pt = GpuTensor::from_u32(&ctx, &[tokens, 2], &positions).unwrap();
            let ft = GpuTensor::from_f32(&ctx, &[hd / 4], &inv).unwrap();
            let mut rec = ctx.recorder();
            rope_2d(&mut rec, &xt, &pt, &ft).unwrap();
            rec.finish().unwrap();
            let what = format!("{path} rope_2d hd {hd}");
            assert_close(&what, &xt.to_f32(&ctx).unwrap(), &want, 2e-5, 1e-4);
        }
    }
}

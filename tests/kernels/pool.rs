//! Average pooling against the CPU reference, on both kernel paths.

use crate::common;

use common::{Rng, assert_close, paths};
use gemma_wgpu::gpu::ops::avg_pool_2d;
use gemma_wgpu::gpu::{DType, GpuTensor, reference};

#[test]
fn avg_pool_matches_cpu() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(11);
        // (ph, pw, c, k): the vision tower's 3x3 pool, non-square grids, 1x1, k = 1, odd channels
        for &(ph, pw, c, k) in &[
            (3usize, 3usize, 1usize, 3usize),
            (6, 9, 7, 3),
            (48, 33, 13, 3),
            (4, 8, 257, 2),
            (5, 2, 3, 1),
            (12, 12, 768, 3),
        ] {
            let x = rng.normals(ph * pw * c, 2.0);
            let scale = (768f32).sqrt();
            // place both tensors at odd element offsets inside larger buffers (views)
            let mut padded = vec![0.5f32; 3];
            padded.extend_from_slice(&x);
            let tx = GpuTensor::from_f32(&ctx, &[padded.len()], &padded)
                .unwrap()
                .view(3, &[ph * pw, c]);
            let n_out = (ph / k) * (pw / k) * c;
            let out_buf = GpuTensor::zeros(&ctx, &[n_out + 5], DType::F32).unwrap();
            let out = out_buf.view(5, &[(ph / k) * (pw / k), c]);
            let mut rec = ctx.recorder();
            avg_pool_2d(&mut rec, &tx, &out, ph as u32, pw as u32, k as u32, scale).unwrap();
            rec.finish().unwrap();
            let all = out_buf.to_f32(&ctx).unwrap();
            assert_eq!(&all[..5], &[0.0; 5], "{path}: wrote before the output view");
            let want = reference::avg_pool_2d_ref(&x, ph, pw, c, k, scale);
            assert_close(
                &format!("{path} pool {ph}x{pw}x{c} k={k}"),
                &all[5..],
                &want,
                1e-4,
                1e-5,
            );
        }
    }
}

#[test]
fn avg_pool_rejects_bad_shapes() {
    for (_, ctx) in paths() {
        let x = GpuTensor::zeros(&ctx, &[20, 4], DType::F32).unwrap();
        let out = GpuTensor::zeros(&ctx, &[2, 4], DType::F32).unwrap();
        let mut rec = ctx.recorder();
        // 4x5 grid is not a multiple of 3 / 2
        assert!(avg_pool_2d(&mut rec, &x, &out, 4, 5, 3, 1.0).is_err());
        assert!(avg_pool_2d(&mut rec, &x, &out, 4, 5, 2, 1.0).is_err());
        assert!(avg_pool_2d(&mut rec, &x, &out, 4, 5, 0, 1.0).is_err());
        // wrong output size: a 4x4 grid would not match 20 tokens
        assert!(avg_pool_2d(&mut rec, &x, &out, 4, 4, 2, 1.0).is_err());
        assert!(rec.is_empty());
    }
}

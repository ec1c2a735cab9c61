//! LayerNorm against the CPU reference on both kernel paths: the embedder's widths (6912 pixel
//! values, hidden sizes) and awkward ones (1, 72, 130: not multiples of the workgroup), one row
//! and many, out of place, in place and on disjoint views of one buffer.

use crate::common;

use common::{Rng, assert_close, paths};
use gemma_wgpu::gpu::ops::layer_norm;
use gemma_wgpu::gpu::{DType, GpuTensor, reference};

#[test]
fn layer_norm_matches_reference() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(7);
        for &dim in &[1usize, 72, 130, 6912] {
            for &rows in &[1usize, 5, 130] {
                if dim * rows > 6912 * 5 {
                    continue;
                }
                // Pixel-like rows in [0, 1] with an offset (a large mean, small spread) and
                // one constant row (zero variance: the output is the bias).
                let mut x: Vec<f32> = rng
                    .normals(rows * dim, 0.3)
                    .iter()
                    .map(|v| v + 3.0)
                    .collect();
                for v in &mut x[..dim] {
                    *v = 0.25;
                }
                let w = rng.normals(dim, 1.0);
                let b = rng.normals(dim, 0.5);
                let eps = 1e-5;
                let want = reference::layer_norm_ref(&x, &w, &b, eps);
                let xt = GpuTensor::from_f32(&ctx, &[rows, dim], &x).unwrap();
                let wt = GpuTensor::from_f32(&ctx, &[dim], &w).unwrap();
                let bt = GpuTensor::from_f32(&ctx, &[dim], &b).unwrap();
                let what = format!("{path} layer_norm rows {rows} dim {dim}");
                // out of place
                let out = GpuTensor::zeros(&ctx, &[rows, dim], DType::F32).unwrap();
                let mut rec = ctx.recorder();
                layer_norm(&mut rec, &xt, &wt, &bt, &out, eps).unwrap();
                rec.finish().unwrap();
                assert_close(&what, &out.to_f32(&ctx).unwrap(), &want, 1e-5, 1e-4);
                // in place, on a view at an odd offset
                let mut padded = vec![7.0f32; 3];
                padded.extend_from_slice(&x);
                let buf = GpuTensor::from_f32(&ctx, &[padded.len()], &padded).unwrap();
                let view = buf.view(3, &[rows, dim]);
                let mut rec = ctx.recorder();
                layer_norm(&mut rec, &view, &wt, &bt, &view, eps).unwrap();
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
                layer_norm(&mut rec, &xv, &wt, &bt, &ov, eps).unwrap();
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

#[test]
fn layer_norm_refuses_bad_shapes() {
    let Some(ctx) = common::gpu() else {
        return;
    };
    let x = GpuTensor::zeros(&ctx, &[3, 10], DType::F32).unwrap();
    let w = GpuTensor::zeros(&ctx, &[10], DType::F32).unwrap();
    let b9 = GpuTensor::zeros(&ctx, &[9], DType::F32).unwrap();
    let w7 = GpuTensor::zeros(&ctx, &[7], DType::F32).unwrap();
    let out = GpuTensor::zeros(&ctx, &[3, 10], DType::F32).unwrap();
    let out_small = GpuTensor::zeros(&ctx, &[2, 10], DType::F32).unwrap();
    let mut rec = ctx.recorder();
    assert!(layer_norm(&mut rec, &x, &w, &b9, &out, 1e-5).is_err());
    assert!(layer_norm(&mut rec, &x, &w7, &w7, &out, 1e-5).is_err());
    assert!(layer_norm(&mut rec, &x, &w, &w, &out_small, 1e-5).is_err());
    // Partial overlap of x and out in one buffer.
    let buf = GpuTensor::zeros(&ctx, &[40], DType::F32).unwrap();
    let (xv, ov) = (buf.view(0, &[3, 10]), buf.view(5, &[3, 10]));
    assert!(layer_norm(&mut rec, &xv, &w, &w, &ov, 1e-5).is_err());
}

//! Elementwise kernels against the CPU reference, on both kernel paths.

use crate::common;

use common::{Rng, assert_close, paths};
use gemma_wgpu::gpu::ops::{Elementwise, elementwise};
use gemma_wgpu::gpu::{GpuTensor, reference};

fn cpu(op: Elementwise, a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter()
        .enumerate()
        .map(|(i, &x)| {
            let y = if b.is_empty() { 0.0 } else { b[i % b.len()] };
            match op {
                Elementwise::Add => x + y,
                Elementwise::Sub => x - y,
                Elementwise::Mul => x * y,
                Elementwise::Scale(s) => x * s,
                Elementwise::GeluTanh => reference::gelu_tanh(x),
                Elementwise::GeluMul => reference::gelu_tanh(x) * y,
                Elementwise::Clamp(lo, hi) => x.clamp(lo, hi),
                Elementwise::Softcap(c) => reference::softcap(x, c),
                Elementwise::ScaleShift(a, b) => x * a + b,
            }
        })
        .collect()
}

#[test]
fn elementwise_ops_match_cpu() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(7);
        let ops = [
            Elementwise::Add,
            Elementwise::Sub,
            Elementwise::Mul,
            Elementwise::Scale(-0.37),
            Elementwise::GeluTanh,
            Elementwise::GeluMul,
            Elementwise::Clamp(-0.5, 1.25),
            Elementwise::Softcap(3.0),
            Elementwise::ScaleShift(2.0, -1.0),
        ];
        // awkward sizes: 1, below / above one workgroup, and a broadcast row vector
        for &(n, bn) in &[
            (1usize, 1usize),
            (255, 255),
            (257, 257),
            (3 * 129, 129),
            (70001, 70001),
        ] {
            let a = rng.normals(n, 4.0);
            let b = rng.normals(bn, 2.0);
            let ta = GpuTensor::from_f32(&ctx, &[n], &a).unwrap();
            let tb = GpuTensor::from_f32(&ctx, &[bn], &b).unwrap();
            for op in ops {
                let out = GpuTensor::zeros(&ctx, &[n], gemma_wgpu::gpu::DType::F32).unwrap();
                let mut rec = ctx.recorder();
                elementwise(&mut rec, op, &ta, Some(&tb), &out).unwrap();
                rec.finish().unwrap();
                let got = out.to_f32(&ctx).unwrap();
                let want = cpu(op, &a, if op.is_binary() { &b } else { &[] });
                assert_close(&format!("{path} {op:?} n={n}"), &got, &want, 1e-5, 1e-5);
            }
        }
    }
}

#[test]
fn one_submit_for_many_dispatches() {
    for (_, ctx) in paths() {
        // a private context (own counters), so parallel tests do not disturb the count
        let ctx = ctx.fallback();
        let a = GpuTensor::from_f32(&ctx, &[1000], &vec![1.0; 1000]).unwrap();
        let b = GpuTensor::zeros(&ctx, &[1000], gemma_wgpu::gpu::DType::F32).unwrap();
        let (d0, s0) = ctx.counters().snapshot();
        let mut rec = ctx.recorder();
        for i in 0..50 {
            let (x, y) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
            elementwise(&mut rec, Elementwise::Scale(2.0), x, None, y).unwrap();
        }
        rec.finish().unwrap();
        let (d1, s1) = ctx.counters().snapshot();
        assert_eq!(d1 - d0, 50);
        assert_eq!(s1 - s0, 1);
        // 50 doublings alternate between a and b; a ends with 2^50.
        let got = a.to_f32(&ctx).unwrap();
        assert_eq!(got[999], 2f32.powi(50));
    }
}

#[test]
fn views_at_unaligned_element_offsets() {
    for (path, ctx) in paths() {
        let data: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let t = GpuTensor::from_f32(&ctx, &[100], &data).unwrap();
        let out = GpuTensor::zeros(&ctx, &[100], gemma_wgpu::gpu::DType::F32).unwrap();
        // out[3..10] = t[5..12] + t[91..98]
        let mut rec = ctx.recorder();
        elementwise(
            &mut rec,
            Elementwise::Add,
            &t.view(5, &[7]),
            Some(&t.view(91, &[7])),
            &out.view(3, &[7]),
        )
        .unwrap();
        rec.finish().unwrap();
        let got = out.to_f32(&ctx).unwrap();
        for (i, &g) in got.iter().enumerate() {
            let want = if (3..10).contains(&i) {
                (i + 2 + i + 88) as f32
            } else {
                0.0
            };
            assert_eq!(g, want, "{path} element {i}");
        }
    }
}

#[test]
fn in_place_with_strided_rows() {
    use gemma_wgpu::gpu::ops::{BLayout, elementwise_inplace};
    for (path, ctx) in paths() {
        let mut rng = Rng::new(11);
        // a: [5, 3]; b: [5, 4, 3] and we use layer 2's rows (offset 6, stride 12)
        let a = rng.normals(15, 1.0);
        let b = rng.normals(60, 1.0);
        let ta = GpuTensor::from_f32(&ctx, &[5, 3], &a).unwrap();
        let tb = GpuTensor::from_f32(&ctx, &[60], &b).unwrap();
        let mut rec = ctx.recorder();
        elementwise_inplace(
            &mut rec,
            Elementwise::GeluMul,
            &ta,
            Some((
                &tb.view(6, &[54]),
                BLayout::Rows {
                    cols: 3,
                    stride: 12,
                },
            )),
        )
        .unwrap();
        elementwise_inplace(&mut rec, Elementwise::Scale(2.0), &ta, None).unwrap();
        rec.finish().unwrap();
        let got = ta.to_f32(&ctx).unwrap();
        let want: Vec<f32> = (0..15)
            .map(|i| 2.0 * reference::gelu_tanh(a[i]) * b[6 + (i / 3) * 12 + i % 3])
            .collect();
        assert_close(&format!("{path} in-place rows"), &got, &want, 1e-5, 1e-5);
    }
}

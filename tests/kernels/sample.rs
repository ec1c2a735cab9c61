//! argmax, top-k and GPU sampling against the CPU references, on both kernel paths.

use crate::common;

use common::{Rng, paths};
use gemma_wgpu::gpu::ops::{SampleParams, SampleScratch, argmax, sample, top_k};
use gemma_wgpu::gpu::{DType, GpuContext, GpuTensor, reference};

const SIZES: &[usize] = &[1, 7, 255, 257, 100003, 262144];

/// Test vectors of length n: random normals, heavy ties, all negative, and a few specials.
fn vectors(rng: &mut Rng, n: usize) -> Vec<(&'static str, Vec<f32>)> {
    let normal = rng.normals(n, 3.0);
    // values on a coarse grid: many exact ties, the maximum repeated
    let ties: Vec<f32> = (0..n).map(|_| (rng.below(5) as f32) * 0.5).collect();
    let negative: Vec<f32> = rng.normals(n, 1.0).iter().map(|x| x - 100.0).collect();
    let mut special = rng.normals(n, 1.0);
    if n > 3 {
        special[n - 1] = 50.0; // maximum at the very end
        special[1] = f32::NEG_INFINITY;
        special[2] = -0.0;
    }
    vec![
        ("normal", normal),
        ("ties", ties),
        ("negative", negative),
        ("special", special),
    ]
}

fn upload(ctx: &GpuContext, v: &[f32], pad: usize) -> GpuTensor {
    // logits at an odd element offset inside a larger buffer
    let mut data = vec![1e30f32; pad];
    data.extend_from_slice(v);
    GpuTensor::from_f32(ctx, &[data.len()], &data)
        .unwrap()
        .view(pad, &[v.len()])
}

#[test]
fn argmax_matches_cpu() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(1);
        let scratch = SampleScratch::new(&ctx, 1 << 20).unwrap();
        for &n in SIZES {
            for (kind, v) in vectors(&mut rng, n) {
                let t = upload(&ctx, &v, 3);
                let out = GpuTensor::zeros(&ctx, &[1], DType::U32).unwrap();
                let mut rec = ctx.recorder();
                argmax(&mut rec, &t, &out, &scratch).unwrap();
                rec.finish().unwrap();
                let got = out.to_u32(&ctx).unwrap()[0];
                assert_eq!(got, reference::argmax_ref(&v), "{path} argmax {kind} n={n}");
            }
        }
    }
}

#[test]
fn argmax_nan_is_largest_and_first_wins() {
    for (path, ctx) in paths() {
        let scratch = SampleScratch::new(&ctx, 4096).unwrap();
        let mut v = vec![0f32; 3000];
        v[17] = f32::INFINITY;
        v[2500] = f32::NAN;
        v[2900] = f32::NAN;
        let t = upload(&ctx, &v, 0);
        let out = GpuTensor::zeros(&ctx, &[1], DType::U32).unwrap();
        let mut rec = ctx.recorder();
        argmax(&mut rec, &t, &out, &scratch).unwrap();
        rec.finish().unwrap();
        assert_eq!(out.to_u32(&ctx).unwrap()[0], 2500, "{path}");
        assert_eq!(reference::argmax_ref(&v), 2500);
        // -0.0 and +0.0 tie: the lower index wins
        let z = upload(&ctx, &[-1.0, -0.0, 0.0], 0);
        let mut rec = ctx.recorder();
        argmax(&mut rec, &z, &out, &scratch).unwrap();
        rec.finish().unwrap();
        assert_eq!(out.to_u32(&ctx).unwrap()[0], 1, "{path} signed zero");
    }
}

#[test]
fn top_k_matches_cpu() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(2);
        let scratch = SampleScratch::new(&ctx, 1 << 20).unwrap();
        for &n in SIZES {
            for (kind, v) in vectors(&mut rng, n) {
                let t = upload(&ctx, &v, 1);
                let ks: Vec<u32> = [1u32, 5, 64]
                    .into_iter()
                    .filter(|&k| k as usize <= n)
                    .collect();
                let vals: Vec<GpuTensor> = ks
                    .iter()
                    .map(|&k| GpuTensor::zeros(&ctx, &[k as usize], DType::F32).unwrap())
                    .collect();
                let idxs: Vec<GpuTensor> = ks
                    .iter()
                    .map(|&k| GpuTensor::zeros(&ctx, &[k as usize], DType::U32).unwrap())
                    .collect();
                let mut rec = ctx.recorder();
                for (i, &k) in ks.iter().enumerate() {
                    top_k(&mut rec, &t, k, &vals[i], &idxs[i], &scratch).unwrap();
                }
                rec.finish().unwrap();
                for (i, &k) in ks.iter().enumerate() {
                    let (want_v, want_i) = reference::top_k_ref(&v, k as usize);
                    let got_i = idxs[i].to_u32(&ctx).unwrap();
                    let got_v = vals[i].to_f32(&ctx).unwrap();
                    assert_eq!(got_i, want_i, "{path} top_k {kind} n={n} k={k} indices");
                    let gb: Vec<u32> = got_v.iter().map(|x| x.to_bits()).collect();
                    let wb: Vec<u32> = want_v.iter().map(|x| x.to_bits()).collect();
                    assert_eq!(gb, wb, "{path} top_k {kind} n={n} k={k} values");
                }
            }
        }
    }
}

#[test]
fn top_k_rejects_bad_k() {
    for (_, ctx) in paths() {
        let scratch = SampleScratch::new(&ctx, 100).unwrap();
        let t = GpuTensor::zeros(&ctx, &[10], DType::F32).unwrap();
        let big = GpuTensor::zeros(&ctx, &[101], DType::F32).unwrap();
        let v = GpuTensor::zeros(&ctx, &[65], DType::F32).unwrap();
        let i = GpuTensor::zeros(&ctx, &[65], DType::U32).unwrap();
        let mut rec = ctx.recorder();
        assert!(top_k(&mut rec, &t, 0, &v, &i, &scratch).is_err());
        assert!(top_k(&mut rec, &t, 11, &v, &i, &scratch).is_err());
        assert!(top_k(&mut rec, &big, 65, &v, &i, &scratch).is_err());
        assert!(
            top_k(&mut rec, &big, 5, &v, &i, &scratch).is_err(),
            "n > max_n"
        );
        assert!(rec.is_empty());
    }
}

fn combos() -> Vec<SampleParams> {
    let p = |temperature, top_k, top_p, min_p| SampleParams {
        temperature,
        top_k,
        top_p,
        min_p,
        uniform: 0.0,
    };
    vec![
        p(1.0, 64, 0.95, 0.0), // Gemma's generation defaults
        p(0.7, 40, 0.9, 0.05),
        p(1.5, 5, 1.0, 0.0),
        p(1.0, 0, 0.5, 0.1),
        p(2.0, 64, 1.0, 0.0),
        p(1.0, 64, 0.0, 0.0), // top_p 0: only the best token
        p(3.0, 64, 0.8, 0.3),
        p(0.0, 64, 0.95, 0.0), // greedy by temperature
        p(1.0, 1, 0.95, 0.0),  // greedy by top_k
    ]
}

#[test]
fn sample_matches_cpu_reference() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(3);
        let scratch = SampleScratch::new(&ctx, 1 << 20).unwrap();
        for &n in &[1usize, 7, 257, 100003] {
            let draws = if n > 10000 { 3 } else { 24 };
            for (kind, v) in vectors(&mut rng, n) {
                let t = upload(&ctx, &v, 2);
                let mut cases = Vec::new();
                for c in combos() {
                    for d in 0..draws {
                        let uniform = match d {
                            0 => 0.0,
                            1 => 0.999_999,
                            _ => rng.uniform(),
                        };
                        cases.push(SampleParams { uniform, ..c });
                    }
                }
                let out = GpuTensor::zeros(&ctx, &[cases.len()], DType::U32).unwrap();
                let mut rec = ctx.recorder();
                for (j, c) in cases.iter().enumerate() {
                    sample(&mut rec, &t, &out.view(j, &[1]), c, &scratch).unwrap();
                }
                rec.finish().unwrap();
                let got = out.to_u32(&ctx).unwrap();
                let mut distinct = std::collections::HashSet::new();
                for (j, c) in cases.iter().enumerate() {
                    let want = reference::sample_ref(&v, c);
                    assert_eq!(got[j], want, "{path} sample {kind} n={n} {c:?}");
                    if c.temperature == 2.0 {
                        distinct.insert(got[j]);
                    }
                    if c.temperature == 0.0 || c.top_k == 1 || c.top_p == 0.0 {
                        assert_eq!(got[j], reference::argmax_ref(&v), "{path} greedy {c:?}");
                    }
                }
                if kind == "normal" && n >= 257 {
                    assert!(
                        distinct.len() > 1,
                        "{path} n={n}: sampling is not random: {distinct:?}"
                    );
                }
            }
        }
    }
}

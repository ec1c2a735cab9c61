//! The GPU repetition penalty against the CPU reference, on both kernel paths.

use crate::common;

use common::{Rng, paths};
use gemma_wgpu::gpu::ops::repetition_penalty;
use gemma_wgpu::gpu::{DType, GpuTensor, reference};

#[test]
fn penalty_matches_reference() {
    let mut rng = Rng::new(7);
    for (path, ctx) in paths() {
        for &(vocab, n_ids) in &[
            (1usize, 1usize),
            (7, 3),
            (1000, 0),
            (1000, 65),
            (262144, 300),
        ] {
            for &penalty in &[1.3f32, 0.7, 1.0] {
                let logits = rng.normals(vocab, 4.0);
                // distinct ids, plus one out-of-range id that must be ignored
                let mut ids: Vec<u32> = Vec::new();
                while ids.len() < n_ids.min(vocab) {
                    let t = rng.below(vocab as u64) as u32;
                    if !ids.contains(&t) {
                        ids.push(t);
                    }
                }
                if n_ids > 0 {
                    ids.push(vocab as u32 + 5);
                }
                let mut want = logits.clone();
                reference::repetition_penalty_ref(&mut want, &ids, penalty);

                // logits and ids at odd offsets inside larger buffers
                let mut data = vec![9.0f32; 3];
                data.extend_from_slice(&logits);
                let lt = GpuTensor::from_f32(&ctx, &[data.len()], &data)
                    .unwrap()
                    .view(3, &[vocab]);
                let mut id_data = vec![0u32; 5];
                id_data.extend_from_slice(&ids);
                id_data.push(0); // capacity beyond n_ids
                let it = GpuTensor::from_u32(&ctx, &[id_data.len()], &id_data).unwrap();
                let it = it.view(5, &[ids.len() + 1]).as_dtype(DType::U32);
                let mut rec = ctx.recorder();
                repetition_penalty(&mut rec, &lt, &it, ids.len(), penalty).unwrap();
                rec.finish().unwrap();
                let got = lt.to_f32(&ctx).unwrap();
                assert_eq!(
                    got, want,
                    "{path}: vocab {vocab}, {n_ids} ids, penalty {penalty}"
                );
            }
        }
    }
}

#[test]
fn penalty_rejects_bad_arguments() {
    let Some(ctx) = common::gpu() else { return };
    let lt = GpuTensor::from_f32(&ctx, &[4], &[1.0; 4]).unwrap();
    let it = GpuTensor::from_u32(&ctx, &[2], &[0, 1]).unwrap();
    let mut rec = ctx.recorder();
    assert!(repetition_penalty(&mut rec, &lt, &it, 3, 1.2).is_err());
    assert!(repetition_penalty(&mut rec, &lt, &it, 2, 0.0).is_err());
    assert!(repetition_penalty(&mut rec, &lt, &lt, 2, 1.2).is_err());
}

//! Linear (matvec + tiled matmul) and embedding-gather kernels against the CPU reference, for
//! every weight format, on both kernel paths.

use crate::common;

use common::{Rng, assert_close, paths};
use gemma_wgpu::gpu::ops::{embedding, linear};
use gemma_wgpu::gpu::{
    DType, GpuContext, GpuTensor, HostMatrix, Matrix, ScaleDType, WeightFormat, reference,
};

use crate::host::{Host, scale_bytes};

fn make(rng: &mut Rng, rows: usize, cols: usize, format: WeightFormat) -> Host {
    crate::host::make(rng, rows, cols, format, 0.5)
}

/// atol of an f32 dot product of length K (values of order 1): f32 accumulation error grows
/// like sqrt(K).
fn atol(k: usize) -> f32 {
    1e-4 * (k as f32).sqrt()
}

/// Runs `linear` with x at element offset `x_off` and y at `y_off` (sentinel-filled around it)
/// and compares with the CPU reference; also checks nothing outside y was written.
#[allow(clippy::too_many_arguments)]
fn check_linear(
    ctx: &GpuContext,
    what: &str,
    m: &Matrix,
    wd: &[f32],
    batch: usize,
    x_off: usize,
    y_off: usize,
    rng: &mut Rng,
) {
    let (rows, cols) = (m.rows, m.cols);
    let x = rng.normals(batch * cols, 1.0);
    let mut xbuf = vec![7.0f32; x_off];
    xbuf.extend_from_slice(&x);
    xbuf.push(9.0);
    let xt = GpuTensor::from_f32(ctx, &[xbuf.len()], &xbuf)
        .unwrap()
        .view(x_off, &[batch, cols]);
    let ylen = y_off + batch * rows + 5;
    let yt_all = GpuTensor::from_f32(ctx, &[ylen], &vec![-3.0; ylen]).unwrap();
    let yt = yt_all.view(y_off, &[batch, rows]);
    let mut rec = ctx.recorder();
    linear(&mut rec, m, &xt, &yt).unwrap();
    rec.finish().unwrap();
    let all = yt_all.to_f32(ctx).unwrap();
    let want = reference::linear_ref(wd, rows, cols, &x, batch);
    assert_close(
        what,
        &all[y_off..y_off + batch * rows],
        &want,
        atol(cols),
        1e-5,
    );
    assert!(
        all[..y_off]
            .iter()
            .chain(&all[y_off + batch * rows..])
            .all(|&v| v == -3.0),
        "{what}: wrote outside y"
    );
}

#[test]
fn linear_float_formats() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(1);
        let shapes = [
            (1, 1),
            (7, 3),
            (65, 17),
            (129, 100),
            (7, 64),
            (33, 128),
            (1, 8),
        ];
        for format in [WeightFormat::F32, WeightFormat::F16, WeightFormat::BF16] {
            for (i, &(rows, cols)) in shapes.iter().enumerate() {
                let h = make(&mut rng, rows, cols, format);
                let m = Matrix::upload(&ctx, "w", &h.view(), None).unwrap();
                let wd = h.dequant();
                for (j, batch) in [1usize, 3, 17].into_iter().enumerate() {
                    let x_off = [0, 1, 4][(i + j) % 3];
                    let what =
                        format!("{path} {format:?} {rows}x{cols} batch {batch} x_off {x_off}");
                    check_linear(&ctx, &what, &m, &wd, batch, x_off, i % 2, &mut rng);
                }
            }
        }
    }
}

#[test]
fn linear_affine_formats() {
    let dts = [ScaleDType::F16, ScaleDType::BF16, ScaleDType::F32];
    for (path, ctx) in paths() {
        let mut rng = Rng::new(2);
        let mut case = 0usize;
        for (bi, bits) in [2u32, 3, 4, 5, 6, 8].into_iter().enumerate() {
            for (gi, group) in [32u32, 64, 128].into_iter().enumerate() {
                // each bits value with each group and each scale dtype
                let scales = dts[(bi + gi) % 3];
                let format = WeightFormat::Affine {
                    bits,
                    group,
                    scales,
                };
                let cols_choices: &[usize] = match group {
                    32 => &[32, 96, 320],
                    64 => &[64, 128, 320],
                    _ => &[128, 384],
                };
                let cols = cols_choices[case % cols_choices.len()];
                let rows = [1usize, 7, 65, 129][case % 4];
                let h = make(&mut rng, rows, cols, format);
                let m = Matrix::upload(&ctx, "w", &h.view(), None).unwrap();
                let wd = h.dequant();
                let batches: &[usize] = if case.is_multiple_of(3) {
                    &[1, 3, 17]
                } else {
                    &[1, 3]
                };
                for &batch in batches {
                    let x_off = [0, 1, 4][case % 3];
                    let what =
                        format!("{path} {format:?} {rows}x{cols} batch {batch} x_off {x_off}");
                    check_linear(&ctx, &what, &m, &wd, batch, x_off, case % 2, &mut rng);
                }
                case += 1;
            }
        }
    }
}

#[test]
fn linear_and_embedding_over_row_windows() {
    let formats = [
        WeightFormat::F16,
        WeightFormat::F32,
        WeightFormat::Affine {
            bits: 4,
            group: 64,
            scales: ScaleDType::BF16,
        },
        WeightFormat::Affine {
            bits: 3,
            group: 32,
            scales: ScaleDType::F32,
        },
    ];
    for (path, ctx) in paths() {
        let mut rng = Rng::new(3);
        for format in formats {
            let (rows, cols) = (200, 128);
            let h = make(&mut rng, rows, cols, format);
            let m = Matrix::upload(&ctx, "w", &h.view(), Some(64)).unwrap();
            assert_eq!(m.windows.len(), 4, "{format:?}: 200 rows in windows of 64");
            let wd = h.dequant();
            for batch in [1usize, 3, 33] {
                let what = format!("{path} windowed {format:?} batch {batch}");
                check_linear(&ctx, &what, &m, &wd, batch, 4, 2, &mut rng);
            }
            // gather ids from every window, with repeats
            let ids: Vec<u32> = vec![0, 199, 63, 64, 127, 128, 191, 192, 5, 5];
            let scale = 1.5f32;
            let ids_t =
                GpuTensor::from_u32(&ctx, &[ids.len() + 1], &[[1u32].as_slice(), &ids].concat())
                    .unwrap()
                    .view(1, &[ids.len()]);
            let out = GpuTensor::zeros(&ctx, &[ids.len() * cols], DType::F32).unwrap();
            let mut rec = ctx.recorder();
            embedding(&mut rec, &m, &ids_t, &out, scale).unwrap();
            rec.finish().unwrap();
            let want: Vec<f32> = ids
                .iter()
                .flat_map(|&id| {
                    wd[id as usize * cols..(id as usize + 1) * cols]
                        .iter()
                        .map(|v| v * scale)
                })
                .collect();
            let got = out.to_f32(&ctx).unwrap();
            assert_close(
                &format!("{path} gather {format:?}"),
                &got,
                &want,
                1e-6,
                1e-6,
            );
        }
    }
}

#[test]
fn embedding_every_format() {
    for (path, ctx) in paths() {
        let mut rng = Rng::new(4);
        let mut formats = vec![WeightFormat::F32, WeightFormat::F16, WeightFormat::BF16];
        let dts = [ScaleDType::F16, ScaleDType::BF16, ScaleDType::F32];
        for (i, bits) in [2u32, 3, 4, 5, 6, 8].into_iter().enumerate() {
            formats.push(WeightFormat::Affine {
                bits,
                group: [32, 64, 128][i % 3],
                scales: dts[i % 3],
            });
        }
        for format in formats {
            let (rows, cols) = match format {
                WeightFormat::Affine { group, .. } => (37, 3 * group as usize),
                _ => (37, 17),
            };
            let h = make(&mut rng, rows, cols, format);
            let m = Matrix::upload(&ctx, "table", &h.view(), None).unwrap();
            let wd = h.dequant();
            let ids: Vec<u32> = (0..9).map(|_| rng.below(rows as u64) as u32).collect();
            let ids_t = GpuTensor::from_u32(&ctx, &[ids.len()], &ids).unwrap();
            let out_all = GpuTensor::zeros(&ctx, &[3 + ids.len() * cols], DType::F32).unwrap();
            let out = out_all.view(3, &[ids.len(), cols]);
            let mut rec = ctx.recorder();
            embedding(&mut rec, &m, &ids_t, &out, 0.5).unwrap();
            rec.finish().unwrap();
            let want: Vec<f32> = ids
                .iter()
                .flat_map(|&id| {
                    wd[id as usize * cols..(id as usize + 1) * cols]
                        .iter()
                        .map(|v| v * 0.5)
                })
                .collect();
            let got = out.to_f32(&ctx).unwrap();
            assert_close(
                &format!("{path} embedding {format:?}"),
                &got,
                &want,
                1e-6,
                1e-6,
            );
        }
    }
}

#[test]
fn linear_rejects_bad_shapes() {
    let Some((_, ctx)) = paths().into_iter().next() else {
        return;
    };
    let mut rng = Rng::new(5);
    let h = make(&mut rng, 4, 8, WeightFormat::F32);
    let m = Matrix::upload(&ctx, "w", &h.view(), None).unwrap();
    let x = GpuTensor::zeros(&ctx, &[7], DType::F32).unwrap();
    let y = GpuTensor::zeros(&ctx, &[4], DType::F32).unwrap();
    let mut rec = ctx.recorder();
    assert!(linear(&mut rec, &m, &x, &y).is_err());
    let x = GpuTensor::zeros(&ctx, &[16], DType::F32).unwrap();
    assert!(linear(&mut rec, &m, &x, &y).is_err());
}

/// The Gemma embedding / tied LM head shape: 262144 x 1536, 4-bit, group 64 (192 MiB packed, more
/// than one 128 MiB binding) uploads as several windows; matvec checked on a sample of rows.
#[test]
fn lm_head_sized_matrix_uses_several_windows() {
    let (rows, cols, bits, group) = (262_144usize, 1536usize, 4u32, 64usize);
    let format = WeightFormat::Affine {
        bits,
        group: group as u32,
        scales: ScaleDType::F16,
    };
    let mut rng = Rng::new(6);
    let words = rows * cols * bits as usize / 32;
    let data: Vec<u32> = (0..words).map(|_| rng.next_u64() as u32).collect();
    let ng = rows * cols / group;
    let s: Vec<f32> = (0..ng).map(|_| rng.normal() * 0.01).collect();
    let b: Vec<f32> = (0..ng).map(|_| rng.normal() * 0.05).collect();
    let host_data: &[u8] = bytemuck::cast_slice(&data);
    let sbytes = scale_bytes(&s, ScaleDType::F16);
    let bbytes = scale_bytes(&b, ScaleDType::F16);
    let host = HostMatrix {
        rows,
        cols,
        format,
        data: host_data,
        scales: Some(&sbytes),
        biases: Some(&bbytes),
    };
    let x = rng.normals(cols, 1.0);
    for (path, ctx) in paths() {
        let m = Matrix::upload(&ctx, "lm_head", &host, None).unwrap();
        assert!(m.windows.len() >= 2, "{path}: {} windows", m.windows.len());
        let xt = GpuTensor::from_f32(&ctx, &[cols], &x).unwrap();
        let yt = GpuTensor::zeros(&ctx, &[rows], DType::F32).unwrap();
        let mut rec = ctx.recorder();
        linear(&mut rec, &m, &xt, &yt).unwrap();
        rec.finish().unwrap();
        let y = yt.to_f32(&ctx).unwrap();
        let mut sample: Vec<usize> = (0..64).map(|_| rng.below(rows as u64) as usize).collect();
        sample.extend([0, rows - 1]);
        sample.extend(
            m.windows
                .iter()
                .skip(1)
                .flat_map(|w| [w.row_start - 1, w.row_start]),
        );
        for r in sample {
            let wr = reference::host_matrix_row(&host, r).unwrap();
            let want = reference::linear_ref(&wr, 1, cols, &x, 1)[0];
            assert_close(
                &format!("{path} lm_head row {r}"),
                &[y[r]],
                &[want],
                atol(cols),
                1e-5,
            );
        }
        drop(m);
        ctx.wait_idle().unwrap();
    }
}

//! Matvec bandwidth benchmark: GB/s of weight bytes read by the decode matvec (4-bit g64, 8-bit g64
//! and f16 weights, 8192 x 2048 and 2048 x 8192) against a plain streaming-read kernel over the same
//! number of bytes, measured in the same run, on the subgroup and the fallback path.
//!
//! `cargo run --release --example kernel_bench`
//!
//! Timing: `N` dispatches recorded into one recorder, one submit, wait; minimum over `REPEATS`.

use std::time::Instant;

use gemma_wgpu::gpu::ops::{linear, streaming};
use gemma_wgpu::gpu::{
    DType, GpuContext, GpuError, GpuTensor, HostMatrix, Matrix, ScaleDType, WeightFormat,
};

const N: usize = 20;
const REPEATS: usize = 3;

fn time_min(mut run: impl FnMut() -> Result<(), GpuError>) -> Result<f64, GpuError> {
    run()?; // warm-up (pipeline build, first touch)
    let mut best = f64::INFINITY;
    for _ in 0..REPEATS {
        let t = Instant::now();
        run()?;
        best = best.min(t.elapsed().as_secs_f64() / N as f64);
    }
    Ok(best)
}

struct Xs(u64);
impl Xs {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 16) as u32
    }
}

fn build(
    ctx: &GpuContext,
    rows: usize,
    cols: usize,
    format: WeightFormat,
) -> Result<Matrix, GpuError> {
    let mut rng = Xs(0x1234_5678_9abc_def1);
    let data_bytes = format.row_bytes(cols) * rows;
    let data: Vec<u8> = match format {
        WeightFormat::F16 => (0..data_bytes / 2)
            .flat_map(|_| {
                half::f16::from_f32((rng.next() % 2000) as f32 / 1000.0 - 1.0).to_le_bytes()
            })
            .collect(),
        _ => (0..data_bytes).map(|_| rng.next() as u8).collect(),
    };
    let (scales, biases) = match format {
        WeightFormat::Affine { group, .. } => {
            let n = rows * cols / group as usize;
            let s: Vec<u8> = (0..n)
                .flat_map(|_| half::f16::from_f32(0.01).to_le_bytes())
                .collect();
            let b: Vec<u8> = (0..n)
                .flat_map(|_| half::f16::from_f32(-0.05).to_le_bytes())
                .collect();
            (Some(s), Some(b))
        }
        _ => (None, None),
    };
    let host = HostMatrix {
        rows,
        cols,
        format,
        data: &data,
        scales: scales.as_deref(),
        biases: biases.as_deref(),
    };
    Matrix::upload(ctx, "bench", &host, None)
}

fn main() -> Result<(), GpuError> {
    let ctx = GpuContext::new()?;
    let backend = ctx
        .adapter_info()
        .map(|i| format!("{:?}", i.backend))
        .unwrap_or_default();
    println!(
        "adapter: {} ({backend}), subgroups: {}",
        ctx.adapter_name(),
        ctx.uses_subgroups()
    );
    println!(
        "{N} dispatches per submit, min of {REPEATS} repeats; GB/s of weight bytes (Matrix::bytes)"
    );
    println!(
        "| path | format | rows x cols | MiB | matvec ms | matvec GB/s | stream GB/s | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let formats = [
        (
            "q4 g64",
            WeightFormat::Affine {
                bits: 4,
                group: 64,
                scales: ScaleDType::F16,
            },
        ),
        (
            "q8 g64",
            WeightFormat::Affine {
                bits: 8,
                group: 64,
                scales: ScaleDType::F16,
            },
        ),
        ("f16", WeightFormat::F16),
    ];
    let mut paths = Vec::new();
    if ctx.uses_subgroups() {
        paths.push(("subgroup", ctx.clone()));
    }
    paths.push(("fallback", ctx.fallback()));
    let sink = ctx.create_storage("sink", 256)?;
    for &(rows, cols) in &[(8192usize, 2048usize), (2048, 8192)] {
        for (fname, format) in formats {
            let m = build(&ctx, rows, cols, format)?;
            let bytes = m.bytes();
            let stream_src = ctx.create_storage("stream", bytes.next_multiple_of(16))?;
            let x = GpuTensor::from_f32(&ctx, &[cols], &vec![0.5f32; cols])?;
            let y = GpuTensor::zeros(&ctx, &[rows], DType::F32)?;
            for (pname, pctx) in &paths {
                let t_mv = time_min(|| {
                    let mut rec = pctx.recorder();
                    for _ in 0..N {
                        linear(&mut rec, &m, &x, &y)?;
                    }
                    rec.finish()
                })?;
                let t_st = time_min(|| {
                    let mut rec = pctx.recorder();
                    for _ in 0..N {
                        streaming::stream_read(&mut rec, &stream_src, &sink)?;
                    }
                    rec.finish()
                })?;
                let gbs = |t: f64| bytes as f64 / t / 1e9;
                println!(
                    "| {pname} | {fname} | {rows} x {cols} | {:.1} | {:.3} | {:.2} | {:.2} | {:.2} |",
                    bytes as f64 / (1 << 20) as f64,
                    t_mv * 1e3,
                    gbs(t_mv),
                    gbs(t_st),
                    t_st / t_mv
                );
            }
        }
    }
    Ok(())
}

//! MLX-style affine quantization on the CPU (quantize-on-load of float checkpoints).
//!
//! Per group of `group` values: `scale = (max - min) / (2^bits - 1)`, `bias = min`,
//! `q = round((w - bias) / scale)` clamped to `[0, 2^bits - 1]`; the codes of a row form a
//! little-endian bit stream of u32 words, as in MLX checkpoints. Scale and bias are rounded to
//! their storage type *before* the codes are computed, so dequantization with the stored values
//! is as exact as possible.
//!
//! (A GPU version may live in `gpu::quant`; this one is kept separate to avoid a merge conflict.)

use crate::gpu::ScaleDType;

/// A quantized matrix in the MLX storage layout.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// `rows * cols * bits / 32` packed words, row-major.
    pub words: Vec<u32>,
    /// `rows * cols / group` scales, little-endian in `scale_dtype`.
    pub scales: Vec<u8>,
    /// `rows * cols / group` biases, little-endian in `scale_dtype`.
    pub biases: Vec<u8>,
    /// Storage type of scales/biases.
    pub scale_dtype: ScaleDType,
}

fn round_to(x: f32, t: ScaleDType) -> f32 {
    match t {
        ScaleDType::F32 => x,
        ScaleDType::F16 => half::f16::from_f32(x).to_f32(),
        ScaleDType::BF16 => half::bf16::from_f32(x).to_f32(),
    }
}

fn push(out: &mut Vec<u8>, x: f32, t: ScaleDType) {
    match t {
        ScaleDType::F32 => out.extend_from_slice(&x.to_le_bytes()),
        ScaleDType::F16 => out.extend_from_slice(&half::f16::from_f32(x).to_bits().to_le_bytes()),
        ScaleDType::BF16 => out.extend_from_slice(&half::bf16::from_f32(x).to_bits().to_le_bytes()),
    }
}

/// Whether f16 scales would lose precision (subnormal or out of range) for these values.
fn f16_ok(values: &[f32], bits: u32, group: usize) -> bool {
    let n = ((1u32 << bits) - 1) as f32;
    values.chunks(group).all(|g| {
        let (mn, mx) = g
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let s = (mx - mn) / n;
        (s == 0.0 || s >= 6.2e-5) && mn.abs() < 60000.0 && mx.abs() < 60000.0
    })
}

/// Quantizes a row-major `[rows, cols]` f32 matrix. `cols` must be a multiple of `group` and
/// `cols * bits` a multiple of 32. Scales are f16 unless a group's range needs f32.
pub fn quantize_affine(
    values: &[f32],
    rows: usize,
    cols: usize,
    bits: u32,
    group: usize,
) -> Quantized {
    debug_assert_eq!(values.len(), rows * cols);
    let st = if f16_ok(values, bits, group) {
        ScaleDType::F16
    } else {
        ScaleDType::F32
    };
    quantize_affine_with(values, rows, cols, bits, group, st)
}

/// [`quantize_affine`] for a matrix produced row by row (`row(r, out)` fills row `r`), so that
/// a large stored matrix is never materialised in f32: one pass picks the scale type, a second
/// quantizes.
pub fn quantize_rows(
    rows: usize,
    cols: usize,
    bits: u32,
    group: usize,
    row: impl Fn(usize, &mut [f32]),
) -> Quantized {
    let mut buf = vec![0f32; cols];
    let mut ok = true;
    for r in 0..rows {
        row(r, &mut buf);
        if !f16_ok(&buf, bits, group) {
            ok = false;
            break;
        }
    }
    let st = if ok { ScaleDType::F16 } else { ScaleDType::F32 };
    let wpr = cols * bits as usize / 32;
    let ng = cols / group.max(1);
    let mut q = Quantized {
        words: Vec::with_capacity(rows * wpr),
        scales: Vec::with_capacity(rows * ng * st.size()),
        biases: Vec::with_capacity(rows * ng * st.size()),
        scale_dtype: st,
    };
    for r in 0..rows {
        row(r, &mut buf);
        let one = quantize_affine_with(&buf, 1, cols, bits, group, st);
        q.words.extend_from_slice(&one.words);
        q.scales.extend_from_slice(&one.scales);
        q.biases.extend_from_slice(&one.biases);
    }
    q
}

/// [`quantize_affine`] with an explicit scale storage type.
pub fn quantize_affine_with(
    values: &[f32],
    rows: usize,
    cols: usize,
    bits: u32,
    group: usize,
    st: ScaleDType,
) -> Quantized {
    let maxq = (1u32 << bits) - 1;
    let wpr = cols * bits as usize / 32;
    let mut words = vec![0u32; rows * wpr];
    let ng = rows * cols / group;
    let mut scales = Vec::with_capacity(ng * st.size());
    let mut biases = Vec::with_capacity(ng * st.size());
    for r in 0..rows {
        let row = &values[r * cols..(r + 1) * cols];
        let rw = &mut words[r * wpr..(r + 1) * wpr];
        for (gi, g) in row.chunks(group).enumerate() {
            let (mn, mx) = g
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            let bias = round_to(mn, st);
            let mut scale = round_to((mx - mn) / maxq as f32, st);
            if scale == 0.0 || !scale.is_finite() {
                scale = round_to(1e-7f32.max(0.0), st);
            }
            push(&mut scales, scale, st);
            push(&mut biases, bias, st);
            for (j, &v) in g.iter().enumerate() {
                let q = if scale == 0.0 {
                    0
                } else {
                    (((v - bias) / scale).round().clamp(0.0, maxq as f32)) as u32
                };
                let k = gi * group + j;
                let bit = k * bits as usize;
                let (w, o) = (bit / 32, (bit % 32) as u32);
                rw[w] |= q << o;
                if o + bits > 32 {
                    rw[w + 1] |= q >> (32 - o);
                }
            }
        }
    }
    Quantized {
        words,
        scales,
        biases,
        scale_dtype: st,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::quant::{dequantize_row, words_of};

    #[test]
    fn roundtrip_all_bit_widths() {
        let cols = 128;
        let vals: Vec<f32> = (0..2 * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 70.0)
            .collect();
        for bits in [2u32, 3, 4, 5, 6, 8] {
            let q = quantize_affine_with(&vals, 2, cols, bits, 64, ScaleDType::F32);
            let s: Vec<f32> = bytemuck::pod_collect_to_vec(&q.scales);
            let b: Vec<f32> = bytemuck::pod_collect_to_vec(&q.biases);
            let wpr = cols * bits as usize / 32;
            for r in 0..2 {
                let mut out = vec![0f32; cols];
                let words = words_of(bytemuck::cast_slice(&q.words[r * wpr..(r + 1) * wpr]));
                dequantize_row(
                    &words,
                    &s[r * 2..r * 2 + 2],
                    &b[r * 2..r * 2 + 2],
                    bits,
                    64,
                    &mut out,
                );
                for k in 0..cols {
                    let step = s[r * 2 + k / 64];
                    assert!(
                        (out[k] - vals[r * cols + k]).abs() <= step * 0.5 + 1e-6,
                        "bits {bits}"
                    );
                }
            }
        }
    }
}

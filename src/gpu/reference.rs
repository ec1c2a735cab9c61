//! CPU reference implementations of every kernel, in plain f32/f64 Rust. Tests compare the GPU
//! ops against these over awkward shapes; model parity debugging can use them too.

use super::quant;
use super::{HostMatrix, ScaleDType, WeightFormat};

/// `gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn gelu_tanh(x: f32) -> f32 {
    let x = x as f64;
    let z = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
    (0.5 * x * (1.0 + z.tanh())) as f32
}

/// `c * tanh(x / c)`.
pub fn softcap(x: f32, c: f32) -> f32 {
    ((c as f64) * ((x as f64) / (c as f64)).tanh()) as f32
}

/// `y[b, r] = Σ_k x[b, k] · w[r, k]` (i.e. `y = x @ W^T`) with f64 accumulation, for a row-major
/// dequantized `w: [rows, cols]` and `x: [batch, cols]`; returns `[batch, rows]`.
pub fn linear_ref(
    w_dequant: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    batch: usize,
) -> Vec<f32> {
    let mut y = vec![0f32; batch * rows];
    for b in 0..batch {
        let xb = &x[b * cols..(b + 1) * cols];
        for r in 0..rows {
            let wr = &w_dequant[r * cols..(r + 1) * cols];
            let s: f64 = wr.iter().zip(xb).map(|(&a, &c)| a as f64 * c as f64).sum();
            y[b * rows + r] = s as f32;
        }
    }
    y
}

fn scale_values(bytes: &[u8], dtype: ScaleDType) -> Vec<f32> {
    match dtype {
        ScaleDType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        ScaleDType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        ScaleDType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}

/// The f32 values of one row of a host matrix in any [`WeightFormat`] (dequantized for affine).
pub fn host_matrix_row(host: &HostMatrix<'_>, row: usize) -> Result<Vec<f32>, String> {
    let cols = host.cols;
    let rb = host.format.row_bytes(cols);
    if row >= host.rows || host.data.len() < (row + 1) * rb {
        return Err(format!("row {row} out of range or data too short"));
    }
    let data = &host.data[row * rb..(row + 1) * rb];
    Ok(match host.format {
        WeightFormat::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        WeightFormat::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        WeightFormat::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        WeightFormat::Affine {
            bits,
            group,
            scales,
        } => {
            let (Some(s), Some(b)) = (host.scales, host.biases) else {
                return Err("affine matrix without scales or biases".into());
            };
            let groups = cols / group as usize;
            let es = scales.size();
            let range = row * groups * es..(row + 1) * groups * es;
            if s.len() < range.end || b.len() < range.end {
                return Err("scales or biases too short".into());
            }
            let sv = scale_values(&s[range.clone()], scales);
            let bv = scale_values(&b[range], scales);
            let words: Vec<u32> = data
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (0..cols)
                .map(|k| {
                    let g = k / group as usize;
                    sv[g] * quant::unpack_code(&words, k, bits) as f32 + bv[g]
                })
                .collect()
        }
    })
}

/// All f32 values `[rows, cols]` of a host matrix in any [`WeightFormat`] (dequantized for affine).
pub fn host_matrix_f32(host: &HostMatrix<'_>) -> Result<Vec<f32>, String> {
    host.format.check_cols(host.cols)?;
    let mut out = Vec::with_capacity(host.rows * host.cols);
    for r in 0..host.rows {
        out.extend(host_matrix_row(host, r)?);
    }
    Ok(out)
}

//! Host-side weight matrices of every storage format with their dequantized values, shared by
//! the linear and MoE kernel tests.

use crate::common::Rng;
use gemma_wgpu::gpu::{HostMatrix, ScaleDType, WeightFormat, reference};
use gemma_wgpu::quant;

/// Host storage of a matrix: data, scales, biases.
pub struct Host {
    pub rows: usize,
    pub cols: usize,
    pub format: WeightFormat,
    pub data: Vec<u8>,
    pub scales: Option<Vec<u8>>,
    pub biases: Option<Vec<u8>>,
}

impl Host {
    pub fn view(&self) -> HostMatrix<'_> {
        HostMatrix {
            rows: self.rows,
            cols: self.cols,
            format: self.format,
            data: &self.data,
            scales: self.scales.as_deref(),
            biases: self.biases.as_deref(),
        }
    }
    pub fn dequant(&self) -> Vec<f32> {
        reference::host_matrix_f32(&self.view()).unwrap()
    }
}

pub fn scale_bytes(v: &[f32], dt: ScaleDType) -> Vec<u8> {
    let mut out = Vec::new();
    for &s in v {
        match dt {
            ScaleDType::F32 => out.extend_from_slice(&s.to_le_bytes()),
            ScaleDType::F16 => out.extend_from_slice(&half::f16::from_f32(s).to_le_bytes()),
            ScaleDType::BF16 => out.extend_from_slice(&half::bf16::from_f32(s).to_le_bytes()),
        }
    }
    out
}

/// A random `[rows, cols]` matrix (values of standard deviation `std`) stored in `format`.
pub fn make(rng: &mut Rng, rows: usize, cols: usize, format: WeightFormat, std: f32) -> Host {
    let w = rng.normals(rows * cols, std);
    let (data, scales, biases) = match format {
        WeightFormat::F32 => (bytemuck::cast_slice(&w).to_vec(), None, None),
        WeightFormat::F16 => (scale_bytes(&w, ScaleDType::F16), None, None),
        WeightFormat::BF16 => (scale_bytes(&w, ScaleDType::BF16), None, None),
        WeightFormat::Affine {
            bits,
            group,
            scales,
        } => {
            let (p, s, b) = quant::quantize_affine(&w, rows, cols, bits, group as usize);
            (
                bytemuck::cast_slice(&p).to_vec(),
                Some(scale_bytes(&s, scales)),
                Some(scale_bytes(&b, scales)),
            )
        }
    };
    Host {
        rows,
        cols,
        format,
        data,
        scales,
        biases,
    }
}

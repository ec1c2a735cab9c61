//! Host-side (memory-mapped) tensors: a validated linear layer in its stored format, the PLE
//! table that stays in host memory, and small f32 vectors of the CPU-only tree.

use crate::gpu::ScaleDType;

use super::error::LoadError;
use super::safetensors::{StDType, StoredTensor, to_f32};
use crate::quant::{unpack_code, words_of};

/// Quantization data of a [`HostLinear`].
#[derive(Debug, Clone)]
pub struct HostQuant {
    /// Bits per code.
    pub bits: u32,
    /// Columns per group.
    pub group: usize,
    /// `[rows, cols / group]`.
    pub scales: StoredTensor,
    /// `[rows, cols / group]`.
    pub biases: StoredTensor,
}

/// A validated `[rows, cols]` Linear/Embedding weight as stored in the checkpoint (float, or
/// MLX affine-quantized when `quant` is set).
#[derive(Debug, Clone)]
pub struct HostLinear {
    /// Canonical module path (e.g. `language_model.layers.0.mlp.gate_proj`).
    pub path: String,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// The weight (`[rows, cols]` float, or `[rows, cols·bits/32]` u32 codes).
    pub weight: StoredTensor,
    /// Scales and biases of a quantized weight.
    pub quant: Option<HostQuant>,
    /// A stacked expert tensor `[E, rows / E, cols]` (mixture-of-experts layers): the rows of
    /// one expert, kept together in one row window on the GPU. `None` for a plain matrix.
    pub rows_per_expert: Option<usize>,
}

/// Storage type of affine scales for a stored dtype.
pub fn scale_dtype(t: &StoredTensor) -> Result<ScaleDType, LoadError> {
    match t.dtype {
        StDType::F16 => Ok(ScaleDType::F16),
        StDType::BF16 => Ok(ScaleDType::BF16),
        StDType::F32 => Ok(ScaleDType::F32),
        other => Err(LoadError::WrongDtype {
            key: t.key.clone(),
            expected: "f16, bf16 or f32 scales/biases".into(),
            found: other.name().into(),
        }),
    }
}

impl HostLinear {
    /// Stored bytes (weight plus scales and biases).
    pub fn stored_bytes(&self) -> u64 {
        (self.weight.bytes.len()
            + self
                .quant
                .as_ref()
                .map(|q| q.scales.bytes.len() + q.biases.bytes.len())
                .unwrap_or(0)) as u64
    }

    /// Checks that the files of the weight (and its scales and biases) are unchanged since they
    /// were opened ([`MappedBytes::verify`](super::safetensors::MappedBytes::verify)); call it
    /// before reading the bytes.
    pub fn verify(&self) -> Result<(), LoadError> {
        self.weight.bytes.verify()?;
        if let Some(q) = &self.quant {
            q.scales.bytes.verify()?;
            q.biases.bytes.verify()?;
        }
        Ok(())
    }

    /// A short format name: "bf16", "f32", "affine4", ...
    pub fn format_name(&self) -> String {
        match &self.quant {
            Some(q) => format!("affine{}", q.bits),
            None => self.weight.dtype.name().to_string(),
        }
    }

    /// Dequantizes (or converts) row `r` into `out` (`cols` values).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        match &self.quant {
            None => {
                let es = self.weight.dtype.size();
                let bytes = &self.weight.bytes[r * c * es..(r + 1) * c * es];
                if let Some(v) = to_f32(bytes, self.weight.dtype) {
                    out[..c].copy_from_slice(&v);
                }
            }
            Some(q) => {
                let wpr = c * q.bits as usize / 32;
                let words = words_of(&self.weight.bytes[r * wpr * 4..(r + 1) * wpr * 4]);
                let ng = c / q.group;
                let es = q.scales.dtype.size();
                let s = to_f32(
                    &q.scales.bytes[r * ng * es..(r + 1) * ng * es],
                    q.scales.dtype,
                )
                .unwrap_or_default();
                let b = to_f32(
                    &q.biases.bytes[r * ng * es..(r + 1) * ng * es],
                    q.biases.dtype,
                )
                .unwrap_or_default();
                for (k, o) in out[..c].iter_mut().enumerate() {
                    let g = k / q.group;
                    *o = s[g] * unpack_code(&words, k, q.bits) as f32 + b[g];
                }
            }
        }
    }

    /// The whole matrix converted row by row to little-endian f16 (or f32) bytes, without an
    /// f32 copy of the whole matrix.
    pub fn to_float_bytes(&self, f16: bool) -> Vec<u8> {
        let es = if f16 { 2 } else { 4 };
        let mut out = Vec::with_capacity(self.rows * self.cols * es);
        let mut row = vec![0f32; self.cols];
        for r in 0..self.rows {
            self.row_f32(r, &mut row);
            for &x in &row {
                if f16 {
                    out.extend_from_slice(&half::f16::from_f32(x).to_bits().to_le_bytes());
                } else {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        out
    }

    /// The whole matrix as f32 (dequantized), row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        if self.cols > 0 {
            for (r, row) in out.chunks_mut(self.cols).enumerate() {
                self.row_f32(r, row);
            }
        }
        out
    }
}

/// The PLE table kept in host memory: rows are gathered (and dequantized) on the CPU.
#[derive(Debug, Clone)]
pub struct HostTable {
    /// The table `[vocab_ple, N·P]`.
    pub linear: HostLinear,
}

impl HostTable {
    /// Rows.
    pub fn rows(&self) -> usize {
        self.linear.rows
    }

    /// Values per row (N·P).
    pub fn cols(&self) -> usize {
        self.linear.cols
    }

    /// Writes row `ids[t]` to `out[t·cols .. (t+1)·cols]` as f32 (dequantized; the `sqrt(P)`
    /// scale is not applied). Fails on an id outside the table or a wrong `out` length.
    pub fn gather(&self, ids: &[u32], out: &mut [f32]) -> crate::Result<()> {
        let c = self.cols();
        if out.len() != ids.len() * c {
            return Err(crate::Error::InvalidArgument(format!(
                "PLE gather: out has {} values, {} ids need {}",
                out.len(),
                ids.len(),
                ids.len() * c
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.rows()) {
            return Err(crate::Error::InvalidArgument(format!(
                "PLE gather: token id {bad} is outside the table ({} rows)",
                self.rows()
            )));
        }
        if c == 0 {
            return Ok(());
        }
        // The table stays mapped after the load: a checkpoint file truncated or replaced
        // meanwhile is an error here, not a fault (two `stat` calls per gather).
        self.linear.verify()?;
        for (&id, row) in ids.iter().zip(out.chunks_mut(c)) {
            self.linear.row_f32(id as usize, row);
        }
        Ok(())
    }

    /// Bytes of the table in host memory.
    pub fn bytes(&self) -> u64 {
        self.linear.stored_bytes()
    }
}

/// A small f32 tensor of the CPU-only tree (norm weights, position table, ...).
#[derive(Debug, Clone)]
pub struct HostVector {
    /// Canonical key.
    pub key: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

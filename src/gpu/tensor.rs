//! GPU tensors: a buffer (or a window of one) with a shape and an element type.

use std::sync::Arc;

use super::context::{BindGuard, GpuContext};
use super::error::GpuError;
use super::recorder::BufSlice;

/// Element type of a GPU tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float (all activations).
    F32,
    /// 16-bit IEEE float, two per u32 word.
    F16,
    /// bfloat16, two per u32 word.
    BF16,
    /// 32-bit unsigned integer (token ids, positions).
    U32,
    /// 32-bit signed integer.
    I32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            _ => 4,
        }
    }
}

/// A tensor on the GPU: a buffer region of `numel * dtype.size()` bytes at `offset`.
#[derive(Debug, Clone)]
pub struct GpuTensor {
    /// The buffer that holds the data.
    pub buffer: wgpu::Buffer,
    /// Byte offset of element 0 in the buffer.
    pub offset: u64,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
    /// Forgets the context's cached bind groups of `buffer` once the last tensor sharing it is
    /// dropped (clones and views share it).
    guard: Option<Arc<BindGuard>>,
}

impl GpuTensor {
    /// A zero-filled tensor.
    pub fn zeros(ctx: &GpuContext, shape: &[usize], dtype: DType) -> Result<Self, GpuError> {
        let n: usize = shape.iter().product();
        let buffer = ctx.create_storage("tensor", (n * dtype.size()) as u64)?;
        Ok(GpuTensor::from_buffer(ctx, buffer, shape, dtype))
    }

    /// A tensor of `shape` over the whole of `buffer` from its start (the buffer must hold it).
    pub fn from_buffer(
        ctx: &GpuContext,
        buffer: wgpu::Buffer,
        shape: &[usize],
        dtype: DType,
    ) -> Self {
        GpuTensor {
            guard: Some(Arc::new(ctx.bind_guard(&buffer))),
            buffer,
            offset: 0,
            shape: shape.to_vec(),
            dtype,
        }
    }

    /// A tensor filled from f32 host data.
    pub fn from_f32(ctx: &GpuContext, shape: &[usize], data: &[f32]) -> Result<Self, GpuError> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(GpuError::Kernel {
                kernel: "tensor".into(),
                message: format!("shape {shape:?} needs {n} values, got {}", data.len()),
            });
        }
        let buffer = ctx.create_storage_init("tensor", bytemuck::cast_slice(data))?;
        Ok(GpuTensor::from_buffer(ctx, buffer, shape, DType::F32))
    }

    /// A tensor filled from u32 host data.
    pub fn from_u32(ctx: &GpuContext, shape: &[usize], data: &[u32]) -> Result<Self, GpuError> {
        let buffer = ctx.create_storage_init("tensor", bytemuck::cast_slice(data))?;
        Ok(GpuTensor::from_buffer(ctx, buffer, shape, DType::U32))
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Size in bytes (rounded up to whole u32 words).
    pub fn bytes(&self) -> u64 {
        ((self.numel() * self.dtype.size()) as u64).next_multiple_of(4)
    }

    /// Offset of element 0 in units of 4-byte words (what kernels take as an element offset).
    pub fn elem_offset(&self) -> u32 {
        (self.offset / 4) as u32
    }

    /// A view of `shape` starting `elems` 4-byte elements into this tensor (same buffer).
    pub fn view(&self, elems: usize, shape: &[usize]) -> GpuTensor {
        GpuTensor {
            buffer: self.buffer.clone(),
            offset: self.offset + (elems * 4) as u64,
            shape: shape.to_vec(),
            dtype: self.dtype,
            guard: self.guard.clone(),
        }
    }

    /// The binding view of this tensor.
    pub fn slice(&self) -> BufSlice<'_> {
        BufSlice::window(&self.buffer, self.offset, self.bytes().max(4))
    }

    /// Reads the tensor back as f32 (blocking; tests and explicit requests only).
    pub fn to_f32(&self, ctx: &GpuContext) -> Result<Vec<f32>, GpuError> {
        match self.dtype {
            DType::F32 => ctx.read_f32(&self.buffer, (self.offset / 4) as usize, self.numel()),
            DType::U32 | DType::I32 => Err(GpuError::Kernel {
                kernel: "tensor".into(),
                message: "to_f32 on an integer tensor".into(),
            }),
            DType::F16 | DType::BF16 => {
                let bytes = ctx.read_bytes(&self.buffer, self.offset, self.bytes())?;
                let halves: Vec<u16> = bytemuck::pod_collect_to_vec(&bytes);
                Ok(halves[..self.numel()]
                    .iter()
                    .map(|&h| {
                        if self.dtype == DType::F16 {
                            half::f16::from_bits(h).to_f32()
                        } else {
                            half::bf16::from_bits(h).to_f32()
                        }
                    })
                    .collect())
            }
        }
    }

    /// Reads the tensor back as u32 (blocking).
    pub fn to_u32(&self, ctx: &GpuContext) -> Result<Vec<u32>, GpuError> {
        ctx.read_u32(&self.buffer, (self.offset / 4) as usize, self.numel())
    }
}

/// Views, row copies and host transfers for model code (no byte offsets outside this file).
impl GpuTensor {
    /// Elements per outermost row (the product of all dimensions but the first; 1 for a vector).
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Rows `start..start + n` of a tensor of shape `[rows, …]`, as `[n, …]` (same buffer).
    pub fn rows(&self, start: usize, n: usize) -> GpuTensor {
        let mut shape = self.shape.clone();
        if let Some(d) = shape.first_mut() {
            *d = n;
        }
        GpuTensor {
            buffer: self.buffer.clone(),
            offset: self.offset + (start * self.row_len() * self.dtype.size()) as u64,
            shape,
            dtype: self.dtype,
            guard: self.guard.clone(),
        }
    }

    /// A view of this f32 tensor as a `[rows, last dim]` f32 weight matrix (all leading
    /// dimensions folded into the rows), e.g. for `ops::embedding`
    /// over a table uploaded as a vector.
    /// The tensor must start at offset 0 of its buffer (a matrix window has no offset).
    pub fn as_f32_matrix(&self) -> Result<super::Matrix, GpuError> {
        if self.dtype != DType::F32 || self.shape.is_empty() || self.offset != 0 {
            return Err(GpuError::Kernel {
                kernel: "tensor".into(),
                message: format!(
                    "as_f32_matrix on a {:?} tensor of shape {:?} at byte offset {}",
                    self.dtype, self.shape, self.offset
                ),
            });
        }
        let cols = self.shape[self.shape.len() - 1];
        let rows = self.numel() / cols.max(1);
        Ok(super::Matrix {
            rows,
            cols,
            format: super::WeightFormat::F32,
            windows: vec![super::MatrixWindow {
                row_start: 0,
                rows,
                data: self.buffer.clone(),
                scale_bias: None,
            }],
        })
    }

    /// Concatenates tensors with the same row shape along the first dimension into a new
    /// tensor (one submit).
    pub fn concat_rows(ctx: &GpuContext, parts: &[GpuTensor]) -> Result<GpuTensor, GpuError> {
        let Some(first) = parts.first() else {
            return Err(GpuError::Kernel {
                kernel: "concat_rows".into(),
                message: "no tensors to concatenate".into(),
            });
        };
        let total: usize = parts
            .iter()
            .map(|p| p.shape.first().copied().unwrap_or(1))
            .sum();
        let mut shape = first.shape.clone();
        if let Some(d) = shape.first_mut() {
            *d = total;
        }
        let all = GpuTensor::zeros(ctx, &shape, first.dtype)?;
        let mut rec = ctx.recorder();
        let mut row = 0;
        for p in parts {
            let n = p.shape.first().copied().unwrap_or(1);
            rec.copy_rows(p, 0, &all, row, n)?;
            row += n;
        }
        rec.submit()?;
        Ok(all)
    }

    /// The same elements (the first `numel(shape)` of them) as `shape`.
    pub fn reshape(&self, shape: &[usize]) -> GpuTensor {
        debug_assert!(
            shape.iter().product::<usize>() <= self.numel(),
            "reshape {:?} to {shape:?}",
            self.shape
        );
        self.view(0, shape)
    }

    /// The same bytes seen as element type `dtype` (a re-typing view; the shape is kept).
    pub fn as_dtype(&self, dtype: DType) -> GpuTensor {
        GpuTensor {
            dtype,
            ..self.clone()
        }
    }

    /// Columns `col..col + width` of every row of a 2-D `[rows, cols]` tensor, as a flat view
    /// from the first row's column `col` to the last row's column `col + width`, and the row
    /// stride in elements (`cols`): what strided kernels take.
    pub fn column_window(&self, col: usize, width: usize) -> (GpuTensor, usize) {
        let (rows, cols) = (self.shape[0], self.row_len());
        let len = rows.saturating_sub(1) * cols + width;
        (self.view(col, &[len]), cols)
    }

    /// Size of the whole underlying buffer in bytes (for memory accounting).
    pub fn buffer_size(&self) -> u64 {
        self.buffer.size()
    }

    fn check_write(&self, n: usize, dtype: DType) -> Result<(), GpuError> {
        if n != self.numel() || self.dtype != dtype {
            return Err(GpuError::Kernel {
                kernel: "tensor".into(),
                message: format!(
                    "writing {n} {dtype:?} values into a {:?} {:?} tensor",
                    self.shape, self.dtype
                ),
            });
        }
        Ok(())
    }

    /// Queues a write of f32 host data into the tensor (executes before the next submit).
    pub fn write_f32(&self, ctx: &GpuContext, data: &[f32]) -> Result<(), GpuError> {
        self.check_write(data.len(), DType::F32)?;
        ctx.write(&self.buffer, self.offset, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Queues a write of u32 host data into the tensor (executes before the next submit).
    pub fn write_u32(&self, ctx: &GpuContext, data: &[u32]) -> Result<(), GpuError> {
        self.check_write(data.len(), DType::U32)?;
        ctx.write(&self.buffer, self.offset, bytemuck::cast_slice(data));
        Ok(())
    }
}

//! Weight matrices on the GPU: f32, f16, bf16 or MLX affine-quantized, stored as row windows so
//! that a matrix larger than one storage binding (e.g. a 262144 x 1536 embedding) works
//! transparently.

use super::context::GpuContext;
use super::error::GpuError;
use super::kernel::{Access, KernelSpec};
use super::recorder::BufSlice;

/// Element type of affine scales and biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScaleDType {
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 32-bit float.
    F32,
}

impl ScaleDType {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            ScaleDType::F32 => 4,
            _ => 2,
        }
    }
}

/// Storage format of a weight matrix `[rows, cols]` (row-major, `y = W x` reduces over cols).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// f32 values.
    F32,
    /// f16 values, two per u32 word, row-major.
    F16,
    /// bf16 values, two per u32 word, row-major.
    BF16,
    /// MLX affine quantization: per row a little-endian bit stream of `bits`-bit codes in u32
    /// words (`cols * bits / 32` words), and per group of `group` columns a scale and a bias;
    /// `w = scale * q + bias`.
    Affine {
        /// Bits per code: 2, 3, 4, 5, 6 or 8.
        bits: u32,
        /// Columns per group: 32, 64 or 128.
        group: u32,
        /// Storage type of scales and biases.
        scales: ScaleDType,
    },
}

impl WeightFormat {
    /// Bytes of packed data per row (without scales/biases).
    pub fn row_bytes(&self, cols: usize) -> usize {
        match self {
            WeightFormat::F32 => cols * 4,
            WeightFormat::F16 | WeightFormat::BF16 => cols * 2,
            WeightFormat::Affine { bits, .. } => cols * *bits as usize / 8,
        }
    }

    /// Bytes of the GPU scale/bias buffer per row (0 for float formats).
    /// 16-bit scales: one u32 per group (scale in the low half, bias in the high half);
    /// f32 scales: two f32 per group (scale, bias).
    pub fn sb_row_bytes(&self, cols: usize) -> usize {
        match self {
            WeightFormat::Affine { group, scales, .. } => {
                let groups = cols / *group as usize;
                match scales {
                    ScaleDType::F32 => groups * 8,
                    _ => groups * 4,
                }
            }
            _ => 0,
        }
    }

    /// Checks that `cols` is legal for this format.
    pub fn check_cols(&self, cols: usize) -> Result<(), String> {
        match self {
            WeightFormat::Affine { bits, group, .. } => {
                if !matches!(bits, 2 | 3 | 4 | 5 | 6 | 8) {
                    return Err(format!("unsupported bit width {bits}"));
                }
                if !matches!(group, 32 | 64 | 128) {
                    return Err(format!("unsupported group size {group}"));
                }
                if !cols.is_multiple_of(*group as usize) {
                    return Err(format!(
                        "{cols} columns are not a multiple of group {group}"
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// A host-side matrix in its storage format, borrowed (e.g. from a memory-mapped file).
#[derive(Debug, Clone, Copy)]
pub struct HostMatrix<'a> {
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features).
    pub cols: usize,
    /// Storage format.
    pub format: WeightFormat,
    /// Raw little-endian data: values, or packed u32 codes for affine.
    pub data: &'a [u8],
    /// Affine only: `[rows, cols / group]` scales in `ScaleDType`.
    pub scales: Option<&'a [u8]>,
    /// Affine only: `[rows, cols / group]` biases in `ScaleDType`.
    pub biases: Option<&'a [u8]>,
}

/// One row window of a [`Matrix`]: rows `row_start .. row_start + rows`.
#[derive(Debug, Clone)]
pub struct MatrixWindow {
    /// First row.
    pub row_start: usize,
    /// Number of rows.
    pub rows: usize,
    /// Packed data of these rows.
    pub data: wgpu::Buffer,
    /// Interleaved scale/bias words of these rows (affine only).
    pub scale_bias: Option<wgpu::Buffer>,
}

/// A weight matrix on the GPU.
#[derive(Debug, Clone)]
pub struct Matrix {
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features).
    pub cols: usize,
    /// Storage format.
    pub format: WeightFormat,
    /// Row windows, each within the device's binding limit, covering all rows in order.
    pub windows: Vec<MatrixWindow>,
}

impl Matrix {
    /// Bytes of weights read by one matvec (data plus scales/biases).
    pub fn bytes(&self) -> u64 {
        (self.rows * (self.format.row_bytes(self.cols) + self.format.sb_row_bytes(self.cols)))
            as u64
    }

    /// Uploads `host`, splitting it into row windows of at most `max_window_rows` rows
    /// (`None`: as many as fit the binding limit; always a multiple of 64 unless one window).
    pub fn upload(
        ctx: &GpuContext,
        label: &str,
        host: &HostMatrix<'_>,
        max_window_rows: Option<usize>,
    ) -> Result<Self, GpuError> {
        Self::upload_aligned(ctx, label, host, max_window_rows, None)
    }

    /// Uploads a stacked expert matrix `[E, rows_per_expert, cols]` (expert `e` is rows
    /// `e * rows_per_expert .. (e + 1) * rows_per_expert` of `host`, `E * rows_per_expert` rows
    /// in all) with every row window holding whole experts: the window rows (as many as fit the
    /// binding limit, at most `max_window_rows`) are rounded down to a multiple of
    /// `rows_per_expert`. One expert larger than a binding, a `rows_per_expert` of 0 or one that
    /// does not divide the rows, or a `max_window_rows` below one expert, is a typed error.
    pub fn upload_stacked(
        ctx: &GpuContext,
        label: &str,
        host: &HostMatrix<'_>,
        rows_per_expert: usize,
        max_window_rows: Option<usize>,
    ) -> Result<Self, GpuError> {
        if rows_per_expert == 0 || !host.rows.is_multiple_of(rows_per_expert) {
            return Err(GpuError::Kernel {
                kernel: format!("upload {label}"),
                message: format!(
                    "{} rows are not a whole number of experts of {rows_per_expert} rows",
                    host.rows
                ),
            });
        }
        if let Some(m) = max_window_rows
            && m < rows_per_expert
        {
            return Err(GpuError::Kernel {
                kernel: format!("upload {label}"),
                message: format!(
                    "windows of at most {m} rows cannot hold one expert of {rows_per_expert} rows"
                ),
            });
        }
        Self::upload_aligned(ctx, label, host, max_window_rows, Some(rows_per_expert))
    }

    /// [`upload`](Self::upload), with `experts: Some(rows_per_expert)` the window rows a
    /// multiple of `rows_per_expert` (see [`upload_stacked`](Self::upload_stacked)).
    fn upload_aligned(
        ctx: &GpuContext,
        label: &str,
        host: &HostMatrix<'_>,
        max_window_rows: Option<usize>,
        experts: Option<usize>,
    ) -> Result<Self, GpuError> {
        let bad = |m: String| GpuError::Kernel {
            kernel: format!("upload {label}"),
            message: m,
        };
        host.format.check_cols(host.cols).map_err(bad)?;
        let rb = host.format.row_bytes(host.cols);
        if host.data.len() != rb * host.rows {
            return Err(bad(format!(
                "data has {} bytes, expected {} for [{}, {}] {:?}",
                host.data.len(),
                rb * host.rows,
                host.rows,
                host.cols,
                host.format
            )));
        }
        let sb = pack_scale_bias(host).map_err(bad)?;
        let sbr = host.format.sb_row_bytes(host.cols);
        let limit = ctx.caps().max_binding_size.min(ctx.caps().max_buffer_size) as usize;
        let widest = rb.max(sbr).max(1);
        let mut per = limit / widest;
        if let Some(rpe) = experts {
            if per < rpe {
                return Err(GpuError::LimitExceeded {
                    what: format!("one expert ({rpe} rows) of {label}"),
                    needed: (rpe * widest) as u64,
                    limit: limit as u64,
                    limit_name: "max_storage_buffer_binding_size",
                });
            }
            if let Some(m) = max_window_rows {
                per = per.min(m);
            }
            per -= per % rpe;
        } else {
            if per < host.rows {
                per -= per % 64;
            }
            if let Some(m) = max_window_rows {
                per = per.min(m.max(1));
            }
        }
        if per == 0 {
            return Err(GpuError::LimitExceeded {
                what: format!("one row of {label}"),
                needed: widest as u64,
                limit: limit as u64,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        let mut windows = Vec::new();
        let mut r = 0;
        while r < host.rows.max(1) {
            let n = per
                .min(host.rows - r)
                .max(if host.rows == 0 { 0 } else { 1 });
            let data = ctx.create_storage_init(label, &host.data[r * rb..(r + n) * rb])?;
            let scale_bias = match &sb {
                Some(v) => Some(ctx.create_storage_init(label, &v[r * sbr..(r + n) * sbr])?),
                None => None,
            };
            windows.push(MatrixWindow {
                row_start: r,
                rows: n,
                data,
                scale_bias,
            });
            if host.rows == 0 {
                break;
            }
            r += n;
        }
        Ok(Matrix {
            rows: host.rows,
            cols: host.cols,
            format: host.format,
            windows,
        })
    }
}

/// Interleaves scales and biases into the GPU scale/bias layout (see [`WeightFormat::sb_row_bytes`]).
fn pack_scale_bias(host: &HostMatrix<'_>) -> Result<Option<Vec<u8>>, String> {
    let WeightFormat::Affine { group, scales, .. } = host.format else {
        return Ok(None);
    };
    let (Some(s), Some(b)) = (host.scales, host.biases) else {
        return Err("affine matrix without scales or biases".into());
    };
    let n = host.rows * host.cols / group as usize;
    let es = scales.size();
    if s.len() != n * es || b.len() != n * es {
        return Err(format!(
            "scales/biases have {}/{} bytes, expected {} ({} groups of {:?})",
            s.len(),
            b.len(),
            n * es,
            n,
            scales
        ));
    }
    let mut out = Vec::with_capacity(n * es * 2);
    for i in 0..n {
        out.extend_from_slice(&s[i * es..(i + 1) * es]);
        out.extend_from_slice(&b[i * es..(i + 1) * es]);
    }
    Ok(Some(out))
}

impl WeightFormat {
    /// Every weight format the kernels support (for shader validation and kernel tests).
    #[doc(hidden)]
    pub fn all() -> Vec<WeightFormat> {
        let mut v = vec![WeightFormat::F32, WeightFormat::F16, WeightFormat::BF16];
        for bits in [2, 3, 4, 5, 6, 8] {
            for group in [32, 64, 128] {
                for scales in [ScaleDType::F16, ScaleDType::BF16, ScaleDType::F32] {
                    v.push(WeightFormat::Affine {
                        bits,
                        group,
                        scales,
                    });
                }
            }
        }
        v
    }

    /// Whether this is an affine (quantized) format.
    pub(crate) fn is_affine(self) -> bool {
        matches!(self, WeightFormat::Affine { .. })
    }

    /// Adds the format defines of the weight kernels (matvec, matmul, gather) to `spec`: AFFINE,
    /// BITS, GROUP, SB_FMT (`wgsl/common/affine.wgsl`) or W_FMT (`wgsl/common/dense.wgsl`).
    pub(crate) fn define_in(self, spec: KernelSpec) -> KernelSpec {
        match self {
            WeightFormat::Affine {
                bits,
                group,
                scales,
            } => spec
                .define("AFFINE", "1")
                .define("BITS", bits)
                .define("GROUP", group)
                .define(
                    "SB_FMT",
                    match scales {
                        ScaleDType::F16 => 0,
                        ScaleDType::BF16 => 1,
                        ScaleDType::F32 => 2,
                    },
                ),
            WeightFormat::F32 => spec.define("W_FMT", 0),
            WeightFormat::F16 => spec.define("W_FMT", 1),
            WeightFormat::BF16 => spec.define("W_FMT", 2),
        }
    }

    /// The storage bindings of a kernel over one matrix of this format: the weights (and the
    /// scales/biases when affine), then `rest`.
    pub(crate) fn bindings_then(self, rest: &[Access]) -> Vec<Access> {
        let mut v = vec![Access::Read; if self.is_affine() { 2 } else { 1 }];
        v.extend_from_slice(rest);
        v
    }
}

impl Matrix {
    /// Affine only: (u32 words per row, groups per row); (0, 0) for float formats.
    pub(crate) fn affine_dims(&self) -> (u32, u32) {
        match self.format {
            WeightFormat::Affine { bits, group, .. } => (
                crate::quant::row_words(self.cols, bits) as u32,
                (self.cols / group as usize) as u32,
            ),
            _ => (0, 0),
        }
    }

    /// The buffers of row window `win` in binding order: the data, then the scales/biases when
    /// affine (`kernel` names the op in the error).
    pub(crate) fn window_bindings<'a>(
        &self,
        win: &'a MatrixWindow,
        kernel: &str,
    ) -> Result<Vec<BufSlice<'a>>, GpuError> {
        let mut v: Vec<BufSlice<'a>> = vec![(&win.data).into()];
        if self.format.is_affine() {
            let sb = win.scale_bias.as_ref().ok_or_else(|| GpuError::Kernel {
                kernel: kernel.into(),
                message: "affine window without scale/bias buffer".into(),
            })?;
            v.push(sb.into());
        }
        Ok(v)
    }
}

//! Elementwise ops: add, sub, mul, scale, gelu_tanh, gated gelu, clamp, softcap — out of place or in
//! place, with the second operand broadcast or read as strided rows.

use crate::gpu::{
    Access, BufSlice, GpuError, GpuTensor, KernelSpec, ParamLayout, Recorder, uniform_params,
};

uniform_params! {
    /// Parameters of `elementwise.wgsl`.
    struct Params {
        n: u32,
        b_cols: u32,
        s0: f32,
        s1: f32,
        a_off: u32,
        b_off: u32,
        out_off: u32,
        b_stride: u32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

/// The elementwise operations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Elementwise {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a * s`
    Scale(f32),
    /// `gelu_tanh(a)`
    GeluTanh,
    /// `gelu_tanh(a) * b`
    GeluMul,
    /// `clamp(a, lo, hi)`
    Clamp(f32, f32),
    /// `c * tanh(a / c)`
    Softcap(f32),
    /// `a * s + t`
    ScaleShift(f32, f32),
}

/// How the second operand `b` is read for element `i` of `a`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BLayout {
    /// `b[i % b.numel()]`: a `[cols]` vector applies to every row of `[rows, cols]`; a tensor of
    /// the same size as `a` is read elementwise.
    Broadcast,
    /// Rows of `cols` values placed `stride` elements apart: `b[(i / cols) * stride + i % cols]`
    /// (e.g. layer l's slice of a `[tokens, layers, cols]` tensor: a view at `l * cols` with
    /// stride `layers * cols`).
    Rows {
        /// Values per row.
        cols: usize,
        /// Elements between the starts of consecutive rows.
        stride: usize,
    },
}

impl Elementwise {
    fn expr(self) -> (&'static str, bool) {
        match self {
            Elementwise::Add => ("a + b", true),
            Elementwise::Sub => ("a - b", true),
            Elementwise::Mul => ("a * b", true),
            Elementwise::Scale(_) => ("a * p.s0", false),
            Elementwise::GeluTanh => ("gelu_tanh(a)", false),
            Elementwise::GeluMul => ("gelu_tanh(a) * b", true),
            Elementwise::Clamp(..) => ("clamp(a, p.s0, p.s1)", false),
            Elementwise::Softcap(_) => ("p.s0 * tanh(clamp(a / p.s0, -15.0, 15.0))", false),
            Elementwise::ScaleShift(..) => ("a * p.s0 + p.s1", false),
        }
    }

    fn scalars(self) -> (f32, f32) {
        match self {
            Elementwise::Scale(s) | Elementwise::Softcap(s) => (s, 0.0),
            Elementwise::Clamp(lo, hi) | Elementwise::ScaleShift(lo, hi) => (lo, hi),
            _ => (0.0, 0.0),
        }
    }

    /// Whether the op reads a second operand.
    pub fn is_binary(self) -> bool {
        self.expr().1
    }

    /// The kernel specialisation of this op.
    pub fn spec(self, in_place: bool) -> KernelSpec {
        let (expr, binary) = self.expr();
        let storage: Vec<Access> = match (in_place, binary) {
            (false, true) => vec![Access::Read, Access::Read, Access::ReadWrite],
            (false, false) => vec![Access::Read, Access::ReadWrite],
            (true, true) => vec![Access::ReadWrite, Access::Read],
            (true, false) => vec![Access::ReadWrite],
        };
        KernelSpec::new("elementwise", "main", &storage)
            .define("EXPR", expr)
            .define("BINARY", if binary { "1" } else { "0" })
            .define("IN_PLACE", if in_place { "1" } else { "0" })
    }

    /// All specialisations (for shader validation).
    pub fn all_specs() -> Vec<KernelSpec> {
        let ops = [
            Elementwise::Add,
            Elementwise::Sub,
            Elementwise::Mul,
            Elementwise::Scale(1.0),
            Elementwise::GeluTanh,
            Elementwise::GeluMul,
            Elementwise::Clamp(0.0, 1.0),
            Elementwise::Softcap(30.0),
            Elementwise::ScaleShift(2.0, -1.0),
        ];
        let mut v = Vec::new();
        for in_place in [false, true] {
            v.extend(ops.iter().map(|o| o.spec(in_place)));
        }
        v
    }
}

fn run(
    rec: &mut Recorder,
    op: Elementwise,
    a: &GpuTensor,
    b: Option<(&GpuTensor, BLayout)>,
    out: Option<&GpuTensor>,
) -> Result<(), GpuError> {
    let n = a.numel();
    let bad = |m: String| GpuError::Kernel {
        kernel: format!("elementwise {op:?}"),
        message: m,
    };
    if let Some(out) = out
        && out.numel() != n
    {
        return Err(bad(format!("out has {} elements, a has {n}", out.numel())));
    }
    let kernel = rec.ctx().kernel(&op.spec(out.is_none()))?;
    let (s0, s1) = op.scalars();
    let mut params = Params {
        n: n as u32,
        b_cols: 1,
        s0,
        s1,
        a_off: a.elem_offset(),
        b_off: 0,
        out_off: out.map(|o| o.elem_offset()).unwrap_or(0),
        b_stride: 0,
    };
    let mut bufs: Vec<BufSlice> = vec![(&a.buffer).into()];
    if op.is_binary() {
        let (b, layout) = b.ok_or_else(|| bad("binary op without b".into()))?;
        params.b_off = b.elem_offset();
        match layout {
            BLayout::Broadcast => {
                if b.numel() == 0 || !n.is_multiple_of(b.numel()) {
                    return Err(bad(format!("b has {} elements, a has {n}", b.numel())));
                }
                params.b_cols = b.numel() as u32;
                params.b_stride = if b.numel() == n { n as u32 } else { 0 };
            }
            BLayout::Rows { cols, stride } => {
                if cols == 0 || !n.is_multiple_of(cols) {
                    return Err(bad(format!("rows of {cols} do not tile {n} elements")));
                }
                let needed = (n / cols - 1) * stride + cols;
                if b.numel() < needed {
                    return Err(bad(format!("b has {} elements, needs {needed}", b.numel())));
                }
                params.b_cols = cols as u32;
                params.b_stride = stride as u32;
            }
        }
        bufs.push((&b.buffer).into());
    }
    if let Some(out) = out {
        bufs.push((&out.buffer).into());
    }
    rec.dispatch_linear(&kernel, &params, &bufs, n.div_ceil(256) as u32)
}

/// Records `out = op(a, b)` over `a.numel()` elements, `b` broadcast cyclically
/// (`b[i % b.numel()]`, so a `[cols]` vector applies to every row of `[rows, cols]`).
/// `out` must not share a buffer with `a` or `b`; use [`elementwise_inplace`] for that.
pub fn elementwise(
    rec: &mut Recorder,
    op: Elementwise,
    a: &GpuTensor,
    b: Option<&GpuTensor>,
    out: &GpuTensor,
) -> Result<(), GpuError> {
    run(rec, op, a, b.map(|b| (b, BLayout::Broadcast)), Some(out))
}

/// Records `a = op(a, b)` in place, with `b` read per `layout` (`b` must be in another buffer).
pub fn elementwise_inplace(
    rec: &mut Recorder,
    op: Elementwise,
    a: &GpuTensor,
    b: Option<(&GpuTensor, BLayout)>,
) -> Result<(), GpuError> {
    run(rec, op, a, b, None)
}

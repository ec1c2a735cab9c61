//! Elementwise ops: add, mul, scale, gelu_tanh, gated gelu, clamp, softcap.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{Access, BufSlice, GpuError, GpuTensor, KernelSpec, Recorder};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    b_len: u32,
    s0: f32,
    s1: f32,
    a_off: u32,
    b_off: u32,
    out_off: u32,
    _pad: u32,
}

/// The elementwise operations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Elementwise {
    /// `a + b`
    Add,
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
}

impl Elementwise {
    fn expr(self) -> (&'static str, bool) {
        match self {
            Elementwise::Add => ("a + b", true),
            Elementwise::Mul => ("a * b", true),
            Elementwise::Scale(_) => ("a * p.s0", false),
            Elementwise::GeluTanh => ("gelu_tanh(a)", false),
            Elementwise::GeluMul => ("gelu_tanh(a) * b", true),
            Elementwise::Clamp(..) => ("clamp(a, p.s0, p.s1)", false),
            Elementwise::Softcap(_) => ("p.s0 * tanh(clamp(a / p.s0, -15.0, 15.0))", false),
        }
    }

    fn scalars(self) -> (f32, f32) {
        match self {
            Elementwise::Scale(s) | Elementwise::Softcap(s) => (s, 0.0),
            Elementwise::Clamp(lo, hi) => (lo, hi),
            _ => (0.0, 0.0),
        }
    }

    /// Whether the op reads a second operand.
    pub fn is_binary(self) -> bool {
        self.expr().1
    }

    /// The kernel specialisation of this op.
    pub fn spec(self) -> KernelSpec {
        let (expr, binary) = self.expr();
        let storage: &[Access] = if binary {
            &[Access::Read, Access::Read, Access::ReadWrite]
        } else {
            &[Access::Read, Access::ReadWrite]
        };
        KernelSpec::new("elementwise", "main", storage)
            .define("EXPR", expr)
            .define("BINARY", if binary { "1" } else { "0" })
    }

    /// All specialisations (for shader validation).
    pub fn all_specs() -> Vec<KernelSpec> {
        [
            Elementwise::Add,
            Elementwise::Mul,
            Elementwise::Scale(1.0),
            Elementwise::GeluTanh,
            Elementwise::GeluMul,
            Elementwise::Clamp(0.0, 1.0),
            Elementwise::Softcap(30.0),
        ]
        .iter()
        .map(|o| o.spec())
        .collect()
    }
}

/// Records `out = op(a, b)` over `a.numel()` elements; `b` is broadcast cyclically
/// (`b[i % b.numel()]`), so a `[cols]` vector applies to every row of `[rows, cols]`.
/// `out` must not alias `a` or `b` (wgpu forbids a buffer bound read-only and writable at once).
pub fn elementwise(
    rec: &mut Recorder,
    op: Elementwise,
    a: &GpuTensor,
    b: Option<&GpuTensor>,
    out: &GpuTensor,
) -> Result<(), GpuError> {
    let n = a.numel();
    let bad = |m: String| GpuError::Kernel {
        kernel: format!("elementwise {op:?}"),
        message: m,
    };
    if out.numel() != n {
        return Err(bad(format!("out has {} elements, a has {n}", out.numel())));
    }
    let kernel = rec.ctx().kernel(&op.spec())?;
    let (s0, s1) = op.scalars();
    let mut params = Params {
        n: n as u32,
        b_len: 1,
        s0,
        s1,
        a_off: a.elem_offset(),
        b_off: 0,
        out_off: out.elem_offset(),
        _pad: 0,
    };
    if op.is_binary() {
        let b = b.ok_or_else(|| bad("binary op without b".into()))?;
        if b.numel() == 0 || !n.is_multiple_of(b.numel()) {
            return Err(bad(format!("b has {} elements, a has {n}", b.numel())));
        }
        params.b_len = b.numel() as u32;
        params.b_off = b.elem_offset();
        let bufs: [BufSlice; 3] = [(&a.buffer).into(), (&b.buffer).into(), (&out.buffer).into()];
        rec.dispatch_linear(&kernel, &params, &bufs, n.div_ceil(256) as u32)
    } else {
        let bufs: [BufSlice; 2] = [(&a.buffer).into(), (&out.buffer).into()];
        rec.dispatch_linear(&kernel, &params, &bufs, n.div_ceil(256) as u32)
    }
}

//! The GPU runtime: device acquisition, buffers and tensors, kernels with their pipeline cache,
//! command batching, and the ops (one per kernel family).
//!
//! Model code never touches wgpu directly: it calls the ops in `ops` with [`GpuTensor`]s and
//! [`Matrix`] weights, recording into a [`Recorder`] that submits once.

mod context;
mod error;
mod kernel;
mod matrix;
dev_mod!(
    /// The compute ops, one per kernel.
    ops
);
pub mod profile;
mod readback;
mod recorder;
dev_mod!(
    /// CPU reference implementations of the kernels (tests).
    reference
);
mod tensor;

pub use context::{Capabilities, DEFAULT_WAIT, GpuContext, GpuOptions};
pub use error::GpuError;
pub(crate) use kernel::uniform_params;
pub use kernel::{
    Access, Kernel, KernelSpec, PreprocessError, WGSL_COMMON, WGSL_SOURCES, preprocess,
    preprocess_with, wgsl_include, wgsl_source,
};
#[doc(hidden)]
pub use kernel::{ParamField, ParamKind, ParamLayout, ParamScalar};
pub use matrix::{HostMatrix, Matrix, MatrixWindow, ScaleDType, WeightFormat};
pub use profile::{Profile, ProfileEntry};
pub use readback::Readback;
pub use recorder::{BufSlice, Counters, MAX_PARAM_BYTES, Recorder, RecorderStats};
pub use tensor::{DType, GpuTensor};

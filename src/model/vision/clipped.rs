//! `ClippableLinear` (spec §3.3): a projection with optional scalar clamps on its input and
//! output, used by every projection of the vision (and later audio) tower.

use crate::error::Result;
use crate::gpu::ops::{self, Elementwise, elementwise, elementwise_inplace};
use crate::gpu::{GpuTensor, Matrix, Recorder};
use crate::checkpoint::var_builder::VarBuilder;
use crate::checkpoint::{LoadError, Sink};

/// A vision projection with optional clamps:
/// `y = clamp(clamp(x, input_min, input_max) @ W^T, output_min, output_max)`.
/// A bound is `None` when the checkpoint has no value for it, when it is infinite, or when
/// `use_clipped_linears` is false.
#[derive(Debug)]
pub struct ClippedLinear<M = Matrix> {
    /// The weight (`linear`).
    pub w: M,
    /// Lower input bound.
    pub input_min: Option<f32>,
    /// Upper input bound.
    pub input_max: Option<f32>,
    /// Lower output bound.
    pub output_min: Option<f32>,
    /// Upper output bound.
    pub output_max: Option<f32>,
}

impl<M> ClippedLinear<M> {
    /// Whether any bound is set.
    pub fn is_clipped(&self) -> bool {
        self.input_min.is_some()
            || self.input_max.is_some()
            || self.output_min.is_some()
            || self.output_max.is_some()
    }

    /// Loads `linear` (`[rows, cols]`) and, when `clip`, the optional scalar bounds
    /// `input_min`, `input_max`, `output_min`, `output_max` of the module at `vb`.
    pub(crate) fn load<S: Sink<M = M>>(
        vb: &mut VarBuilder<'_, '_, S>,
        rows: usize,
        cols: usize,
        clip: bool,
    ) -> Result<Self, LoadError> {
        let w = vb.linear("linear", rows, cols)?;
        let mut b = [None; 4];
        if clip {
            for (slot, name) in
                b.iter_mut()
                    .zip(["input_min", "input_max", "output_min", "output_max"])
            {
                *slot = vb.scalar(name, false)?.filter(|v| v.is_finite());
            }
        }
        Ok(ClippedLinear {
            w,
            input_min: b[0],
            input_max: b[1],
            output_min: b[2],
            output_max: b[3],
        })
    }
}

impl ClippedLinear {
    /// Records `y = clamp(clamp(x, in_min, in_max) @ W^T, out_min, out_max)`; absent bounds:
    /// no clamp. `tmp` (at least as large as `x`) holds the clamped input.
    pub fn record(
        &self,
        rec: &mut Recorder,
        x: &GpuTensor,
        y: &GpuTensor,
        tmp: &GpuTensor,
    ) -> Result<()> {
        let input = if self.input_min.is_some() || self.input_max.is_some() {
            let t = tmp.view(0, &x.shape);
            elementwise(
                rec,
                Elementwise::Clamp(
                    self.input_min.unwrap_or(f32::MIN),
                    self.input_max.unwrap_or(f32::MAX),
                ),
                x,
                None,
                &t,
            )?;
            t
        } else {
            x.clone()
        };
        ops::linear(rec, &self.w, &input, y)?;
        if self.output_min.is_some() || self.output_max.is_some() {
            elementwise_inplace(
                rec,
                Elementwise::Clamp(
                    self.output_min.unwrap_or(f32::MIN),
                    self.output_max.unwrap_or(f32::MAX),
                ),
                y,
                None,
            )?;
        }
        Ok(())
    }
}

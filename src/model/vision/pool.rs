//! Pooling to soft tokens (spec §3.4): average each k×k block of encoder outputs (row-major
//! over the pooled grid), times `sqrt(Hv)`; then, on `standardize` towers (26B / 31B),
//! `(t − std_bias) · std_scale` (transformers' `Gemma4VisionModel.forward`, after the pooler).

use crate::config::VisionConfig;
use crate::error::Result;
use crate::gpu::ops;
use crate::gpu::{GpuTensor, Recorder};
use crate::checkpoint::var_builder::VarBuilder;
use crate::checkpoint::{LoadError, Sink};

/// The tower's pooler, with the `standardize` tensors of the 26B/31B towers
/// (`vision_tower.std_bias` / `std_scale`, applied after pooling in f32); E2B/E4B
/// (`standardize: false`) have none.
#[derive(Debug)]
pub struct Pooler<V = GpuTensor> {
    /// `std_bias` `[Hv]` (`standardize` models only).
    pub std_bias: Option<V>,
    /// `std_scale` `[Hv]` (`standardize` models only).
    pub std_scale: Option<V>,
}

impl<V> Pooler<V> {
    /// Loads the pooler's tensors at `vb` (`vision_tower`).
    pub(crate) fn load<S: Sink<V = V>>(
        vb: &mut VarBuilder<'_, '_, S>,
        cfg: &VisionConfig,
    ) -> Result<Self, LoadError> {
        let hv = cfg.hidden_size;
        let (std_bias, std_scale) = if cfg.standardize {
            (
                Some(vb.vector("std_bias", &[hv])?),
                Some(vb.vector("std_scale", &[hv])?),
            )
        } else {
            (None, None)
        };
        Ok(Pooler {
            std_bias,
            std_scale,
        })
    }
}

impl Pooler {
    /// Records `pooled = avg_pool_k(x) · sqrt(Hv)` for an image of `grid` patches, then
    /// `pooled = (pooled − std_bias) · std_scale` on standardizing towers;
    /// `x` `[rows·cols, Hv]`, `pooled` `[(rows/k)·(cols/k), Hv]`.
    pub(crate) fn record(
        &self,
        rec: &mut Recorder,
        x: &GpuTensor,
        pooled: &GpuTensor,
        grid: (u32, u32),
        k: u32,
    ) -> Result<()> {
        let hv = x.shape[1];
        ops::avg_pool_2d(rec, x, pooled, grid.0, grid.1, k, (hv as f32).sqrt())?;
        if let (Some(bias), Some(scale)) = (&self.std_bias, &self.std_scale) {
            let row = Some((bias, ops::BLayout::Broadcast));
            ops::elementwise_inplace(rec, ops::Elementwise::Sub, pooled, row)?;
            let row = Some((scale, ops::BLayout::Broadcast));
            ops::elementwise_inplace(rec, ops::Elementwise::Mul, pooled, row)?;
        }
        Ok(())
    }
}

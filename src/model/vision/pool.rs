//! Pooling to soft tokens (spec §3.4): average each k×k block of encoder outputs (row-major
//! over the pooled grid), times `sqrt(Hv)`.

use crate::config::VisionConfig;
use crate::error::Result;
use crate::gpu::ops;
use crate::gpu::{GpuTensor, Recorder};
use crate::checkpoint::var_builder::VarBuilder;
use crate::checkpoint::{LoadError, Sink};

/// The tower's pooler, with the `standardize` tensors of the 26B/31B towers
/// (`vision_tower.std_bias` / `std_scale`).
///
/// The standardization `(t − std_bias) · std_scale` is not applied yet: the tensors are loaded
/// (so that they have a role), and E2B/E4B (`standardize: false`) have none.
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
    /// Records `pooled = avg_pool_k(x) · sqrt(Hv)` for an image of `grid` patches;
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
        Ok(())
    }
}

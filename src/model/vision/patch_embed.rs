//! The patch embedder (spec §3.2): `e = (2p − 1) @ input_proj^T + table[0][x] + table[1][y]`
//! (the [0, 1] → [-1, 1] shift happens inside the model; no mean/std normalization).

use crate::config::VisionConfig;
use crate::error::Result;
use crate::gpu::ops::{self, BLayout, Elementwise, elementwise_inplace};
use crate::gpu::{GpuTensor, Matrix, Recorder};
use crate::checkpoint::var_builder::VarBuilder;
use crate::checkpoint::{LoadError, Sink};

/// The patch embedder with its learned 2-D position table (`vision_tower.patch_embedder`).
#[derive(Debug)]
pub struct PatchEmbedder<M = Matrix, V = GpuTensor> {
    /// `input_proj` `[Hv, 3·p²]`.
    pub input_proj: M,
    /// `position_embedding_table` `[2, positions, Hv]` as f32 (x table, then y table).
    pub position_table: V,
}

impl<M, V> PatchEmbedder<M, V> {
    /// Loads the embedder at `vb` (`vision_tower.patch_embedder`).
    pub(crate) fn load<S: Sink<M = M, V = V>>(
        vb: &mut VarBuilder<'_, '_, S>,
        cfg: &VisionConfig,
    ) -> Result<Self, LoadError> {
        let hv = cfg.hidden_size;
        Ok(PatchEmbedder {
            input_proj: vb.linear("input_proj", hv, cfg.patch_values())?,
            position_table: vb.vector(
                "position_embedding_table",
                &[2, cfg.position_embedding_size, hv],
            )?,
        })
    }
}

/// Row ids into the position table viewed as `[2·table_size, Hv]`: every patch's x row, then
/// every patch's y row (`y + table_size`).
pub(crate) fn table_ids(positions: &[[u32; 2]], table_size: usize) -> Vec<u32> {
    positions
        .iter()
        .map(|p| p[0])
        .chain(positions.iter().map(|p| p[1] + table_size as u32))
        .collect()
}

impl PatchEmbedder {
    /// Records `x = (2·pixels − 1) @ input_proj^T + table[ids[..n]] + table[ids[n..]]`.
    /// `pixels` `[n, 3·p²]` is scaled in place; `ids` are [`table_ids`] (`[2n]` u32); `pe`
    /// `[2n, Hv]` receives the gathered table rows.
    pub(crate) fn record(
        &self,
        rec: &mut Recorder,
        pixels: &GpuTensor,
        ids: &GpuTensor,
        pe: &GpuTensor,
        x: &GpuTensor,
    ) -> Result<()> {
        let n = pixels.shape[0];
        elementwise_inplace(rec, Elementwise::ScaleShift(2.0, -1.0), pixels, None)?;
        ops::linear(rec, &self.input_proj, pixels, x)?;
        // The [2, P, Hv] table as a [2P, Hv] f32 matrix for the gather op.
        ops::embedding(rec, &self.position_table.as_f32_matrix()?, ids, pe, 1.0)?;
        for half in [pe.rows(0, n), pe.rows(n, n)] {
            elementwise_inplace(rec, Elementwise::Add, x, Some((&half, BLayout::Broadcast)))?;
        }
        Ok(())
    }
}

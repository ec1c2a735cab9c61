//! The multimodal embedder (spec §3.5): `f = RMSNorm_1(t) @ embedding_projection^T`, a
//! weightless RMSNorm then a projection from a tower's width to the text hidden size, with no
//! further scaling. Shared by the vision tower (`embed_vision`) and, later, the audio tower
//! (`embed_audio`).

use crate::error::Result;
use crate::gpu::ops;
use crate::gpu::{GpuTensor, Matrix, Recorder};
use crate::checkpoint::var_builder::VarBuilder;
use crate::checkpoint::{LoadError, Sink};

/// A multimodal embedder into the text stream (`embed_vision`, later `embed_audio`).
#[derive(Debug)]
pub struct MultimodalEmbedder<M = Matrix> {
    /// `embedding_projection` `[H, Hm]` (text hidden × the tower's width).
    pub embedding_projection: M,
}

impl<M> MultimodalEmbedder<M> {
    /// Loads the embedder at `vb` (e.g. `embed_vision`): a `[text_hidden, tower_hidden]`
    /// projection, eligible for quantize-on-load like the text matrices.
    pub(crate) fn load<S: Sink<M = M>>(
        vb: &mut VarBuilder<'_, '_, S>,
        tower_hidden: usize,
        text_hidden: usize,
    ) -> Result<Self, LoadError> {
        Ok(MultimodalEmbedder {
            embedding_projection: vb.linear(
                "embedding_projection",
                text_hidden,
                tower_hidden)?,
        })
    }
}

impl MultimodalEmbedder {
    /// Records `out = RMSNorm(x) @ embedding_projection^T` (`eps` of the tower's config);
    /// `normed` (shape of `x`) holds the normed rows.
    pub fn record(
        &self,
        rec: &mut Recorder,
        x: &GpuTensor,
        normed: &GpuTensor,
        out: &GpuTensor,
        eps: f32,
    ) -> Result<()> {
        ops::rms_norm(rec, x, None, normed, eps)?;
        ops::linear(rec, &self.embedding_projection, normed, out)?;
        Ok(())
    }
}

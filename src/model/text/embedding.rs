//! The input embedding (spec §1.2) and the scatter of media features into it (§4).

use std::ops::Range;

use crate::error::Result;
use crate::gpu::ops;
use crate::gpu::{GpuTensor, Matrix, Recorder};
use crate::model::media::MediaRuns;
use crate::checkpoint::var_builder::VarBuilder;
use crate::checkpoint::{LoadError, Sink};

/// The token embedding `embed_tokens` `[vocab, H]` (module `language_model.embed_tokens`);
/// also the tied LM head's weight.
#[derive(Debug)]
pub struct TokenEmbedding<M = Matrix> {
    /// `embed_tokens` `[vocab, H]`.
    pub embed_tokens: M,
}

impl<M> TokenEmbedding<M> {
    /// Loads `embed_tokens` `[vocab, hidden]` from `vb` (module `language_model`).
    pub(crate) fn load<S: Sink<M = M>>(
        vb: &mut VarBuilder<'_, '_, S>,
        vocab: usize,
        hidden: usize,
    ) -> Result<Self, LoadError> {
        Ok(TokenEmbedding {
            embed_tokens: vb.linear("embed_tokens", vocab, hidden)?,
        })
    }
}

impl TokenEmbedding {
    /// Records `h = embed_tokens[ids] * sqrt(H)` (`ids`: u32 `[L]`, `h`: `[L, H]`).
    pub(crate) fn record(&self, rec: &mut Recorder, ids: &GpuTensor, h: &GpuTensor) -> Result<()> {
        let scale = (self.embed_tokens.cols as f32).sqrt();
        ops::embedding(rec, &self.embed_tokens, ids, h, scale)?;
        Ok(())
    }
}

/// Replaces the embeddings of the media soft tokens among `positions` (a chunk of the ids the
/// media were placed on) by their feature rows: `h` holds the chunk's rows.
pub(crate) fn scatter_media_rows(
    rec: &mut Recorder,
    media: &MediaRuns,
    positions: Range<usize>,
    h: &GpuTensor,
) -> Result<()> {
    for run in media.within(positions) {
        rec.copy_rows(media.features(), run.feature_row, h, run.start, run.len)?;
    }
    Ok(())
}

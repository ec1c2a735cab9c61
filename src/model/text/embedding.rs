//! The input embedding (spec §1.2) and the scatter of media features into it (§4).

use crate::error::{Error, Result};
use crate::gpu::ops;
use crate::gpu::{GpuTensor, Matrix, Recorder};
use crate::weights::var_builder::VarBuilder;
use crate::weights::{LoadError, Sink};

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

/// The media scatter: overwrites the rows of `h` (`[L, H]`, the chunk's embeddings) at the
/// positions of `ids` that hold `media_token` with the next rows of `features` (`[n, H]`, every
/// soft token of the prompt in order; no `sqrt(H)` scaling). `next_row` is the first feature row
/// not yet placed (carried across the chunks of one prompt) and is advanced past the rows used.
pub(crate) fn scatter_media_rows(
    rec: &mut Recorder,
    ids: &[u32],
    media_token: Option<u32>,
    features: &GpuTensor,
    next_row: &mut usize,
    h: &GpuTensor,
) -> Result<()> {
    let is_media = |t: u32| Some(t) == media_token;
    let mut i = 0;
    while i < ids.len() {
        if !is_media(ids[i]) {
            i += 1;
            continue;
        }
        let run_start = i;
        while i < ids.len() && is_media(ids[i]) {
            i += 1;
        }
        let run = i - run_start;
        if *next_row + run > features.shape[0] {
            return Err(Error::InvalidArgument(format!(
                "the prompt has more image soft tokens than the {} image feature rows given",
                features.shape[0]
            )));
        }
        rec.copy_rows(features, *next_row, h, run_start, run)?;
        *next_row += run;
    }
    Ok(())
}

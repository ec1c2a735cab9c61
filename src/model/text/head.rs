//! The LM head (spec §1.4, "Final"): `logits = cap * tanh((norm(x) @ embed_tokens^T) / cap)`,
//! tied to the token embedding.

use crate::config::TextConfig;
use crate::error::Result;
use crate::gpu::ops::{self, Elementwise, elementwise_inplace};
use crate::gpu::{GpuTensor, Recorder};
use crate::checkpoint::var_builder::VarBuilder;
use crate::checkpoint::{LoadError, Sink};

use super::embedding::TokenEmbedding;

/// The final norm and the logit softcap; the projection is the tied
/// [`TokenEmbedding`].
#[derive(Debug)]
pub struct LmHead<V = GpuTensor> {
    /// The final norm `norm` `[H]`.
    pub norm: V,
    /// `final_logit_softcapping`.
    pub softcap: Option<f32>,
}

impl<V> LmHead<V> {
    /// Loads `norm` from `vb` (module `language_model`).
    pub(crate) fn load<S: Sink<V = V>>(
        cfg: &TextConfig,
        vb: &mut VarBuilder<'_, '_, S>,
    ) -> Result<Self, LoadError> {
        Ok(LmHead {
            norm: vb.norm("norm", cfg.hidden_size)?,
            softcap: cfg.final_logit_softcapping.map(|c| c as f32),
        })
    }
}

impl LmHead {
    /// Records `logits` (`[rows, vocab]`) for the rows `x` (`[rows, H]`), which are already
    /// final-normed when `normed`; otherwise `x` is normed into `scratch` first.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        rec: &mut Recorder,
        embed: &TokenEmbedding,
        x: &GpuTensor,
        normed: bool,
        scratch: &GpuTensor,
        logits: &GpuTensor,
        eps: f32,
    ) -> Result<()> {
        let x = if normed {
            x.clone()
        } else {
            let xn = scratch.view(0, &x.shape);
            ops::rms_norm(rec, x, Some(&self.norm), &xn, eps)?;
            xn
        };
        ops::linear(rec, &embed.embed_tokens, &x, logits)?;
        if let Some(cap) = self.softcap {
            elementwise_inplace(rec, Elementwise::Softcap(cap), logits, None)?;
        }
        Ok(())
    }
}

//! One decoder layer (spec §1.4):
//!
//! ```text
//! x = x + post_attention_norm(Attention(input_norm(x)))
//! x = x + post_feedforward_norm(FeedForward(pre_feedforward_norm(x)))
//! x = x + post_per_layer_input_norm(PerLayerInput(x, PLE_i))      (PLE models)
//! x = x * layer_scalar
//! ```

use crate::config::TextConfig;
use crate::error::Result;
use crate::gpu::ops;
use crate::gpu::{GpuTensor, Matrix, Recorder};
use crate::checkpoint::var_builder::VarBuilder;
use crate::checkpoint::{LoadError, Sink};

use super::attention::{Attention, AttnEnv};
use super::mlp::FeedForward;
use super::per_layer::PerLayerInput;

/// One decoder layer (module `language_model.layers.{i}`).
#[derive(Debug)]
pub struct DecoderLayer<M = Matrix, V = GpuTensor> {
    /// `input_layernorm` `[H]`.
    pub input_layernorm: V,
    /// `post_attention_layernorm` `[H]`.
    pub post_attention_layernorm: V,
    /// `pre_feedforward_layernorm` `[H]`.
    pub pre_feedforward_layernorm: V,
    /// `post_feedforward_layernorm` `[H]`.
    pub post_feedforward_layernorm: V,
    /// `self_attn`.
    pub self_attn: Attention<M, V>,
    /// `mlp`.
    pub mlp: FeedForward<M, V>,
    /// The per-layer-input block (PLE models).
    pub per_layer_input: Option<PerLayerInput<M, V>>,
    /// `layer_scalar`: the layer's output scale.
    pub layer_scalar: f32,
}

/// The rows of a chunk one layer computes.
pub(crate) struct LayerRows {
    /// The residual stream `[L, H]` (updated in place).
    pub h: GpuTensor,
    /// `input_layernorm(h)` `[L, H]` on entry; on exit the next norm of `h` (see
    /// [`DecoderLayer::record`]).
    pub xn: GpuTensor,
    /// The per-layer inputs `[L, N·P]` (PLE models).
    pub ple: Option<GpuTensor>,
    /// Per row, the exclusive key bound of sliding-layer attention (u32 `[L]`; image blocks
    /// of bidirectional-vision models), `None`: causal.
    pub bounds: Option<GpuTensor>,
    /// Absolute position of the first row.
    pub pos0: usize,
}

impl<M, V> DecoderLayer<M, V> {
    /// Loads layer `i` from `vb` (module `language_model.layers.{i}`).
    pub(crate) fn load<S: Sink<M = M, V = V>>(
        cfg: &TextConfig,
        i: usize,
        vb: &mut VarBuilder<'_, '_, S>,
    ) -> Result<Self, LoadError> {
        vb.set_kv_shared(cfg.is_kv_shared(i));
        let h = cfg.hidden_size;
        Ok(DecoderLayer {
            input_layernorm: vb.norm("input_layernorm", h)?,
            post_attention_layernorm: vb.norm("post_attention_layernorm", h)?,
            pre_feedforward_layernorm: vb.norm("pre_feedforward_layernorm", h)?,
            post_feedforward_layernorm: vb.norm("post_feedforward_layernorm", h)?,
            self_attn: Attention::load(cfg, i, &mut vb.pp("self_attn"))?,
            mlp: FeedForward::load(cfg, i, vb)?,
            per_layer_input: cfg
                .has_ple()
                .then(|| PerLayerInput::load(cfg, vb))
                .transpose()?,
            layer_scalar: vb.scalar("layer_scalar", true)?.unwrap_or(1.0),
        })
    }
}

impl DecoderLayer {
    /// Records the layer over `x.h`, whose input norm is already in `x.xn`. `next_norm` is the
    /// fusion point: the norm that follows this layer (the next layer's `input_layernorm`, or
    /// the final norm) is folded into the last residual kernel and written to `x.xn`; `None`
    /// leaves `x.xn` stale.
    pub(crate) fn record(
        &self,
        rec: &mut Recorder,
        env: &AttnEnv<'_>,
        x: &LayerRows,
        next_norm: Option<&GpuTensor>,
    ) -> Result<()> {
        let (h, xn, eps) = (&x.h, &x.xn, env.eps);
        let o = env.ws.o.view(0, &h.shape);
        self.self_attn
            .record(rec, env, xn, x.pos0, x.bounds.as_ref(), &o)?;
        // h += post_attention_norm(o); xn = pre_feedforward_norm(h)
        let pre_ff = Some((&self.pre_feedforward_layernorm, xn));
        ops::residual_norm(rec, h, &o, &self.post_attention_layernorm, 1.0, pre_ff, eps)?;
        let layer = self.self_attn.layer;
        match env.seqs {
            // Expert routing per sequence of a batched step, as when each decodes alone.
            super::decoder::Seqs::Batch(_) if self.mlp.moe().is_some() => {
                for b in 0..h.shape[0] {
                    let (hb, xb, ob) = (h.rows(b, 1), xn.rows(b, 1), o.rows(b, 1));
                    self.mlp.record(rec, env.ws, layer, &hb, &xb, &ob, eps)?;
                }
            }
            _ => self.mlp.record(rec, env.ws, layer, h, xn, &o, eps)?,
        }
        // The layer's last residual add carries `* layer_scalar` and the next norm.
        let next = next_norm.map(|w| (w, xn));
        let (post_ff, scalar) = (&self.post_feedforward_layernorm, self.layer_scalar);
        match (&self.per_layer_input, &x.ple) {
            (Some(pli), Some(ple)) => {
                ops::residual_norm(rec, h, &o, post_ff, 1.0, None, eps)?;
                let pg = env.ws.ple_gate.view(0, &[h.shape[0], pli.gate.rows]);
                pli.record(rec, self.self_attn.layer, h, ple, &pg, &o)?;
                ops::residual_norm(rec, h, &o, &pli.post_norm, scalar, next, eps)?;
            }
            _ => ops::residual_norm(rec, h, &o, post_ff, scalar, next, eps)?,
        }
        Ok(())
    }
}

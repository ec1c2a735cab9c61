//! Per-layer embeddings (spec §1.3) and the per-layer-input block of a decoder layer (§1.4).
//!
//! [`PerLayerEmbedding`] turns the chunk's token ids and the (media-merged) input embedding into
//! the per-layer inputs `PLE = (RMSNorm(proj(h0) * H^-1/2) + table[ids'] * sqrt(P)) * 2^-1/2`,
//! `[L, N·P]`; layer i's [`PerLayerInput`] reads columns `i·P..(i+1)·P` of it:
//! `h += RMSNorm(proj(gelu_tanh(gate(h)) * PLE_i))`.

use crate::config::TextConfig;
use crate::error::Result;
use crate::gpu::ops;
use crate::gpu::{GpuContext, GpuTensor, Matrix, Recorder};
use crate::checkpoint::var_builder::VarBuilder;
use crate::checkpoint::{HostTable, LoadError, Sink};

use super::workspace::Workspace;

/// Where the per-layer-embedding (PLE) table lives.
// One instance per model: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum PerLayerTable<M = Matrix> {
    /// In host memory (memory-mapped from the checkpoint), gathered row by row.
    Host(HostTable),
    /// Uploaded as a (row-windowed) matrix.
    Gpu(M),
}

/// The model-level half of the per-layer inputs (canonical prefix `language_model.`):
/// `embed_tokens_per_layer`, `per_layer_model_projection`, `per_layer_projection_norm`.
#[derive(Debug)]
pub struct PerLayerEmbedding<M = Matrix, V = GpuTensor> {
    /// `embed_tokens_per_layer` `[vocab_ple, N·P]` (the `sqrt(P)` scale is not applied).
    pub table: PerLayerTable<M>,
    /// `per_layer_model_projection` `[N·P, H]`.
    pub model_projection: M,
    /// `per_layer_projection_norm` `[P]`.
    pub projection_norm: V,
}

impl<M, V> PerLayerEmbedding<M, V> {
    /// Loads the tensors under `language_model.` (`vb`); the table stays on the host unless
    /// `table_on_gpu`.
    pub(crate) fn load<S: Sink<M = M, V = V>>(
        cfg: &TextConfig,
        vb: &mut VarBuilder<'_, '_, S>,
        table_on_gpu: bool,
    ) -> Result<Self, LoadError> {
        let (n, p, h) = (
            cfg.num_hidden_layers,
            cfg.hidden_size_per_layer_input,
            cfg.hidden_size,
        );
        let name = "embed_tokens_per_layer";
        let rows = cfg.vocab_size_per_layer_input;
        let table = if table_on_gpu {
            PerLayerTable::Gpu(vb.linear(name, rows, n * p)?)
        } else {
            PerLayerTable::Host(HostTable {
                linear: vb.host_linear(name, rows, n * p)?,
            })
        };
        Ok(PerLayerEmbedding {
            table,
            model_projection: vb.linear("per_layer_model_projection", n * p, h)?,
            projection_norm: vb.norm("per_layer_projection_norm", p)?,
        })
    }
}

impl PerLayerEmbedding {
    /// Records the per-layer inputs of a chunk: `ids` are the lookup ids (media positions
    /// already replaced by pad), `ids_t` the same on the GPU, `h0` the merged input embedding
    /// `[L, H]`. Returns the `[L, N·P]` tensor that holds the result (a workspace buffer).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        rec: &mut Recorder,
        ctx: &GpuContext,
        ws: &mut Workspace,
        ids: &[u32],
        ids_t: &GpuTensor,
        h0: &GpuTensor,
        eps: f32,
    ) -> Result<GpuTensor> {
        let (l, hdim) = (h0.shape[0], h0.shape[1]);
        let p = self.projection_norm.numel();
        let np = self.model_projection.rows;
        let ple = ws.ple.view(0, &[l, np]);
        let ple_tok = ws.ple_tok.view(0, &[l, np]);
        // Token part: table[ids'] * sqrt(P).
        let table_scale = (p as f32).sqrt();
        match &self.table {
            PerLayerTable::Host(table) => {
                let buf = &mut ws.host_ple[..l * np];
                table.gather(ids, buf)?;
                for v in buf.iter_mut() {
                    *v *= table_scale;
                }
                ple_tok.write_f32(ctx, buf)?;
            }
            PerLayerTable::Gpu(m) => ops::embedding(rec, m, ids_t, &ple_tok, table_scale)?,
        }
        // Context part, combined in one dispatch: ple_tok = (ple_tok + RMSNorm(ple * H^-1/2))
        // * 2^-1/2, using RMSNorm(x * s) = x / sqrt(mean(x^2) + eps / s^2) with s^2 = 1 / H.
        ops::linear(rec, &self.model_projection, h0, &ple)?;
        ops::residual_norm(
            rec,
            &ple_tok.reshape(&[l * np / p, p]),
            &ple.reshape(&[l * np / p, p]),
            &self.projection_norm,
            0.5f32.sqrt(),
            None,
            eps * hdim as f32,
        )?;
        Ok(ple_tok)
    }
}

/// The per-layer-input block of one decoder layer:
/// `h += post_per_layer_input_norm(per_layer_projection(gelu_tanh(per_layer_input_gate(h)) * PLE_i))`.
#[derive(Debug)]
pub struct PerLayerInput<M = Matrix, V = GpuTensor> {
    /// `per_layer_input_gate` `[P, H]`.
    pub gate: M,
    /// `per_layer_projection` `[H, P]`.
    pub projection: M,
    /// `post_per_layer_input_norm` `[H]`.
    pub post_norm: V,
}

impl<M, V> PerLayerInput<M, V> {
    /// Loads the block's tensors from the layer's module (`language_model.layers.{i}`).
    pub(crate) fn load<S: Sink<M = M, V = V>>(
        cfg: &TextConfig,
        vb: &mut VarBuilder<'_, '_, S>,
    ) -> Result<Self, LoadError> {
        let (p, h) = (cfg.hidden_size_per_layer_input, cfg.hidden_size);
        Ok(PerLayerInput {
            gate: vb.linear("per_layer_input_gate", p, h)?,
            projection: vb.linear("per_layer_projection", h, p)?,
            post_norm: vb.norm("post_per_layer_input_norm", h)?,
        })
    }
}

impl PerLayerInput {
    /// Records `out = per_layer_projection(gelu_tanh(gate(h)) * PLE_i)` for layer `index`:
    /// `ple` is the chunk's `[L, N·P]` per-layer inputs, `pg` a `[L, P]` scratch. The caller
    /// adds `post_norm(out)` to the residual stream.
    pub(crate) fn record(
        &self,
        rec: &mut Recorder,
        index: usize,
        h: &GpuTensor,
        ple: &GpuTensor,
        pg: &GpuTensor,
        out: &GpuTensor,
    ) -> Result<()> {
        let p = self.gate.rows;
        let (cols, stride) = ple.column_window(index * p, p);
        ops::linear_gelu_mul(rec, &self.gate, h, &cols, stride, pg)?;
        ops::linear(rec, &self.projection, pg, out)?;
        Ok(())
    }
}

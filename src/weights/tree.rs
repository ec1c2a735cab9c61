//! The model's weight tree. Generic over the leaf types so that one construction path builds
//! both the GPU tree (`M = Matrix`, `V = GpuTensor`, the defaults) and the CPU-only tree of
//! host tensors used for validation and tests (`M = HostLinear`, `V = HostVector`).

use crate::gpu::{GpuTensor, Matrix};

use super::host::HostTable;
use super::report::LoadReport;

/// All weights of a Gemma 4 model.
#[derive(Debug)]
pub struct ModelWeights<M = Matrix, V = GpuTensor> {
    /// Text decoder.
    pub text: TextWeights<M, V>,
    /// Vision tower and its projection into the text stream (None for text-only configs).
    pub vision: Option<VisionWeights<M, V>>,
    /// What the loader did.
    pub report: LoadReport,
}

/// Where the per-layer-embedding (PLE) table lives.
// One instance per model: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum PerLayerTable<M = Matrix> {
    /// In host memory (memory-mapped from the checkpoint), gathered row by row.
    Host(HostTable),
    /// Uploaded as a (row-windowed) matrix.
    Gpu(M),
    /// The model has no PLE (`hidden_size_per_layer_input == 0`).
    None,
}

/// Text decoder weights. Canonical key prefix `language_model.`.
#[derive(Debug)]
pub struct TextWeights<M = Matrix, V = GpuTensor> {
    /// `embed_tokens` `[vocab, H]`; also the tied LM head.
    pub embed_tokens: M,
    /// `embed_tokens_per_layer` `[vocab_ple, N·P]` (the `sqrt(P)` scale is not applied).
    pub embed_per_layer: PerLayerTable<M>,
    /// `per_layer_model_projection` `[N·P, H]` (PLE models).
    pub per_layer_model_projection: Option<M>,
    /// `per_layer_projection_norm` `[P]` (PLE models).
    pub per_layer_projection_norm: Option<V>,
    /// Final norm `[H]`.
    pub norm: V,
    /// Decoder layers.
    pub layers: Vec<TextLayer<M, V>>,
}

/// One decoder layer. KV-shared layers (`i >= first_shared`) have no `k_proj`, `v_proj` or
/// `k_norm`; layers with `attention_k_eq_v` on full attention have no `v_proj`.
#[derive(Debug)]
pub struct TextLayer<M = Matrix, V = GpuTensor> {
    /// `[H]`.
    pub input_layernorm: V,
    /// `[H]`.
    pub post_attention_layernorm: V,
    /// `[H]`.
    pub pre_feedforward_layernorm: V,
    /// `[H]`.
    pub post_feedforward_layernorm: V,
    /// `[nH·hd, H]`.
    pub q_proj: M,
    /// `[nkv·hd, H]` (None on KV-shared layers).
    pub k_proj: Option<M>,
    /// `[nkv·hd, H]` (None on KV-shared and k_eq_v layers).
    pub v_proj: Option<M>,
    /// `[H, nH·hd]`.
    pub o_proj: M,
    /// `[hd]`.
    pub q_norm: V,
    /// `[hd]` (None on KV-shared layers).
    pub k_norm: Option<V>,
    /// `[I_i, H]`.
    pub gate_proj: M,
    /// `[I_i, H]`.
    pub up_proj: M,
    /// `[H, I_i]`.
    pub down_proj: M,
    /// `[P, H]` (PLE models).
    pub per_layer_input_gate: Option<M>,
    /// `[H, P]` (PLE models).
    pub per_layer_projection: Option<M>,
    /// `[H]` (PLE models).
    pub post_per_layer_input_norm: Option<V>,
    /// The layer's output scale.
    pub layer_scalar: f32,
}

// The vision tree's types live with the blocks that load and run them.
pub use crate::model::vision::{ClippedLinear, VisionLayer, VisionWeights};

impl<M, V> ModelWeights<M, V> {
    /// Every matrix of the tree with its canonical module path (for inspection and tests).
    pub fn matrices(&self) -> Vec<(String, &M)> {
        let mut v: Vec<(String, &M)> = Vec::new();
        let t = &self.text;
        v.push(("language_model.embed_tokens".into(), &t.embed_tokens));
        if let PerLayerTable::Gpu(m) = &t.embed_per_layer {
            v.push(("language_model.embed_tokens_per_layer".into(), m));
        }
        if let Some(m) = &t.per_layer_model_projection {
            v.push(("language_model.per_layer_model_projection".into(), m));
        }
        for (i, l) in t.layers.iter().enumerate() {
            let p = |n: &str| format!("language_model.layers.{i}.{n}");
            v.push((p("self_attn.q_proj"), &l.q_proj));
            if let Some(m) = &l.k_proj {
                v.push((p("self_attn.k_proj"), m));
            }
            if let Some(m) = &l.v_proj {
                v.push((p("self_attn.v_proj"), m));
            }
            v.push((p("self_attn.o_proj"), &l.o_proj));
            v.push((p("mlp.gate_proj"), &l.gate_proj));
            v.push((p("mlp.up_proj"), &l.up_proj));
            v.push((p("mlp.down_proj"), &l.down_proj));
            if let Some(m) = &l.per_layer_input_gate {
                v.push((p("per_layer_input_gate"), m));
            }
            if let Some(m) = &l.per_layer_projection {
                v.push((p("per_layer_projection"), m));
            }
        }
        if let Some(vis) = &self.vision {
            v.extend(vis.matrices());
        }
        v
    }
}

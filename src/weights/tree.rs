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

/// Vision tower weights (canonical prefixes `vision_tower.` and `embed_vision.`).
#[derive(Debug)]
pub struct VisionWeights<M = Matrix, V = GpuTensor> {
    /// `patch_embedder.input_proj` `[Hv, 3·p²]`.
    pub input_proj: M,
    /// `patch_embedder.position_embedding_table` `[2, positions, Hv]` as f32.
    pub position_table: V,
    /// Encoder layers.
    pub layers: Vec<VisionLayer<M, V>>,
    /// `embed_vision.embedding_projection` `[H, Hv]`.
    pub embedding_projection: M,
    /// `std_bias` `[Hv]` (`standardize` models only).
    pub std_bias: Option<V>,
    /// `std_scale` `[Hv]` (`standardize` models only).
    pub std_scale: Option<V>,
}

/// One vision encoder layer.
#[derive(Debug)]
pub struct VisionLayer<M = Matrix, V = GpuTensor> {
    /// `[Hv]`.
    pub input_layernorm: V,
    /// `[Hv]`.
    pub post_attention_layernorm: V,
    /// `[Hv]`.
    pub pre_feedforward_layernorm: V,
    /// `[Hv]`.
    pub post_feedforward_layernorm: V,
    /// `[hd]`.
    pub q_norm: V,
    /// `[hd]`.
    pub k_norm: V,
    /// `[nH·hd, Hv]`.
    pub q_proj: ClippedLinear<M>,
    /// `[nkv·hd, Hv]`.
    pub k_proj: ClippedLinear<M>,
    /// `[nkv·hd, Hv]`.
    pub v_proj: ClippedLinear<M>,
    /// `[Hv, nH·hd]`.
    pub o_proj: ClippedLinear<M>,
    /// `[Iv, Hv]`.
    pub gate_proj: ClippedLinear<M>,
    /// `[Iv, Hv]`.
    pub up_proj: ClippedLinear<M>,
    /// `[Hv, Iv]`.
    pub down_proj: ClippedLinear<M>,
}

/// A vision projection with optional clamps:
/// `y = clamp(clamp(x, input_min, input_max) @ W^T, output_min, output_max)`.
/// A bound is `None` when the checkpoint has no value for it, when it is infinite, or when
/// `use_clipped_linears` is false.
#[derive(Debug)]
pub struct ClippedLinear<M = Matrix> {
    /// The weight.
    pub w: M,
    /// Lower input bound.
    pub input_min: Option<f32>,
    /// Upper input bound.
    pub input_max: Option<f32>,
    /// Lower output bound.
    pub output_min: Option<f32>,
    /// Upper output bound.
    pub output_max: Option<f32>,
}

impl<M> ClippedLinear<M> {
    /// Whether any bound is set.
    pub fn is_clipped(&self) -> bool {
        self.input_min.is_some()
            || self.input_max.is_some()
            || self.output_min.is_some()
            || self.output_max.is_some()
    }
}

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
            v.push((
                "vision_tower.patch_embedder.input_proj".into(),
                &vis.input_proj,
            ));
            for (j, l) in vis.layers.iter().enumerate() {
                let p = |n: &str| format!("vision_tower.encoder.layers.{j}.{n}.linear");
                v.push((p("self_attn.q_proj"), &l.q_proj.w));
                v.push((p("self_attn.k_proj"), &l.k_proj.w));
                v.push((p("self_attn.v_proj"), &l.v_proj.w));
                v.push((p("self_attn.o_proj"), &l.o_proj.w));
                v.push((p("mlp.gate_proj"), &l.gate_proj.w));
                v.push((p("mlp.up_proj"), &l.up_proj.w));
                v.push((p("mlp.down_proj"), &l.down_proj.w));
            }
            v.push((
                "embed_vision.embedding_projection".into(),
                &vis.embedding_projection,
            ));
        }
        v
    }
}

//! The model's weight tree. Generic over the leaf types so that one construction path builds
//! both the GPU tree (`M = Matrix`, `V = GpuTensor`, the defaults) and the CPU-only tree of
//! host tensors used for validation and tests (`M = HostLinear`, `V = HostVector`).

use crate::gpu::{GpuTensor, Matrix};
use crate::model::text::TextWeights;

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
        let mut v = self.text.matrices();
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

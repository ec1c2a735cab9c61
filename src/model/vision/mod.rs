//! The Gemma 4 vision tower (spec: `gemma4-architecture.md` §3), one type per block of the spec,
//! and the 12B unified model's encoder-free embedder (`embedder.rs`); [`VisionModel`] is
//! whichever of the two a checkpoint has.
//!
//! ```text
//! ImagePatches ─ PatchEmbedder ─ VisionLayer × N ─ Pooler ─ MultimodalEmbedder ─ soft-token features
//!  (patches.rs)  (patch_embed.rs)    (layer.rs)    (pool.rs)  (crate::model::embed)   [n_tok, H]
//! ```
//!
//! Each block is generic over its leaves (`M` matrices, `V` vectors) like the rest of the weight
//! tree, loads its own tensors by name through a prefix view of the loader (the same
//! construction for the CPU plan, the counting pass and the GPU upload), and records its own
//! ops ([`VisionEncoder`] in `tower.rs` strings them together: one image is one submit,
//! through the matrix-matrix kernels).

mod clipped;
mod embedder;
mod layer;
mod patch_embed;
mod patches;
mod pool;
mod tower;

pub use clipped::ClippedLinear;
pub use embedder::{EmbedderWeights, LayerNormWeights, VisionEmbedder};
pub use layer::{VisionAttention, VisionLayer, VisionMlp};
pub use patch_embed::PatchEmbedder;
pub use patches::ImagePatches;
pub use pool::Pooler;
pub use tower::{VisionEncoder, VisionWeights};

use crate::error::Result;
use crate::gpu::GpuTensor;

/// The image path of a model: the E-series vision tower or the 12B unified model's embedder.
/// Both turn one image's patches into its soft-token features `[n_i, H]`; the media path
/// ([`crate::model::media`]) only sees this.
pub enum VisionModel {
    /// The SigLIP-style tower (E2B / E4B).
    Tower(VisionEncoder),
    /// The encoder-free embedder (12B unified).
    Embedder(VisionEmbedder),
}

impl VisionModel {
    /// Encodes one image: its soft-token features `[n_i, H]` and, when `keep_hidden`, the
    /// state before the multimodal embedder (the tower's pooled output, or the embedder's
    /// last hidden state).
    pub fn encode(
        &self,
        img: &ImagePatches,
        keep_hidden: bool,
    ) -> Result<(GpuTensor, Option<GpuTensor>)> {
        match self {
            VisionModel::Tower(t) => t.encode(img, keep_hidden),
            VisionModel::Embedder(e) => e.encode(img, keep_hidden),
        }
    }

    /// Encodes several images together ([`VisionEncoder::encode_many`] on the tower: one
    /// submit, every row-wise op over all their patches at once; the embedder encodes them one
    /// after another). Returns each image's features `[n_i, H]`, in order.
    pub fn encode_many(&self, imgs: &[&ImagePatches]) -> Result<Vec<GpuTensor>> {
        match self {
            VisionModel::Tower(t) => Ok(t
                .encode_many(imgs, false)?
                .into_iter()
                .map(|(f, _)| f)
                .collect()),
            VisionModel::Embedder(e) => imgs.iter().map(|i| Ok(e.encode(i, false)?.0)).collect(),
        }
    }

    /// The most patches [`encode_many`](Self::encode_many) should take at once (the tower's
    /// [`VisionEncoder::max_patches_together`]; the embedder encodes one image at a time).
    pub fn max_patches_together(&self) -> usize {
        match self {
            VisionModel::Tower(t) => t.max_patches_together(),
            VisionModel::Embedder(_) => 0,
        }
    }

    /// The tower, if this is one.
    pub fn tower(&self) -> Option<&VisionEncoder> {
        match self {
            VisionModel::Tower(t) => Some(t),
            VisionModel::Embedder(_) => None,
        }
    }

    /// The embedder, if this is one.
    pub fn embedder(&self) -> Option<&VisionEmbedder> {
        match self {
            VisionModel::Embedder(e) => Some(e),
            VisionModel::Tower(_) => None,
        }
    }
}

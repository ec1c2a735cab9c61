//! The Gemma 4 vision tower (spec: `gemma4-architecture.md` §3), one type per block of the spec.
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
mod layer;
mod patch_embed;
mod patches;
mod pool;
mod tower;

pub use clipped::ClippedLinear;
pub use layer::{VisionAttention, VisionLayer, VisionMlp};
pub use patch_embed::PatchEmbedder;
pub use patches::ImagePatches;
pub use pool::Pooler;
pub use tower::{VisionEncoder, VisionWeights};

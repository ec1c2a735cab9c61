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
    /// Vision tower and its projection into the text stream (None for text-only and unified
    /// configs).
    pub vision: Option<VisionWeights<M, V>>,
    /// The 12B unified model's vision embedder and its projection (None otherwise).
    pub embedder: Option<EmbedderWeights<M, V>>,
    /// What the loader did.
    pub report: LoadReport,
}

// The vision tree's types live with the blocks that load and run them.
pub use crate::model::vision::{ClippedLinear, EmbedderWeights, VisionLayer, VisionWeights};

impl<M, V> ModelWeights<M, V> {
    /// Every matrix of the tree with its canonical module path (for inspection and tests).
    pub fn matrices(&self) -> Vec<(String, &M)> {
        let mut v = self.text.matrices();
        if let Some(vis) = &self.vision {
            v.extend(vis.matrices());
        }
        if let Some(e) = &self.embedder {
            v.extend(e.matrices());
        }
        v
    }
}

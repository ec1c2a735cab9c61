//! `vision_config` of the 12B unified model (`gemma4_unified`): the encoder-free vision
//! embedder's configuration and its validation (transformers' `Gemma4UnifiedVisionConfig`).
//!
//! There is no tower: an image is cut into model patches of `patch_size · pooling_kernel_size`
//! pixels (48), each flattened to `3 · 48²` values and projected to `mm_embed_dim` through
//! LayerNorm → Linear → LayerNorm, plus a factorized `[mm_posemb_size, 2, mm_embed_dim]`
//! position table, then LayerNorm → weightless RMSNorm → `embedding_projection`.

use std::path::Path;

use serde::Deserialize;

use super::ConfigError;

fn d_patch() -> usize {
    16
}
fn d_pool() -> usize {
    3
}
fn d_embed() -> usize {
    3840
}
fn d_posemb() -> usize {
    1120
}
fn d_rms_eps() -> f64 {
    1e-6
}
fn d_ln_eps() -> f64 {
    // `nn.LayerNorm`'s default: the reference builds its three LayerNorms without an eps.
    1e-5
}

/// The vision embedder's configuration (`vision_config` of a `gemma4_unified` config). Absent
/// fields take the reference class's defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionEmbedderConfig {
    /// Teacher patch side in pixels (16); the resize rule works in these.
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    /// Teacher patches merged per model-patch side (3): a model patch is
    /// `patch_size · pooling_kernel_size` pixels wide.
    #[serde(default = "d_pool")]
    pub pooling_kernel_size: usize,
    /// Width of the patch projection and the position table (3840 on 12B).
    #[serde(default = "d_embed")]
    pub mm_embed_dim: usize,
    /// Rows of the factorized position table (`[mm_posemb_size, 2, mm_embed_dim]`).
    #[serde(default = "d_posemb")]
    pub mm_posemb_size: usize,
    /// Input width of `embedding_projection` (= `mm_embed_dim`).
    #[serde(default = "d_embed")]
    pub output_proj_dims: usize,
    /// Epsilon of the weightless RMSNorm before `embedding_projection`.
    #[serde(default = "d_rms_eps")]
    pub rms_norm_eps: f64,
    /// Epsilon of the three LayerNorms (not in the reference's config: `nn.LayerNorm`'s 1e-5).
    #[serde(default = "d_ln_eps")]
    pub layer_norm_eps: f64,
}

impl VisionEmbedderConfig {
    /// Side of a model patch in pixels (`patch_size · pooling_kernel_size`, 48).
    pub fn model_patch_size(&self) -> usize {
        self.patch_size * self.pooling_kernel_size
    }

    /// Values per model patch (`3 · model_patch_size²`, 6912).
    pub fn patch_values(&self) -> usize {
        3 * self.model_patch_size() * self.model_patch_size()
    }

    /// Checks the sizes. Fields are named `vision_config.<field>`.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: &str, reason: String| ConfigError::Malformed {
            path: path.to_path_buf(),
            field: format!("vision_config.{field}"),
            reason,
        };
        for (name, x) in [
            ("patch_size", self.patch_size),
            ("pooling_kernel_size", self.pooling_kernel_size),
            ("mm_embed_dim", self.mm_embed_dim),
            ("mm_posemb_size", self.mm_posemb_size),
            ("output_proj_dims", self.output_proj_dims),
        ] {
            if x == 0 {
                return Err(bad(name, "must be positive".into()));
            }
        }
        if let Some((name, x)) = super::oversized([
            ("mm_embed_dim", Some(self.mm_embed_dim)),
            ("mm_posemb_size", Some(self.mm_posemb_size)),
            ("output_proj_dims", Some(self.output_proj_dims)),
        ]) {
            return Err(bad(
                name,
                format!(
                    "{x} exceeds the largest accepted size {}",
                    super::MAX_CONFIG_SIZE
                ),
            ));
        }
        if self.patch_size > 1024 || self.pooling_kernel_size > 64 {
            return Err(bad(
                "patch_size",
                format!(
                    "patch_size {} / pooling_kernel_size {} out of range",
                    self.patch_size, self.pooling_kernel_size
                ),
            ));
        }
        if self.output_proj_dims != self.mm_embed_dim {
            return Err(bad(
                "output_proj_dims",
                format!(
                    "{} differs from mm_embed_dim {} (the embedder's output feeds \
                     embedding_projection directly)",
                    self.output_proj_dims, self.mm_embed_dim
                ),
            ));
        }
        for (name, e) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("layer_norm_eps", self.layer_norm_eps),
        ] {
            if !(e.is_finite() && e > 0.0) {
                return Err(bad(name, "must be a positive number".into()));
            }
        }
        Ok(())
    }
}

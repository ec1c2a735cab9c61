//! `vision_config`: the vision tower's configuration and its validation.

use std::path::Path;

use serde::Deserialize;

use super::ConfigError;
use super::text::{d_eps, default_rope_type};

fn d_v_patch() -> usize {
    16
}
fn d_v_pool() -> usize {
    3
}
fn d_v_pos() -> usize {
    10240
}
fn d_v_out() -> usize {
    280
}
fn d_v_rope() -> VisionRope {
    VisionRope {
        rope_type: "default".into(),
        rope_theta: 100.0,
    }
}

/// 2-D RoPE parameters of the vision tower (type "default" or "axial": the same thing).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionRope {
    /// "default" or "axial".
    #[serde(default = "default_rope_type")]
    pub rope_type: String,
    /// Base theta (100).
    #[serde(default = "d_v_theta")]
    pub rope_theta: f64,
}
fn d_v_theta() -> f64 {
    100.0
}

/// The vision tower's configuration (`vision_config`).
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    /// Hidden size Hv.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// KV heads (default: = heads).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Head size (default Hv / heads).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Patch side in pixels.
    #[serde(default = "d_v_patch")]
    pub patch_size: usize,
    /// Pooling kernel (3).
    #[serde(default = "d_v_pool")]
    pub pooling_kernel_size: usize,
    /// Rows of each position table.
    #[serde(default = "d_v_pos")]
    pub position_embedding_size: usize,
    /// Projections clamp inputs/outputs with per-projection scalars (E-series).
    #[serde(default)]
    pub use_clipped_linears: bool,
    /// Soft tokens per image by default.
    #[serde(default = "d_v_out")]
    pub default_output_length: usize,
    /// `(t - std_bias) * std_scale` after pooling (26B/31B).
    #[serde(default)]
    pub standardize: bool,
    /// 2-D RoPE.
    #[serde(default = "d_v_rope")]
    pub rope_parameters: VisionRope,
    /// RMSNorm epsilon.
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
}

impl VisionConfig {
    /// KV heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    /// Head size.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
    /// Values per patch (3 · patch²).
    pub fn patch_values(&self) -> usize {
        3 * self.patch_size * self.patch_size
    }

    /// Checks the tower's sizes and refuses what the engine cannot run (a RoPE type other than
    /// the 2-D default). Fields are named `vision_config.<field>`.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: &str, reason: String| ConfigError::Malformed {
            path: path.to_path_buf(),
            field: format!("vision_config.{field}"),
            reason,
        };
        let v = self;
        if v.hidden_size == 0 || v.num_attention_heads == 0 || v.num_hidden_layers == 0 {
            return Err(ConfigError::Malformed {
                path: path.to_path_buf(),
                field: "vision_config".into(),
                reason: "hidden_size, num_attention_heads and num_hidden_layers must be positive"
                    .into(),
            });
        }
        for (name, x) in [
            ("intermediate_size", v.intermediate_size),
            ("patch_size", v.patch_size),
            ("pooling_kernel_size", v.pooling_kernel_size),
            ("position_embedding_size", v.position_embedding_size),
            ("default_output_length", v.default_output_length),
        ] {
            if x == 0 {
                return Err(bad(name, "must be positive".into()));
            }
        }
        if let Some((name, x)) = super::oversized([
            ("hidden_size", Some(v.hidden_size)),
            ("intermediate_size", Some(v.intermediate_size)),
            ("num_hidden_layers", Some(v.num_hidden_layers)),
            ("num_attention_heads", Some(v.num_attention_heads)),
            ("num_key_value_heads", v.num_key_value_heads),
            ("head_dim", v.head_dim),
            ("position_embedding_size", Some(v.position_embedding_size)),
            ("default_output_length", Some(v.default_output_length)),
        ]) {
            return Err(bad(
                name,
                format!(
                    "{x} exceeds the largest accepted size {}",
                    super::MAX_CONFIG_SIZE
                ),
            ));
        }
        // The image preprocessor's bounds (`ImageOptions::validate`): a larger patch would
        // overflow `patch_values` and be truncated where it becomes a u32.
        if v.patch_size > 1024 || v.pooling_kernel_size > 64 {
            return Err(bad(
                "patch_size",
                format!(
                    "patch_size {} / pooling_kernel_size {} out of range (at most 1024 / 64)",
                    v.patch_size, v.pooling_kernel_size
                ),
            ));
        }
        match v.head_dim {
            Some(0) => return Err(bad("head_dim", "must be positive".into())),
            None if !v.hidden_size.is_multiple_of(v.num_attention_heads) => {
                return Err(bad(
                    "hidden_size",
                    format!(
                        "{} is not a multiple of num_attention_heads {} (and no head_dim is given)",
                        v.hidden_size, v.num_attention_heads
                    ),
                ));
            }
            _ => {}
        }
        if !v.head_dim().is_multiple_of(4) {
            return Err(bad(
                "head_dim",
                format!(
                    "{} is not a multiple of 4 (the 2-D RoPE rotates pairs in each half of the head)",
                    v.head_dim()
                ),
            ));
        }
        let kv = v.kv_heads();
        if kv == 0 || !v.num_attention_heads.is_multiple_of(kv) {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{} query heads are not a multiple of {kv} KV heads",
                    v.num_attention_heads
                ),
            ));
        }
        if !matches!(v.rope_parameters.rope_type.as_str(), "default" | "axial") {
            return Err(ConfigError::Unsupported {
                path: path.to_path_buf(),
                field: "vision_config.rope_parameters.rope_type".into(),
                value: format!("{:?}", v.rope_parameters.rope_type),
                reason: "the vision tower implements the 2-D \"default\" (= \"axial\") RoPE only"
                    .into(),
            });
        }
        if !(v.rope_parameters.rope_theta.is_finite() && v.rope_parameters.rope_theta > 0.0) {
            return Err(bad(
                "rope_parameters.rope_theta",
                "must be a positive number".into(),
            ));
        }
        if !(v.rms_norm_eps.is_finite() && v.rms_norm_eps > 0.0) {
            return Err(bad("rms_norm_eps", "must be a positive number".into()));
        }
        Ok(())
    }
}

//! Synthetic checkpoints: the real Gemma 4 E2B / E4B / 31B / 12B-unified / 26B-A4B shapes (or
//! custom ones)
//! with deterministic random weights, written in the MLX layout that the mlx-community QAT uploads
//! use, for benchmarks and tests that need a full-size model without downloading one.
//!
//! What is written (spec: `gemma4-architecture.md` §0, §2.4):
//! - `config.json` with `text_config`, `vision_config` and a `quantization` block (duplicated as
//!   `quantization_config`): MLX affine, 4-bit group 64 everywhere, with per-module 8-bit
//!   overrides for every `mlp.{gate,up,down}_proj` (the QAT uploads' mixed precision);
//! - text weights under `language_model.model.…`: quantized `embed_tokens`,
//!   `embed_tokens_per_layer` and every Linear (`.weight` u32 codes + bf16 `.scales` / `.biases`),
//!   bf16 norms and `layer_scalar`; KV-shared layers carry no k/v projections (as QAT files);
//! - the vision tower under `vision_tower.…` in bf16 with clip scalars (mlx-vlm does not
//!   quantize the towers), and a quantized `embed_vision.embedding_projection`;
//! - 31B ([`SyntheticSpec::dense31`]): no v_proj on full layers (`attention_k_eq_v`), their own
//!   KV-head count (`num_global_key_value_heads`), `use_bidirectional_attention: "vision"`, and
//!   the large tower without clip scalars but with `vision_tower.std_bias` / `std_scale`
//!   (`standardize: true`);
//! - 12B unified ([`SyntheticSpec::unified12`], `model_type: gemma4_unified`): no tower but the
//!   encoder-free `vision_embedder.{patch_ln1, patch_dense (+ bias), patch_ln2, pos_embedding,
//!   pos_norm}` in bf16 (mlx-vlm's converter skips modules named "vision"), and a quantized
//!   `embed_vision.embedding_projection`.
//!
//! Weights are random codes with bf16 scales chosen so that every matrix has an output of about
//! unit variance for unit-variance input (norm weights ≈ 1), so activations stay finite. The
//! MoE router's projection has a larger gain ([`SyntheticMoe::router_logit_std`]) so that its
//! logits (of a normed input scaled by H^-½) spread enough for different tokens to pick
//! different experts. Tensors are generated one at a time while the file is written (the
//! largest ones, the E2B PLE table, ~1.3 GB, and one 26B-A4B expert stack, ~143 MB); files over [`SyntheticSpec::shard_bytes`] are split into shards with a
//! `model.safetensors.index.json`.
//!
//! ```no_run
//! use gemma_wgpu::synthetic::SyntheticSpec;
//! let spec = SyntheticSpec::e2b().with_layers(2).with_vocab(32768);
//! let dir = std::path::Path::new("target/bench-cache").join(spec.dir_name());
//! spec.ensure(&dir)?; // writes once, reuses when the config matches
//! let model = gemma_wgpu::Model::load(&dir)?;
//! # Ok::<(), gemma_wgpu::Error>(())
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::{Dtype, View};
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// Vision tower dimensions of a [`SyntheticSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticVision {
    /// Hidden size Hv (768 for E2B/E4B).
    pub hidden_size: usize,
    /// MLP width (3072).
    pub intermediate_size: usize,
    /// Encoder layers (16).
    pub num_hidden_layers: usize,
    /// Attention heads (12).
    pub num_attention_heads: usize,
    /// Head size (64).
    pub head_dim: usize,
    /// Patch side in pixels (16).
    pub patch_size: usize,
    /// Pooling kernel (3).
    pub pooling_kernel_size: usize,
    /// Rows of each position table (10240).
    pub position_embedding_size: usize,
    /// E-series clipped linears (clip scalars next to every projection).
    pub use_clipped_linears: bool,
    /// 26B/31B `standardize`: `vision_tower.std_bias` / `std_scale` after pooling.
    pub standardize: bool,
    /// Default soft-token budget (`default_output_length`, 280).
    pub default_output_length: usize,
}

/// The 12B unified model's encoder-free vision embedder (`vision_config` of a `gemma4_unified`
/// checkpoint) of a [`SyntheticSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticEmbedder {
    /// Teacher patch side (16); a model patch is `patch_size · pooling_kernel_size` pixels.
    pub patch_size: usize,
    /// Teacher patches per model-patch side (3).
    pub pooling_kernel_size: usize,
    /// Width of the patch projection and the position table (3840 on 12B).
    pub mm_embed_dim: usize,
    /// Rows of the factorized position table `[mm_posemb_size, 2, mm_embed_dim]` (1120).
    pub mm_posemb_size: usize,
}

impl SyntheticEmbedder {
    /// Values per model patch (`3 · (patch_size · pooling_kernel_size)²`, 6912).
    pub fn patch_values(&self) -> usize {
        let m = self.patch_size * self.pooling_kernel_size;
        3 * m * m
    }
}

/// The mixture-of-experts block of a [`SyntheticSpec`] (26B-A4B; on every layer).
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticMoe {
    /// Routed experts E (`num_experts`, 128 on 26B-A4B).
    pub num_experts: usize,
    /// Experts chosen per token (`top_k_experts`, 8).
    pub top_k: usize,
    /// One expert's GeGLU width (`moe_intermediate_size`, 704).
    pub intermediate_size: usize,
    /// Bits of `router.proj` (8: mlx-vlm's quantization predicate keeps the router at 8 bits).
    pub router_bits: u32,
    /// Standard deviation of the router logits the random `router.proj` gives (2.0): the
    /// router's input is normed and scaled by H^-½, so a unit-gain projection would give
    /// logits of std H^-½ and a near-uniform softmax.
    pub router_logit_std: f32,
}

/// Shape and quantization of a synthetic checkpoint (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    /// Short name used in [`dir_name`](Self::dir_name) ("e2b", "e4b", "custom").
    pub name: String,
    /// Hidden size H.
    pub hidden_size: usize,
    /// Attention type per layer (`"sliding_attention"` / `"full_attention"`); its length is the
    /// number of layers.
    pub layer_types: Vec<String>,
    /// MLP width (doubled on KV-shared layers when `use_double_wide_mlp`).
    pub intermediate_size: usize,
    /// E2B's double-wide MLP on KV-shared layers.
    pub use_double_wide_mlp: bool,
    /// Query heads.
    pub num_attention_heads: usize,
    /// KV heads (of the sliding layers when `attention_k_eq_v` with `num_global_key_value_heads`).
    pub num_key_value_heads: usize,
    /// KV heads of the full-attention layers of a k_eq_v model (`num_global_key_value_heads`:
    /// 4 on 31B, 1 on 12B); `None`: `num_key_value_heads` everywhere.
    pub num_global_key_value_heads: Option<usize>,
    /// `attention_k_eq_v`: full-attention layers have no v_proj (V is the raw K projection).
    pub attention_k_eq_v: bool,
    /// Head size of sliding layers.
    pub head_dim: usize,
    /// Head size of full layers.
    pub global_head_dim: usize,
    /// Trailing layers that reuse an earlier layer's K/V.
    pub num_kv_shared_layers: usize,
    /// PLE width per layer (0: no per-layer embeddings).
    pub hidden_size_per_layer_input: usize,
    /// Vocabulary size (also of the PLE table).
    pub vocab_size: usize,
    /// Sliding window.
    pub sliding_window: usize,
    /// `max_position_embeddings` (131072 on E2B/E4B, 262144 on 31B/12B).
    pub max_position_embeddings: usize,
    /// `final_logit_softcapping` (30 on every released variant).
    pub final_logit_softcapping: f64,
    /// `use_bidirectional_attention: "vision"` (31B / 12B) instead of `null` (E-series).
    pub bidirectional_vision: bool,
    /// The 12B unified model (`model_type: gemma4_unified`, text `gemma4_unified_text`).
    pub unified: bool,
    /// Vision tower, if any (E-series / 31B).
    pub vision: Option<SyntheticVision>,
    /// Encoder-free vision embedder, if any (12B unified).
    pub embedder: Option<SyntheticEmbedder>,
    /// The MoE block on every layer (26B-A4B), beside the dense MLP of `intermediate_size`;
    /// its experts are quantized at `bits`.
    pub moe: Option<SyntheticMoe>,
    /// Special token ids (boi, boa, image, audio, eoi, eoa, video) written to `config.json`;
    /// `None`: [`special_ids`](Self::special_ids)' default for the vocabulary size. Set it to
    /// match a tokenizer copied next to the weights.
    pub token_ids: Option<[u32; 7]>,
    /// Bits of the quantized text matrices and embeddings (4).
    pub bits: u32,
    /// Bits of the MLP projections (8, as the QAT uploads; equal to `bits` for a uniform file).
    pub mlp_bits: u32,
    /// Quantization group size (64).
    pub group_size: usize,
    /// Seed of the random weights.
    pub seed: u64,
    /// Largest shard in bytes before the checkpoint is split (default 2 GiB).
    pub shard_bytes: u64,
}

/// Marker file of a folder written by [`SyntheticSpec::write`].
const MARKER: &str = "synthetic.marker";

/// The real vocabulary size of the E-series models.
pub const REAL_VOCAB: usize = 262_144;

fn pattern(n: usize, period: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i % period == period - 1 {
                "full_attention".to_string()
            } else {
                "sliding_attention".to_string()
            }
        })
        .collect()
}

fn e_vision() -> SyntheticVision {
    SyntheticVision {
        hidden_size: 768,
        intermediate_size: 3072,
        num_hidden_layers: 16,
        num_attention_heads: 12,
        head_dim: 64,
        patch_size: 16,
        pooling_kernel_size: 3,
        position_embedding_size: 10240,
        use_clipped_linears: true,
        standardize: false,
        default_output_length: 280,
    }
}

/// The large tower of 26B-A4B / 31B (`gemma4-architecture.md` §0: 27 layers, Hv 1152, MLP 4304,
/// 16 heads × 72, no clipped linears, `standardize`). Patch 16, pooling 3, position table 10240
/// rows and budget 280 are not in the docs' 31B column: transformers' `Gemma4VisionConfig`
/// defaults, as the E-series tower.
fn large_vision() -> SyntheticVision {
    SyntheticVision {
        hidden_size: 1152,
        intermediate_size: 4304,
        num_hidden_layers: 27,
        num_attention_heads: 16,
        head_dim: 72,
        use_clipped_linears: false,
        standardize: true,
        ..e_vision()
    }
}

impl SyntheticSpec {
    /// Gemma 4 E2B: H 1536, 35 layers ((4 sliding + 1 full) × 7), 20 KV-shared, double-wide
    /// MLP 6144, 8 heads / 1 KV head, head dims 256 / 512, PLE 256, vocab 262144, vision tower.
    pub fn e2b() -> Self {
        SyntheticSpec {
            name: "e2b".into(),
            hidden_size: 1536,
            layer_types: pattern(35, 5),
            intermediate_size: 6144,
            use_double_wide_mlp: true,
            num_attention_heads: 8,
            num_key_value_heads: 1,
            num_global_key_value_heads: None,
            attention_k_eq_v: false,
            head_dim: 256,
            global_head_dim: 512,
            num_kv_shared_layers: 20,
            hidden_size_per_layer_input: 256,
            vocab_size: REAL_VOCAB,
            sliding_window: 512,
            max_position_embeddings: 131_072,
            final_logit_softcapping: 30.0,
            bidirectional_vision: false,
            unified: false,
            vision: Some(e_vision()),
            embedder: None,
            moe: None,
            token_ids: None,
            bits: 4,
            mlp_bits: 8,
            group_size: 64,
            seed: 0x6765_6d6d_6132_6232,
            shard_bytes: 2 << 30,
        }
    }

    /// Gemma 4 E4B: H 2560, 42 layers ((5 sliding + 1 full) × 7), 18 KV-shared, MLP 10240,
    /// 8 heads / 2 KV heads, head dims 256 / 512, PLE 256, vocab 262144, vision tower.
    pub fn e4b() -> Self {
        SyntheticSpec {
            name: "e4b".into(),
            hidden_size: 2560,
            layer_types: pattern(42, 6),
            intermediate_size: 10240,
            use_double_wide_mlp: false,
            num_attention_heads: 8,
            num_key_value_heads: 2,
            head_dim: 256,
            global_head_dim: 512,
            num_kv_shared_layers: 18,
            ..Self::e2b()
        }
    }

    /// A tiny model (H 128, 4 layers with 2 KV-shared, vocab 512, a 2-layer vision tower with
    /// Hv 64 and 4-pixel patches) of a few MB, for tests.
    pub fn tiny() -> Self {
        SyntheticSpec {
            name: "tiny".into(),
            hidden_size: 128,
            layer_types: pattern(4, 2),
            intermediate_size: 256,
            use_double_wide_mlp: true,
            num_attention_heads: 4,
            num_key_value_heads: 1,
            head_dim: 32,
            global_head_dim: 64,
            num_kv_shared_layers: 2,
            hidden_size_per_layer_input: 64,
            vocab_size: 1024,
            sliding_window: 16,
            vision: Some(SyntheticVision {
                hidden_size: 64,
                intermediate_size: 128,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                head_dim: 16,
                patch_size: 4,
                pooling_kernel_size: 3,
                position_embedding_size: 64,
                ..e_vision()
            }),
            ..Self::e2b()
        }
    }

    /// Gemma 4 31B (`gemma4-architecture.md` §0, `gemma4-variants.md` §1.1): H 5376, 60 layers
    /// ((5 sliding + 1 full) × 10), MLP 21504, 32 heads, 16 KV heads on sliding and 4
    /// (`num_global_key_value_heads`) on full layers, head dims 256 / 512, `attention_k_eq_v`
    /// (no v_proj on full layers), no PLE, no KV sharing, vocab 262144, window 1024,
    /// max positions 262144, softcap 30, `use_bidirectional_attention: "vision"`, and the large
    /// vision tower (27 layers, Hv 1152, MLP 4304, 16 heads × 72, no clipped linears,
    /// `standardize`).
    pub fn dense31() -> Self {
        SyntheticSpec {
            name: "dense31".into(),
            hidden_size: 5376,
            layer_types: pattern(60, 6),
            intermediate_size: 21504,
            use_double_wide_mlp: false,
            num_attention_heads: 32,
            num_key_value_heads: 16,
            num_global_key_value_heads: Some(4),
            attention_k_eq_v: true,
            head_dim: 256,
            global_head_dim: 512,
            num_kv_shared_layers: 0,
            hidden_size_per_layer_input: 0,
            sliding_window: 1024,
            max_position_embeddings: 262_144,
            bidirectional_vision: true,
            vision: Some(large_vision()),
            ..Self::e2b()
        }
    }

    /// Gemma 4 12B unified (`gemma4_unified`; `gemma4-variants.md` §1.1): H 3840, 48 layers
    /// ((5 sliding + 1 full) × 8), MLP 15360, 16 heads, 8 KV heads on sliding and 1 on full
    /// layers, head dims 256 / 512, `attention_k_eq_v`, no PLE, no KV sharing, vocab 262144,
    /// window 1024, max positions 262144, softcap 30 (written: the unified text config's
    /// default is none), bidirectional image attention, and the encoder-free vision embedder
    /// (48-px model patches of 6912 values, embed dim 3840, position table 1120 rows).
    pub fn unified12() -> Self {
        SyntheticSpec {
            name: "unified12".into(),
            hidden_size: 3840,
            layer_types: pattern(48, 6),
            intermediate_size: 15360,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            num_global_key_value_heads: Some(1),
            unified: true,
            vision: None,
            embedder: Some(SyntheticEmbedder {
                patch_size: 16,
                pooling_kernel_size: 3,
                mm_embed_dim: 3840,
                mm_posemb_size: 1120,
            }),
            ..Self::dense31()
        }
    }

    /// A tiny 31B-like model for tests: H 128, 4 layers (sliding, full, sliding, full), 4 heads,
    /// 2 KV heads on sliding / 1 on full layers (k_eq_v), head dims 32 / 64, vocab 512, window
    /// 16, and a 2-layer standardized tower with Hv 144 = 2 heads × 72 (the real, not a power
    /// of two, head size) on 4-pixel patches.
    pub fn tiny_dense31() -> Self {
        SyntheticSpec {
            name: "tiny-dense31".into(),
            hidden_size: 128,
            layer_types: pattern(4, 2),
            intermediate_size: 256,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            num_global_key_value_heads: Some(1),
            head_dim: 32,
            global_head_dim: 64,
            vocab_size: 512,
            sliding_window: 16,
            max_position_embeddings: 4096,
            vision: Some(SyntheticVision {
                hidden_size: 144,
                intermediate_size: 136,
                num_hidden_layers: 2,
                num_attention_heads: 2,
                head_dim: 72,
                patch_size: 4,
                pooling_kernel_size: 3,
                position_embedding_size: 64,
                ..large_vision()
            }),
            ..Self::dense31()
        }
    }

    /// A tiny 12B-unified-like model for tests: the text side of
    /// [`tiny_dense31`](Self::tiny_dense31) and an embedder on 12-pixel model patches
    /// (4 × 3; 432 values) with embed dim 64 and a 32-row position table.
    pub fn tiny_unified12() -> Self {
        SyntheticSpec {
            name: "tiny-unified12".into(),
            unified: true,
            vision: None,
            embedder: Some(SyntheticEmbedder {
                patch_size: 4,
                pooling_kernel_size: 3,
                mm_embed_dim: 64,
                mm_posemb_size: 32,
            }),
            ..Self::tiny_dense31()
        }
    }

    /// Gemma 4 26B-A4B (`gemma4-architecture.md` §0 and §1.8, `gemma4-variants.md` §1.1):
    /// H 2816, 30 layers ((5 sliding + 1 full) × 5), 16 heads, 8 KV heads on sliding and 2
    /// (`num_global_key_value_heads`) on full layers, head dims 256 / 512, `attention_k_eq_v`,
    /// no PLE, no KV sharing, vocab 262144, window 1024, max positions 262144, softcap 30,
    /// `use_bidirectional_attention: "vision"`, the large standardized tower of
    /// [`dense31`](Self::dense31), and on every layer a dense MLP of width 2112 beside 128
    /// routed experts of width 704, top-8. Quantized as the mlx-community 4-bit upload
    /// (`gemma4-architecture.md` §2.4): attention, embeddings and experts at 4 bits, the dense
    /// MLP and the router at 8 bits, group 64.
    pub fn moe26() -> Self {
        SyntheticSpec {
            name: "moe26".into(),
            hidden_size: 2816,
            layer_types: pattern(30, 6),
            intermediate_size: 2112,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            num_global_key_value_heads: Some(2),
            moe: Some(SyntheticMoe {
                num_experts: 128,
                top_k: 8,
                intermediate_size: 704,
                router_bits: 8,
                router_logit_std: 2.0,
            }),
            ..Self::dense31()
        }
    }

    /// A tiny 26B-A4B-like model for tests: the text side of
    /// [`tiny_dense31`](Self::tiny_dense31) (H 128, 4 layers, k_eq_v, the standardized
    /// 72-wide-head tower) with a dense MLP of 128 and 10 experts (not a multiple of 4) of
    /// width 64, top-3.
    pub fn tiny_moe26() -> Self {
        SyntheticSpec {
            name: "tiny-moe26".into(),
            intermediate_size: 128,
            moe: Some(SyntheticMoe {
                num_experts: 10,
                top_k: 3,
                intermediate_size: 64,
                router_bits: 8,
                router_logit_std: 2.0,
            }),
            ..Self::tiny_dense31()
        }
    }

    /// The names [`preset`](Self::preset) takes.
    pub const PRESETS: &'static [&'static str] = &[
        "e2b",
        "e4b",
        "31b",
        "12b",
        "26b-a4b",
        "tiny",
        "tiny-31b",
        "tiny-12b",
        "tiny-26b-a4b",
    ];

    /// The named preset: "e2b", "e4b", "31b" (also "dense31"), "12b" (also "unified12"),
    /// "26b-a4b" (also "26b", "moe26"), "tiny", "tiny-31b" (also "tiny-dense31"), "tiny-12b"
    /// (also "tiny-unified12") or "tiny-26b-a4b" (also "tiny-moe26").
    pub fn preset(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "e2b" => Some(Self::e2b()),
            "e4b" => Some(Self::e4b()),
            "31b" | "dense31" => Some(Self::dense31()),
            "12b" | "unified12" => Some(Self::unified12()),
            "26b-a4b" | "26b" | "moe26" => Some(Self::moe26()),
            "tiny" => Some(Self::tiny()),
            "tiny-31b" | "tiny-dense31" => Some(Self::tiny_dense31()),
            "tiny-12b" | "tiny-unified12" => Some(Self::tiny_unified12()),
            "tiny-26b-a4b" | "tiny-moe26" => Some(Self::tiny_moe26()),
            _ => None,
        }
    }

    /// Number of text layers.
    pub fn num_layers(&self) -> usize {
        self.layer_types.len()
    }

    /// Keeps the widths and the first `n` entries of the layer pattern, scaling
    /// `num_kv_shared_layers` proportionally and lowering it until every shared layer has an
    /// earlier non-shared layer of its type to read K/V from (the rule of
    /// [`TextConfig::kv_source`](crate::config::TextConfig::kv_source)).
    pub fn with_layers(mut self, n: usize) -> Self {
        let n = n.max(1);
        let full = self.num_layers().max(1);
        let ratio = self.num_kv_shared_layers as f64 / full as f64;
        if n > full {
            // Extend the pattern with the same period.
            let period = self
                .layer_types
                .iter()
                .position(|t| t == "full_attention")
                .map(|p| p + 1)
                .unwrap_or(full);
            self.layer_types = pattern(n, period);
        } else {
            self.layer_types.truncate(n);
        }
        let mut shared = ((n as f64 * ratio).round() as usize).min(n.saturating_sub(1));
        while shared > 0 && !kv_sharing_valid(&self.layer_types, shared) {
            shared -= 1;
        }
        self.num_kv_shared_layers = shared;
        self
    }

    /// Shrinks (or grows) the vocabulary, for the token embeddings and the PLE table.
    pub fn with_vocab(mut self, n: usize) -> Self {
        self.vocab_size = n.max(16);
        self
    }

    /// Keeps `n` vision encoder layers (the widths stay).
    pub fn with_vision_layers(mut self, n: usize) -> Self {
        if let Some(v) = &mut self.vision {
            v.num_hidden_layers = n.max(1);
        }
        self
    }

    /// Drops the vision tower or embedder (a text-only checkpoint).
    pub fn without_vision(mut self) -> Self {
        self.vision = None;
        self.embedder = None;
        self
    }

    /// Writes these special token ids (boi, boa, image, audio, eoi, eoa, video) instead of
    /// [`special_ids`](Self::special_ids)' default, e.g. those of a tokenizer copied next to
    /// the weights.
    pub fn with_token_ids(mut self, ids: [u32; 7]) -> Self {
        self.token_ids = Some(ids);
        self
    }

    /// MLX bits of the text matrices and embeddings (`bits`) and of the MLP projections
    /// (`mlp_bits`; equal: a uniform file like the non-QAT mlx-community uploads).
    pub fn with_bits(mut self, bits: u32, mlp_bits: u32) -> Self {
        self.bits = bits;
        self.mlp_bits = mlp_bits;
        self
    }

    /// Directory name encoding the shape: `<name>-L<layers>-V<vocab>` plus `-vis<layers>` /
    /// `-novis` when the vision tower (or embedder) differs from the preset's, and
    /// `-q<bits>` / `-q<bits>m<mlp bits>` when the bits differ from the default 4 / 8.
    pub fn dir_name(&self) -> String {
        let mut s = format!("{}-L{}-V{}", self.name, self.num_layers(), self.vocab_size);
        let preset_vision = Self::preset(&self.name).and_then(|p| p.vision);
        match (&self.vision, &self.embedder) {
            (None, None) => s.push_str("-novis"),
            (Some(v), _)
                if preset_vision.as_ref().map(|p| p.num_hidden_layers)
                    != Some(v.num_hidden_layers) =>
            {
                s.push_str(&format!("-vis{}", v.num_hidden_layers))
            }
            _ => {}
        }
        if (self.bits, self.mlp_bits) != (4, 8) {
            if self.bits == self.mlp_bits {
                s.push_str(&format!("-q{}", self.bits));
            } else {
                s.push_str(&format!("-q{}m{}", self.bits, self.mlp_bits));
            }
        }
        s
    }

    /// Special token ids (boi, boa, image, audio, eoi, eoa, video): [`token_ids`](Self::token_ids)
    /// if set, else the real ones when the vocabulary is the real size, else the top seven ids
    /// of the vocabulary.
    pub fn special_ids(&self) -> [u32; 7] {
        if let Some(ids) = self.token_ids {
            return ids;
        }
        if self.vocab_size >= REAL_VOCAB {
            [
                255_999, 256_000, 258_880, 258_881, 258_882, 258_883, 258_884,
            ]
        } else {
            let v = self.vocab_size as u32;
            [v - 7, v - 6, v - 5, v - 4, v - 3, v - 2, v - 1]
        }
    }

    /// MLP width of layer `i`.
    fn intermediate(&self, i: usize) -> usize {
        if self.use_double_wide_mlp && self.is_shared(i) {
            2 * self.intermediate_size
        } else {
            self.intermediate_size
        }
    }

    fn is_shared(&self, i: usize) -> bool {
        self.num_kv_shared_layers > 0 && i >= self.num_layers() - self.num_kv_shared_layers
    }

    fn layer_head_dim(&self, i: usize) -> usize {
        if self.layer_types[i] == "full_attention" {
            self.global_head_dim
        } else {
            self.head_dim
        }
    }

    fn is_full(&self, i: usize) -> bool {
        self.layer_types[i] == "full_attention"
    }

    /// Whether layer `i` has no v_proj (a full layer of a k_eq_v model).
    fn k_eq_v(&self, i: usize) -> bool {
        self.attention_k_eq_v && self.is_full(i)
    }

    /// KV heads of layer `i` (the rule of
    /// [`TextConfig::layer_kv_heads`](crate::config::TextConfig::layer_kv_heads)).
    fn layer_kv_heads(&self, i: usize) -> usize {
        match self.num_global_key_value_heads {
            Some(g) if self.k_eq_v(i) => g,
            _ => self.num_key_value_heads,
        }
    }

    fn quant_block(&self) -> Value {
        let mut q = serde_json::Map::new();
        q.insert("group_size".into(), json!(self.group_size));
        q.insert("bits".into(), json!(self.bits));
        q.insert("mode".into(), json!("affine"));
        if self.mlp_bits != self.bits {
            for i in 0..self.num_layers() {
                for p in ["gate_proj", "down_proj", "up_proj"] {
                    q.insert(
                        format!("language_model.model.layers.{i}.mlp.{p}"),
                        json!({"group_size": self.group_size, "bits": self.mlp_bits, "mode": "affine"}),
                    );
                }
            }
        }
        if let Some(m) = self.moe.as_ref().filter(|m| m.router_bits != self.bits) {
            // mlx-vlm's quantization predicate returns `{group_size, bits}` for the router
            // (no `mode`), as the committed moe26-like-mlx fixture shows.
            for i in 0..self.num_layers() {
                q.insert(
                    format!("language_model.model.layers.{i}.router.proj"),
                    json!({"group_size": self.group_size, "bits": m.router_bits}),
                );
            }
        }
        Value::Object(q)
    }

    /// The `config.json` this spec writes (HF layout with an MLX `quantization` block).
    pub fn config_json(&self) -> Value {
        let [boi, boa, image, audio, eoi, eoa, video] = self.special_ids();
        let eos = [1, 106.min(self.vocab_size - 1)];
        let mut text = json!({
            "attention_bias": false,
            "attention_dropout": 0.0,
            "attention_k_eq_v": self.attention_k_eq_v,
            "bos_token_id": 2,
            "dtype": "bfloat16",
            "eos_token_id": 1,
            "final_logit_softcapping": self.final_logit_softcapping,
            "global_head_dim": self.global_head_dim,
            "head_dim": self.head_dim,
            "hidden_activation": "gelu_pytorch_tanh",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "layer_types": self.layer_types,
            "max_position_embeddings": self.max_position_embeddings,
            "model_type": if self.unified { "gemma4_unified_text" } else { "gemma4_text" },
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_layers(),
            "num_key_value_heads": self.num_key_value_heads,
            "num_kv_shared_layers": self.num_kv_shared_layers,
            "pad_token_id": 0,
            "rms_norm_eps": 1e-06,
            "rope_parameters": {
                "full_attention": {
                    "partial_rotary_factor": 0.25,
                    "rope_theta": 1000000.0,
                    "rope_type": "proportional"
                },
                "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}
            },
            "sliding_window": self.sliding_window,
            "tie_word_embeddings": true,
            "use_bidirectional_attention": if self.bidirectional_vision { json!("vision") } else { Value::Null },
            "use_cache": true,
            "use_double_wide_mlp": self.use_double_wide_mlp,
            "vocab_size": self.vocab_size,
        });
        if let Some(o) = text.as_object_mut() {
            if let Some(g) = self.num_global_key_value_heads {
                o.insert("num_global_key_value_heads".into(), json!(g));
            }
            if !self.unified {
                // Fields of `Gemma4TextConfig` the unified text config does not have.
                let moe = self.moe.as_ref();
                for (k, v) in [
                    ("enable_moe_block", json!(moe.is_some())),
                    ("hidden_size_per_layer_input", json!(self.hidden_size_per_layer_input)),
                    ("moe_intermediate_size", json!(moe.map(|m| m.intermediate_size))),
                    ("num_experts", json!(moe.map(|m| m.num_experts))),
                    ("top_k_experts", json!(moe.map(|m| m.top_k))),
                    ("vocab_size_per_layer_input", json!(self.vocab_size)),
                ] {
                    o.insert(k.into(), v);
                }
            }
        }
        let vision = self.vision.as_ref().map(|v| {
            json!({
                "attention_bias": false,
                "attention_dropout": 0.0,
                "default_output_length": v.default_output_length,
                "dtype": "bfloat16",
                "head_dim": v.head_dim,
                "hidden_activation": "gelu_pytorch_tanh",
                "hidden_size": v.hidden_size,
                "initializer_range": 0.02,
                "intermediate_size": v.intermediate_size,
                "max_position_embeddings": 131072,
                "model_type": "gemma4_vision",
                "num_attention_heads": v.num_attention_heads,
                "num_hidden_layers": v.num_hidden_layers,
                "num_key_value_heads": v.num_attention_heads,
                "patch_size": v.patch_size,
                "pooling_kernel_size": v.pooling_kernel_size,
                "position_embedding_size": v.position_embedding_size,
                "rms_norm_eps": 1e-06,
                "rope_parameters": {"rope_theta": 100.0, "rope_type": "default"},
                "standardize": v.standardize,
                "use_clipped_linears": v.use_clipped_linears
            })
        });
        let embedder = self.embedder.as_ref().map(|e| {
            json!({
                "dtype": "bfloat16",
                "initializer_range": 0.02,
                "mm_embed_dim": e.mm_embed_dim,
                "mm_posemb_size": e.mm_posemb_size,
                "model_type": "gemma4_unified_vision",
                "output_proj_dims": e.mm_embed_dim,
                "patch_size": e.patch_size,
                "pooling_kernel_size": e.pooling_kernel_size,
                "rms_norm_eps": 1e-06
            })
        });
        let (model_type, arch) = if self.unified {
            ("gemma4_unified", "Gemma4UnifiedForConditionalGeneration")
        } else {
            ("gemma4", "Gemma4ForConditionalGeneration")
        };
        json!({
            "architectures": [arch],
            "audio_config": null,
            "audio_token_id": audio,
            "boa_token_id": boa,
            "boi_token_id": boi,
            "dtype": "bfloat16",
            "eoa_token_index": eoa,
            "eoi_token_id": eoi,
            "eos_token_id": eos,
            "image_token_id": image,
            "initializer_range": 0.02,
            "model_type": model_type,
            "quantization": self.quant_block(),
            "quantization_config": self.quant_block(),
            "synthetic": {"generator": "gemma_wgpu::synthetic", "seed": self.seed},
            "text_config": text,
            "tie_word_embeddings": true,
            "video_token_id": video,
            "vision_config": vision.or(embedder)
        })
    }

    /// Every tensor of the checkpoint, generated lazily.
    fn tensors(&self) -> Vec<(String, Lazy)> {
        let mut out: Vec<(String, Lazy)> = Vec::new();
        let h = self.hidden_size;
        let p = self.hidden_size_per_layer_input;
        let n = self.num_layers();
        let g = self.group_size;
        let seed = self.seed;
        let t = |s: &str| format!("language_model.model.{s}");
        let quant = |out: &mut Vec<(String, Lazy)>,
                     name: String,
                     rows: usize,
                     cols: usize,
                     bits: u32,
                     gain: f32| {
            out.extend(quantized(&name, rows, cols, bits, g, gain, seed));
        };
        quant(
            &mut out,
            t("embed_tokens"),
            self.vocab_size,
            h,
            self.bits,
            1.0,
        );
        if p > 0 {
            quant(
                &mut out,
                t("embed_tokens_per_layer"),
                self.vocab_size,
                n * p,
                self.bits,
                1.0,
            );
            quant(
                &mut out,
                t("per_layer_model_projection"),
                n * p,
                h,
                self.bits,
                1.0,
            );
            out.push(norm(t("per_layer_projection_norm.weight"), p, seed));
        }
        out.push(norm(t("norm.weight"), h, seed));
        for i in 0..n {
            let l = |s: &str| t(&format!("layers.{i}.{s}"));
            let hd = self.layer_head_dim(i);
            let nh = self.num_attention_heads;
            let nkv = self.layer_kv_heads(i);
            let mi = self.intermediate(i);
            for s in [
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ] {
                out.push(norm(l(&format!("{s}.weight")), h, seed));
            }
            out.push(scalar_bf16(l("layer_scalar"), &[1], 1.0));
            quant(&mut out, l("self_attn.q_proj"), nh * hd, h, self.bits, 1.0);
            out.push(norm(l("self_attn.q_norm.weight"), hd, seed));
            if !self.is_shared(i) {
                quant(&mut out, l("self_attn.k_proj"), nkv * hd, h, self.bits, 1.0);
                if !self.k_eq_v(i) {
                    quant(&mut out, l("self_attn.v_proj"), nkv * hd, h, self.bits, 1.0);
                }
                out.push(norm(l("self_attn.k_norm.weight"), hd, seed));
            }
            quant(&mut out, l("self_attn.o_proj"), h, nh * hd, self.bits, 1.0);
            quant(&mut out, l("mlp.gate_proj"), mi, h, self.mlp_bits, 1.0);
            quant(&mut out, l("mlp.up_proj"), mi, h, self.mlp_bits, 1.0);
            quant(&mut out, l("mlp.down_proj"), h, mi, self.mlp_bits, 1.0);
            if let Some(m) = &self.moe {
                self.moe_block(&mut out, &l(""), m);
            }
            if p > 0 {
                quant(&mut out, l("per_layer_input_gate"), p, h, self.bits, 1.0);
                quant(&mut out, l("per_layer_projection"), h, p, self.bits, 1.0);
                out.push(norm(l("post_per_layer_input_norm.weight"), h, seed));
            }
        }
        if let Some(v) = &self.vision {
            let hv = v.hidden_size;
            let pv = v.patch_size * v.patch_size * 3;
            out.push(dense_bf16(
                "vision_tower.patch_embedder.input_proj.weight".into(),
                &[hv, pv],
                seed,
            ));
            out.push(uniform_bf16(
                "vision_tower.patch_embedder.position_embedding_table".into(),
                &[2, v.position_embedding_size, hv],
                0.1,
                seed,
            ));
            for j in 0..v.num_hidden_layers {
                let l = |s: &str| format!("vision_tower.encoder.layers.{j}.{s}");
                for s in [
                    "input_layernorm",
                    "post_attention_layernorm",
                    "pre_feedforward_layernorm",
                    "post_feedforward_layernorm",
                ] {
                    out.push(norm(l(&format!("{s}.weight")), hv, seed));
                }
                out.push(norm(l("self_attn.q_norm.weight"), v.head_dim, seed));
                out.push(norm(l("self_attn.k_norm.weight"), v.head_dim, seed));
                let qkv = v.num_attention_heads * v.head_dim;
                let mi = v.intermediate_size;
                for (name, rows, cols) in [
                    ("self_attn.q_proj", qkv, hv),
                    ("self_attn.k_proj", qkv, hv),
                    ("self_attn.v_proj", qkv, hv),
                    ("self_attn.o_proj", hv, qkv),
                    ("mlp.gate_proj", mi, hv),
                    ("mlp.up_proj", mi, hv),
                    ("mlp.down_proj", hv, mi),
                ] {
                    out.push(dense_bf16(
                        l(&format!("{name}.linear.weight")),
                        &[rows, cols],
                        seed,
                    ));
                    if !v.use_clipped_linears {
                        continue;
                    }
                    for (b, val) in [
                        ("input_min", -64.0),
                        ("input_max", 64.0),
                        ("output_min", -64.0),
                        ("output_max", 64.0),
                    ] {
                        out.push(scalar_bf16(l(&format!("{name}.{b}")), &[], val));
                    }
                }
            }
            if v.standardize {
                // `(pooled − std_bias) · std_scale`: a small shift and a scale near 1.
                out.push(uniform_bf16(
                    "vision_tower.std_bias".into(),
                    &[hv],
                    0.05,
                    seed,
                ));
                out.push(norm("vision_tower.std_scale".into(), hv, seed));
            }
            self.embed_vision(&mut out, hv);
        }
        if let Some(e) = &self.embedder {
            let w = e.patch_values();
            let d = e.mm_embed_dim;
            let v = |s: &str| format!("vision_embedder.{s}");
            let layer_norm = |out: &mut Vec<(String, Lazy)>, name: &str, n: usize| {
                out.push(norm(v(&format!("{name}.weight")), n, seed));
                out.push(uniform_bf16(v(&format!("{name}.bias")), &[n], 0.05, seed));
            };
            layer_norm(&mut out, "patch_ln1", w);
            out.push(dense_bf16(v("patch_dense.weight"), &[d, w], seed));
            out.push(uniform_bf16(v("patch_dense.bias"), &[d], 0.05, seed));
            layer_norm(&mut out, "patch_ln2", d);
            out.push(uniform_bf16(
                v("pos_embedding"),
                &[e.mm_posemb_size, 2, d],
                0.1,
                seed,
            ));
            layer_norm(&mut out, "pos_norm", d);
            self.embed_vision(&mut out, d);
        }
        out
    }

    /// The MoE tensors of the layer module `prefix` (ending in `.`): router, the stacked
    /// `switch_glu` experts and the three extra norms.
    fn moe_block(&self, out: &mut Vec<(String, Lazy)>, prefix: &str, m: &SyntheticMoe) {
        let (h, e, mi, g, seed) = (
            self.hidden_size,
            m.num_experts,
            m.intermediate_size,
            self.group_size,
            self.seed,
        );
        let l = |s: &str| format!("{prefix}{s}");
        for s in [
            "post_feedforward_layernorm_1",
            "pre_feedforward_layernorm_2",
            "post_feedforward_layernorm_2",
        ] {
            out.push(norm(l(&format!("{s}.weight")), h, seed));
        }
        // The router's input has unit rms times H^-½ per element: a gain of std · √H gives
        // logits of that std.
        let gain = m.router_logit_std * (h as f32).sqrt();
        out.extend(quantized(&l("router.proj"), e, h, m.router_bits, g, gain, seed));
        out.push(norm(l("router.scale"), h, seed));
        out.push(norm(l("router.per_expert_scale"), e, seed));
        for (p, rows, cols) in [
            ("gate_proj", mi, h),
            ("up_proj", mi, h),
            ("down_proj", h, mi),
        ] {
            out.extend(quantized_stack(
                &l(&format!("experts.switch_glu.{p}")),
                Some(e),
                rows,
                cols,
                self.bits,
                g,
                1.0,
                seed,
            ));
        }
    }

    /// `embed_vision.embedding_projection` `[H, width]`: quantized when `width` is a multiple
    /// of the group size (mlx-vlm's rule), else bf16.
    fn embed_vision(&self, out: &mut Vec<(String, Lazy)>, width: usize) {
        let name = "embed_vision.embedding_projection".to_string();
        let h = self.hidden_size;
        if width.is_multiple_of(self.group_size) {
            out.extend(quantized(
                &name,
                h,
                width,
                self.bits,
                self.group_size,
                1.0,
                self.seed,
            ));
        } else {
            out.push(dense_bf16(format!("{name}.weight"), &[h, width], self.seed));
        }
    }

    /// Total bytes of the tensors this spec writes.
    pub fn total_bytes(&self) -> u64 {
        self.tensors().iter().map(|(_, t)| t.len as u64).sum()
    }

    /// Writes the checkpoint into `dir` (created if needed): the safetensors file(s), then
    /// `config.json` last, so an interrupted write is never mistaken for a complete one.
    /// Refuses a folder that holds a checkpoint this writer did not create.
    pub fn write(&self, dir: &Path) -> Result<()> {
        self.validate()?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let config_path = dir.join("config.json");
        let marker = dir.join(MARKER);
        // Never delete someone else's checkpoint: only a folder this writer created (marker
        // file) or one without weights is (re)written.
        let has_weights = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
            })
            .unwrap_or(false);
        if (has_weights || config_path.exists()) && !marker.exists() {
            return Err(Error::InvalidArgument(format!(
                "{} holds a checkpoint that was not written by the synthetic writer; \
                 refusing to overwrite it (choose another folder)",
                dir.display()
            )));
        }
        std::fs::write(&marker, b"written by gemma_wgpu::synthetic\n").map_err(io(&marker))?;
        if config_path.exists() {
            std::fs::remove_file(&config_path).map_err(io(&config_path))?;
        }
        // Old shards of a different shape must not linger next to the new files.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.ends_with(".safetensors") || name == "model.safetensors.index.json" {
                    let path = e.path();
                    std::fs::remove_file(&path).map_err(io(&path))?;
                }
            }
        }
        let tensors = self.tensors();
        let mut shards: Vec<Vec<(String, Lazy)>> = vec![Vec::new()];
        let mut size = 0u64;
        for (name, t) in tensors {
            if size > 0 && size + t.len as u64 > self.shard_bytes {
                shards.push(Vec::new());
                size = 0;
            }
            size += t.len as u64;
            if let Some(last) = shards.last_mut() {
                last.push((name, t));
            }
        }
        let meta: Option<HashMap<String, String>> =
            Some([("format".to_string(), "mlx".to_string())].into());
        let count = shards.len();
        let mut weight_map = serde_json::Map::new();
        let mut total = 0u64;
        for (k, shard) in shards.into_iter().enumerate() {
            let file = if count == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", k + 1, count)
            };
            for (name, t) in &shard {
                weight_map.insert(name.clone(), json!(file));
                total += t.len as u64;
            }
            let path = dir.join(&file);
            safetensors::serialize_to_file(shard, meta.clone(), &path).map_err(|e| Error::Io {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        if count > 1 {
            let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
            let path = dir.join("model.safetensors.index.json");
            std::fs::write(&path, index.to_string()).map_err(io(&path))?;
        }
        let text = serde_json::to_string_pretty(&self.config_json())
            .map_err(|e| Error::InvalidArgument(format!("config.json: {e}")))?;
        std::fs::write(&config_path, text).map_err(io(&config_path))?;
        Ok(())
    }

    /// Writes the checkpoint into `dir` unless it already holds one with this spec's
    /// `config.json` (then it is reused). Returns true when it was written.
    pub fn ensure(&self, dir: &Path) -> Result<bool> {
        if self.is_written(dir) {
            return Ok(false);
        }
        self.write(dir)?;
        Ok(true)
    }

    /// True when `dir` holds a complete checkpoint written from this spec.
    pub fn is_written(&self, dir: &Path) -> bool {
        let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            return false;
        };
        v == self.config_json()
            && (dir.join("model.safetensors").is_file()
                || dir.join("model.safetensors.index.json").is_file())
    }

    /// The default cache directory for this spec under `root`.
    pub fn cache_dir(&self, root: &Path) -> PathBuf {
        root.join(self.dir_name())
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("synthetic checkpoint: {m}")));
        let g = self.group_size;
        if g == 0 || !matches!(self.bits, 2..=8) || !matches!(self.mlp_bits, 2..=8) {
            return bad(format!(
                "bits {} / {} and group {g} are not a valid MLX affine format",
                self.bits, self.mlp_bits
            ));
        }
        let mut widths = vec![
            self.hidden_size,
            self.num_attention_heads * self.head_dim,
            self.num_attention_heads * self.global_head_dim,
            self.intermediate_size,
        ];
        if self.hidden_size_per_layer_input > 0 {
            widths.push(self.hidden_size_per_layer_input);
        }
        if let Some(m) = &self.moe {
            widths.push(m.intermediate_size);
            if !matches!(m.router_bits, 2..=8) {
                return bad(format!(
                    "router bits {} are not a valid MLX affine format",
                    m.router_bits
                ));
            }
            if m.num_experts == 0 || m.top_k == 0 || m.top_k > m.num_experts {
                return bad(format!(
                    "top-{} of {} experts is not a routing",
                    m.top_k, m.num_experts
                ));
            }
            if self.unified {
                return bad("the unified model has no MoE block".into());
            }
        }
        if let Some(w) = widths.iter().find(|&&w| w == 0 || w % g != 0) {
            return bad(format!(
                "input width {w} is not a positive multiple of the group size {g}"
            ));
        }
        if !kv_sharing_valid(&self.layer_types, self.num_kv_shared_layers) {
            return bad(format!(
                "{} KV-shared layers leave a shared layer without an earlier layer of its type",
                self.num_kv_shared_layers
            ));
        }
        if self.vocab_size < 16 {
            return bad("the vocabulary needs at least 16 ids".into());
        }
        match (self.unified, &self.vision, &self.embedder) {
            (true, Some(_), _) => {
                return bad("the unified model has no vision tower (an embedder instead)".into());
            }
            (false, _, Some(_)) => {
                return bad("only the unified model (`unified: true`) has a vision embedder".into());
            }
            _ => {}
        }
        if self.num_global_key_value_heads.is_some() && !self.attention_k_eq_v {
            return bad(
                "num_global_key_value_heads only applies with attention_k_eq_v (as transformers)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Whether the last `shared` of `types` each have an earlier non-shared layer of the same type.
fn kv_sharing_valid(types: &[String], shared: usize) -> bool {
    let first = types.len().saturating_sub(shared);
    if shared > 0 && first == 0 {
        return false;
    }
    types[first..]
        .iter()
        .all(|t| types[..first].iter().any(|u| u == t))
}

/// A tensor whose bytes are generated when the writer asks for them.
#[derive(Clone)]
struct Lazy {
    dtype: Dtype,
    shape: Vec<usize>,
    len: usize,
    make: Arc<dyn Fn() -> Vec<u8> + Send + Sync>,
}

impl View for Lazy {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned((self.make)())
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

/// SplitMix64: deterministic, fast, good enough for weights.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, name: &str) -> Self {
        // FNV-1a of the tensor name mixed into the seed: each tensor has its own stream.
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn sym(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn bf16_bytes(values: impl Iterator<Item = f32>, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 2);
    for v in values {
        out.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
    }
    out
}

/// A norm weight: ≈ 1 (1 ± 0.05).
fn norm(name: String, n: usize, seed: u64) -> (String, Lazy) {
    let key = name.clone();
    (
        name,
        Lazy {
            dtype: Dtype::BF16,
            shape: vec![n],
            len: n * 2,
            make: Arc::new(move || {
                let mut r = Rng::new(seed, &key);
                bf16_bytes((0..n).map(|_| 1.0 + 0.05 * r.sym()), n)
            }),
        },
    )
}

fn scalar_bf16(name: String, shape: &[usize], value: f32) -> (String, Lazy) {
    let n: usize = shape.iter().product();
    (
        name,
        Lazy {
            dtype: Dtype::BF16,
            shape: shape.to_vec(),
            len: n * 2,
            make: Arc::new(move || bf16_bytes(std::iter::repeat_n(value, n), n)),
        },
    )
}

/// Uniform values in [-amp, amp].
fn uniform_bf16(name: String, shape: &[usize], amp: f32, seed: u64) -> (String, Lazy) {
    let n: usize = shape.iter().product();
    let key = name.clone();
    (
        name,
        Lazy {
            dtype: Dtype::BF16,
            shape: shape.to_vec(),
            len: n * 2,
            make: Arc::new(move || {
                let mut r = Rng::new(seed, &key);
                bf16_bytes((0..n).map(|_| amp * r.sym()), n)
            }),
        },
    )
}

/// A float `[rows, cols]` matrix with unit output variance for unit-variance input.
fn dense_bf16(name: String, shape: &[usize], seed: u64) -> (String, Lazy) {
    let cols = shape.last().copied().unwrap_or(1).max(1);
    // Uniform in [-a, a] has variance a²/3.
    let amp = (3.0 / cols as f32).sqrt();
    uniform_bf16(name, shape, amp, seed)
}

/// An MLX affine-quantized `[rows, cols]` matrix: `X.weight` (u32 codes), `X.scales`,
/// `X.biases` (bf16), with random uniform codes and per-group scales around the value that
/// gives unit output variance; biases centre the codes on zero.
fn quantized(
    name: &str,
    rows: usize,
    cols: usize,
    bits: u32,
    group: usize,
    gain: f32,
    seed: u64,
) -> Vec<(String, Lazy)> {
    quantized_stack(name, None, rows, cols, bits, group, gain, seed)
}

/// [`quantized`], or with `experts` a stack of that many `[rows, cols]` matrices as MLX
/// `switch_glu` writes them: `weight` `[E, rows, cols·bits/32]`, `scales` / `biases`
/// `[E, rows, cols/group]` (the flat data of an `[E·rows, cols]` matrix).
#[allow(clippy::too_many_arguments)]
fn quantized_stack(
    name: &str,
    experts: Option<usize>,
    rows: usize,
    cols: usize,
    bits: u32,
    group: usize,
    gain: f32,
    seed: u64,
) -> Vec<(String, Lazy)> {
    let shape = |last: usize| match experts {
        Some(e) => vec![e, rows, last],
        None => vec![rows, last],
    };
    let rows = rows * experts.unwrap_or(1);
    let words = cols * bits as usize / 32;
    let groups = cols / group;
    let levels = ((1u32 << bits) - 1) as f32;
    // Uniform codes over 0..=levels have standard deviation levels / sqrt(12) (approximately).
    let base = gain * 12f32.sqrt() / (levels * (cols as f32).sqrt());
    let key_w = format!("{name}.weight");
    let key_s = format!("{name}.scales");
    let scales = move |seed: u64, key: &str| {
        let mut r = Rng::new(seed, key);
        (0..rows * groups).map(move |_| base * (1.0 + 0.25 * r.sym()))
    };
    let weight = {
        let key = key_w.clone();
        Lazy {
            dtype: Dtype::U32,
            shape: shape(words),
            len: rows * words * 4,
            make: Arc::new(move || {
                let mut r = Rng::new(seed, &key);
                let n = rows * words;
                let mut out = Vec::with_capacity(n * 4);
                for _ in 0..n / 2 {
                    out.extend_from_slice(&r.next().to_le_bytes());
                }
                if n % 2 == 1 {
                    out.extend_from_slice(&(r.next() as u32).to_le_bytes());
                }
                out
            }),
        }
    };
    let sc = {
        let key = key_s.clone();
        Lazy {
            dtype: Dtype::BF16,
            shape: shape(groups),
            len: rows * groups * 2,
            make: Arc::new(move || bf16_bytes(scales(seed, &key), rows * groups)),
        }
    };
    let bi = {
        let key = key_s.clone();
        Lazy {
            dtype: Dtype::BF16,
            shape: shape(groups),
            len: rows * groups * 2,
            // The same scale stream: bias = -scale · levels / 2 centres the codes on zero.
            make: Arc::new(move || {
                let s = scales(seed, &key).map(|s| {
                    let s = half::bf16::from_f32(s).to_f32();
                    -s * levels / 2.0
                });
                bf16_bytes(s, rows * groups)
            }),
        }
    };
    vec![(key_w, weight), (key_s, sc), (format!("{name}.biases"), bi)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_keep_sharing_valid() {
        for n in 1..=40 {
            let s = SyntheticSpec::e2b().with_layers(n);
            assert_eq!(s.num_layers(), n);
            assert!(
                kv_sharing_valid(&s.layer_types, s.num_kv_shared_layers),
                "{n}"
            );
            assert!(s.validate().is_ok(), "{n}");
        }
        assert_eq!(
            SyntheticSpec::e2b().with_layers(35).num_kv_shared_layers,
            20
        );
        assert_eq!(SyntheticSpec::e2b().with_layers(2).num_kv_shared_layers, 1);
        assert_eq!(
            SyntheticSpec::e4b().with_layers(42).num_kv_shared_layers,
            18
        );
    }

    #[test]
    fn dense31_sizes_are_the_mlx_community_sizes() {
        // The registry's sizes of the uniform 4-bit and 8-bit 31B uploads (tower in bf16,
        // everything else quantized): the real 31B dims give the same totals.
        let size = |repo: &str| {
            crate::registry::entries()
                .iter()
                .find(|e| e.repo == repo)
                .map(|e| e.approx_size_gb)
                .unwrap()
        };
        for (bits, repo) in [
            (4, "mlx-community/gemma-4-31B-it-4bit"),
            (8, "mlx-community/gemma-4-31B-it-8bit"),
        ] {
            let gb = SyntheticSpec::dense31().with_bits(bits, bits).total_bytes() as f64 / 1e9;
            let want = size(repo);
            assert!((gb / want - 1.0).abs() < 0.01, "{bits}-bit: {gb} GB vs {want}");
        }
    }

    #[test]
    fn e2b_size_is_the_qat_size() {
        // Text ≈ 0.4 GB 4-bit attention/PLE/embeddings + 1.65 GB 8-bit MLP + 1.3 GB PLE table.
        let s = SyntheticSpec::e2b().without_vision();
        let gb = s.total_bytes() as f64 / 1e9;
        assert!((3.0..4.0).contains(&gb), "{gb}");
    }
}

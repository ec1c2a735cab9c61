//! `text_config`: the text decoder's configuration, its per-layer helpers (KV sharing, head
//! sizes, MLP widths, RoPE) and its validation.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;

/// Attention type of one text layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    /// Causal attention limited to the last `sliding_window` tokens.
    SlidingAttention,
    /// Causal attention over the whole sequence.
    FullAttention,
}

impl LayerType {
    /// The name used in `config.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerType::SlidingAttention => "sliding_attention",
            LayerType::FullAttention => "full_attention",
        }
    }
}

/// RoPE parameters of one layer type.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RopeParameters {
    /// "default" (all frequencies) or "proportional" (only `partial_rotary_factor` of them).
    #[serde(default = "default_rope_type")]
    pub rope_type: String,
    /// Base theta.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Fraction of the head that rotates (proportional RoPE); 1.0 for default RoPE.
    #[serde(default = "one")]
    pub partial_rotary_factor: f64,
}

pub(super) fn default_rope_type() -> String {
    "default".into()
}
fn default_theta() -> f64 {
    10000.0
}
fn one() -> f64 {
    1.0
}

/// Per-layer override in transformers' `per_layer_config` form (transformers 5.24's
/// heterogeneous configs): any attribute of the text config, per layer; the engine honours the
/// attention geometry (`head_dim`, `num_key_value_heads`) and refuses every other attribute at
/// validation (it would otherwise be ignored and the model would run wrongly).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PerLayerOverride {
    /// Head size of this layer.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// KV heads of this layer (full layers of `attention_k_eq_v` models).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Any other overridden attribute (refused by [`TextConfig::validate`]).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

fn d_vocab() -> usize {
    262144
}
fn d_head_dim() -> usize {
    256
}
fn d_global_head_dim() -> usize {
    512
}
fn d_ple() -> usize {
    256
}
fn d_window() -> usize {
    512
}
fn d_softcap() -> Option<f64> {
    Some(30.0)
}
pub(super) fn d_eps() -> f64 {
    1e-6
}
fn d_true() -> bool {
    true
}
fn d_max_pos() -> usize {
    131072
}
fn d_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn d_pad() -> u32 {
    0
}
fn d_bos() -> u32 {
    2
}
fn null_pad<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    Ok(Option::<u32>::deserialize(d)?.unwrap_or_else(d_pad))
}
fn null_bos<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    Ok(Option::<u32>::deserialize(d)?.unwrap_or_else(d_bos))
}
fn null_eos<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TokenIds, D::Error> {
    Ok(Option::<TokenIds>::deserialize(d)?.unwrap_or_default())
}
fn d_rope() -> BTreeMap<String, RopeParameters> {
    let mut m = BTreeMap::new();
    m.insert(
        "sliding_attention".into(),
        RopeParameters {
            rope_type: "default".into(),
            rope_theta: 10000.0,
            partial_rotary_factor: 1.0,
        },
    );
    m.insert(
        "full_attention".into(),
        RopeParameters {
            rope_type: "proportional".into(),
            rope_theta: 1e6,
            partial_rotary_factor: 0.25,
        },
    );
    m
}

/// `eos_token_id`: one id or a list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// One id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// All ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(i) => vec![*i],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

impl Default for TokenIds {
    fn default() -> Self {
        TokenIds::One(1)
    }
}

/// Which layers the image-block overlay of bidirectional-vision models reaches, as
/// transformers 5.24 builds the masks (the reference decides; the two model classes differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageBlockMask {
    /// `gemma4` (26B / 31B; `create_masks_for_vision_model`): sliding layers
    /// `window AND (causal OR same block)`, full layers causal.
    #[default]
    SlidingLayers,
    /// `gemma4_unified` (12B; its forward and `generate()`): every layer
    /// `(causal AND window) OR same block` — a query of a block longer than the window also sees
    /// the block's keys before its window, and full layers see the block's later keys.
    EveryLayer,
}

/// The text decoder's configuration (`text_config`).
#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    /// Hidden size H.
    pub hidden_size: usize,
    /// Number of decoder layers N.
    pub num_hidden_layers: usize,
    /// MLP width (doubled on KV-shared layers when `use_double_wide_mlp`).
    pub intermediate_size: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// KV heads (sliding layers, and full layers unless `attention_k_eq_v`).
    pub num_key_value_heads: usize,
    /// KV heads of full layers when `attention_k_eq_v` (26B/31B).
    #[serde(default)]
    pub num_global_key_value_heads: Option<usize>,
    /// Head size of sliding layers (default 256).
    #[serde(default = "d_head_dim")]
    pub head_dim: usize,
    /// Head size of full layers (hub form; default 512).
    #[serde(default)]
    pub global_head_dim: Option<usize>,
    /// transformers 5.24 form of the per-layer attention geometry: `{"<layer>": {"head_dim": N,
    /// "num_key_value_heads": K}}`, keys the layer index (zero-padded when written by
    /// transformers: "05"). When present, `global_head_dim` and `num_global_key_value_heads`
    /// are ignored (as transformers does): a layer without an entry uses `head_dim` and
    /// `num_key_value_heads`.
    #[serde(default)]
    pub per_layer_config: Option<BTreeMap<String, PerLayerOverride>>,
    /// Full layers take V from the raw K projection (26B/31B).
    #[serde(default)]
    pub attention_k_eq_v: bool,
    /// Attention type of every layer (required: never derived).
    pub layer_types: Vec<LayerType>,
    /// The last this-many layers reuse the KV of earlier layers (E-series: 20 / 18).
    #[serde(default)]
    pub num_kv_shared_layers: usize,
    /// KV-shared layers have a twice-as-wide MLP (E2B).
    #[serde(default)]
    pub use_double_wide_mlp: bool,
    /// PLE width P (0: no per-layer embeddings).
    #[serde(default = "d_ple")]
    pub hidden_size_per_layer_input: usize,
    /// Vocabulary size.
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    /// Rows of the PLE table.
    #[serde(default = "d_vocab")]
    pub vocab_size_per_layer_input: usize,
    /// RoPE parameters per layer type name.
    #[serde(default = "d_rope")]
    pub rope_parameters: BTreeMap<String, RopeParameters>,
    /// Sliding window length.
    #[serde(default = "d_window")]
    pub sliding_window: usize,
    /// Final logit soft-capping (None: off).
    #[serde(default = "d_softcap")]
    pub final_logit_softcapping: Option<f64>,
    /// RMSNorm epsilon.
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    /// LM head tied to the token embedding.
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    /// Maximum positions.
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    /// Activation (gelu_pytorch_tanh).
    #[serde(default = "d_act")]
    pub hidden_activation: String,
    /// Padding id (0; `null` also means 0).
    #[serde(default = "d_pad", deserialize_with = "null_pad")]
    pub pad_token_id: u32,
    /// Beginning-of-sequence id (2; `null` also means 2).
    #[serde(default = "d_bos", deserialize_with = "null_bos")]
    pub bos_token_id: u32,
    /// End-of-sequence id(s) (1; `null` also means 1).
    #[serde(default, deserialize_with = "null_eos")]
    pub eos_token_id: TokenIds,
    /// MoE block on every layer (26B-A4B): a dense MLP plus `top_k_experts` of `num_experts`
    /// routed experts of width `moe_intermediate_size` (spec §1.8).
    #[serde(default)]
    pub enable_moe_block: bool,
    /// Routed experts per MoE layer (128 on 26B-A4B).
    #[serde(default)]
    pub num_experts: Option<usize>,
    /// Experts each token is routed to (8 on 26B-A4B).
    #[serde(default)]
    pub top_k_experts: Option<usize>,
    /// Width of one expert's GeGLU (704 on 26B-A4B).
    #[serde(default)]
    pub moe_intermediate_size: Option<usize>,
    /// Bidirectional attention over image blocks (`"vision"` on 12B/26B/31B; `null` on the
    /// E-series). `"vision"`: on sliding layers the soft tokens of one image see each other
    /// (see [`TextConfig::bidirectional_vision`]); any other non-null value (`"all"`, ...) is
    /// refused at load.
    #[serde(default)]
    pub use_bidirectional_attention: Option<serde_json::Value>,
    /// The image-block mask rule of the model class (not a config.json field: set from the
    /// top-level `model_type`).
    #[serde(skip)]
    pub image_block_mask: ImageBlockMask,
}

/// Most routed experts the GPU router takes (`num_experts`; 128 on 26B-A4B).
pub const MAX_EXPERTS: usize = 256;

/// The MoE geometry of a config with `enable_moe_block` (validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeShape {
    /// Routed experts.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// One expert's GeGLU width.
    pub intermediate: usize,
}

impl TextConfig {
    /// The MoE geometry, `None` for a dense model.
    pub fn moe(&self) -> Option<MoeShape> {
        if !self.enable_moe_block {
            return None;
        }
        Some(MoeShape {
            experts: self.num_experts?,
            top_k: self.top_k_experts?,
            intermediate: self.moe_intermediate_size?,
        })
    }

    /// First KV-shared layer (`N - num_kv_shared_layers`); equals N when nothing is shared.
    pub fn first_shared(&self) -> usize {
        self.num_hidden_layers
            .saturating_sub(self.num_kv_shared_layers)
    }

    /// Whether layer `i` reuses another layer's K/V (and owns no k_proj/v_proj/k_norm).
    pub fn is_kv_shared(&self, i: usize) -> bool {
        let f = self.first_shared();
        f > 0 && i >= f && self.num_kv_shared_layers > 0
    }

    /// The layer whose K/V layer `i` uses: itself when not shared, else the last non-shared
    /// layer of the same type. `None` if no such layer exists (a config error caught by
    /// [`TextConfig::validate`]).
    pub fn kv_source(&self, i: usize) -> Option<usize> {
        if !self.is_kv_shared(i) {
            return Some(i);
        }
        let t = self.layer_types[i];
        (0..self.first_shared())
            .rev()
            .find(|&j| self.layer_types[j] == t)
    }

    /// Attention type of layer `i`.
    pub fn layer_type(&self, i: usize) -> LayerType {
        self.layer_types[i]
    }

    /// The `per_layer_config` entry of layer `i` (keys are layer indices, possibly
    /// zero-padded: "5" and "05" both name layer 5).
    fn layer_override(&self, i: usize) -> Option<&PerLayerOverride> {
        self.per_layer_config.as_ref().and_then(|m| {
            m.iter()
                .find(|(k, _)| k.parse::<usize>().ok() == Some(i))
                .map(|(_, o)| o)
        })
    }

    /// Head size of layer `i`. `per_layer_config` form: the layer's entry, else `head_dim`.
    /// Hub form: `global_head_dim` (default 512) on full layers, else `head_dim`
    /// (transformers' `Gemma4TextConfig.__post_init__`).
    pub fn layer_head_dim(&self, i: usize) -> usize {
        if self.per_layer_config.is_some() {
            return self
                .layer_override(i)
                .and_then(|o| o.head_dim)
                .unwrap_or(self.head_dim);
        }
        match self.layer_types[i] {
            LayerType::FullAttention => self.global_head_dim.unwrap_or_else(d_global_head_dim),
            LayerType::SlidingAttention => self.head_dim,
        }
    }

    /// KV heads of layer `i`. `per_layer_config` form: the layer's entry, else
    /// `num_key_value_heads`. Hub form: `num_global_key_value_heads` on full layers of
    /// `attention_k_eq_v` models (when given), else `num_key_value_heads`.
    pub fn layer_kv_heads(&self, i: usize) -> usize {
        if self.per_layer_config.is_some() {
            return self
                .layer_override(i)
                .and_then(|o| o.num_key_value_heads)
                .unwrap_or(self.num_key_value_heads);
        }
        match (self.layer_types[i], self.attention_k_eq_v) {
            (LayerType::FullAttention, true) => self
                .num_global_key_value_heads
                .unwrap_or(self.num_key_value_heads),
            _ => self.num_key_value_heads,
        }
    }

    /// Whether image soft tokens attend bidirectionally within their image on sliding layers
    /// (`use_bidirectional_attention: "vision"`; transformers' `create_masks_for_vision_model`:
    /// sliding = window AND (causal OR same image block), full layers causal).
    pub fn bidirectional_vision(&self) -> bool {
        matches!(&self.use_bidirectional_attention, Some(serde_json::Value::String(s)) if s == "vision")
    }

    /// Whether layer `i` takes V from the K projection (no v_proj).
    pub fn k_eq_v(&self, i: usize) -> bool {
        self.attention_k_eq_v && self.layer_types[i] == LayerType::FullAttention
    }

    /// MLP width of layer `i`.
    pub fn intermediate(&self, i: usize) -> usize {
        if self.use_double_wide_mlp && self.is_kv_shared(i) {
            2 * self.intermediate_size
        } else {
            self.intermediate_size
        }
    }

    /// RoPE parameters of layer `i` (transformers' defaults when the type is absent).
    pub fn rope(&self, i: usize) -> RopeParameters {
        let t = self.layer_types[i].as_str();
        self.rope_parameters
            .get(t)
            .cloned()
            .or_else(|| d_rope().remove(t))
            .unwrap_or(RopeParameters {
                rope_type: "default".into(),
                rope_theta: 10000.0,
                partial_rotary_factor: 1.0,
            })
    }

    /// Whether the model has per-layer embeddings.
    pub fn has_ple(&self) -> bool {
        self.hidden_size_per_layer_input > 0
    }

    /// Checks the relations the loader and the decoder rely on, and refuses what the engine
    /// cannot run yet (the MoE block, `use_bidirectional_attention` other than null /
    /// `"vision"`, a separate LM head, scaled RoPE types, per-layer overrides other than the
    /// attention geometry). Fields are named `text_config.<field>`.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: &str, reason: String| ConfigError::Malformed {
            path: path.to_path_buf(),
            field: format!("text_config.{field}"),
            reason,
        };
        let refuse = |field: &str, value: String, reason: &str| ConfigError::Unsupported {
            path: path.to_path_buf(),
            field: format!("text_config.{field}"),
            value,
            reason: reason.into(),
        };
        let t = self;
        if t.enable_moe_block {
            for (name, v) in [
                ("num_experts", t.num_experts),
                ("top_k_experts", t.top_k_experts),
                ("moe_intermediate_size", t.moe_intermediate_size),
            ] {
                match v {
                    Some(n) if n > 0 => {}
                    _ => {
                        return Err(bad(
                            name,
                            "must be a positive integer when enable_moe_block is true".into(),
                        ));
                    }
                }
            }
            let (e, k) = (t.num_experts.unwrap_or(0), t.top_k_experts.unwrap_or(0));
            if k > e {
                return Err(bad("top_k_experts", format!("{k} exceeds num_experts {e}")));
            }
            if e > MAX_EXPERTS {
                return Err(refuse(
                    "num_experts",
                    e.to_string(),
                    &format!("the GPU router handles at most {MAX_EXPERTS} experts"),
                ));
            }
        }
        match &t.use_bidirectional_attention {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) if s == "vision" => {}
            Some(v) => {
                return Err(refuse(
                    "use_bidirectional_attention",
                    v.to_string(),
                    "only null (causal: E2B / E4B) and \"vision\" (image blocks attend \
                     bidirectionally on sliding layers: 12B / 26B / 31B) are implemented; \
                     \"all\" (a fully bidirectional decoder) is not",
                ));
            }
        }
        if !t.tie_word_embeddings {
            return Err(refuse(
                "tie_word_embeddings",
                "false".into(),
                "a separate lm_head is not implemented (Gemma 4 ties the LM head to the token \
                 embedding); re-convert the checkpoint with tied embeddings",
            ));
        }
        if t.layer_types.len() != t.num_hidden_layers {
            return Err(bad(
                "layer_types",
                format!(
                    "has {} entries but num_hidden_layers is {}",
                    t.layer_types.len(),
                    t.num_hidden_layers
                ),
            ));
        }
        if t.num_kv_shared_layers > t.num_hidden_layers {
            return Err(bad(
                "num_kv_shared_layers",
                format!(
                    "{} exceeds num_hidden_layers {}",
                    t.num_kv_shared_layers, t.num_hidden_layers
                ),
            ));
        }
        for (name, v) in [
            ("hidden_size", t.hidden_size),
            ("num_hidden_layers", t.num_hidden_layers),
            ("num_attention_heads", t.num_attention_heads),
            ("num_key_value_heads", t.num_key_value_heads),
            ("head_dim", t.head_dim),
            ("intermediate_size", t.intermediate_size),
            ("vocab_size", t.vocab_size),
            ("sliding_window", t.sliding_window),
            ("max_position_embeddings", t.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(bad(name, "must be positive".into()));
            }
        }
        let per_layer = t.per_layer_config.iter().flat_map(|m| m.values());
        if let Some((name, v)) = super::oversized(
            [
                ("hidden_size", Some(t.hidden_size)),
                ("num_hidden_layers", Some(t.num_hidden_layers)),
                ("intermediate_size", Some(t.intermediate_size)),
                ("num_attention_heads", Some(t.num_attention_heads)),
                ("num_key_value_heads", Some(t.num_key_value_heads)),
                ("num_global_key_value_heads", t.num_global_key_value_heads),
                ("head_dim", Some(t.head_dim)),
                ("global_head_dim", t.global_head_dim),
                (
                    "hidden_size_per_layer_input",
                    Some(t.hidden_size_per_layer_input),
                ),
                ("vocab_size", Some(t.vocab_size)),
                (
                    "vocab_size_per_layer_input",
                    Some(t.vocab_size_per_layer_input),
                ),
                ("sliding_window", Some(t.sliding_window)),
                ("max_position_embeddings", Some(t.max_position_embeddings)),
                ("num_experts", t.num_experts),
                ("top_k_experts", t.top_k_experts),
                ("moe_intermediate_size", t.moe_intermediate_size),
            ]
            .into_iter()
            .chain(per_layer.flat_map(|o| {
                [
                    ("per_layer_config.head_dim", o.head_dim),
                    (
                        "per_layer_config.num_key_value_heads",
                        o.num_key_value_heads,
                    ),
                ]
            })),
        ) {
            return Err(bad(
                name,
                format!(
                    "{v} exceeds the largest accepted size {}",
                    super::MAX_CONFIG_SIZE
                ),
            ));
        }
        if t.global_head_dim == Some(0) {
            return Err(bad("global_head_dim", "must be positive".into()));
        }
        if t.num_global_key_value_heads == Some(0) {
            return Err(bad("num_global_key_value_heads", "must be positive".into()));
        }
        if t.has_ple() && t.vocab_size_per_layer_input == 0 {
            return Err(bad(
                "vocab_size_per_layer_input",
                "must be positive when hidden_size_per_layer_input is (the PLE table needs rows)"
                    .into(),
            ));
        }
        if let Some(m) = &t.per_layer_config {
            for (k, o) in m {
                match k.parse::<usize>() {
                    Ok(i) if i < t.num_hidden_layers => {}
                    _ => {
                        return Err(bad(
                            &format!("per_layer_config.{k}"),
                            format!(
                                "names no layer (expected a layer index below num_hidden_layers {})",
                                t.num_hidden_layers
                            ),
                        ));
                    }
                }
                if o.head_dim == Some(0) {
                    return Err(bad(
                        &format!("per_layer_config.{k}.head_dim"),
                        "must be positive".into(),
                    ));
                }
                if o.num_key_value_heads == Some(0) {
                    return Err(bad(
                        &format!("per_layer_config.{k}.num_key_value_heads"),
                        "must be positive".into(),
                    ));
                }
                if let Some((name, v)) = o.other.iter().next() {
                    return Err(refuse(
                        &format!("per_layer_config.{k}.{name}"),
                        v.to_string(),
                        "only head_dim and num_key_value_heads can differ per layer in this \
                         engine (another per-layer attribute would be ignored)",
                    ));
                }
            }
        }
        for i in 0..t.num_hidden_layers {
            if t.kv_source(i).is_none() {
                return Err(bad(
                    "layer_types",
                    format!(
                        "KV-shared layer {i} ({}) has no earlier non-shared layer of its type to read K/V from",
                        t.layer_types[i].as_str()
                    ),
                ));
            }
            let kv = t.layer_kv_heads(i);
            if kv == 0 || !t.num_attention_heads.is_multiple_of(kv) {
                return Err(bad(
                    "num_key_value_heads",
                    format!(
                        "layer {i}: {} query heads are not a multiple of {kv} KV heads",
                        t.num_attention_heads
                    ),
                ));
            }
            let hd = t.layer_head_dim(i);
            if !hd.is_multiple_of(2) {
                return Err(bad(
                    if t.layer_types[i] == LayerType::FullAttention {
                        "global_head_dim"
                    } else {
                        "head_dim"
                    },
                    format!("layer {i}: head size {hd} is odd (RoPE rotates pairs of dims)"),
                ));
            }
        }
        for lt in [LayerType::SlidingAttention, LayerType::FullAttention] {
            let Some(i) = t.layer_types.iter().position(|&x| x == lt) else {
                continue;
            };
            let name = lt.as_str();
            let r = t.rope(i);
            let field = |f: &str| format!("rope_parameters.{name}.{f}");
            if !(r.rope_theta.is_finite() && r.rope_theta > 0.0) {
                return Err(bad(
                    &field("rope_theta"),
                    "must be a positive number".into(),
                ));
            }
            if !(r.partial_rotary_factor > 0.0 && r.partial_rotary_factor <= 1.0) {
                return Err(bad(
                    &field("partial_rotary_factor"),
                    format!("{} is outside (0, 1]", r.partial_rotary_factor),
                ));
            }
            match r.rope_type.as_str() {
                "proportional" => {}
                "default" if r.partial_rotary_factor == 1.0 => {}
                "default" => {
                    return Err(refuse(
                        &field("partial_rotary_factor"),
                        r.partial_rotary_factor.to_string(),
                        "a partial rotation with rope_type \"default\" is not implemented (only \
                         \"proportional\" RoPE rotates part of the head)",
                    ));
                }
                other => {
                    return Err(refuse(
                        &field("rope_type"),
                        format!("{other:?}"),
                        "only \"default\" and \"proportional\" RoPE are implemented (scaled \
                         RoPE types would run with wrong positions)",
                    ));
                }
            }
        }
        if !(t.rms_norm_eps.is_finite() && t.rms_norm_eps > 0.0) {
            return Err(bad("rms_norm_eps", "must be a positive number".into()));
        }
        if let Some(c) = t.final_logit_softcapping
            && !(c.is_finite() && c > 0.0)
        {
            return Err(bad(
                "final_logit_softcapping",
                "must be a positive number (or null: no soft-capping)".into(),
            ));
        }
        if t.hidden_activation != "gelu_pytorch_tanh" {
            return Err(refuse(
                "hidden_activation",
                format!("{:?}", t.hidden_activation),
                "only gelu_pytorch_tanh (Gemma 4's activation) is implemented",
            ));
        }
        Ok(())
    }
}

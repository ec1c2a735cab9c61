//! `config.json` of a Gemma 4 checkpoint (HF or MLX layout): text decoder, vision tower, token ids
//! and MLX quantization, with the derived per-layer helpers the model code needs (KV sharing,
//! head sizes, MLP widths).
//!
//! Parsing is strict about what the model cannot run without (`hidden_size`, `num_hidden_layers`,
//! `layer_types`, ...: a missing one is [`LoadError::MalformedConfig`] naming the field) and
//! lenient about everything else (transformers' defaults, unknown fields ignored).
//!
//! Both forms of the full-attention head size are accepted: the hub's `global_head_dim` and the
//! `per_layer_config: {"<layer>": {"head_dim": N}}` form written by transformers 5.24.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::weights::LoadError;

/// The `model_type`s this crate loads. Anything else is [`LoadError::UnsupportedModelType`].
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["gemma4", "gemma4_text"];

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

fn default_rope_type() -> String {
    "default".into()
}
fn default_theta() -> f64 {
    10000.0
}
fn one() -> f64 {
    1.0
}

/// Per-layer override in transformers' `per_layer_config` form.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PerLayerOverride {
    /// Head size of this layer.
    #[serde(default)]
    pub head_dim: Option<usize>,
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
fn d_eps() -> f64 {
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
    /// transformers 5.24 form of per-layer head sizes: `{"<layer>": {"head_dim": N}}`.
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
    /// MoE block (26B-A4B; not supported by this crate).
    #[serde(default)]
    pub enable_moe_block: bool,
}

impl TextConfig {
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
    /// [`Gemma4Config::validate`]).
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

    /// Head size of layer `i`: the `per_layer_config` override, else `global_head_dim` (default
    /// 512) on full layers, else `head_dim`.
    pub fn layer_head_dim(&self, i: usize) -> usize {
        if let Some(hd) = self
            .per_layer_config
            .as_ref()
            .and_then(|m| m.get(&i.to_string()))
            .and_then(|o| o.head_dim)
        {
            return hd;
        }
        match self.layer_types[i] {
            LayerType::FullAttention => {
                // With the per_layer_config form and no global_head_dim, full layers without
                // an entry keep head_dim (transformers' behaviour for that form).
                match (self.global_head_dim, &self.per_layer_config) {
                    (Some(g), _) => g,
                    (None, Some(_)) => self.head_dim,
                    (None, None) => d_global_head_dim(),
                }
            }
            LayerType::SlidingAttention => self.head_dim,
        }
    }

    /// KV heads of layer `i`.
    pub fn layer_kv_heads(&self, i: usize) -> usize {
        match (self.layer_types[i], self.attention_k_eq_v) {
            (LayerType::FullAttention, true) => self
                .num_global_key_value_heads
                .unwrap_or(self.num_key_value_heads),
            _ => self.num_key_value_heads,
        }
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
}

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
}

/// Bits and group size of one quantized module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantParams {
    /// Bits per code.
    pub bits: u32,
    /// Columns per group.
    pub group_size: u32,
}

/// Per-module entry of the `quantization` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleQuant {
    /// Quantized with these parameters.
    Quantized(QuantParams),
    /// Explicitly left in float (`false`).
    Float,
}

/// MLX `quantization` (or `quantization_config`) block.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizationConfig {
    /// Global parameters.
    pub global: QuantParams,
    /// "affine" (the only supported mode).
    pub mode: String,
    /// Per-module overrides keyed by module path as written in the file.
    pub overrides: BTreeMap<String, ModuleQuant>,
}

impl QuantizationConfig {
    fn parse(v: &serde_json::Value, path: &Path, name: &str) -> Result<Self, LoadError> {
        let bad = |field: &str, reason: String| LoadError::MalformedConfig {
            path: path.to_path_buf(),
            field: format!("{name}.{field}"),
            reason,
        };
        let obj = v
            .as_object()
            .ok_or_else(|| bad("", "expected an object".into()))?;
        let num = |o: &serde_json::Map<String, serde_json::Value>, k: &str, pre: &str| {
            o.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as u32)
                .ok_or_else(|| {
                    bad(
                        &format!("{pre}{k}"),
                        "missing or not a non-negative integer".into(),
                    )
                })
        };
        let global = QuantParams {
            bits: num(obj, "bits", "")?,
            group_size: num(obj, "group_size", "")?,
        };
        let mode = obj
            .get("mode")
            .and_then(|m| m.as_str())
            .unwrap_or("affine")
            .to_string();
        if mode != "affine" {
            return Err(bad(
                "mode",
                format!("quantization mode {mode:?} is not supported (only \"affine\")"),
            ));
        }
        let mut overrides = BTreeMap::new();
        for (k, val) in obj {
            if matches!(k.as_str(), "bits" | "group_size" | "mode") {
                continue;
            }
            match val {
                serde_json::Value::Bool(false) => {
                    overrides.insert(k.clone(), ModuleQuant::Float);
                }
                serde_json::Value::Bool(true) => {
                    overrides.insert(k.clone(), ModuleQuant::Quantized(global));
                }
                serde_json::Value::Object(o) => {
                    let p = QuantParams {
                        bits: match o.get("bits") {
                            Some(_) => num(o, "bits", &format!("{k}."))?,
                            None => global.bits,
                        },
                        group_size: match o.get("group_size") {
                            Some(_) => num(o, "group_size", &format!("{k}."))?,
                            None => global.group_size,
                        },
                    };
                    overrides.insert(k.clone(), ModuleQuant::Quantized(p));
                }
                _ => {} // other metadata (e.g. "quant_method"): ignored
            }
        }
        Ok(QuantizationConfig {
            global,
            mode,
            overrides,
        })
    }
}

fn d_image_token() -> u32 {
    258880
}
fn d_boi() -> u32 {
    255999
}
fn d_eoi() -> u32 {
    258882
}

/// A whole Gemma 4 `config.json`.
#[derive(Debug, Clone)]
pub struct Gemma4Config {
    /// "gemma4" or "gemma4_text".
    pub model_type: String,
    /// Text decoder.
    pub text_config: TextConfig,
    /// Vision tower (absent for text-only configs).
    pub vision_config: Option<VisionConfig>,
    /// Audio tower: recognised, not loaded.
    pub audio_config: Option<serde_json::Value>,
    /// Image soft-token id (258880).
    pub image_token_id: u32,
    /// Begin-of-image id (255999).
    pub boi_token_id: u32,
    /// End-of-image id (258882).
    pub eoi_token_id: u32,
    /// End-of-sequence ids (top level, e.g. [1, 106]; else the text config's).
    pub eos_token_id: TokenIds,
    /// MLX quantization (from `quantization` or `quantization_config`).
    pub quantization: Option<QuantizationConfig>,
}

#[derive(Deserialize)]
struct TopLevel {
    #[serde(default = "d_image_token")]
    image_token_id: u32,
    #[serde(default = "d_boi")]
    boi_token_id: u32,
    #[serde(default = "d_eoi")]
    eoi_token_id: u32,
    #[serde(default)]
    eos_token_id: Option<TokenIds>,
}

/// Turns a serde error into `MalformedConfig`, extracting the field of "missing field `x`".
fn serde_err(path: &Path, section: &str, e: serde_json::Error) -> LoadError {
    let msg = e.to_string();
    let field = msg
        .split_once("missing field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(f, _)| f.to_string());
    let (field, reason) = match field {
        Some(f) => (
            if section.is_empty() {
                f
            } else {
                format!("{section}.{f}")
            },
            "required field is missing".to_string(),
        ),
        None => (section.to_string(), msg),
    };
    LoadError::MalformedConfig {
        path: path.to_path_buf(),
        field,
        reason,
    }
}

impl Gemma4Config {
    /// Reads and validates `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, LoadError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LoadError::MissingFile {
                    path: path.clone(),
                    hint:
                        "a checkpoint directory needs config.json next to the safetensors files; \
                           download the whole repository (see models.toml)"
                            .into(),
                }
            } else {
                LoadError::Io {
                    path: path.clone(),
                    source: e,
                }
            }
        })?;
        Self::from_json_str(&text, &path)
    }

    /// Parses and validates config JSON; `path` is used in error messages only.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, LoadError> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| LoadError::MalformedConfig {
                path: path.to_path_buf(),
                field: String::new(),
                reason: format!("not valid JSON: {e}"),
            })?;
        Self::from_value(&v, path)
    }

    /// Builds the config from a parsed JSON value.
    pub fn from_value(v: &serde_json::Value, path: &Path) -> Result<Self, LoadError> {
        let p = path.to_path_buf();
        let obj = v.as_object().ok_or_else(|| LoadError::MalformedConfig {
            path: p.clone(),
            field: String::new(),
            reason: "the top level must be a JSON object".into(),
        })?;
        let model_type = obj
            .get("model_type")
            .and_then(|m| m.as_str())
            .ok_or_else(|| LoadError::MalformedConfig {
                path: p.clone(),
                field: "model_type".into(),
                reason: "required field is missing (expected \"gemma4\")".into(),
            })?
            .to_string();
        if !SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(LoadError::UnsupportedModelType {
                path: p,
                model_type,
            });
        }
        let (text_config, vision_config, audio_config) = if model_type == "gemma4_text" {
            let t: TextConfig =
                serde_json::from_value(v.clone()).map_err(|e| serde_err(path, "", e))?;
            (t, None, None)
        } else {
            let tv = obj
                .get("text_config")
                .ok_or_else(|| LoadError::MalformedConfig {
                    path: p.clone(),
                    field: "text_config".into(),
                    reason: "required section is missing".into(),
                })?;
            let t: TextConfig = serde_json::from_value(tv.clone())
                .map_err(|e| serde_err(path, "text_config", e))?;
            let vis = match obj.get("vision_config") {
                None | Some(serde_json::Value::Null) => None,
                Some(vv) => Some(
                    serde_json::from_value::<VisionConfig>(vv.clone())
                        .map_err(|e| serde_err(path, "vision_config", e))?,
                ),
            };
            let aud = match obj.get("audio_config") {
                None | Some(serde_json::Value::Null) => None,
                Some(a) => Some(a.clone()),
            };
            (t, vis, aud)
        };
        let top: TopLevel =
            serde_json::from_value(v.clone()).map_err(|e| serde_err(path, "", e))?;
        let quantization = match obj
            .get("quantization")
            .map(|q| ("quantization", q))
            .or_else(|| {
                obj.get("quantization_config")
                    .map(|q| ("quantization_config", q))
            }) {
            Some((name, q)) if q.get("bits").is_some() => {
                Some(QuantizationConfig::parse(q, path, name)?)
            }
            _ => None,
        };
        let eos = top
            .eos_token_id
            .unwrap_or_else(|| text_config.eos_token_id.clone());
        let cfg = Gemma4Config {
            model_type,
            text_config,
            vision_config,
            audio_config,
            image_token_id: top.image_token_id,
            boi_token_id: top.boi_token_id,
            eoi_token_id: top.eoi_token_id,
            eos_token_id: eos,
            quantization,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks the relations the loader relies on.
    pub fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let bad = |field: &str, reason: String| LoadError::MalformedConfig {
            path: path.to_path_buf(),
            field: format!("text_config.{field}"),
            reason,
        };
        let t = &self.text_config;
        if t.enable_moe_block {
            return Err(LoadError::Unsupported {
                what: "the MoE block (26B-A4B) is not implemented by this crate".into(),
            });
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
        ] {
            if v == 0 {
                return Err(bad(name, "must be positive".into()));
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
        }
        if let Some(v) = &self.vision_config
            && (v.hidden_size == 0 || v.num_attention_heads == 0 || v.num_hidden_layers == 0)
        {
            return Err(LoadError::MalformedConfig {
                path: path.to_path_buf(),
                field: "vision_config".into(),
                reason: "hidden_size, num_attention_heads and num_hidden_layers must be positive"
                    .into(),
            });
        }
        Ok(())
    }
}

/// Path of `config.json` in a checkpoint directory.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

//! `config.json` of a Gemma 4 checkpoint (HF or MLX layout): text decoder ([`text`]), vision
//! tower ([`vision`]), token ids and MLX quantization ([`quant`]), with the derived per-layer
//! helpers the model code needs (KV sharing, head sizes, MLP widths).
//!
//! Parsing is strict about what the model cannot run without (`hidden_size`, `num_hidden_layers`,
//! `layer_types`, ...: a missing one is [`ConfigError::Malformed`] naming the field) and
//! lenient about everything else (transformers' defaults, unknown fields ignored). Values that
//! make no sense (`sliding_window: 0`, odd head sizes, heads that do not divide, ...) are
//! `Malformed` too, and configs of variants the engine cannot run yet (`enable_moe_block`,
//! `use_bidirectional_attention: "all"`, ...) are [`ConfigError::Unsupported`] naming the field: refused at load instead of loading
//! and answering wrongly.
//!
//! Both forms of the full-attention geometry are accepted: the hub's `global_head_dim` /
//! `num_global_key_value_heads` and the `per_layer_config: {"<layer>": {"head_dim": N,
//! "num_key_value_heads": K}}` form written by transformers 5.24.
//!
//! The module knows nothing of the weight loader: its errors are [`ConfigError`]s, which the
//! loader's `LoadError` takes over (`From`).

pub mod embedder;
mod error;
pub mod quant;
pub mod text;
pub mod vision;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use embedder::VisionEmbedderConfig;
pub use error::ConfigError;
pub use quant::{ModuleQuant, QuantParams, QuantizationConfig};
pub use text::{
    ImageBlockMask, LayerType, MAX_EXPERTS, MoeShape, PerLayerOverride, RopeParameters, TextConfig,
    TokenIds,
};
pub use vision::{VisionConfig, VisionRope};

/// The first of `sizes` above [`MAX_CONFIG_SIZE`], as `(field, value)`.
pub(crate) fn oversized<'a>(
    sizes: impl IntoIterator<Item = (&'a str, Option<usize>)>,
) -> Option<(&'a str, usize)> {
    sizes.into_iter().find_map(|(name, v)| match v {
        Some(v) if v > MAX_CONFIG_SIZE => Some((name, v)),
        _ => None,
    })
}

/// Largest value accepted for any size of the config (hidden sizes, heads, head sizes, MLP
/// widths, vocabulary, positions, layers: 2^24 = 16 777 216). Far above every Gemma 4 model (the
/// largest size is the 262 144-token vocabulary), and low enough that the products the model
/// derives from up to three sizes (projection widths, buffer lengths) cannot overflow 64 bits:
/// a larger value is [`ConfigError::Malformed`] instead of a wrapped or panicking size.
pub const MAX_CONFIG_SIZE: usize = 1 << 24;

/// The `model_type`s this crate loads. Anything else is [`ConfigError::UnsupportedModelType`]
/// (or [`ConfigError::Unsupported`] for the Gemma 4 variants it cannot run yet).
pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "gemma4",
    "gemma4_text",
    "gemma4_unified",
    "gemma4_unified_text",
];

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
    /// "gemma4", "gemma4_text", "gemma4_unified" or "gemma4_unified_text".
    pub model_type: String,
    /// Text decoder.
    pub text_config: TextConfig,
    /// Vision tower (E-series; absent for text-only and unified configs).
    pub vision_config: Option<VisionConfig>,
    /// The encoder-free vision embedder of the 12B unified model (`vision_config` of a
    /// `gemma4_unified` config; absent otherwise).
    pub vision_embedder: Option<VisionEmbedderConfig>,
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

/// Turns a serde error into [`ConfigError::Malformed`], extracting the field of "missing field `x`".
fn serde_err(path: &Path, section: &str, e: serde_json::Error) -> ConfigError {
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
    ConfigError::Malformed {
        path: path.to_path_buf(),
        field,
        reason,
    }
}

impl Gemma4Config {
    /// Reads and validates `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        let (path, v) = read_json(dir)?;
        Self::from_value(&v, &path)
    }

    /// Parses and validates config JSON; `path` is used in error messages only.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::from_value(&parse_json(text, path)?, path)
    }

    /// Builds the config from a parsed JSON value.
    pub fn from_value(v: &serde_json::Value, path: &Path) -> Result<Self, ConfigError> {
        let p = path.to_path_buf();
        let obj = v.as_object().ok_or_else(|| ConfigError::Malformed {
            path: p.clone(),
            field: String::new(),
            reason: "the top level must be a JSON object".into(),
        })?;
        let model_type = obj
            .get("model_type")
            .and_then(|m| m.as_str())
            .ok_or_else(|| ConfigError::Malformed {
                path: p.clone(),
                field: "model_type".into(),
                reason: "required field is missing (expected \"gemma4\")".into(),
            })?
            .to_string();
        if let Some(reason) = refused_model_type(&model_type) {
            return Err(ConfigError::Unsupported {
                path: p,
                field: "model_type".into(),
                value: format!("{model_type:?}"),
                reason: reason.into(),
            });
        }
        if !SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(ConfigError::UnsupportedModelType {
                path: p,
                model_type,
            });
        }
        let unified = is_unified(&model_type);
        let text_only = model_type == "gemma4_text" || model_type == "gemma4_unified_text";
        let (text_config, vision_config, vision_embedder, audio_config) = if text_only {
            let t = parse_text(v, unified, path, "")?;
            (t, None, None, None)
        } else {
            let tv = obj
                .get("text_config")
                .ok_or_else(|| ConfigError::Malformed {
                    path: p.clone(),
                    field: "text_config".into(),
                    reason: "required section is missing".into(),
                })?;
            let t = parse_text(tv, unified, path, "text_config")?;
            let (vis, emb) = match obj.get("vision_config") {
                None | Some(serde_json::Value::Null) => (None, None),
                Some(vv) if unified => (
                    None,
                    Some(
                        serde_json::from_value::<VisionEmbedderConfig>(vv.clone())
                            .map_err(|e| serde_err(path, "vision_config", e))?,
                    ),
                ),
                Some(vv) => (
                    Some(
                        serde_json::from_value::<VisionConfig>(vv.clone())
                            .map_err(|e| serde_err(path, "vision_config", e))?,
                    ),
                    None,
                ),
            };
            // Audio is recognised, never loaded (its tensors are skipped; there is no audio input).
            let aud = match obj.get("audio_config") {
                None | Some(serde_json::Value::Null) => None,
                Some(a) => Some(a.clone()),
            };
            (t, vis, emb, aud)
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
            vision_embedder,
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

    /// Checks the relations the loader and the model rely on, and refuses what the engine
    /// cannot run yet (see [`TextConfig::validate`] and [`VisionConfig::validate`]).
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.text_config.validate(path)?;
        if let Some(v) = &self.vision_config {
            v.validate(path)?;
        }
        if let Some(e) = &self.vision_embedder {
            e.validate(path)?;
        }
        Ok(())
    }

    /// Whether the model takes images (a vision tower or the unified model's embedder).
    pub fn has_vision(&self) -> bool {
        self.vision_config.is_some() || self.vision_embedder.is_some()
    }
}

/// Whether `model_type` is the 12B unified model's (`gemma4_unified`, `gemma4_unified_text`).
fn is_unified(model_type: &str) -> bool {
    model_type == "gemma4_unified" || model_type == "gemma4_unified_text"
}

/// The text config `v` (`section` names it in errors). The unified model's text config class
/// has other defaults than the E-series one: no per-layer embeddings, no final logit softcap,
/// a 1024-token window and bidirectional image attention unless the file says otherwise.
fn parse_text(
    v: &serde_json::Value,
    unified: bool,
    path: &Path,
    section: &str,
) -> Result<TextConfig, ConfigError> {
    let mut v = v.clone();
    if unified && let Some(o) = v.as_object_mut() {
        for (key, default) in [
            ("hidden_size_per_layer_input", serde_json::json!(0)),
            ("final_logit_softcapping", serde_json::Value::Null),
            ("sliding_window", serde_json::json!(1024)),
            ("use_bidirectional_attention", serde_json::json!("vision")),
        ] {
            o.entry(key).or_insert(default);
        }
    }
    let mut t: TextConfig = serde_json::from_value(v).map_err(|e| serde_err(path, section, e))?;
    if unified {
        t.image_block_mask = ImageBlockMask::EveryLayer;
    }
    Ok(t)
}

/// Why a Gemma 4 family `model_type` this crate does not run is refused, if it is one.
fn refused_model_type(model_type: &str) -> Option<&'static str> {
    Some(match model_type {
        "gemma4_audio" => {
            "an audio-only checkpoint (the audio tower alone) cannot run: this crate runs the \
             text decoder (with the vision tower) and does not implement audio input yet; load \
             the whole model's config.json (model_type \"gemma4\")"
        }
        "gemma4_vision" => {
            "a vision-tower-only checkpoint cannot run: load the whole model's config.json \
             (model_type \"gemma4\")"
        }
        "gemma4_assistant" | "gemma4_unified_assistant" => {
            "an MTP drafter (assistant) checkpoint is not a standalone model and drafting is not \
             implemented yet; load its target model"
        }
        _ => return None,
    })
}

/// Reads and parses `dir/config.json` as JSON, without interpreting it: a missing file is
/// [`ConfigError::MissingFile`], invalid JSON [`ConfigError::Malformed`]. Returns the path
/// with the value ([`Gemma4Config::from_value`] builds the config from it).
pub fn read_json(dir: &Path) -> Result<(PathBuf, serde_json::Value), ConfigError> {
    let path = config_path(dir);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ConfigError::MissingFile {
                path: path.clone(),
                hint: "a checkpoint directory needs config.json next to the safetensors files; \
                       download the whole repository (see models.toml)"
                    .into(),
            }
        } else {
            ConfigError::Io {
                path: path.clone(),
                source: e,
            }
        }
    })?;
    let v = parse_json(&text, &path)?;
    Ok((path, v))
}

/// Parses config JSON text; invalid JSON is [`ConfigError::Malformed`] on `path`.
pub fn parse_json(text: &str, path: &Path) -> Result<serde_json::Value, ConfigError> {
    serde_json::from_str(text).map_err(|e| ConfigError::Malformed {
        path: path.to_path_buf(),
        field: String::new(),
        reason: format!("not valid JSON: {e}"),
    })
}

/// Path of `config.json` in a checkpoint directory.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

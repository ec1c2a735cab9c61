//! The MLX `quantization` block of `config.json`: global bits / group size and per-module
//! overrides (QAT checkpoints are mixed precision).

use std::collections::BTreeMap;
use std::path::Path;

use super::ConfigError;

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
    /// Parses the block named `name` (`quantization` or `quantization_config`).
    pub fn parse(v: &serde_json::Value, path: &Path, name: &str) -> Result<Self, ConfigError> {
        let bad = |field: &str, reason: String| ConfigError::Malformed {
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
        let check = |pre: &str, p: QuantParams| {
            if p.bits == 0 || p.bits > 8 {
                return Err(bad(
                    &format!("{pre}bits"),
                    format!("{} is outside 1..=8", p.bits),
                ));
            }
            if p.group_size == 0 {
                return Err(bad(&format!("{pre}group_size"), "must be positive".into()));
            }
            Ok(())
        };
        check("", global)?;
        for (k, o) in &overrides {
            if let ModuleQuant::Quantized(p) = o {
                check(&format!("{k}."), *p)?;
            }
        }
        Ok(QuantizationConfig {
            global,
            mode,
            overrides,
        })
    }
}

//! MLX affine quantization as stored in checkpoints: the rule that decides whether a module is
//! quantized and with which parameters, and the shape checks that reveal mismatched bit widths.
//! (Packing, quantizing and dequantizing on the CPU: [`crate::quant`].)

use std::collections::BTreeMap;

use crate::config::{ModuleQuant, QuantParams, QuantizationConfig};

use super::error::LoadError;
use super::keys::canonical_module;

/// Quantization rules of a checkpoint with module paths in canonical form.
#[derive(Debug, Clone, Default)]
pub struct QuantRules {
    /// Global parameters (None: the config has no quantization block).
    pub global: Option<QuantParams>,
    /// Per-module overrides by canonical module path.
    pub overrides: BTreeMap<String, ModuleQuant>,
}

impl QuantRules {
    /// Builds the rules from the config's block.
    pub fn new(q: Option<&QuantizationConfig>) -> Self {
        let Some(q) = q else {
            return QuantRules::default();
        };
        let overrides = q
            .overrides
            .iter()
            .map(|(k, v)| (canonical_module(k).unwrap_or_else(|| k.clone()), *v))
            .collect();
        QuantRules {
            global: Some(q.global),
            overrides,
        }
    }

    /// Parameters of module `path` (canonical) given that its `.scales` tensor exists:
    /// the per-module override if present, else the global entry.
    pub fn params_for(&self, path: &str) -> Result<QuantParams, LoadError> {
        match self.overrides.get(path) {
            Some(ModuleQuant::Quantized(p)) => Ok(*p),
            Some(ModuleQuant::Float) => Err(LoadError::QuantizationMismatch {
                key: format!("{path}.weight"),
                reason: "the checkpoint stores scales for it but config.json marks the module \
                         as not quantized (false)"
                    .into(),
            }),
            None => self.global.ok_or_else(|| LoadError::QuantizationMismatch {
                key: format!("{path}.weight"),
                reason: "the checkpoint stores scales/biases but config.json has no \
                         \"quantization\" block"
                    .into(),
            }),
        }
    }
}

/// Checks the shapes of a quantized `[rows, cols]` module: packed columns = cols·bits/32 and
/// scale columns = cols/group.
pub fn check_shapes(
    key: &str,
    rows: usize,
    cols: usize,
    p: QuantParams,
    weight_shape: &[usize],
    scales_shape: &[usize],
    biases_shape: &[usize],
) -> Result<(), LoadError> {
    let (bits, group) = (p.bits as usize, p.group_size as usize);
    let mism = |reason: String| LoadError::QuantizationMismatch {
        key: key.to_string(),
        reason,
    };
    if !matches!(bits, 2 | 3 | 4 | 5 | 6 | 8) || !matches!(group, 32 | 64 | 128) {
        return Err(mism(format!(
            "unsupported parameters: {bits} bits, group {group} (bits 2-6 or 8, group 32/64/128)"
        )));
    }
    // `cols` comes from config.json: a size whose packed width overflows is refused, not wrapped.
    let Some(code_bits) = cols.checked_mul(bits) else {
        return Err(mism(format!(
            "{cols} input features at {bits} bits overflow the packed width"
        )));
    };
    if !cols.is_multiple_of(group) || !code_bits.is_multiple_of(32) {
        return Err(mism(format!(
            "{cols} input features are not a multiple of group {group} (or of 32/{bits} codes per word)"
        )));
    }
    let packed = code_bits / 32;
    if weight_shape != [rows, packed] {
        let implied = weight_shape
            .get(1)
            .map(|&c| {
                format!(
                    " (its packed width implies {} bits)",
                    c.saturating_mul(32) / cols.max(1)
                )
            })
            .unwrap_or_default();
        return Err(mism(format!(
            "weight has shape {weight_shape:?} but [{rows}, {packed}] is expected for [{rows}, \
             {cols}] at {bits} bits{implied}"
        )));
    }
    let sc = cols / group;
    for (what, s) in [("scales", scales_shape), ("biases", biases_shape)] {
        if s != [rows, sc] {
            return Err(mism(format!(
                "{what} have shape {s:?} but [{rows}, {sc}] is expected for group size {group}"
            )));
        }
    }
    Ok(())
}

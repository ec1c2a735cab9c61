//! Mapping of stored tensor keys (HF and MLX layouts) to one canonical tree path.
//!
//! | stored (HF)                  | stored (MLX)               | canonical            |
//! |------------------------------|----------------------------|----------------------|
//! | `model.language_model.X`     | `language_model.model.X`   | `language_model.X`   |
//! | `model.vision_tower.X`       | `vision_tower.X`           | `vision_tower.X`     |
//! | `model.embed_vision.X`       | `embed_vision.X`           | `embed_vision.X`     |
//! | `model.vision_embedder.X` (12B unified, hub) | `vision_embedder.X` | `vision_embedder.X` |
//! | `model.embed_vision.{patch_ln1,patch_dense,patch_ln2,pos_norm,pos_embedding}.*` (transformers' module names) | same without `model.` | `vision_embedder.*` |
//! | `model.embed_vision.multimodal_embedder.embedding_projection.*` (transformers' module names) | same without `model.` | `embed_vision.embedding_projection.*` |
//! | `model.audio_tower.*`, `model.embed_audio.*` | `audio_tower.*`, `embed_audio.*` | skipped (audio) |
//!
//! Ignored everywhere: `lm_head.*` (tied to `embed_tokens`), any key containing `rotary_emb`,
//! and clip scalars (`input_min`, `input_max`, `output_min`, `output_max`) outside the vision
//! tower.

/// What a stored key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// A model tensor, with its canonical path.
    Model(String),
    /// An audio-tower tensor (recognised; its bytes are never read).
    Audio,
    /// A tensor every loader ignores, with the reason.
    Ignored(&'static str),
}

const CLIP: [&str; 4] = ["input_min", "input_max", "output_min", "output_max"];

/// Classifies a stored key.
pub fn classify(raw: &str) -> KeyKind {
    if raw.contains("rotary_emb") {
        return KeyKind::Ignored("rotary buffer");
    }
    let canon = if let Some(r) = raw.strip_prefix("model.language_model.") {
        format!("language_model.{r}")
    } else if let Some(r) = raw.strip_prefix("language_model.model.") {
        format!("language_model.{r}")
    } else if let Some(r) = raw.strip_prefix("model.") {
        r.to_string()
    } else {
        raw.to_string()
    };
    let canon = unified_embedder_key(canon);
    if canon.starts_with("audio_tower.") || canon.starts_with("embed_audio.") {
        return KeyKind::Audio;
    }
    if canon.starts_with("lm_head.") || canon.starts_with("language_model.lm_head.") {
        return KeyKind::Ignored("lm_head (tied to embed_tokens)");
    }
    let last = canon.rsplit('.').next().unwrap_or("");
    if CLIP.contains(&last) && !canon.starts_with("vision_tower.") {
        return KeyKind::Ignored("clip scalar outside the vision tower");
    }
    KeyKind::Model(canon)
}

/// The modules of the 12B unified model's vision embedder.
const EMBEDDER_MODULES: [&str; 5] = [
    "patch_ln1",
    "patch_dense",
    "patch_ln2",
    "pos_norm",
    "pos_embedding",
];

/// The unified model's embedder keys in one form whichever way they are stored: the hub's
/// `vision_embedder.*` + `embed_vision.embedding_projection` (kept), or transformers' module
/// tree, which nests everything under `embed_vision` (`embed_vision.patch_ln1.*`,
/// `embed_vision.multimodal_embedder.embedding_projection.*`; its loader renames the hub's
/// keys to these).
fn unified_embedder_key(canon: String) -> String {
    let Some(rest) = canon.strip_prefix("embed_vision.") else {
        return canon;
    };
    if let Some(r) = rest.strip_prefix("multimodal_embedder.") {
        return format!("embed_vision.{r}");
    }
    let module = rest.split('.').next().unwrap_or("");
    if EMBEDDER_MODULES.contains(&module) {
        return format!("vision_embedder.{rest}");
    }
    canon
}

/// Canonical module path of a module path as written in a `quantization` block
/// (e.g. `language_model.model.layers.0.mlp.gate_proj` → `language_model.layers.0.mlp.gate_proj`).
pub fn canonical_module(path: &str) -> Option<String> {
    match classify(&format!("{path}.weight")) {
        KeyKind::Model(c) => c.strip_suffix(".weight").map(str::to_string),
        _ => None,
    }
}

/// If `canon` is `language_model.layers.{i}.self_attn.{k_proj,v_proj,k_norm}.*`, returns `i`:
/// the tensors a KV-shared text layer does not own. Scoped to the text decoder only.
pub fn text_kv_layer(canon: &str) -> Option<usize> {
    let rest = canon.strip_prefix("language_model.layers.")?;
    let (idx, rest) = rest.split_once('.')?;
    let i: usize = idx.parse().ok()?;
    let rest = rest.strip_prefix("self_attn.")?;
    if rest.starts_with("k_proj.") || rest.starts_with("v_proj.") || rest.starts_with("k_norm.") {
        Some(i)
    } else {
        None
    }
}

/// Whether `canon` is a vision-tower clip scalar.
pub fn is_vision_clip(canon: &str) -> bool {
    canon.starts_with("vision_tower.") && CLIP.contains(&canon.rsplit('.').next().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_map_to_one_path() {
        let want = KeyKind::Model("language_model.layers.3.self_attn.q_proj.weight".into());
        assert_eq!(
            classify("model.language_model.layers.3.self_attn.q_proj.weight"),
            want
        );
        assert_eq!(
            classify("language_model.model.layers.3.self_attn.q_proj.weight"),
            want
        );
        assert_eq!(
            classify("model.vision_tower.encoder.layers.0.self_attn.k_proj.linear.weight"),
            classify("vision_tower.encoder.layers.0.self_attn.k_proj.linear.weight")
        );
        assert_eq!(
            classify("model.embed_vision.embedding_projection.weight"),
            KeyKind::Model("embed_vision.embedding_projection.weight".into())
        );
        // The unified model's embedder: the hub's keys and transformers' module names meet.
        let ln1 = KeyKind::Model("vision_embedder.patch_ln1.bias".into());
        assert_eq!(classify("model.vision_embedder.patch_ln1.bias"), ln1);
        assert_eq!(classify("model.embed_vision.patch_ln1.bias"), ln1);
        assert_eq!(classify("vision_embedder.patch_ln1.bias"), ln1);
        assert_eq!(
            classify("model.embed_vision.pos_embedding"),
            KeyKind::Model("vision_embedder.pos_embedding".into())
        );
        assert_eq!(
            classify("model.embed_vision.multimodal_embedder.embedding_projection.weight"),
            KeyKind::Model("embed_vision.embedding_projection.weight".into())
        );
        assert_eq!(classify("model.audio_tower.x.weight"), KeyKind::Audio);
        assert_eq!(
            classify("embed_audio.embedding_projection.weight"),
            KeyKind::Audio
        );
        assert!(matches!(classify("lm_head.weight"), KeyKind::Ignored(_)));
        assert!(matches!(
            classify("language_model.model.layers.0.self_attn.rotary_emb.inv_freq"),
            KeyKind::Ignored(_)
        ));
        assert!(matches!(
            classify("model.language_model.layers.0.self_attn.q_proj.input_min"),
            KeyKind::Ignored(_)
        ));
        assert!(matches!(
            classify("vision_tower.encoder.layers.0.self_attn.q_proj.input_min"),
            KeyKind::Model(_)
        ));
    }

    #[test]
    fn kv_drop_is_text_only() {
        assert_eq!(
            text_kv_layer("language_model.layers.15.self_attn.k_proj.weight"),
            Some(15)
        );
        assert_eq!(
            text_kv_layer("language_model.layers.15.self_attn.v_proj.scales"),
            Some(15)
        );
        assert_eq!(
            text_kv_layer("language_model.layers.15.self_attn.q_proj.weight"),
            None
        );
        assert_eq!(
            text_kv_layer("vision_tower.encoder.layers.15.self_attn.k_proj.linear.weight"),
            None
        );
        assert_eq!(
            canonical_module("language_model.model.layers.0.mlp.gate_proj").as_deref(),
            Some("language_model.layers.0.mlp.gate_proj")
        );
    }
}

//! The non-tensor files of a checkpoint folder, each read once by
//! [`Checkpoint::open`](super::Checkpoint::open): `config.json` (parsed once, here),
//! `tokenizer.json`, the chat template sources (`tokenizer_config.json`, `chat_template.jinja`,
//! `chat_template.json`), `generation_config.json` and `processor_config.json`.
//!
//! Only `config.json` is required. The others are kept as read (bytes or text) and turned into
//! their types by those types' constructors ([`Tokenizer::from_bytes`](crate::prompt::tokenizer::Tokenizer::from_bytes),
//! [`ChatTemplate::from_sources`](crate::chat::ChatTemplate::from_sources),
//! [`GenerationOptions::from_sources`](crate::generation::GenerationOptions::from_sources)), so
//! each keeps its own error type; the image budget of `processor_config.json` is parsed here.
//!
//! This is the one module that reads the folder's small files: the `from_dir` constructors of
//! those types read through [`read_optional`] too.

use std::path::Path;

use super::LoadError;

/// `tokenizer.json`.
pub const TOKENIZER: &str = "tokenizer.json";
/// `tokenizer_config.json` (special-token strings, legacy `chat_template` field).
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
/// `chat_template.jinja` (the current form of the chat template).
pub const CHAT_TEMPLATE_JINJA: &str = "chat_template.jinja";
/// `chat_template.json` (`{"chat_template": ...}`).
pub const CHAT_TEMPLATE_JSON: &str = "chat_template.json";
/// `generation_config.json`.
pub const GENERATION_CONFIG: &str = "generation_config.json";
/// `processor_config.json` (nested Gemma 4 processor config; `preprocessor_config.json` is not used).
pub const PROCESSOR_CONFIG: &str = "processor_config.json";
/// `config.json`.
pub const CONFIG: &str = "config.json";

/// Reads `path` as UTF-8 text; `Ok(None)` when it does not exist.
pub fn read_optional(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads `path` as bytes; `Ok(None)` when it does not exist.
pub fn read_optional_bytes(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The small files of a checkpoint folder, as read (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct CheckpointFiles {
    /// `config.json`, parsed (the one parse; [`Gemma4Config`](crate::config::Gemma4Config) is
    /// built from it).
    pub config_json: serde_json::Value,
    /// `tokenizer.json` bytes (taken by the model when it builds its tokenizer).
    pub tokenizer: Option<Vec<u8>>,
    /// `tokenizer_config.json` text.
    pub tokenizer_config: Option<String>,
    /// `chat_template.jinja` text.
    pub chat_template_jinja: Option<String>,
    /// `chat_template.json` text.
    pub chat_template_json: Option<String>,
    /// `generation_config.json` text.
    pub generation_config: Option<String>,
    /// The soft-token budget of `processor_config.json`, if the file exists and says (see
    /// [`processor_budget`]).
    pub processor_budget: Option<u32>,
}

impl CheckpointFiles {
    /// Reads the optional files of `dir` (each once); `config_json` is the already parsed
    /// `config.json`.
    pub fn read(dir: &Path, config_json: serde_json::Value) -> Result<Self, LoadError> {
        let io = |name: &str| {
            let path = dir.join(name);
            move |source| LoadError::Io { path, source }
        };
        let text = |name: &str| read_optional(&dir.join(name)).map_err(io(name));
        Ok(CheckpointFiles {
            config_json,
            tokenizer: read_optional_bytes(&dir.join(TOKENIZER)).map_err(io(TOKENIZER))?,
            tokenizer_config: text(TOKENIZER_CONFIG)?,
            chat_template_jinja: text(CHAT_TEMPLATE_JINJA)?,
            chat_template_json: text(CHAT_TEMPLATE_JSON)?,
            generation_config: text(GENERATION_CONFIG)?,
            // An unreadable or invalid processor config falls back to the vision config's
            // budget, as it always has.
            processor_budget: read_optional(&dir.join(PROCESSOR_CONFIG))
                .ok()
                .flatten()
                .and_then(|t| processor_budget(&t)),
        })
    }
}

/// The soft-token budget of `processor_config.json` text (`image_processor.max_soft_tokens`,
/// else the top-level `max_soft_tokens`, else `image_seq_length`); `None` if the text is not
/// JSON or says nothing.
pub fn processor_budget(text: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("image_processor")
        .and_then(|p| p.get("max_soft_tokens"))
        .or_else(|| v.get("max_soft_tokens"))
        .or_else(|| v.get("image_seq_length"))
        .and_then(|x| x.as_u64())
        // A value past u32 is no budget (it was truncated: 2^32 + 70 read as 70).
        .and_then(|x| u32::try_from(x).ok())
}

//! [`ConfigError`]: what can be wrong with a `config.json`. The checkpoint loader's
//! [`LoadError`](crate::checkpoint::LoadError) takes it over variant by variant (`From`), so a
//! load reports the same `MalformedConfig` / `UnsupportedModelType` / `UnsupportedConfig` /
//! `MissingFile` / `Io` as it always has; the config module itself knows nothing of the loader.

use std::path::PathBuf;

/// An error reading, parsing or validating `config.json` (never a panic).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is not valid JSON, misses a required field, or a value makes no sense.
    #[error("{path}: field {field:?}: {reason}; fix config.json or re-download it")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The field (dotted path; empty for the whole file).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The config describes a model outside the Gemma 4 family.
    #[error(
        "{path}: model_type {model_type:?} is not supported; this crate loads Gemma 4 checkpoints \
         (model_type \"gemma4\", \"gemma4_text\", \"gemma4_unified\" or \"gemma4_unified_text\")"
    )]
    UnsupportedModelType {
        /// The config file.
        path: PathBuf,
        /// Its model_type.
        model_type: String,
    },
    /// A well-formed value the engine cannot run yet (refused instead of answering wrongly).
    #[error("{path}: field {field:?} = {value}: {reason}")]
    Unsupported {
        /// The config file.
        path: PathBuf,
        /// The field (dotted path).
        field: String,
        /// Its value, as written in the file (JSON).
        value: String,
        /// What is missing in the engine and what to do.
        reason: String,
    },
    /// `config.json` does not exist.
    #[error("{path} does not exist: {hint}")]
    MissingFile {
        /// The file.
        path: PathBuf,
        /// What to do.
        hint: String,
    },
    /// An I/O error reading `config.json`.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

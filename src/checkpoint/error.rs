//! Typed errors of the checkpoint loader. Every message names the file or tensor and says what
//! to do about it.

use std::path::PathBuf;

pub use super::cache::CacheProblem;
use crate::config::ConfigError;
use crate::gpu::GpuError;

/// Everything that can go wrong while reading a checkpoint (never a panic).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A tensor the model needs is not in the checkpoint.
    #[error(
        "tensor {key} is missing (needed by {module}{}); the checkpoint is incomplete or was \
         saved for a different config: re-download it, or check num_hidden_layers / \
         num_kv_shared_layers in config.json",
        if *kv_shared { ", a KV-shared layer" } else { ", a KV-producing layer" }
    )]
    MissingTensor {
        /// The key looked for (canonical form, e.g. `language_model.layers.3.self_attn.k_proj.weight`).
        key: String,
        /// The module that needs it.
        module: String,
        /// Whether the layer is KV-shared (text layers; false elsewhere).
        kv_shared: bool,
    },
    /// A tensor has a different shape than the config implies.
    #[error(
        "tensor {key} has shape {found:?} but the config implies {expected:?}; config.json and \
         the weights do not belong together (wrong variant or a half-converted checkpoint)"
    )]
    ShapeMismatch {
        /// Key in the file.
        key: String,
        /// Shape derived from the config.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has an element type the loader cannot use here.
    #[error("tensor {key} has dtype {found} but {expected} is required; re-convert the checkpoint")]
    WrongDtype {
        /// Key in the file.
        key: String,
        /// What is accepted.
        expected: String,
        /// What the file has.
        found: String,
    },
    /// A quantized tensor does not agree with its quantization parameters.
    #[error(
        "quantized tensor {key}: {reason}; check the \"quantization\" block of config.json \
         (bits, group_size and per-module overrides)"
    )]
    QuantizationMismatch {
        /// Key of the quantized weight.
        key: String,
        /// What disagrees.
        reason: String,
    },
    /// A safetensors file is not well formed.
    #[error("{path} is corrupt: {reason}; re-download it")]
    CorruptFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The header length field of a safetensors file is beyond the file or implausibly large.
    #[error(
        "{path}: the header length field says {header_len} bytes but the file has {file_len} \
         bytes; the file is truncated or not a safetensors file: re-download it"
    )]
    HeaderTooLarge {
        /// The file.
        path: PathBuf,
        /// Declared header length.
        header_len: u64,
        /// Size of the file.
        file_len: u64,
    },
    /// A tensor's byte range lies outside the file's data section.
    #[error(
        "{path}: tensor {key} occupies bytes {start}..{end} of the data section but it has only \
         {data_len} bytes; the file is truncated or corrupt: re-download it"
    )]
    TensorOutOfBounds {
        /// The file.
        path: PathBuf,
        /// The tensor.
        key: String,
        /// Start offset (relative to the data section).
        start: u64,
        /// End offset.
        end: u64,
        /// Length of the data section.
        data_len: u64,
    },
    /// Two tensors share bytes.
    #[error(
        "{path}: tensors {first} and {second} overlap in the data section; the file is corrupt: \
         re-download it"
    )]
    OverlappingTensors {
        /// The file.
        path: PathBuf,
        /// One tensor.
        first: String,
        /// The other.
        second: String,
    },
    /// A checkpoint file changed after `Checkpoint::open` mapped it
    /// (truncated, rewritten, replaced or deleted): caught before its bytes are read.
    #[error(
        "{path} changed while the checkpoint was loading: {reason}; do not modify, move or \
         re-download a checkpoint while it loads: let the download finish (or re-download the \
         file if it was damaged) and load again"
    )]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// What changed.
        reason: String,
    },
    /// `model.safetensors.index.json` and its shards disagree about a tensor.
    #[error(
        "{index}: tensor {key}: {reason}; the index does not match its shards: re-download the \
         checkpoint (the index and every shard of one revision)"
    )]
    IndexMismatch {
        /// The index file.
        index: PathBuf,
        /// The tensor key.
        key: String,
        /// The shard file(s) involved.
        shards: Vec<PathBuf>,
        /// What disagrees.
        reason: String,
    },
    /// The same tensor key is stored in two safetensors files of one checkpoint.
    #[error(
        "tensor {key} is stored in both {first} and {second}; a stray or duplicated weights file \
         is in the checkpoint directory: remove it (or re-download the checkpoint)"
    )]
    DuplicateTensor {
        /// The tensor key.
        key: String,
        /// The file read first.
        first: PathBuf,
        /// The other file.
        second: PathBuf,
    },
    /// Two weight file names of one checkpoint are the same file (links to one file).
    #[error(
        "{first} and {second} are the same file; each weights file of a checkpoint must be \
         distinct: re-download the checkpoint"
    )]
    DuplicateShard {
        /// The file opened first.
        first: PathBuf,
        /// The other name of it.
        second: PathBuf,
    },
    /// A file of a cached (Hugging Face cache) download is missing, partial or of the wrong
    /// size.
    #[error(
        "{path}: {problem}; the download was interrupted or the cache is damaged: load again \
         with downloading allowed to re-fetch it, or delete {path} and download it again"
    )]
    IncompleteDownload {
        /// The file in the snapshot directory.
        path: PathBuf,
        /// What is wrong with it.
        problem: CacheProblem,
    },
    /// `config.json` (or an index file) is not valid or misses a required field.
    #[error("{path}: field {field:?}: {reason}; fix config.json or re-download it")]
    MalformedConfig {
        /// The file.
        path: PathBuf,
        /// The field (dotted path; empty for the whole file).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The config describes a model this crate does not run.
    #[error(
        "{path}: model_type {model_type:?} is not supported; this crate loads Gemma 4 checkpoints \
         (model_type \"gemma4\" or \"gemma4_text\")"
    )]
    UnsupportedModelType {
        /// The config file.
        path: PathBuf,
        /// Its model_type.
        model_type: String,
    },
    /// A config value the engine cannot run yet, refused at load (see
    /// [`ConfigError::Unsupported`]).
    #[error("{path}: field {field:?} = {value}: {reason}")]
    UnsupportedConfig {
        /// The config file.
        path: PathBuf,
        /// The field (dotted path, e.g. `text_config.enable_moe_block`).
        field: String,
        /// Its value, as written in the file (JSON).
        value: String,
        /// What is missing in the engine and what to do.
        reason: String,
    },
    /// A feature of the checkpoint is not implemented.
    #[error("unsupported checkpoint: {what}")]
    Unsupported {
        /// What.
        what: String,
    },
    /// A file the checkpoint needs does not exist.
    #[error("{path} does not exist: {hint}")]
    MissingFile {
        /// The file.
        path: PathBuf,
        /// What to do.
        hint: String,
    },
    /// An I/O error.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Uploading to the GPU failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// Resolving or downloading a registry model failed.
    #[error("{0}")]
    Registry(String),
    /// The caller cancelled the upload (see `Checkpoint::upload_with_progress`);
    /// every buffer uploaded so far was released.
    #[error("loading was cancelled")]
    Cancelled,
}

impl From<ConfigError> for LoadError {
    /// Each config error becomes the loader variant of the same name and fields.
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Malformed {
                path,
                field,
                reason,
            } => LoadError::MalformedConfig {
                path,
                field,
                reason,
            },
            ConfigError::UnsupportedModelType { path, model_type } => {
                LoadError::UnsupportedModelType { path, model_type }
            }
            ConfigError::Unsupported {
                path,
                field,
                value,
                reason,
            } => LoadError::UnsupportedConfig {
                path,
                field,
                value,
                reason,
            },
            ConfigError::MissingFile { path, hint } => LoadError::MissingFile { path, hint },
            ConfigError::Io { path, source } => LoadError::Io { path, source },
        }
    }
}

//! The crate's error type.

use crate::checkpoint::LoadError;
use crate::gpu::GpuError;
use crate::prompt::preprocess::ImageError;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the crate returns. Variants name the file, tensor or limit involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A GPU-side failure (no adapter, validation, out of memory, device lost, ...).
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// Loading a checkpoint failed (missing or corrupt files, config/weights mismatch).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Image decoding or preprocessing failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A callback of the caller (a notify or progress callback) or the engine panicked on a
    /// worker thread; the panic was caught there. The session it ran on is usable: the turn
    /// was undone and the next one starts from an empty cache.
    #[error("a worker thread panicked: {0}")]
    Panicked(String),
    /// A caller passed arguments that do not fit together (shapes, lengths, ids).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Loading the tokenizer, encoding or decoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be found, parsed or rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// The prompt's image placeholders do not match the images supplied.
    #[error(
        "the prompt has {placeholders} image placeholder token(s) but {images} image(s) were \
         given; pass one image per image placeholder (one Content::Image per image)"
    )]
    ImageTokenMismatch {
        /// Image placeholder tokens found in the prompt.
        placeholders: usize,
        /// Images (soft-token counts) supplied.
        images: usize,
    },
    /// The caller cancelled (loading through a [`CancelToken`](crate::CancelToken); nothing
    /// half-loaded is kept).
    #[error("cancelled")]
    Cancelled,
    /// An I/O error with the path it concerns.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

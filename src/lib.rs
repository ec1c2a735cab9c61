//! # gemma-wgpu
//!
//! Google's Gemma 4 vision-language models (E2B / E4B) on WGSL compute shaders through wgpu:
//! Metal on Macs, Vulkan or DX12 elsewhere, and a software Vulkan adapter for CI.
//!
//! The crate is layered: [`gpu`] (device, buffers, kernels, command batching) ↔ model code
//! (weights, text decoder, vision tower) ↔ generation and chat API.
#![warn(missing_docs)]

/// Declares a module that is public only with the `dev` feature (the crate's internals, for its
/// own tests, benchmarks and conformance tools) and crate-private otherwise, so the documented
/// default API is what a user calls.
macro_rules! dev_mod {
    ($(#[$m:meta])* $name:ident) => {
        #[cfg(feature = "dev")]
        $(#[$m])*
        pub mod $name;
        #[cfg(not(feature = "dev"))]
        #[allow(dead_code, unused_imports)]
        $(#[$m])*
        pub(crate) mod $name;
    };
}

pub mod captioner;
pub mod config;
pub mod error;
pub mod gpu;
pub mod prompt;

dev_mod!(
    /// Generation internals: the step machine, detokenizer, stop strings, channels.
    generate
);
dev_mod!(
    /// Loading on a worker thread: progress and cancellation plumbing.
    loading
);
dev_mod!(
    /// Fuzz entry points: one per parser of outside bytes (`fuzz/`, and the corpus replay test).
    fuzzing
);
dev_mod!(
    /// GPU and host memory accounting.
    memory
);
dev_mod!(
    /// The model's blocks: text decoder, vision tower, multimodal embedder, media placement.
    model
);
dev_mod!(
    /// CPU affine quantization (MLX layout).
    quant
);
dev_mod!(
    /// Synthetic checkpoints with real dimensions (benchmarks).
    synthetic
);
dev_mod!(
    /// The checkpoint folder (read once) and the one weight loader: safetensors store, roles,
    /// sinks, upload; the registry of known checkpoints.
    checkpoint
);

pub use checkpoint::registry;

/// The text decoder (at [`model::text`]).
#[cfg(feature = "dev")]
pub use model::text;
/// The vision tower (at [`model::vision`]).
#[cfg(feature = "dev")]
pub use model::vision;

pub use checkpoint::{FloatFormat, LoadError, LoadReport};
pub use error::{Error, Result};
pub use generate::{
    Batch, BatchHandle, CAPTION_PROMPT, CancelToken, ChatSession, FinishReason, GenerationEvent,
    GenerationHandle, GenerationOptions, GenerationStats, ImageInput, ImageSource, Reply,
    ReplyStream, Request, RequestId, Sampling,
};
pub use loading::{LoadHandle, LoadProgress, LoadStage};
pub use memory::{MemoryEstimate, MemoryReport, SessionMemory};
pub use model::{Model, ModelBuilder, ModelOptions};
pub use prompt::preprocess::ImageError;
pub use prompt::tokenizer::Tokenizer;

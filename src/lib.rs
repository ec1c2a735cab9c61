//! # gemma-wgpu
//!
//! Google's Gemma 4 vision-language models (E2B / E4B) on WGSL compute shaders through wgpu:
//! Metal on Macs, Vulkan or DX12 elsewhere, and a software Vulkan adapter for CI.
//!
//! The crate is layered: [`gpu`] (device, buffers, kernels, command batching) ↔ model code
//! (weights, text decoder, vision tower) ↔ generation and chat API.
#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod generate;
pub mod gpu;
pub mod loading;
pub mod memory;
pub mod model;
pub mod preprocess;
pub mod prompt;
pub mod quant;
pub mod registry;
pub mod synthetic;
pub mod tokenizer;
pub mod weights;

/// The vision tower, at its old path (it lives in [`model::vision`]).
pub use model::vision;
/// The text decoder (moved to [`model::text`]; this path is kept).
pub use model::text;

pub use error::{Error, Result};
pub use generate::{
    CAPTION_PROMPT, CancelToken, ChatSession, FinishReason, GenerationEvent, GenerationHandle,
    GenerationOptions, GenerationStats, ImageInput, Reply, ReplyStream, Request, Sampling,
};
pub use loading::{LoadHandle, LoadProgress, LoadStage};
pub use memory::{MemoryReport, SessionMemory};
pub use model::{Model, ModelBuilder, ModelOptions};

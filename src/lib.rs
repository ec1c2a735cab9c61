//! # gemma-wgpu
//!
//! Google's Gemma 4 vision-language models (E2B / E4B) on WGSL compute shaders through wgpu:
//! Metal on Macs, Vulkan or DX12 elsewhere, and a software Vulkan adapter for CI.
//!
//! The crate is layered: [`gpu`] (device, buffers, kernels, command batching) ↔ model code
//! (weights, text decoder, vision tower) ↔ generation and chat API.
#![warn(missing_docs)]

pub mod chat;
pub mod config;
pub mod error;
pub mod generation;
pub mod gpu;
pub mod loading;
pub mod memory;
pub mod model;
pub mod preprocess;
pub mod quant;
pub mod registry;
pub mod session;
pub mod synthetic;
pub mod text;
pub mod tokenizer;
pub mod vision;
pub mod weights;

pub use error::{Error, Result};
pub use generation::{GenerationOptions, Sampling};
pub use loading::{LoadHandle, LoadProgress, LoadStage};
pub use memory::{MemoryReport, SessionMemory};
pub use model::{Model, ModelBuilder, ModelOptions};
pub use session::{
    CAPTION_PROMPT, CancelToken, ChatSession, FinishReason, GenerationEvent, GenerationHandle,
    GenerationStats, ImageInput, Reply,
};

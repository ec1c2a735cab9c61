//! The Gemma 4 text decoder (spec: `gemma4-architecture.md` §1), one type per block of the spec:
//!
//! ```text
//! TextDecoder            decoder.rs     embed → layers → head, chunking, decode steps
//!   TokenEmbedding       embedding.rs   h0 = embed_tokens[ids'] * sqrt(H), media scatter
//!   PerLayerEmbedding    per_layer.rs   the per-layer inputs PLE [L, N·P]   (PLE models)
//!   DecoderLayer         layer.rs       norms and residuals of one layer
//!     Attention          attention.rs   q/k/v, norms + RoPE + cache write, attention, o_proj
//!       KvSource                        owns K/V | owns K with V = K | reads layer j's cache
//!     FeedForward        mlp.rs         Dense(Mlp) | DenseAndExperts(MoeBlock)
//!       MoeBlock         moe.rs         dense MLP + router (GPU top-k) + routed experts
//!     PerLayerInput      per_layer.rs   h += norm(proj(gelu(gate(h)) * PLE_i))
//!   LmHead               head.rs        final norm, tied projection, softcap
//! KvCache                cache.rs       per-session K/V rings
//! Workspace              workspace.rs   per-session activations
//! ```
//!
//! Each block loads its own tensors by name (`load(cfg, vb)`, generic over the loader's sinks,
//! so the same code builds the host plan and the GPU tree) and records its own ops. The model
//! code only calls ops from [`crate::gpu::ops`]; everything for one prefill chunk or one decoded
//! token is recorded into one [`Recorder`](crate::gpu::Recorder) and submitted once.

mod attention;
mod cache;
mod decoder;
mod embedding;
mod head;
mod layer;
mod mlp;
mod moe;
mod per_layer;
mod workspace;

pub use attention::{Attention, KvSource, RopeTables};
pub use cache::{KvCache, LayerCache};
pub use decoder::{BatchSeq, Logits, Selection, TextDecoder, TextWeights, argmax_host};
pub(crate) use decoder::session_buffers;
pub use embedding::TokenEmbedding;
pub use head::LmHead;
pub use layer::DecoderLayer;
pub use mlp::{FeedForward, Mlp};
pub use moe::{ExpertWeights, MoeBlock, MoeWorkspace, Router};
pub use per_layer::{PerLayerEmbedding, PerLayerInput, PerLayerTable};
pub use workspace::{MAX_LOGITS_BYTES, Workspace};

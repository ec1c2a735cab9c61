//! Model, loader and API tests: parity with the transformers goldens, the weight loader and its
//! errors, preprocessing, tokenizer and chat template, the generation and desktop APIs.
//! One test binary (one link of wgpu; one shared device).

#[path = "../common/mod.rs"]
mod common;

mod parity;
mod fixtures;
mod decode;
mod loader;
mod errors;
mod preprocess;
mod tokenizer;
mod api;
mod desktop_api;

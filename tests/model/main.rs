//! Model, loader and API tests: parity with the transformers goldens, the weight loader and its
//! errors, preprocessing, tokenizer and chat template, the generation and desktop APIs.
//! One test binary (one link of wgpu; one shared device).

#[path = "../common/mod.rs"]
mod common;

mod api;
mod captioner;
mod decode;
mod desktop_api;
mod errors;
mod faults;
mod fixtures;
mod fuzz_corpus;
mod loader;
mod parity;
mod preprocess;
mod tokenizer;

#![no_main]
//! `gemma_wgpu::fuzzing::safetensors_index` under libFuzzer.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gemma_wgpu::fuzzing::safetensors_index(data));

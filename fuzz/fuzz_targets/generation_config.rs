#![no_main]
//! `gemma_wgpu::fuzzing::generation_config` under libFuzzer.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gemma_wgpu::fuzzing::generation_config(data));

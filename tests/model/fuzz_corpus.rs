//! Replay of the committed fuzz corpus: every file of `fuzz/corpus/NAME/` and
//! `fuzz/regressions/NAME/` (crash reproducers) through the entry point the cargo-fuzz target
//! `NAME` calls (`gemma_wgpu::fuzzing`), so a crash the fuzzer found stays fixed without
//! nightly or libFuzzer. The typed errors of the fixed crashes are asserted one by one below.

use std::path::{Path, PathBuf};

use gemma_wgpu::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files_of(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn fuzz_corpus_replays_without_panics() {
    let mut failures = Vec::new();
    for (name, entry) in TARGETS {
        let corpus = files_of(&fuzz_dir().join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name} has no seed files (every target needs a committed corpus)"
        );
        let regressions = files_of(&fuzz_dir().join("regressions").join(name));
        for file in corpus.iter().chain(&regressions) {
            let data = std::fs::read(file).expect("corpus file is readable");
            if std::panic::catch_unwind(|| entry(&data)).is_err() {
                failures.push(format!("{name}: {}", file.display()));
            }
        }
    }
    assert!(failures.is_empty(), "fuzz inputs that panic: {failures:#?}");
}

#[test]
fn fuzz_targets_match_the_corpus_folders() {
    // Every folder of fuzz/corpus is a target the replay runs, and every target has a
    // cargo-fuzz binary.
    let corpus = std::fs::read_dir(fuzz_dir().join("corpus")).expect("fuzz/corpus exists");
    for e in corpus.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/corpus/{name} names no entry point of gemma_wgpu::fuzzing"
        );
    }
    for (name, _) in TARGETS {
        let target = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(target.is_file(), "{} is missing", target.display());
    }
}

// ---------------------------------------------------------------------------------------------
// The defects the fuzz targets exposed, each a typed error (or correct output) now. Their
// reproducers are in fuzz/regressions/NAME/.

fn regression(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(fuzz_dir().join("regressions").join(target).join(name))
        .expect("reproducer exists")
}

#[test]
fn fuzz_overlap_hidden_by_an_empty_tensor_is_refused() {
    use gemma_wgpu::checkpoint::LoadError;
    use gemma_wgpu::checkpoint::safetensors::parse_file;
    // a = bytes 0..8, an empty tensor at 4, b = bytes 4..12: a and b share bytes 4..8.
    let data = regression("safetensors_header", "overlap_across_empty");
    match parse_file(&data, Path::new("x.safetensors")) {
        Err(LoadError::OverlappingTensors { first, second, .. }) => {
            assert_eq!((first.as_str(), second.as_str()), ("a", "b"));
        }
        other => panic!("expected OverlappingTensors, got {other:?}"),
    }
}

fn config_error(target_file: &str) -> (String, String) {
    use gemma_wgpu::config::{ConfigError, Gemma4Config};
    let text = String::from_utf8(regression("config", target_file)).unwrap();
    match Gemma4Config::from_json_str(&text, Path::new("config.json")) {
        Err(ConfigError::Malformed { field, reason, .. }) => (field, reason),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn fuzz_config_sizes_past_the_limit_are_malformed() {
    // 2^63: the double-wide MLP of a KV-shared layer (2 · intermediate_size) overflowed.
    let (field, reason) = config_error("huge_intermediate_size");
    assert_eq!(field, "text_config.intermediate_size");
    assert!(
        reason.contains("exceeds the largest accepted size"),
        "{reason}"
    );
    // 2^40: 3 · patch_size² (values per patch) overflowed, and `as u32` truncated it.
    let (field, reason) = config_error("huge_vision_patch_size");
    assert_eq!(field, "vision_config.patch_size");
    assert!(reason.contains("out of range"), "{reason}");
}

#[test]
fn fuzz_quantized_shape_check_refuses_overflowing_widths() {
    use gemma_wgpu::checkpoint::LoadError;
    use gemma_wgpu::checkpoint::quant::check_shapes;
    use gemma_wgpu::config::QuantParams;
    let p = QuantParams {
        bits: 8,
        group_size: 64,
    };
    // cols · bits wraps to a multiple of 32 (0 packed columns) without the check.
    let cols = usize::MAX / 4 + 64;
    let r = check_shapes("w", 1, cols, p, &[1, 0], &[1, cols / 64], &[1, cols / 64]);
    match r {
        Err(LoadError::QuantizationMismatch { reason, .. }) => {
            assert!(reason.contains("overflow"), "{reason}")
        }
        other => panic!("expected QuantizationMismatch, got {other:?}"),
    }
    // An ordinary matrix still passes.
    check_shapes("w", 3, 128, p, &[3, 32], &[3, 2], &[3, 2]).unwrap();
}

#[test]
fn fuzz_empty_shard_name_is_malformed() {
    use gemma_wgpu::checkpoint::LoadError;
    use gemma_wgpu::checkpoint::safetensors::parse_index;
    let text = String::from_utf8(regression("safetensors_index", "empty_shard_name")).unwrap();
    match parse_index(
        &text,
        Path::new("model.safetensors.index.json"),
        Path::new("."),
    ) {
        Err(LoadError::MalformedConfig { field, .. }) => assert_eq!(field, "weight_map.a"),
        other => panic!("expected MalformedConfig, got {other:?}"),
    }
}

#[test]
fn fuzz_processor_budget_past_u32_is_no_budget() {
    use gemma_wgpu::checkpoint::files::processor_budget;
    let text = String::from_utf8(regression("processor_config", "budget_past_u32")).unwrap();
    // 2^32 + 70 was read as 70.
    assert_eq!(processor_budget(&text), None);
    assert_eq!(
        processor_budget(r#"{"image_processor": {"max_soft_tokens": 1120}}"#),
        Some(1120)
    );
}

fn streamed(tok: &std::sync::Arc<gemma_wgpu::Tokenizer>, ids: &[u32], skip: bool) -> String {
    let mut d = gemma_wgpu::generate::Detokenizer::new(tok.clone()).with_skip_special(skip);
    let mut out = String::new();
    for &id in ids {
        if let Some(delta) = d.push(id).unwrap() {
            out.push_str(&delta);
        }
    }
    out.push_str(&d.finish().unwrap());
    out
}

#[test]
fn fuzz_detokenizer_stream_equals_the_full_decode_around_byte_runs() {
    use gemma_wgpu::Tokenizer;
    use std::sync::Arc;
    let tok = Arc::new(
        Tokenizer::from_file(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/e2b-like/tokenizer.json"),
        )
        .unwrap(),
    );
    // The ids the fuzz target read from the reproducer.
    let ids_of = |name: &str| -> Vec<u32> {
        gemma_wgpu::fuzzing::detokenizer_ids(&regression("detokenizer", name), tok.vocab_size())
    };
    // <0xC3> <0xA9> <0xA9> a: the first two bytes alone are "é", but the run of three is not
    // UTF-8 and decodes to three U+FFFD (the stream had emitted "é").
    let ids = ids_of("stray_continuation_byte");
    assert_eq!(tok.id_to_token(ids[0]).as_deref(), Some("<0xC3>"));
    let full = tok.decode(&ids, true).unwrap();
    assert_eq!(full, "\u{FFFD}\u{FFFD}\u{FFFD}a");
    assert_eq!(streamed(&tok, &ids, true), full);
    // ... , <0x05>, <pad> ×3, <turn|>, <bos>, <turn|>, <0x80>: with special tokens skipped the
    // decoder sees <0x05><0x80> as one (invalid) run, two U+FFFD; the stream had emitted
    // "\u{5}" at the first <pad>.
    let ids = ids_of("byte_run_across_skipped_specials");
    let full = tok.decode(&ids, true).unwrap();
    assert!(full.ends_with(",\u{FFFD}\u{FFFD}"), "{full:?}");
    assert_eq!(streamed(&tok, &ids, true), full);
    // Kept special tokens end a run: the stream still equals the decode.
    assert_eq!(
        streamed(&tok, &ids, false),
        tok.decode(&ids, false).unwrap()
    );
}

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

//! Golden tensors written by `tools/oracle/generate.py` (transformers fp32 reference runs).
//!
//! `Golden::load(path)` reads one golden safetensors file; `Fixture::open(case)` resolves a
//! `tests/fixtures/<case>/fixture.json` (model directory + golden file). Tensors come back as
//! `Vec<f32>` / `Vec<i64>` / `Vec<u8>` with their shape. `compare` reports the largest |Δ|, where it
//! occurs and, for logits `[L, V]`, top-1 agreement per position, and panics on failure.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

/// `tests/fixtures` of this crate.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// One stored tensor: dtype, shape and raw little-endian bytes.
#[derive(Clone, Debug)]
pub struct RawTensor {
    /// Element type as stored.
    pub dtype: Dtype,
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Raw little-endian data.
    pub data: Vec<u8>,
}

/// A float tensor with its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct F32Tensor {
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

/// An integer tensor with its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct I64Tensor {
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<i64>,
}

/// A golden safetensors file, fully read.
#[derive(Clone, Debug)]
pub struct Golden {
    /// Where it was read from.
    pub path: PathBuf,
    tensors: BTreeMap<String, RawTensor>,
    metadata: HashMap<String, String>,
}

impl Golden {
    /// Reads a golden file; panics with the path on any error (test helper).
    pub fn load(path: impl AsRef<Path>) -> Golden {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st =
            SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let metadata = meta.metadata().clone().unwrap_or_default();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let t = RawTensor {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    data: view.data().to_vec(),
                };
                (name, t)
            })
            .collect();
        Golden {
            path,
            tensors,
            metadata,
        }
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// Whether a tensor exists.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The raw tensor; panics when absent.
    pub fn raw(&self, name: &str) -> &RawTensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: no tensor {name:?}", self.path.display()))
    }

    /// Shape of a tensor; panics when absent.
    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.raw(name).shape.clone()
    }

    /// A metadata entry (package versions, seed, notes).
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// A float tensor (F32, or F16/BF16 widened); panics on other dtypes.
    pub fn f32(&self, name: &str) -> F32Tensor {
        let t = self.raw(name);
        let data = match t.dtype {
            Dtype::F32 => t
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::BF16 => t
                .data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F16 => t
                .data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            d => panic!("{name}: dtype {d:?} is not a float type"),
        };
        F32Tensor {
            shape: t.shape.clone(),
            data,
        }
    }

    /// An integer tensor (I64, I32, U8 widened); panics on other dtypes.
    pub fn i64(&self, name: &str) -> I64Tensor {
        let t = self.raw(name);
        let data = match t.dtype {
            Dtype::I64 => t
                .data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            Dtype::I32 => t
                .data
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            Dtype::U8 => t.data.iter().map(|&b| i64::from(b)).collect(),
            d => panic!("{name}: dtype {d:?} is not an integer type"),
        };
        I64Tensor {
            shape: t.shape.clone(),
            data,
        }
    }

    /// A u8 tensor (images); panics on other dtypes.
    pub fn u8(&self, name: &str) -> (Vec<u8>, Vec<usize>) {
        let t = self.raw(name);
        assert_eq!(t.dtype, Dtype::U8, "{name}: expected U8");
        (t.data.clone(), t.shape.clone())
    }
}

/// A fixture case: `tests/fixtures/<case>/fixture.json` resolved.
#[derive(Clone, Debug)]
pub struct Fixture {
    /// Case name (directory under tests/fixtures).
    pub case: String,
    /// The case directory.
    pub dir: PathBuf,
    /// The model directory (config.json + weights), possibly another case's directory.
    pub model_dir: PathBuf,
    /// The golden file, possibly another case's.
    pub golden_path: PathBuf,
    /// The parsed fixture.json.
    pub json: serde_json::Value,
}

impl Fixture {
    /// Opens `tests/fixtures/<case>/fixture.json`.
    pub fn open(case: &str) -> Fixture {
        let dir = fixtures_dir().join(case);
        let path = dir.join("fixture.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let model = json["model"].as_str().unwrap_or(".");
        let golden = json["golden"].as_str().unwrap_or("golden.safetensors");
        Fixture {
            case: case.to_string(),
            model_dir: dir.join(model),
            golden_path: dir.join(golden),
            dir,
            json,
        }
    }

    /// Loads the golden file.
    pub fn golden(&self) -> Golden {
        Golden::load(&self.golden_path)
    }

    /// The model's config.json.
    pub fn config(&self) -> serde_json::Value {
        let path = self.model_dir.join("config.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

/// Result of a comparison (also printed by `compare`).
#[derive(Clone, Debug)]
pub struct Report {
    /// Largest |got - want|.
    pub max_abs: f32,
    /// Flat index of the largest difference.
    pub argmax: usize,
    /// Mean |got - want|.
    pub mean_abs: f32,
    /// Tolerance applied: `atol_rel * max(1, max |want|)`.
    pub tol: f32,
    /// For logits `[L, V]`: positions whose top-1 differs (ties within `tol` excluded).
    pub top1_mismatches: Vec<usize>,
    /// For logits `[L, V]`: number of positions.
    pub positions: usize,
}

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (d, &n) in shape.iter().enumerate().rev() {
        if n > 0 {
            idx[d] = i % n;
            i /= n;
        }
    }
    idx
}

fn top1(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Compares `got` with the golden `want`. Passes when every |Δ| ≤ `atol_rel · max(1, max |want|)`
/// (no NaN anywhere) and, for logits (`name` contains "logits", shape `[L, V]`), the top-1 token
/// agrees at every position unless the golden's own top-2 margin is within the tolerance.
/// Prints a one-line report; panics with the details on failure.
pub fn compare(name: &str, got: &[f32], want: &F32Tensor, atol_rel: f32) -> Report {
    assert_eq!(
        got.len(),
        want.data.len(),
        "{name}: {} values, golden {:?} has {}",
        got.len(),
        want.shape,
        want.data.len()
    );
    let scale = want.data.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let tol = atol_rel * scale;
    let mut max_abs = 0f32;
    let mut argmax = 0usize;
    let mut sum = 0f64;
    let mut nan = None;
    for (i, (&g, &w)) in got.iter().zip(&want.data).enumerate() {
        if g.is_nan() != w.is_nan() || g.is_infinite() != w.is_infinite() {
            nan.get_or_insert(i);
            continue;
        }
        let d = (g - w).abs();
        if d.is_nan() {
            continue;
        }
        sum += f64::from(d);
        if d > max_abs {
            max_abs = d;
            argmax = i;
        }
    }
    let mean_abs = if got.is_empty() {
        0.0
    } else {
        (sum / got.len() as f64) as f32
    };
    let mut top1_mismatches = Vec::new();
    let mut positions = 0;
    if name.contains("logits") && want.shape.len() == 2 {
        let (l, v) = (want.shape[0], want.shape[1]);
        positions = l;
        for p in 0..l {
            let w = &want.data[p * v..(p + 1) * v];
            let g = &got[p * v..(p + 1) * v];
            let (tw, tg) = (top1(w), top1(g));
            if tw != tg && (w[tw] - w[tg]).abs() > tol {
                top1_mismatches.push(p);
            }
        }
    }
    let report = Report {
        max_abs,
        argmax,
        mean_abs,
        tol,
        top1_mismatches,
        positions,
    };
    let at = unravel(argmax, &want.shape);
    let mut line = format!(
        "{name}: max |Δ| {max_abs:.3e} at {at:?} (got {}, want {}), mean |Δ| {mean_abs:.3e}, tol {tol:.3e}",
        got.get(argmax).copied().unwrap_or(f32::NAN),
        want.data.get(argmax).copied().unwrap_or(f32::NAN)
    );
    if positions > 0 {
        let _ = write!(
            line,
            ", top-1 agreement {}/{positions}",
            positions - report.top1_mismatches.len()
        );
        if !report.top1_mismatches.is_empty() {
            let _ = write!(line, " (differs at positions {:?})", report.top1_mismatches);
        }
    }
    eprintln!("{line}");
    if let Some(i) = nan {
        panic!(
            "{name}: NaN/inf mismatch at {:?} (got {}, want {}); {line}",
            unravel(i, &want.shape),
            got[i],
            want.data[i]
        );
    }
    if max_abs > tol || !report.top1_mismatches.is_empty() {
        panic!("{name}: golden mismatch: {line}");
    }
    report
}

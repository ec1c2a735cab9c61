//! Memory-mapped safetensors files, validated before any tensor is touched: header length
//! against the file size, every tensor's byte range inside the data section and consistent with
//! its dtype and shape, and no two tensors overlapping. Corrupt input gives a typed
//! [`LoadError`], never a panic.
//!
//! The header is parsed here (a few dozen lines) rather than by the `safetensors` crate so that
//! each defect maps to its own error variant; the crate is still used by the tests to write files.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::error::LoadError;

/// Largest accepted header (the format's own limit is 100 MB).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StDType {
    /// bool (1 byte).
    Bool,
    /// u8.
    U8,
    /// i8.
    I8,
    /// i16.
    I16,
    /// u16.
    U16,
    /// f16.
    F16,
    /// bf16.
    BF16,
    /// i32.
    I32,
    /// u32.
    U32,
    /// f32.
    F32,
    /// f64.
    F64,
    /// i64.
    I64,
    /// u64.
    U64,
}

impl StDType {
    /// Parses the header name ("BF16", ...).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BOOL" => StDType::Bool,
            "U8" => StDType::U8,
            "I8" => StDType::I8,
            "I16" => StDType::I16,
            "U16" => StDType::U16,
            "F16" => StDType::F16,
            "BF16" => StDType::BF16,
            "I32" => StDType::I32,
            "U32" => StDType::U32,
            "F32" => StDType::F32,
            "F64" => StDType::F64,
            "I64" => StDType::I64,
            "U64" => StDType::U64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StDType::Bool | StDType::U8 | StDType::I8 => 1,
            StDType::I16 | StDType::U16 | StDType::F16 | StDType::BF16 => 2,
            StDType::I32 | StDType::U32 | StDType::F32 => 4,
            StDType::F64 | StDType::I64 | StDType::U64 => 8,
        }
    }

    /// Whether this is a float type the model can use (f32, f16, bf16).
    pub fn is_model_float(self) -> bool {
        matches!(self, StDType::F32 | StDType::F16 | StDType::BF16)
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            StDType::Bool => "bool",
            StDType::U8 => "u8",
            StDType::I8 => "i8",
            StDType::I16 => "i16",
            StDType::U16 => "u16",
            StDType::F16 => "f16",
            StDType::BF16 => "bf16",
            StDType::I32 => "i32",
            StDType::U32 => "u32",
            StDType::F32 => "f32",
            StDType::F64 => "f64",
            StDType::I64 => "i64",
            StDType::U64 => "u64",
        }
    }
}

impl std::fmt::Display for StDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A byte range of a memory-mapped file, cheap to clone, dereferencing to `[u8]`.
#[derive(Clone)]
pub struct MappedBytes {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for MappedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedBytes({}..{})", self.start, self.start + self.len)
    }
}

impl Deref for MappedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // In bounds: validated when the file was opened.
        &self.map[self.start..self.start + self.len]
    }
}

/// One tensor of a checkpoint: its key as stored, dtype, shape and bytes.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    /// The key as written in the file.
    pub key: String,
    /// Element type.
    pub dtype: StDType,
    /// Shape.
    pub shape: Vec<usize>,
    /// The file it lives in.
    pub file: PathBuf,
    /// Its bytes (mapped lazily by the OS).
    pub bytes: MappedBytes,
}

impl StoredTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Converts a float tensor (f32/f16/bf16) to f32 values.
    pub fn to_f32(&self) -> Result<Vec<f32>, LoadError> {
        to_f32(&self.bytes, self.dtype).ok_or_else(|| LoadError::WrongDtype {
            key: self.key.clone(),
            expected: "f32, f16 or bf16".into(),
            found: self.dtype.name().into(),
        })
    }
}

/// Converts little-endian f32/f16/bf16 bytes to f32 (None for other dtypes).
pub fn to_f32(bytes: &[u8], dtype: StDType) -> Option<Vec<f32>> {
    Some(match dtype {
        StDType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        StDType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        StDType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        _ => return None,
    })
}

/// One validated, memory-mapped safetensors file.
#[derive(Debug)]
pub struct SafeFile {
    /// Path of the file.
    pub path: PathBuf,
    /// Its tensors in the order of their offsets.
    pub tensors: Vec<StoredTensor>,
    /// Size of the file.
    pub file_len: u64,
}

#[derive(serde::Deserialize)]
struct RawInfo {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// One validated entry of a safetensors header: a tensor's key, dtype, shape and byte range in
/// the file ([`parse_file`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderEntry {
    /// The key as written in the file.
    pub key: String,
    /// Element type.
    pub dtype: StDType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Offset of the tensor's first byte from the start of the file.
    pub start: usize,
    /// Its length in bytes (`numel · dtype size`).
    pub len: usize,
}

fn too_short(path: &Path, file_len: u64) -> LoadError {
    LoadError::CorruptFile {
        path: path.to_path_buf(),
        reason: format!(
            "the file has {file_len} bytes, fewer than the 8-byte header length field"
        ),
    }
}

/// Validates the bytes of a whole safetensors file (as [`SafeFile::open`] maps them): header
/// length against the file size and [`MAX_HEADER_BYTES`], the header as a UTF-8 JSON object,
/// every tensor's dtype, its byte range inside the data section and consistent with its dtype
/// and shape, and no two tensors overlapping. Returns the tensors in the order of their offsets;
/// every returned range lies inside `bytes`. `path` names the file in errors.
pub fn parse_file(bytes: &[u8], path: &Path) -> Result<Vec<HeaderEntry>, LoadError> {
    let file_len = bytes.len() as u64;
    let corrupt = |reason: String| LoadError::CorruptFile {
        path: path.to_path_buf(),
        reason,
    };
    let Some(lenb) = bytes.first_chunk::<8>() else {
        return Err(too_short(path, file_len));
    };
    let header_len = u64::from_le_bytes(*lenb);
    if header_len > file_len - 8 || header_len > MAX_HEADER_BYTES {
        return Err(LoadError::HeaderTooLarge {
            path: path.to_path_buf(),
            header_len,
            file_len,
        });
    }
    let data_start = 8 + header_len as usize;
    let header = std::str::from_utf8(&bytes[8..data_start])
        .map_err(|e| corrupt(format!("the header is not UTF-8: {e}")))?;
    let raw: BTreeMap<String, serde_json::Value> = serde_json::from_str(header.trim_end())
        .map_err(|e| corrupt(format!("the header is not a JSON object: {e}")))?;
    let data_len = file_len - data_start as u64;
    let mut tensors = Vec::with_capacity(raw.len());
    for (key, v) in raw {
        if key == "__metadata__" {
            continue;
        }
        let info: RawInfo = serde_json::from_value(v)
            .map_err(|e| corrupt(format!("header entry {key:?}: {e}")))?;
        let dtype = StDType::parse(&info.dtype)
            .ok_or_else(|| corrupt(format!("tensor {key}: unknown dtype {:?}", info.dtype)))?;
        let [start, end] = info.data_offsets;
        if start > end || end > data_len {
            return Err(LoadError::TensorOutOfBounds {
                path: path.to_path_buf(),
                key,
                start,
                end,
                data_len,
            });
        }
        let numel = info
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size() as u64))
            .ok_or_else(|| corrupt(format!("tensor {key}: shape {:?} overflows", info.shape)))?;
        if numel != end - start {
            return Err(corrupt(format!(
                "tensor {key}: shape {:?} of {} needs {numel} bytes but its offsets span {} bytes",
                info.shape,
                dtype,
                end - start
            )));
        }
        tensors.push(HeaderEntry {
            key,
            dtype,
            shape: info.shape.iter().map(|&d| d as usize).collect(),
            start: data_start + start as usize,
            len: (end - start) as usize,
        });
    }
    tensors.sort_by_key(|t| (t.start, t.len));
    // Each non-empty tensor against the previous non-empty one (an empty tensor between two
    // overlapping ones must not hide the overlap).
    let mut prev: Option<&HeaderEntry> = None;
    for t in tensors.iter().filter(|t| t.len > 0) {
        if let Some(a) = prev
            && a.start + a.len > t.start
        {
            return Err(LoadError::OverlappingTensors {
                path: path.to_path_buf(),
                first: a.key.clone(),
                second: t.key.clone(),
            });
        }
        prev = Some(t);
    }
    Ok(tensors)
}

impl SafeFile {
    /// Opens, maps and validates `path` (see [`parse_file`]).
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let io = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LoadError::MissingFile {
                    path: path.to_path_buf(),
                    hint: "a weights file of the checkpoint is missing; re-download the checkpoint"
                        .into(),
                }
            } else {
                LoadError::Io {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        };
        let file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        if file_len < 8 {
            return Err(too_short(path, file_len));
        }
        // SAFETY: the mapping is read-only and lives as long as the `Arc<Mmap>` that every
        // `MappedBytes` holds. Like every mmap-based safetensors reader we rely on the checkpoint
        // file not being truncated or rewritten by another process while it is mapped (a changed
        // file could make reads fault or change underneath us); checkpoint files are immutable
        // downloads, and all offsets are validated against the length observed here.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        if (map.len() as u64) != file_len {
            return Err(LoadError::CorruptFile {
                path: path.to_path_buf(),
                reason: "the file changed size while it was being opened".into(),
            });
        }
        let map = Arc::new(map);
        let tensors = parse_file(&map, path)?
            .into_iter()
            .map(|e| StoredTensor {
                key: e.key,
                dtype: e.dtype,
                shape: e.shape,
                file: path.to_path_buf(),
                bytes: MappedBytes {
                    map: map.clone(),
                    start: e.start,
                    len: e.len,
                },
            })
            .collect();
        Ok(SafeFile {
            path: path.to_path_buf(),
            tensors,
            file_len,
        })
    }
}

/// `model.safetensors.index.json`, parsed and checked ([`parse_index`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIndex {
    /// The shard file names, each once, sorted (plain file names: no path separator, no leading
    /// dot).
    pub shards: Vec<String>,
    /// `weight_map`: tensor key → shard file name, in the file's order.
    pub weight_map: Vec<(String, String)>,
}

/// Parses the text of `model.safetensors.index.json` (`path` names it in errors): valid JSON with
/// a `weight_map` object of file-name strings, each a plain file name inside the checkpoint
/// directory (not empty, no `/`, `\` or leading `.`).
pub fn parse_index(text: &str, path: &Path) -> Result<ShardIndex, LoadError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| LoadError::MalformedConfig {
            path: path.to_path_buf(),
            field: String::new(),
            reason: format!("not valid JSON: {e}"),
        })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| LoadError::MalformedConfig {
            path: path.to_path_buf(),
            field: "weight_map".into(),
            reason: "missing or not an object".into(),
        })?;
    // A set, not a list scan: an index with very many distinct shard names stays linear.
    let mut shards = std::collections::BTreeSet::new();
    let mut weight_map = Vec::with_capacity(map.len());
    for (key, f) in map {
        let f = f.as_str().ok_or_else(|| LoadError::MalformedConfig {
            path: path.to_path_buf(),
            field: format!("weight_map.{key}"),
            reason: "expected a file name".into(),
        })?;
        if f.is_empty() || f.contains('/') || f.contains('\\') || f.starts_with('.') {
            return Err(LoadError::MalformedConfig {
                path: path.to_path_buf(),
                field: format!("weight_map.{key}"),
                reason: format!("shard name {f:?} must be a plain file name"),
            });
        }
        shards.insert(f.to_string());
        weight_map.push((key.clone(), f.to_string()));
    }
    Ok(ShardIndex {
        shards: shards.into_iter().collect(),
        weight_map,
    })
}

/// All safetensors files of a checkpoint directory, keyed by stored tensor name.
#[derive(Debug, Default)]
pub struct TensorStore {
    /// The files, in load order.
    pub files: Vec<PathBuf>,
    /// Every tensor by its stored key.
    pub tensors: BTreeMap<String, StoredTensor>,
    /// Total size of the mapped files.
    pub bytes_mapped: u64,
}

impl TensorStore {
    /// Opens `model.safetensors.index.json` and its shards, else `model.safetensors`, else every
    /// `*.safetensors` file of `dir` (sorted by name).
    pub fn open_dir(dir: &Path) -> Result<Self, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::MissingFile {
                path: dir.to_path_buf(),
                hint: "pass a checkpoint directory (with config.json and *.safetensors) or a \
                       model name from models.toml"
                    .into(),
            });
        }
        let index = dir.join("model.safetensors.index.json");
        let mut store = TensorStore::default();
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| LoadError::Io {
                path: index.clone(),
                source: e,
            })?;
            let ShardIndex { shards, weight_map } = parse_index(&text, &index)?;
            for s in &shards {
                let p = dir.join(s);
                if !p.is_file() {
                    return Err(LoadError::MissingFile {
                        path: p,
                        hint: format!(
                            "shard listed in {}; the download is incomplete: re-download the checkpoint",
                            index.display()
                        ),
                    });
                }
                store.add(SafeFile::open(&p)?)?;
            }
            for (key, f) in &weight_map {
                let have = store.tensors.get(key).map(|t| t.file.clone());
                let want = dir.join(f);
                if have.as_deref() != Some(want.as_path()) {
                    return Err(LoadError::CorruptFile {
                        path: want,
                        reason: format!(
                            "{} says it holds tensor {key}, but it does not",
                            index.display()
                        ),
                    });
                }
            }
        } else if dir.join("model.safetensors").is_file() {
            store.add(SafeFile::open(&dir.join("model.safetensors"))?)?;
        } else {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| LoadError::Io {
                    path: dir.to_path_buf(),
                    source: e,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors") && p.is_file())
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(LoadError::MissingFile {
                    path: dir.join("model.safetensors"),
                    hint: "no *.safetensors weights (nor model.safetensors.index.json) in the \
                           checkpoint directory; download the weights"
                        .into(),
                });
            }
            for f in files {
                store.add(SafeFile::open(&f)?)?;
            }
        }
        Ok(store)
    }

    fn add(&mut self, f: SafeFile) -> Result<(), LoadError> {
        self.bytes_mapped += f.file_len;
        self.files.push(f.path.clone());
        for t in f.tensors {
            if let Some(prev) = self.tensors.get(&t.key) {
                return Err(LoadError::CorruptFile {
                    path: t.file.clone(),
                    reason: format!(
                        "tensor {} is also stored in {}; remove the stray file",
                        t.key,
                        prev.file.display()
                    ),
                });
            }
            self.tensors.insert(t.key.clone(), t);
        }
        Ok(())
    }
}

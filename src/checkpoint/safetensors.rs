//! Memory-mapped safetensors files, validated before any tensor is touched: header length
//! against the file size, every tensor's byte range inside the data section and consistent with
//! its dtype and shape, and no two tensors overlapping. Corrupt input gives a typed
//! [`LoadError`], never a panic.
//!
//! The header is parsed here (a few dozen lines) rather than by the `safetensors` crate so that
//! each defect maps to its own error variant; the crate is still used by the tests to write files.
//!
//! A file that changes while it is mapped (truncated, rewritten or replaced by another process,
//! e.g. a re-download into the same cache) is caught before its pages are touched: the header is
//! read through the file handle (not the mapping), and every read of tensor bytes during a load
//! first calls [`MappedBytes::verify`], which compares the open file and the file at the path
//! with the identity recorded at open ([`LoadError::FileChanged`]). See the SAFETY comment in
//! [`SafeFile::open`] for the race that remains.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

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

/// What identifies a file's contents cheaply: length, modification time and (on Unix) device
/// and inode. Recorded when a file is opened and compared before its mapped bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Length in bytes.
    pub len: u64,
    /// Modification time, where the platform reports one.
    pub modified: Option<SystemTime>,
    /// (device, inode) on Unix; `None` elsewhere.
    pub id: Option<(u64, u64)>,
}

impl FileStamp {
    /// The stamp of `meta`.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let id = {
            use std::os::unix::fs::MetadataExt;
            Some((meta.dev(), meta.ino()))
        };
        #[cfg(not(unix))]
        let id = None;
        FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            id,
        }
    }
}

/// A mapped file with the handle it was mapped from and its [`FileStamp`] at open.
struct MappedFile {
    map: Mmap,
    file: File,
    path: PathBuf,
    stamp: FileStamp,
}

impl MappedFile {
    /// Whether the file is still the one that was mapped, unchanged: the open handle's length
    /// and modification time (truncated or rewritten in place), and the file now at the path
    /// (deleted, or replaced by another file, e.g. a re-download renamed over it).
    fn verify(&self) -> Result<(), LoadError> {
        let changed = |reason: String| LoadError::FileChanged {
            path: self.path.clone(),
            reason,
        };
        let now = self.file.metadata().map_err(|e| LoadError::Io {
            path: self.path.clone(),
            source: e,
        })?;
        let now = FileStamp::of(&now);
        if now.len != self.stamp.len {
            return Err(changed(format!(
                "it had {} bytes when it was opened and has {} now (truncated or rewritten)",
                self.stamp.len, now.len
            )));
        }
        if now.modified != self.stamp.modified {
            return Err(changed(
                "it was written to after it was opened (its modification time changed)".into(),
            ));
        }
        match std::fs::metadata(&self.path) {
            Ok(m) if FileStamp::of(&m) == self.stamp => Ok(()),
            Ok(_) => Err(changed(
                "another file was put at its path after it was opened (replaced)".into(),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(changed(
                "it was deleted (or moved) after it was opened".into(),
            )),
            Err(e) => Err(LoadError::Io {
                path: self.path.clone(),
                source: e,
            }),
        }
    }
}

/// A byte range of a memory-mapped file, cheap to clone, dereferencing to `[u8]`.
///
/// Dereferencing touches the mapped pages: code that reads them while loading calls
/// [`verify`](Self::verify) first, so that a file changed since it was opened gives
/// [`LoadError::FileChanged`] instead of a fault (SIGBUS on a truncated file).
#[derive(Clone)]
pub struct MappedBytes {
    map: Arc<MappedFile>,
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
        &self.map.map[self.start..self.start + self.len]
    }
}

impl MappedBytes {
    /// Checks that the file these bytes live in is unchanged since it was opened (length,
    /// modification time, and the same file still at its path); [`LoadError::FileChanged`]
    /// naming the file otherwise. Two `stat` calls, no page of the mapping is touched.
    pub fn verify(&self) -> Result<(), LoadError> {
        self.map.verify()
    }

    /// The bytes, after [`verify`](Self::verify).
    pub fn checked(&self) -> Result<&[u8], LoadError> {
        self.verify()?;
        Ok(self)
    }

    /// The stamp of the file recorded when it was opened.
    pub fn stamp(&self) -> FileStamp {
        self.map.stamp
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

    /// Converts a float tensor (f32/f16/bf16) to f32 values (after checking that its file is
    /// unchanged, see [`MappedBytes::verify`]).
    pub fn to_f32(&self) -> Result<Vec<f32>, LoadError> {
        to_f32(self.bytes.checked()?, self.dtype).ok_or_else(|| LoadError::WrongDtype {
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
    /// Its identity at open.
    pub stamp: FileStamp,
}

#[derive(serde::Deserialize)]
struct RawInfo {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// One validated entry of a safetensors header: a tensor's key, dtype, shape and byte range in
/// the file ([`parse_header`]).
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

/// The header length field against the file size and [`MAX_HEADER_BYTES`].
fn check_header_len(header_len: u64, file_len: u64, path: &Path) -> Result<(), LoadError> {
    if header_len > file_len.saturating_sub(8) || header_len > MAX_HEADER_BYTES {
        return Err(LoadError::HeaderTooLarge {
            path: path.to_path_buf(),
            header_len,
            file_len,
        });
    }
    Ok(())
}

/// Validates the JSON header of a safetensors file of `file_len` bytes (`header` is the
/// `header_len` bytes after the length field, already checked by the caller against the file
/// size): UTF-8, a JSON object, every tensor's dtype, its byte range inside the data section and
/// consistent with its dtype and shape, and no two tensors overlapping. Returns the tensors in
/// the order of their offsets; every returned range lies inside the file. [`SafeFile::open`]
/// runs it on the header read from the file; `path` names the file in errors.
pub fn parse_header(
    header: &[u8],
    file_len: u64,
    path: &Path,
) -> Result<Vec<HeaderEntry>, LoadError> {
    let corrupt = |reason: String| LoadError::CorruptFile {
        path: path.to_path_buf(),
        reason,
    };
    let data_start = 8 + header.len();
    let header = std::str::from_utf8(header)
        .map_err(|e| corrupt(format!("the header is not UTF-8: {e}")))?;
    let raw: BTreeMap<String, serde_json::Value> = serde_json::from_str(header.trim_end())
        .map_err(|e| corrupt(format!("the header is not a JSON object: {e}")))?;
    let data_len = file_len.saturating_sub(data_start as u64);
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

/// [`parse_header`] on the bytes of a whole file in memory (the length field, its check against
/// the file size, then the header), as [`SafeFile::open`] validates a file.
pub fn parse_file(bytes: &[u8], path: &Path) -> Result<Vec<HeaderEntry>, LoadError> {
    let file_len = bytes.len() as u64;
    let Some(lenb) = bytes.first_chunk::<8>() else {
        return Err(LoadError::CorruptFile {
            path: path.to_path_buf(),
            reason: format!(
                "the file has {file_len} bytes, fewer than the 8-byte header length field"
            ),
        });
    };
    let header_len = u64::from_le_bytes(*lenb);
    check_header_len(header_len, file_len, path)?;
    parse_header(&bytes[8..8 + header_len as usize], file_len, path)
}

impl SafeFile {
    /// Opens, maps and validates `path`.
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
        let meta = file.metadata().map_err(io)?;
        let stamp = FileStamp::of(&meta);
        let file_len = stamp.len;
        let corrupt = |reason: String| LoadError::CorruptFile {
            path: path.to_path_buf(),
            reason,
        };
        if file_len < 8 {
            return Err(corrupt(format!(
                "the file has {file_len} bytes, fewer than the 8-byte header length field"
            )));
        }
        // The header is read through the handle, not the mapping: a file truncated meanwhile
        // gives a short read (an error), never a fault.
        let short = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                LoadError::FileChanged {
                    path: path.to_path_buf(),
                    reason: format!(
                        "it had {file_len} bytes when it was opened and is shorter now"
                    ),
                }
            } else {
                io(e)
            }
        };
        let mut lenb = [0u8; 8];
        (&file).read_exact(&mut lenb).map_err(short)?;
        let header_len = u64::from_le_bytes(lenb);
        check_header_len(header_len, file_len, path)?;
        let mut header = vec![0u8; header_len as usize];
        (&file).read_exact(&mut header).map_err(short)?;
        // SAFETY: the mapping is read-only and lives as long as the `Arc<MappedFile>` that every
        // `MappedBytes` holds. Like every mmap-based reader we depend on the file not being
        // truncated while its pages are read: reading a page past the end of a truncated file
        // raises SIGBUS, and a file rewritten in place changes underneath the mapping. The
        // loader narrows this to a race instead of a certainty: all offsets are validated
        // against the length observed here, the header is read with `read`, and every read of
        // tensor bytes during a load is preceded by `MappedBytes::verify` (the open handle's
        // length and mtime, and the inode at the path, against this stamp), which turns a file
        // changed since open into `LoadError::FileChanged`. What remains is a truncation that
        // lands between that check and the copy of one tensor (one upload, or one PLE row gather
        // on the host); checkpoint files are immutable downloads, and hf-hub replaces a blob by
        // renaming a new file over it, which leaves this mapping's (old) inode intact.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        if (map.len() as u64) != file_len {
            return Err(LoadError::FileChanged {
                path: path.to_path_buf(),
                reason: format!(
                    "it had {file_len} bytes when it was opened and {} when it was mapped",
                    map.len()
                ),
            });
        }
        let map = Arc::new(MappedFile {
            map,
            file,
            path: path.to_path_buf(),
            stamp,
        });
        let tensors = parse_header(&header, file_len, path)?
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
            stamp,
        })
    }
}

/// `model.safetensors.index.json`, parsed and checked ([`parse_index`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIndex {
    /// `weight_map`: tensor key → (shard as spelled in the file, shard name normalised: leading
    /// `./` removed).
    pub weight_map: BTreeMap<String, (String, String)>,
    /// The normalised shard names, each once, sorted: plain file names (not empty, no `/` or
    /// `\`, no leading `.`).
    pub shards: Vec<String>,
}

/// Parses the text of `model.safetensors.index.json` (`index` names it in errors, `dir` is the
/// checkpoint directory the shards are in) as [`TensorStore::open_dir`] does before it opens
/// any shard: valid JSON with a `weight_map` object of file-name strings, each a plain file
/// name, one spelling per shard, each key listed once.
pub fn parse_index(text: &str, index: &Path, dir: &Path) -> Result<ShardIndex, LoadError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| LoadError::MalformedConfig {
        path: index.to_path_buf(),
        field: String::new(),
        reason: format!("not valid JSON: {e}"),
    })?;
    if v.get("weight_map").and_then(|m| m.as_object()).is_none() {
        return Err(LoadError::MalformedConfig {
            path: index.to_path_buf(),
            field: "weight_map".into(),
            reason: "missing or not an object".into(),
        });
    }
    let entries = weight_map_entries(index, text)?;
    let mismatch = |key: &str, shards: Vec<PathBuf>, reason: String| LoadError::IndexMismatch {
        index: index.to_path_buf(),
        key: key.to_string(),
        shards,
        reason,
    };
    // key → (shard as spelled, shard normalised)
    let mut map: BTreeMap<&str, (&str, String)> = BTreeMap::new();
    // normalised shard → (first spelling, a key listed with it)
    let mut spellings: BTreeMap<String, (&str, &str)> = BTreeMap::new();
    for (key, f) in &entries {
        let f = f.as_str().ok_or_else(|| LoadError::MalformedConfig {
            path: index.to_path_buf(),
            field: format!("weight_map.{key}"),
            reason: "expected a file name".into(),
        })?;
        let mut name = f;
        while let Some(rest) = name.strip_prefix("./") {
            name = rest;
        }
        if name.is_empty() || name.contains('/') || name.contains('\\') || name.starts_with('.')
        {
            return Err(LoadError::MalformedConfig {
                path: index.to_path_buf(),
                field: format!("weight_map.{key}"),
                reason: format!("shard name {f:?} must be a plain file name"),
            });
        }
        match spellings.get(name) {
            Some(&(first, first_key)) if first != f => {
                return Err(mismatch(
                    key,
                    vec![dir.join(name)],
                    format!(
                        "the index names shard {name:?} under two spellings, {first:?} (for \
                         {first_key}) and {f:?}; one file must be listed one way"
                    ),
                ));
            }
            Some(_) => {}
            None => {
                spellings.insert(name.to_string(), (f, key));
            }
        }
        if let Some((prev, _)) = map.get(key.as_str()) {
            return Err(mismatch(
                key,
                vec![dir.join(prev), dir.join(name)],
                format!("the index lists it twice, in {prev:?} and in {f:?}"),
            ));
        }
        map.insert(key, (f, name.to_string()));
    }
    Ok(ShardIndex {
        weight_map: map
            .into_iter()
            .map(|(k, (f, n))| (k.to_string(), (f.to_string(), n)))
            .collect(),
        shards: spellings.into_keys().collect(),
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
    /// The stamp of each file of `files` at open.
    pub stamps: Vec<FileStamp>,
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
            let plan = parse_index(&text, &index, dir)?;
            store.open_index(dir, &index, &plan)?;
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

    /// Opens the shards of a parsed index ([`parse_index`]) and checks that the index and the
    /// shards agree, key by key.
    fn open_index(
        &mut self,
        dir: &Path,
        index: &Path,
        plan: &ShardIndex,
    ) -> Result<(), LoadError> {
        let mismatch = |key: &str, shards: Vec<PathBuf>, reason: String| LoadError::IndexMismatch {
            index: index.to_path_buf(),
            key: key.to_string(),
            shards,
            reason,
        };
        let map = &plan.weight_map;
        for name in &plan.shards {
            let p = dir.join(name);
            if !p.is_file() {
                return Err(LoadError::MissingFile {
                    path: p,
                    hint: format!(
                        "shard listed in {}; the download is incomplete: re-download the checkpoint",
                        index.display()
                    ),
                });
            }
            self.add(SafeFile::open(&p)?)?;
        }
        for (key, (_, name)) in map {
            let want = dir.join(name);
            match self.tensors.get(key.as_str()) {
                Some(t) if t.file == want => {}
                Some(t) => {
                    return Err(mismatch(
                        key,
                        vec![want.clone(), t.file.clone()],
                        format!(
                            "the index maps it to {}, which does not hold it; it is in {}",
                            want.display(),
                            t.file.display()
                        ),
                    ));
                }
                None => {
                    return Err(mismatch(
                        key,
                        vec![want.clone()],
                        format!(
                            "the index maps it to {}, which does not hold it (no shard does)",
                            want.display()
                        ),
                    ));
                }
            }
        }
        if let Some(t) = self.tensors.values().find(|t| !map.contains_key(t.key.as_str())) {
            return Err(mismatch(
                &t.key,
                vec![t.file.clone()],
                format!(
                    "{} holds it but the index does not list it",
                    t.file.display()
                ),
            ));
        }
        Ok(())
    }

    fn add(&mut self, f: SafeFile) -> Result<(), LoadError> {
        if let Some(prev) = f
            .stamp
            .id
            .and_then(|id| self.stamps.iter().position(|s| s.id == Some(id)))
        {
            return Err(LoadError::DuplicateShard {
                first: self.files[prev].clone(),
                second: f.path.clone(),
            });
        }
        self.bytes_mapped += f.file_len;
        self.files.push(f.path.clone());
        self.stamps.push(f.stamp);
        for t in f.tensors {
            if let Some(prev) = self.tensors.get(&t.key) {
                return Err(LoadError::DuplicateTensor {
                    key: t.key.clone(),
                    first: prev.file.clone(),
                    second: t.file.clone(),
                });
            }
            self.tensors.insert(t.key.clone(), t);
        }
        Ok(())
    }
}

/// The `(key, shard)` pairs of an index's `weight_map` in file order, duplicates kept (a JSON
/// object parsed into a map would silently keep the last of two entries for one key).
fn weight_map_entries(
    index: &Path,
    text: &str,
) -> Result<Vec<(String, serde_json::Value)>, LoadError> {
    struct Entries(Vec<(String, serde_json::Value)>);
    impl<'de> serde::Deserialize<'de> for Entries {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Entries;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object of tensor name → shard file")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Entries, A::Error> {
                    let mut v = Vec::new();
                    while let Some(e) = m.next_entry()? {
                        v.push(e);
                    }
                    Ok(Entries(v))
                }
            }
            d.deserialize_map(V)
        }
    }
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: Entries,
    }
    let i: Index = serde_json::from_str(text).map_err(|e| LoadError::MalformedConfig {
        path: index.to_path_buf(),
        field: "weight_map".into(),
        reason: format!("{e}"),
    })?;
    Ok(i.weight_map.0)
}

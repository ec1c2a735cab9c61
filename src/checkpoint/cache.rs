//! The Hugging Face hub cache on disk, read without network access: the layout hf-hub 0.4 and
//! Python's `huggingface_hub` both write.
//!
//! ```text
//! {root}/models--{org}--{name}/refs/{revision}          commit hash of a branch or tag
//!                             /snapshots/{commit}/{file} link to ../../blobs/{etag}
//!                             /blobs/{etag}              a complete file (renamed into place)
//!                             /blobs/{etag}.part         hf-hub's partial download (resumed)
//!                             /blobs/{etag}.incomplete   huggingface_hub's partial download
//!                             /blobs/{etag}.lock         hf-hub's lock while downloading
//! ```
//!
//! A download interrupted, or damaged later, shows as a snapshot link to a missing blob (often
//! with a partial blob next to where it should be), a missing file, or a file of the wrong size.
//! [`lookup`] finds them ([`Lookup::Damaged`]) so that they are re-fetched or reported with
//! their path, never loaded. Sizes are checked against the safetensors header offline, and
//! against what the hub reports when downloading (`registry::download`).
//!
//! Every function takes the cache root as a parameter ([`HubCache::new`]);
//! [`HubCache::from_env`] reads `HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::safetensors::MAX_HEADER_BYTES;

/// The revision an unpinned download asks for.
pub const DEFAULT_REVISION: &str = "main";

/// The weights index file name.
pub const INDEX: &str = "model.safetensors.index.json";
/// The single-file weights name.
pub const SINGLE: &str = "model.safetensors";

/// A Hugging Face hub cache directory (the `hub` folder holding `models--*` folders).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCache {
    root: PathBuf,
}

impl HubCache {
    /// The cache at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HubCache { root: root.into() }
    }

    /// `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub` (`HOME`, or
    /// `USERPROFILE` on Windows); `None` when none of them is set.
    pub fn from_env() -> Option<Self> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(p) = var("HF_HUB_CACHE") {
            return Some(Self::new(p));
        }
        if let Some(p) = var("HF_HOME") {
            return Some(Self::new(p.join("hub")));
        }
        var("HOME")
            .or_else(|| var("USERPROFILE"))
            .map(|h| Self::new(h.join(".cache").join("huggingface").join("hub")))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of model repository `repo_id` (`models--org--name`).
    pub fn repo_dir(&self, repo_id: &str) -> PathBuf {
        self.root
            .join(format!("models--{repo_id}").replace('/', "--"))
    }

    /// The commit `revision` stands for in the cache: the content of `refs/{revision}` (a branch
    /// or tag, as downloaded), or the revision itself when it is a full commit hash with a
    /// snapshot folder. `None` when the cache has no snapshot for that revision: another
    /// revision's snapshot is never used.
    pub fn commit(&self, repo_id: &str, revision: &str) -> Option<String> {
        let repo = self.repo_dir(repo_id);
        if revision.is_empty() || revision.contains("..") || revision.starts_with('/') {
            return None;
        }
        if let Ok(c) = std::fs::read_to_string(repo.join("refs").join(revision)) {
            let c = c.trim();
            if is_commit_hash(c) {
                return Some(c.to_string());
            }
        }
        (is_commit_hash(revision) && repo.join("snapshots").join(revision).is_dir())
            .then(|| revision.to_string())
    }

    /// The snapshot folder of `revision` (see [`commit`](Self::commit)), if it exists.
    pub fn snapshot(&self, repo_id: &str, revision: &str) -> Option<PathBuf> {
        let c = self.commit(repo_id, revision)?;
        let d = self.repo_dir(repo_id).join("snapshots").join(c);
        d.is_dir().then_some(d)
    }
}

/// Whether `s` is a full (40 hex digits) git commit hash.
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What is wrong with a file of a cached snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheProblem {
    /// The snapshot has no such file.
    Missing,
    /// The snapshot's link points to a blob that does not exist (an interrupted download);
    /// `partial` is the partial download found next to where the blob should be.
    DanglingLink {
        /// Where the link points.
        target: PathBuf,
        /// A `.part` / `.incomplete` file of that blob, if any.
        partial: Option<PathBuf>,
    },
    /// The file has a different size than expected.
    WrongSize {
        /// Expected bytes.
        expected: u64,
        /// Bytes found.
        found: u64,
        /// Who says so: "its safetensors header" or "the hub".
        by: &'static str,
    },
    /// The file could not be read.
    Unreadable(String),
}

impl std::fmt::Display for CacheProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheProblem::Missing => f.write_str("the file is missing from the cached snapshot"),
            CacheProblem::DanglingLink { target, partial } => {
                write!(f, "links to {}, which does not exist", target.display())?;
                if let Some(p) = partial {
                    write!(f, " (a partial download is at {})", p.display())?;
                }
                Ok(())
            }
            CacheProblem::WrongSize {
                expected,
                found,
                by,
            } => write!(f, "has {found} bytes but {by} says {expected}"),
            CacheProblem::Unreadable(e) => write!(f, "cannot be read: {e}"),
        }
    }
}

/// A damaged file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedFile {
    /// Its name in the repository (`model-00001-of-00002.safetensors`).
    pub file: String,
    /// Its path in the snapshot folder.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: CacheProblem,
}

impl DamagedFile {
    /// The [`LoadError::IncompleteDownload`](super::LoadError::IncompleteDownload) reporting it.
    pub fn to_error(&self) -> super::LoadError {
        super::LoadError::IncompleteDownload {
            path: self.path.clone(),
            problem: self.problem.clone(),
        }
    }
}

/// The size a safetensors file must have by its own header (8 + header length + the end of
/// its last tensor); `None` when the header cannot be read or parsed (the loader then reports
/// the exact defect).
pub fn safetensors_expected_len(path: &Path) -> Option<u64> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut lenb = [0u8; 8];
    f.read_exact(&mut lenb).ok()?;
    let n = u64::from_le_bytes(lenb);
    if n > MAX_HEADER_BYTES {
        return None;
    }
    let mut h = vec![0u8; n as usize];
    f.read_exact(&mut h).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&h).ok()?;
    let end = v
        .as_object()?
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    Some(8 + n + end)
}

/// Checks `file` of snapshot folder `dir`: it exists, a link resolves to an existing blob, its
/// size matches `expected` (from the hub) when given, and a safetensors file has the size its
/// header implies. `None` when it is sound.
pub fn check_file(dir: &Path, file: &str, expected: Option<u64>) -> Option<DamagedFile> {
    let path = dir.join(file);
    let damaged = |problem| {
        Some(DamagedFile {
            file: file.to_string(),
            path: path.clone(),
            problem,
        })
    };
    let link = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return damaged(CacheProblem::Missing),
        Err(e) => return damaged(CacheProblem::Unreadable(e.to_string())),
    };
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if link.file_type().is_symlink() && e.kind() == std::io::ErrorKind::NotFound => {
            let target = std::fs::read_link(&path)
                .map(|t| normalize(&path.parent().map(|p| p.join(&t)).unwrap_or(t)))
                .unwrap_or_default();
            let partial = ["part", "incomplete"].iter().find_map(|ext| {
                let mut p = target.clone().into_os_string();
                p.push(".");
                p.push(ext);
                let p = PathBuf::from(p);
                p.is_file().then_some(p)
            });
            return damaged(CacheProblem::DanglingLink { target, partial });
        }
        Err(e) => return damaged(CacheProblem::Unreadable(e.to_string())),
    };
    if !meta.is_file() {
        return damaged(CacheProblem::Unreadable("not a regular file".into()));
    }
    let found = meta.len();
    if let Some(expected) = expected.filter(|&e| e != found) {
        return damaged(CacheProblem::WrongSize {
            expected,
            found,
            by: "the hub",
        });
    }
    if file.ends_with(".safetensors") {
        if let Some(expected) = safetensors_expected_len(&path).filter(|&e| e != found) {
            return damaged(CacheProblem::WrongSize {
                expected,
                found,
                by: "its safetensors header",
            });
        }
    }
    None
}

/// `p` with `.` and `..` components resolved lexically (the target of a dangling link cannot
/// be canonicalized).
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The shard names an index file lists (sorted, deduplicated, `./` prefixes removed);
/// `None` when the file is not a readable index.
pub fn index_shards(index: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(index).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mut shards: Vec<String> = v
        .get("weight_map")?
        .as_object()?
        .values()
        .filter_map(|s| s.as_str())
        .map(|s| s.trim_start_matches("./").to_string())
        .collect();
    shards.sort();
    shards.dedup();
    Some(shards)
}

/// The result of [`lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The cache has no snapshot of that revision.
    Absent,
    /// A snapshot with every file present and sound.
    Complete(PathBuf),
    /// A snapshot with missing, partial or wrong-sized files (never to be loaded as is).
    Damaged {
        /// The snapshot folder.
        dir: PathBuf,
        /// What is wrong, file by file (at least one).
        damaged: Vec<DamagedFile>,
    },
}

/// Looks `repo_id` at `revision` up in `cache` without network access and checks the files a
/// checkpoint needs: `config.json`, the weights (`weights`, else the other form: one
/// `model.safetensors` or the index and every shard it lists) and those of `other_files`
/// present in the snapshot (tokenizer, templates, ...). `expected` holds sizes the hub
/// reported, by file name (empty offline).
pub fn lookup(
    cache: &HubCache,
    repo_id: &str,
    revision: &str,
    weights: &str,
    other_files: &[String],
    expected: &BTreeMap<String, u64>,
) -> Lookup {
    let Some(dir) = cache.snapshot(repo_id, revision) else {
        return Lookup::Absent;
    };
    let present = |f: &str| std::fs::symlink_metadata(dir.join(f)).is_ok();
    let mut files: Vec<String> = vec!["config.json".into()];
    for f in other_files {
        if present(f) && !files.contains(f) {
            files.push(f.clone());
        }
    }
    let other = if weights == INDEX { SINGLE } else { INDEX };
    let weights = if present(weights) || !present(other) {
        weights
    } else {
        other
    };
    files.push(weights.to_string());
    let mut damaged: Vec<DamagedFile> = Vec::new();
    for f in &files {
        damaged.extend(check_file(&dir, f, expected.get(f).copied()));
    }
    if weights == INDEX && !damaged.iter().any(|d| d.file == INDEX) {
        match index_shards(&dir.join(INDEX)) {
            Some(shards) => {
                for s in shards {
                    damaged.extend(check_file(&dir, &s, expected.get(&s).copied()));
                }
            }
            None => damaged.push(DamagedFile {
                file: INDEX.into(),
                path: dir.join(INDEX),
                problem: CacheProblem::Unreadable("not a JSON index with a weight_map".into()),
            }),
        }
    }
    if damaged.is_empty() {
        Lookup::Complete(dir)
    } else {
        Lookup::Damaged { dir, damaged }
    }
}

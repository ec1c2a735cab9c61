//! Known checkpoints (`models.toml`, embedded at build time) and name resolution:
//! a local checkpoint directory, or a registry entry by name or repository id. With the `hub`
//! feature (on by default), [`download`] fetches an entry's files into the standard Hugging
//! Face cache with a progress bar.
//!
//! Revisions: an entry may pin a `revision` (commit hash or tag) in `models.toml`, and a caller
//! may pin one per call ([`locate_revision`], `ModelBuilder::with_revision`); the pin wins over
//! the entry's, and unpinned means the hub's `main`. The cache lookup uses the same revision
//! (`refs/{revision}`, or the snapshot of a commit hash), so a pinned revision never picks up
//! another revision's snapshot. A cached snapshot with a missing, partial or wrong-sized file
//! ([`cache::lookup`]) is re-fetched when downloading is allowed and
//! reported with its path otherwise; downloads check every file's size against what the hub
//! reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

use crate::checkpoint::LoadError;
/// The Hugging Face cache on disk (revision lookup, damaged-file checks), re-exported here so
/// that its types ([`LoadError::IncompleteDownload`]'s problem, [`locate_in`]'s cache) are
/// public with the registry.
pub use crate::checkpoint::cache;
use cache::{DEFAULT_REVISION, HubCache, Lookup};

const MODELS_TOML: &str = include_str!("../../models.toml");

/// The checkpoint the examples use by default: Gemma 4 E2B instruct, QAT 4-bit (MLX layout),
/// the smallest download that keeps the reference quality.
pub const DEFAULT_MODEL: &str = "gemma-4-E2B-it-qat-4bit";

/// Key layout of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// transformers (`model.language_model.*`).
    Hf,
    /// mlx-vlm (`language_model.model.*`).
    Mlx,
}

/// One known checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelEntry {
    /// Short name (e.g. `gemma-4-E2B-it-qat-4bit`).
    pub name: String,
    /// Hugging Face repository id.
    pub repo: String,
    /// Key layout.
    pub layout: Layout,
    /// Weight format ("bf16", "affine4", "affine8", "qat-affine4").
    pub quantization: String,
    /// Approximate download size in GB.
    pub approx_size_gb: f64,
    /// The weights entry point: `model.safetensors` or `model.safetensors.index.json`.
    pub weights: String,
    /// One line.
    pub description: String,
    /// The hub revision (commit hash or tag) to download; `None`: the `main` branch.
    #[serde(default)]
    pub revision: Option<String>,
}

impl ModelEntry {
    /// The revision to use: `pinned` (a per-call pin), else the entry's, else `main`.
    pub fn revision_or<'a>(&'a self, pinned: Option<&'a str>) -> &'a str {
        pinned
            .or(self.revision.as_deref())
            .unwrap_or(DEFAULT_REVISION)
    }
}

/// The parsed `models.toml` (exposed for tests of the format).
#[derive(Debug, Deserialize)]
pub struct Registry {
    /// Non-weight files every checkpoint needs.
    pub common_files: Vec<String>,
    /// The entries.
    pub model: Vec<ModelEntry>,
}

/// Parses a registry in the `models.toml` format.
pub fn parse_registry(text: &str) -> Result<Registry, LoadError> {
    let r: Registry = toml::from_str(text)
        .map_err(|e| LoadError::Registry(format!("models.toml is invalid: {e}")))?;
    for e in &r.model {
        if let Some(rev) = &e.revision {
            if rev.trim().is_empty() || rev.contains("..") || rev.starts_with('/') {
                return Err(LoadError::Registry(format!(
                    "models.toml: model {:?}: revision {rev:?} is not a commit hash, branch or tag",
                    e.name
                )));
            }
        }
    }
    Ok(r)
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| match parse_registry(MODELS_TOML) {
        Ok(r) => r,
        // models.toml is part of the crate and checked by a unit test.
        Err(e) => panic!("models.toml embedded in the crate is invalid: {e}"),
    })
}

/// All known checkpoints.
pub fn entries() -> &'static [ModelEntry] {
    &registry().model
}

impl ModelEntry {
    /// Non-weight files every checkpoint needs (config, tokenizer, templates).
    pub fn common_files(&self) -> &'static [String] {
        &registry().common_files
    }
}

/// What a model argument refers to.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// A local checkpoint directory.
    Local(PathBuf),
    /// A registry entry (download it with [`download`], or find it in the cache).
    Registry(&'static ModelEntry),
}

fn looks_like_path(s: &str) -> bool {
    s.starts_with('.')
        || s.starts_with('/')
        || s.starts_with('~')
        || s.contains('\\')
        || Path::new(s).components().count() > 2
}

fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let c = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + c);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The registry names closest to `name` (best first, at most 3).
pub fn suggestions(name: &str) -> Vec<&'static str> {
    let n = name.to_lowercase();
    let mut v: Vec<(usize, &'static str)> = entries()
        .iter()
        .map(|e| {
            let d = distance(&n, &e.name.to_lowercase()).min(distance(&n, &e.repo.to_lowercase()));
            let d = if e.name.to_lowercase().contains(&n) {
                d.min(1)
            } else {
                d
            };
            (d, e.name.as_str())
        })
        .collect();
    v.sort();
    v.into_iter().take(3).map(|(_, s)| s).collect()
}

/// Resolves a model argument: an existing directory, else a registry name or repo id
/// (case-insensitive). Unknown names give an error listing the closest known names.
pub fn resolve(name_or_path: &str) -> Result<Resolved, LoadError> {
    let p = Path::new(name_or_path);
    if p.is_dir() {
        return Ok(Resolved::Local(p.to_path_buf()));
    }
    let lower = name_or_path.to_lowercase();
    if let Some(e) = entries()
        .iter()
        .find(|e| e.name.to_lowercase() == lower || e.repo.to_lowercase() == lower)
    {
        return Ok(Resolved::Registry(e));
    }
    if looks_like_path(name_or_path) || p.exists() {
        return Err(LoadError::MissingFile {
            path: p.to_path_buf(),
            hint: "not a checkpoint directory; pass a directory with config.json and \
                   *.safetensors, or a model name from models.toml"
                .into(),
        });
    }
    Err(LoadError::Registry(format!(
        "unknown model {name_or_path:?}; did you mean {}? (known models: {})",
        suggestions(name_or_path)
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(" or "),
        entries()
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// The snapshot directory of `entry` (at its own revision) in the standard Hugging Face cache,
/// if its config and weights are there and sound (no network access; see [`cache::lookup`]).
pub fn cached_dir(entry: &ModelEntry) -> Option<PathBuf> {
    match lookup_entry(&HubCache::from_env()?, entry, None) {
        Lookup::Complete(d) => Some(d),
        _ => None,
    }
}

/// [`cache::lookup`] of `entry` at [`ModelEntry::revision_or`]`(revision)`, offline.
pub fn lookup_entry(cache: &HubCache, entry: &ModelEntry, revision: Option<&str>) -> Lookup {
    cache::lookup(
        cache,
        &entry.repo,
        entry.revision_or(revision),
        &entry.weights,
        entry.common_files(),
        &BTreeMap::new(),
    )
}

/// A checkpoint directory for a model argument: a local directory as is; a registry entry from
/// the Hugging Face cache, downloading it first when `allow_download` is set (feature `hub`).
pub fn locate(name_or_path: &str, allow_download: bool) -> Result<PathBuf, LoadError> {
    locate_revision(name_or_path, None, allow_download)
}

/// [`locate`] at a pinned hub `revision` (commit hash or tag; `None`: the entry's own, else
/// `main`), in the cache [`HubCache::from_env`](cache::HubCache::from_env) names.
pub fn locate_revision(
    name_or_path: &str,
    revision: Option<&str>,
    allow_download: bool,
) -> Result<PathBuf, LoadError> {
    locate_in(
        HubCache::from_env().as_ref(),
        name_or_path,
        revision,
        allow_download,
    )
}

/// [`locate_revision`] in the cache `cache` (`None`: no cache directory is known). A cached
/// snapshot is used only if complete and sound ([`cache::lookup`]); a damaged one is
/// re-fetched when `allow_download` is set (feature `hub`) and reported with the damaged
/// file's path ([`LoadError::IncompleteDownload`]) otherwise.
pub fn locate_in(
    cache: Option<&HubCache>,
    name_or_path: &str,
    revision: Option<&str>,
    allow_download: bool,
) -> Result<PathBuf, LoadError> {
    let e = match resolve(name_or_path)? {
        Resolved::Local(p) => {
            if let Some(r) = revision {
                return Err(LoadError::Registry(format!(
                    "revision {r:?} was asked for, but {} is a local directory; a revision \
                     applies to registry models (models.toml) only: drop the revision or pass a \
                     model name",
                    p.display()
                )));
            }
            return Ok(p);
        }
        Resolved::Registry(e) => e,
    };
    let rev = e.revision_or(revision);
    let found = cache.map(|c| lookup_entry(c, e, revision));
    match found {
        Some(Lookup::Complete(d)) => return Ok(d),
        Some(Lookup::Damaged { damaged, .. }) => {
            for d in &damaged {
                log::warn!("{}: {}", d.path.display(), d.problem);
            }
            let fetch = allow_download && cfg!(feature = "hub");
            if !fetch {
                if let Some(d) = damaged.first() {
                    return Err(d.to_error());
                }
            }
        }
        Some(Lookup::Absent) | None => {}
    }
    #[cfg(feature = "hub")]
    if allow_download {
        let Some(c) = cache else {
            return Err(LoadError::Registry(
                "no Hugging Face cache directory: set HF_HOME or HF_HUB_CACHE (or HOME)".into(),
            ));
        };
        return download_in(c, e, revision);
    }
    let _ = allow_download;
    Err(LoadError::Registry(format!(
        "{} (~{:.1} GB) at revision {rev:?} is not downloaded; download it (with the `hub` \
         feature: allow downloading) or fetch https://huggingface.co/{} into a directory and \
         pass that directory",
        e.repo, e.approx_size_gb, e.repo
    )))
}

/// One file of a [`RemoteRepo`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteFile {
    /// Size in bytes (the LFS object's for LFS files).
    pub size: Option<u64>,
    /// Its blob name in the cache (`blobs/{name}`: the LFS sha256, else the git blob id).
    pub blob: Option<String>,
}

/// The files of a repository at one revision as the hub lists them (its model-info API with
/// `blobs=true`): the commit, and each file's size and blob name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteRepo {
    /// The commit the revision resolved to.
    pub sha: String,
    /// The files by name.
    pub files: BTreeMap<String, RemoteFile>,
}

impl RemoteRepo {
    /// Parses the JSON of `GET /api/models/{repo}/revision/{revision}?blobs=true`.
    pub fn parse(json: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Lfs {
            size: Option<u64>,
            sha256: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Sibling {
            rfilename: String,
            size: Option<u64>,
            blob_id: Option<String>,
            lfs: Option<Lfs>,
        }
        #[derive(Deserialize)]
        struct Info {
            sha: String,
            siblings: Vec<Sibling>,
        }
        let info: Info =
            serde_json::from_str(json).map_err(|e| format!("unexpected hub response: {e}"))?;
        let files = info
            .siblings
            .into_iter()
            .map(|s| {
                let size = s.lfs.as_ref().and_then(|l| l.size).or(s.size);
                let blob = s.lfs.and_then(|l| l.sha256).or(s.blob_id);
                (s.rfilename, RemoteFile { size, blob })
            })
            .collect();
        Ok(RemoteRepo {
            sha: info.sha,
            files,
        })
    }

    /// The sizes the hub reports, by file name (for [`cache::lookup`]).
    pub fn sizes(&self) -> BTreeMap<String, u64> {
        self.files
            .iter()
            .filter_map(|(k, f)| f.size.map(|n| (k.clone(), n)))
            .collect()
    }
}

#[cfg(feature = "hub")]
struct Bar(indicatif::ProgressBar);

#[cfg(feature = "hub")]
impl hf_hub::api::Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.set_length(size as u64);
        self.0.set_position(0);
        self.0.set_message(filename.to_string());
    }
    fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }
    fn finish(&mut self) {}
}

/// Downloads (or finds in the Hugging Face cache) every file `entry` needs at its own
/// revision and returns the snapshot directory. Needs network access unless everything is
/// cached.
#[cfg(feature = "hub")]
pub fn download(entry: &ModelEntry) -> Result<PathBuf, LoadError> {
    let cache = HubCache::from_env().ok_or_else(|| {
        LoadError::Registry(
            "no Hugging Face cache directory: set HF_HOME or HF_HUB_CACHE (or HOME)".into(),
        )
    })?;
    download_in(&cache, entry, None)
}

/// Downloads every file `entry` needs at [`ModelEntry::revision_or`]`(revision)` into `cache`
/// and returns the snapshot directory. The hub's file list (one request) gives the commit and
/// every file's size; a file already in the snapshot with the right size is kept, one that is
/// missing, a dangling link (interrupted download) or of another size is fetched again
/// (hf-hub resumes a partial `.part` blob), and every fetched file's size is checked.
#[cfg(feature = "hub")]
pub fn download_in(
    cache: &HubCache,
    entry: &ModelEntry,
    revision: Option<&str>,
) -> Result<PathBuf, LoadError> {
    use hf_hub::{Repo, RepoType, api::sync::ApiBuilder};
    let rev = entry.revision_or(revision);
    let err = |what: &str, e: &dyn std::fmt::Display| {
        LoadError::Registry(format!(
            "downloading {} at revision {rev:?} ({what}) failed: {e}; check the network \
             connection, HF_TOKEN and the revision, or download the repository manually and pass \
             its directory",
            entry.repo
        ))
    };
    let api = ApiBuilder::from_env()
        .with_cache_dir(cache.root().to_path_buf())
        .with_progress(false)
        .build()
        .map_err(|e| err("client", &e))?;
    let repo = api.repo(Repo::with_revision(
        entry.repo.clone(),
        RepoType::Model,
        rev.to_string(),
    ));
    let body = repo
        .info_request()
        .query("blobs", "true")
        .call()
        .map_err(|e| err("file list", &e))?
        .into_string()
        .map_err(|e| err("file list", &e))?;
    let remote = RemoteRepo::parse(&body).map_err(|e| err("file list", &e))?;
    let snapshot = cache.repo_dir(&entry.repo).join("snapshots").join(&remote.sha);
    let blobs = cache.repo_dir(&entry.repo).join("blobs");
    let style = indicatif::ProgressStyle::with_template(
        "{msg:30!} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .map_err(|e| err("progress bar", &e))?
    .progress_chars("=> ");
    let fetch = |file: &str| -> Result<PathBuf, LoadError> {
        let expected = remote.files.get(file).and_then(|f| f.size);
        match cache::check_file(&snapshot, file, expected) {
            None => return Ok(snapshot.join(file)),
            Some(d) if d.problem == cache::CacheProblem::Missing => {}
            Some(d) => {
                log::warn!("{}: {}; fetching it again", d.path.display(), d.problem);
                // The snapshot entry is a link (or a copy) the download recreates; hf-hub keeps
                // an existing one, so it goes first.
                std::fs::remove_file(&d.path).map_err(|e| LoadError::Io {
                    path: d.path.clone(),
                    source: e,
                })?;
            }
        }
        // A partial blob longer than the file cannot be resumed (hf-hub: "invalid part file").
        let blob = remote.files.get(file).and_then(|f| f.blob.as_ref());
        if let (Some(blob), Some(size)) = (blob, expected) {
            let part = blobs.join(format!("{blob}.part"));
            if std::fs::metadata(&part).is_ok_and(|m| m.len() > size) {
                log::warn!(
                    "{}: longer than {file} ({size} bytes); removing it",
                    part.display()
                );
                std::fs::remove_file(&part).map_err(|e| LoadError::Io {
                    path: part.clone(),
                    source: e,
                })?;
            }
        }
        let bar = indicatif::ProgressBar::new(0).with_style(style.clone());
        let p = repo
            .download_with_progress(file, Bar(bar.clone()))
            .map_err(|e| err(file, &e))?;
        bar.finish();
        let dir = p.parent().unwrap_or(&snapshot);
        if let Some(d) = cache::check_file(dir, file, expected) {
            return Err(d.to_error());
        }
        Ok(p)
    };
    let config = fetch("config.json")?;
    for f in entry.common_files() {
        if f != "config.json" && remote.files.contains_key(f) {
            fetch(f)?;
        }
    }
    let other = if entry.weights == cache::INDEX {
        cache::SINGLE
    } else {
        cache::INDEX
    };
    let weights = [entry.weights.as_str(), other]
        .into_iter()
        .find(|f| remote.files.contains_key(*f))
        .ok_or_else(|| {
            err(
                "weights",
                &format!("the revision has neither {} nor {other}", entry.weights),
            )
        })?;
    let first = fetch(weights)?;
    if weights == cache::INDEX {
        let shards = cache::index_shards(&first).ok_or_else(|| LoadError::MalformedConfig {
            path: first.clone(),
            field: "weight_map".into(),
            reason: "not a JSON index with a weight_map object".into(),
        })?;
        for s in shards {
            fetch(&s)?;
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| LoadError::Registry(format!("{}: empty file list", entry.repo)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_parses_and_has_the_known_models() {
        assert_eq!(entries().len(), 17);
        for e in entries() {
            assert!(e.approx_size_gb > 0.0);
            assert!(e.weights.starts_with("model.safetensors"));
            if e.layout == Layout::Mlx {
                assert_eq!(e.repo, format!("mlx-community/{}", e.name));
            } else {
                assert_eq!(e.repo, format!("google/{}", e.name));
            }
        }
        assert!(
            entries()[0]
                .common_files()
                .iter()
                .any(|f| f == "config.json")
        );
    }

    #[test]
    fn revision_parses_and_the_shipped_entries_are_unpinned() {
        for e in entries() {
            assert!(e.revision.is_none(), "{} is pinned", e.name);
            assert_eq!(e.revision_or(None), "main");
            assert_eq!(e.revision_or(Some("v1")), "v1");
        }
        let entry = |rev: &str| {
            format!(
                "common_files = [\"config.json\"]\n[[model]]\nname = \"m\"\nrepo = \"o/m\"\n\
                 layout = \"hf\"\nquantization = \"bf16\"\napprox_size_gb = 1.0\n\
                 weights = \"model.safetensors\"\ndescription = \"d\"\n{rev}"
            )
        };
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let r = parse_registry(&entry(&format!("revision = \"{sha}\""))).unwrap();
        assert_eq!(r.model[0].revision.as_deref(), Some(sha));
        // the entry's pin, unless the caller pins another
        assert_eq!(r.model[0].revision_or(None), sha);
        assert_eq!(r.model[0].revision_or(Some("v2")), "v2");
        let r = parse_registry(&entry("")).unwrap();
        assert_eq!(r.model[0].revision, None);
        for bad in ["revision = \"\"", "revision = \"../x\"", "revision = 3"] {
            assert!(
                matches!(parse_registry(&entry(bad)), Err(LoadError::Registry(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn resolve_known_name_and_repo() {
        match resolve("gemma-4-E2B-it-qat-4bit") {
            Ok(Resolved::Registry(e)) => {
                assert_eq!(e.repo, "mlx-community/gemma-4-E2B-it-qat-4bit");
                assert_eq!(e.layout, Layout::Mlx);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(resolve("google/gemma-4-e4b-it"), Ok(Resolved::Registry(e)) if e.name == "gemma-4-E4B-it")
        );
    }

    #[test]
    fn the_family_resolves_by_name_and_repo() {
        for (name, repo) in [
            ("gemma-4-31B-it", "google/gemma-4-31B-it"),
            ("gemma-4-31B-it-4bit", "mlx-community/gemma-4-31B-it-4bit"),
            ("gemma-4-12B-it", "google/gemma-4-12B-it"),
            ("gemma-4-12B-it-qat-4bit", "mlx-community/gemma-4-12B-it-qat-4bit"),
            ("gemma-4-26B-A4B-it", "google/gemma-4-26B-A4B-it"),
            ("gemma-4-26B-A4B-it-4bit", "mlx-community/gemma-4-26B-A4B-it-4bit"),
            ("gemma-4-26B-A4B-it-qat-4bit", "mlx-community/gemma-4-26B-A4B-it-qat-4bit"),
        ] {
            match resolve(name) {
                Ok(Resolved::Registry(e)) => assert_eq!(e.repo, repo),
                other => panic!("{name}: {other:?}"),
            }
            assert!(matches!(resolve(repo), Ok(Resolved::Registry(e)) if e.name == name));
            // offline: the clear "not downloaded" error (or the cached copy)
            match locate(name, false) {
                Ok(dir) => assert!(dir.join("config.json").is_file()),
                Err(e) => assert!(e.to_string().contains("not downloaded"), "{e}"),
            }
        }
    }

    #[test]
    fn resolve_unknown_name_suggests() {
        let e = resolve("gemma-4-E2B-qat").unwrap_err();
        let m = e.to_string();
        assert!(m.contains("did you mean"), "{m}");
        assert!(m.contains("gemma-4-E2B-it-qat-4bit"), "{m}");
    }

    #[test]
    fn locate_without_download_is_offline() {
        // Never downloads; on a machine without the model cached it says how to get it.
        match locate("gemma-4-E4B-it-4bit", false) {
            Ok(dir) => assert!(dir.join("config.json").is_file()),
            Err(e) => assert!(e.to_string().contains("not downloaded"), "{e}"),
        }
        let here = std::env::temp_dir();
        assert_eq!(locate(here.to_str().unwrap(), false).unwrap(), here);
    }

    #[test]
    fn resolve_path() {
        let d = std::env::temp_dir();
        assert!(matches!(resolve(d.to_str().unwrap()), Ok(Resolved::Local(p)) if p == d));
        assert!(matches!(
            resolve("./no/such/checkpoint"),
            Err(LoadError::MissingFile { .. })
        ));
    }
}

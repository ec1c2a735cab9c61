//! Known checkpoints (`models.toml`, embedded at build time) and name resolution:
//! a local checkpoint directory, or a registry entry by name or repository id. With the `hub`
//! feature (on by default), [`download`] fetches an entry's files into the standard Hugging
//! Face cache with a progress bar.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

use crate::checkpoint::LoadError;

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
}

#[derive(Debug, Deserialize)]
struct Registry {
    common_files: Vec<String>,
    model: Vec<ModelEntry>,
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| match toml::from_str(MODELS_TOML) {
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

/// The snapshot directory of `entry` in the standard Hugging Face cache, if its config and
/// weights entry point are already there (no network access).
#[cfg(feature = "hub")]
pub fn cached_dir(entry: &ModelEntry) -> Option<PathBuf> {
    let cache = hf_hub::Cache::from_env().repo(hf_hub::Repo::model(entry.repo.clone()));
    let config = cache.get("config.json")?;
    let weights = cache
        .get(&entry.weights)
        .or_else(|| cache.get("model.safetensors"))
        .or_else(|| cache.get("model.safetensors.index.json"))?;
    let dir = config.parent()?.to_path_buf();
    (weights.parent()? == dir).then_some(dir)
}

/// A checkpoint directory for a model argument: a local directory as is; a registry entry from
/// the Hugging Face cache, downloading it first when `allow_download` is set (feature `hub`).
pub fn locate(name_or_path: &str, allow_download: bool) -> Result<PathBuf, LoadError> {
    match resolve(name_or_path)? {
        Resolved::Local(p) => Ok(p),
        Resolved::Registry(e) => {
            #[cfg(feature = "hub")]
            {
                if let Some(d) = cached_dir(e) {
                    return Ok(d);
                }
                if allow_download {
                    return download(e);
                }
            }
            let _ = allow_download;
            Err(LoadError::Registry(format!(
                "{} (~{:.1} GB) is not downloaded; download it (with the `hub` feature:                  allow downloading) or fetch https://huggingface.co/{} into a directory and                  pass that directory",
                e.repo, e.approx_size_gb, e.repo
            )))
        }
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

/// Downloads (or finds in the Hugging Face cache) every file `entry` needs and returns the
/// snapshot directory. Needs network access unless everything is cached.
#[cfg(feature = "hub")]
pub fn download(entry: &ModelEntry) -> Result<PathBuf, LoadError> {
    use hf_hub::{Cache, Repo, api::sync::ApiBuilder};
    let err = |what: &str, e: &dyn std::fmt::Display| {
        LoadError::Registry(format!(
            "downloading {} ({what}) failed: {e}; check the network connection or HF_TOKEN, or \
             download the repository manually and pass its directory",
            entry.repo
        ))
    };
    let api = ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| err("client", &e))?;
    let repo = api.model(entry.repo.clone());
    let cache = Cache::from_env().repo(Repo::model(entry.repo.clone()));
    let style = indicatif::ProgressStyle::with_template(
        "{msg:30!} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .map_err(|e| err("progress bar", &e))?
    .progress_chars("=> ");
    let fetch = |file: &str| -> Result<PathBuf, LoadError> {
        if let Some(p) = cache.get(file) {
            return Ok(p);
        }
        let bar = indicatif::ProgressBar::new(0).with_style(style.clone());
        let p = repo
            .download_with_progress(file, Bar(bar.clone()))
            .map_err(|e| err(file, &e))?;
        bar.finish();
        Ok(p)
    };
    let mut last = None;
    for f in entry.common_files() {
        last = Some(fetch(f)?);
    }
    let index = "model.safetensors.index.json";
    let first = if entry.weights == index {
        fetch(index).or_else(|_| fetch("model.safetensors"))
    } else {
        fetch("model.safetensors").or_else(|_| fetch(index))
    }?;
    if first.file_name().is_some_and(|n| n == index) {
        let text = std::fs::read_to_string(&first).map_err(|e| LoadError::Io {
            path: first.clone(),
            source: e,
        })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| LoadError::MalformedConfig {
                path: first.clone(),
                field: String::new(),
                reason: format!("not valid JSON: {e}"),
            })?;
        let mut shards: Vec<String> = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.values()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        for s in shards {
            fetch(&s)?;
        }
    }
    last = last.or(Some(first));
    last.and_then(|p| p.parent().map(Path::to_path_buf))
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

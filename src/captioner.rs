//! Captioning a folder of images into a JSON-lines file that survives interruption: a
//! recursive walk in a stable order, `--resume` (images already in the output are skipped; a
//! partly written last line is repaired), `--shard I/N` (a deterministic partition of the file
//! list, so N processes split a dataset with no coordination and their outputs concatenate),
//! and optional `.txt` sidecars next to the images.
//!
//! ```no_run
//! use gemma_wgpu::captioner::{Captioner, Shard, list_images};
//! use gemma_wgpu::Model;
//! let model = Model::load("path/to/gemma-4-E2B-it")?;
//! let files = list_images(&["photos".into()])?;
//! let summary = Captioner::new("captions.jsonl")
//!     .resume(true)
//!     .shard(Shard::parse("0/4")?)
//!     .run(&model, &files, |record| println!("{}", record.path))?;
//! println!("{} captioned, {} skipped, {} failed", summary.captioned, summary.skipped, summary.failed);
//! # Ok::<(), gemma_wgpu::Error>(())
//! ```
//!
//! Each image's line is written with one `write` call and flushed before the next image starts,
//! so a process killed at any point loses at most the image in flight; the next `--resume` run
//! cuts a torn last line and captions that image again.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::generate::{CAPTION_PROMPT, GenerationOptions, ImageInput, Request};
use crate::model::Model;

/// File extensions (lower case) that [`list_images`] picks up.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"];

/// One image found by [`list_images`]: its path and the key that shards and resumes use (the
/// path relative to the folder it was found under, with `/` separators; a file given directly
/// keys by its path as given).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageFile {
    /// The relative key (stable across machines that mount the dataset elsewhere).
    pub key: String,
    /// Where the file is.
    pub path: PathBuf,
}

/// Every image file under `roots` (folders are walked recursively; hidden entries, whose name
/// starts with `.`, are skipped), sorted by key within each root, roots in the order given.
/// Symbolic links to files are followed; links to folders are not (no cycles).
pub fn list_images(roots: &[PathBuf]) -> Result<Vec<ImageFile>> {
    let mut out = Vec::new();
    for root in roots {
        let meta = std::fs::metadata(root).map_err(|source| Error::Io {
            path: root.clone(),
            source,
        })?;
        if !meta.is_dir() {
            out.push(ImageFile {
                key: root.to_string_lossy().replace('\\', "/"),
                path: root.clone(),
            });
            continue;
        }
        let mut found = Vec::new();
        walk(root, root, &mut found)?;
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<ImageFile>) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let ty = entry.file_type().map_err(io(&path))?;
        if ty.is_dir() {
            walk(root, &path, out)?;
        } else if (ty.is_file() || (ty.is_symlink() && path.is_file())) && is_image(&path) {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push(ImageFile { key, path });
        }
    }
    Ok(())
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Part `index` of `count` of a file list: an image belongs to the shard its key's FNV-1a hash
/// falls into, so the partition does not depend on the listing order, on which other files
/// exist, or on the machine; the shards of one `count` are disjoint and cover every image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This part, `0..count`.
    pub index: u64,
    /// How many parts.
    pub count: u64,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl Shard {
    /// Parses `I/N` (`0 <= I < N`), e.g. from `SLURM_ARRAY_TASK_ID` or a Kubernetes job
    /// completion index.
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || {
            Error::InvalidArgument(format!(
                "shard {s:?}: expected I/N with 0 <= I < N, e.g. 0/4 for the first of four"
            ))
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u64 = i.trim().parse().map_err(|_| bad())?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// Whether the image with `key` belongs to this shard.
    pub fn contains(&self, key: &str) -> bool {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h % self.count == self.index
    }
}

/// One line of the output: an image's caption with its counts and timings, or its error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The image's key ([`ImageFile::key`]).
    pub key: String,
    /// The image's path.
    pub path: String,
    /// The caption (absent when the image failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    /// Why the image failed (absent on success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Generated tokens.
    #[serde(default)]
    pub tokens: usize,
    /// Prompt tokens (soft tokens included).
    #[serde(default)]
    pub prompt_tokens: usize,
    /// Seconds: decoding + preprocessing + encoding the image, prefill, decode, all.
    #[serde(default)]
    pub image_s: f64,
    /// Prefill seconds.
    #[serde(default)]
    pub prefill_s: f64,
    /// Decode seconds.
    #[serde(default)]
    pub decode_s: f64,
    /// Wall seconds for the image.
    #[serde(default)]
    pub total_s: f64,
}

/// What a [`Captioner::run`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Images of the shard.
    pub in_shard: usize,
    /// Images already in the output (resume).
    pub skipped: usize,
    /// Images captioned now.
    pub captioned: usize,
    /// Images that failed now (recorded as error lines).
    pub failed: usize,
    /// Wall seconds.
    pub seconds: f64,
}

/// Captions a list of images into a JSON-lines file (see the module documentation).
#[derive(Debug, Clone)]
pub struct Captioner {
    out: PathBuf,
    prompt: String,
    options: Option<GenerationOptions>,
    max_soft_tokens: Option<u32>,
    sidecar: bool,
    resume: bool,
    shard: Shard,
    batch: usize,
}

impl Captioner {
    /// Writes to `out` (created, or replaced unless [`resume`](Self::resume) is set), with
    /// [`CAPTION_PROMPT`] and the model's generation defaults.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Captioner {
            out: out.into(),
            prompt: CAPTION_PROMPT.to_string(),
            options: None,
            max_soft_tokens: None,
            sidecar: false,
            resume: false,
            shard: Shard::default(),
            batch: 1,
        }
    }

    /// Captions up to `n` images at once (1 to 16; [`Model::batch`]: continuous batching, one
    /// decode submit per step for all of them). Lines are written in completion order; every
    /// caption is the one a single [`Model::generate`] of [`request`](Self::request) gives.
    /// A killed run loses at most the `n` images in flight.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// The prompt shown with every image.
    pub fn prompt(mut self, prompt: impl Into<String>) -> Self {
        self.prompt = prompt.into();
        self
    }

    /// Generation options (default: the model's).
    pub fn options(mut self, options: GenerationOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// Every image's soft-token budget (default: the model's).
    pub fn max_soft_tokens(mut self, tokens: Option<u32>) -> Self {
        self.max_soft_tokens = tokens;
        self
    }

    /// Also writes each caption to `<image>.txt` next to the image (as training tools expect;
    /// written to a temporary file and renamed, so a sidecar is whole or absent).
    pub fn sidecar(mut self, on: bool) -> Self {
        self.sidecar = on;
        self
    }

    /// Keeps the output's lines and skips their images (after cutting a partly written last
    /// line) instead of starting a new file.
    pub fn resume(mut self, on: bool) -> Self {
        self.resume = on;
        self
    }

    /// Captions only this shard of the list.
    pub fn shard(mut self, shard: Shard) -> Self {
        self.shard = shard;
        self
    }

    /// The request for one image (what the captioner runs, for comparisons).
    pub fn request(&self, image: &Path) -> Request {
        let mut img = ImageInput::path(image);
        if let Some(b) = self.max_soft_tokens {
            img = img.with_max_soft_tokens(b);
        }
        let req = Request::new(self.prompt.clone()).with_image(img);
        match &self.options {
            Some(o) => req.with_options(o.clone()),
            None => req,
        }
    }

    /// Captions the shard's images that the output does not hold yet, in order, calling
    /// `progress` after each line is written. A failing image becomes an error line and the
    /// run goes on; only an output that cannot be read or written stops it.
    pub fn run(
        &self,
        model: &Model,
        files: &[ImageFile],
        mut progress: impl FnMut(&Record),
    ) -> Result<Summary> {
        let t0 = Instant::now();
        let (mut file, done) = self.open_output()?;
        let mut s = Summary::default();
        let mut todo = Vec::new();
        for img in files.iter().filter(|f| self.shard.contains(&f.key)) {
            s.in_shard += 1;
            if done.contains(&img.key) {
                s.skipped += 1;
            } else {
                todo.push(img);
            }
        }
        let mut write = |rec: Record, s: &mut Summary| -> Result<()> {
            match &rec.error {
                None => s.captioned += 1,
                Some(_) => s.failed += 1,
            }
            let mut line = serde_json::to_string(&rec)
                .map_err(|e| Error::InvalidArgument(format!("serializing a record: {e}")))?;
            line.push('\n');
            file.write_all(line.as_bytes())
                .and_then(|()| file.flush())
                .map_err(|source| Error::Io {
                    path: self.out.clone(),
                    source,
                })?;
            progress(&rec);
            Ok(())
        };
        if self.batch > 1 && todo.len() > 1 {
            let mut batch = model.batch(self.batch)?;
            let mut by_id = std::collections::HashMap::new();
            for img in &todo {
                by_id.insert(batch.submit(self.request(&img.path)), *img);
            }
            for (id, reply) in batch.by_ref() {
                let Some(img) = by_id.remove(&id) else {
                    continue;
                };
                let total = reply.as_ref().map_or(0.0, |r| {
                    r.stats.image_encode_s + r.stats.prefill_s + r.stats.decode_s
                });
                write(self.record(img, reply, total), &mut s)?;
            }
        } else {
            for img in todo {
                let t = Instant::now();
                let reply = model.generate(self.request(&img.path));
                let rec = self.record(img, reply, t.elapsed().as_secs_f64());
                write(rec, &mut s)?;
            }
        }
        s.seconds = t0.elapsed().as_secs_f64();
        Ok(s)
    }

    /// The output line of `img` from its reply (writing the sidecar).
    fn record(&self, img: &ImageFile, reply: Result<crate::Reply>, total_s: f64) -> Record {
        let mut rec = Record {
            key: img.key.clone(),
            path: img.path.to_string_lossy().into_owned(),
            caption: None,
            error: None,
            tokens: 0,
            prompt_tokens: 0,
            image_s: 0.0,
            prefill_s: 0.0,
            decode_s: 0.0,
            total_s: 0.0,
        };
        match reply {
            Ok(r) => {
                if self.sidecar
                    && let Err(e) = write_sidecar(&img.path, &r.text)
                {
                    rec.error = Some(e.to_string());
                } else {
                    rec.caption = Some(r.text);
                }
                rec.tokens = r.tokens.len();
                rec.prompt_tokens = r.prompt_ids.len();
                rec.image_s = r.stats.image_encode_s;
                rec.prefill_s = r.stats.prefill_s;
                rec.decode_s = r.stats.decode_s;
            }
            Err(e) => rec.error = Some(e.to_string()),
        }
        rec.total_s = total_s;
        rec
    }

    /// Opens the output for appending: a new file, or (resume) the old one with a torn last
    /// line cut off, and the keys it holds.
    fn open_output(&self) -> Result<(File, HashSet<String>)> {
        let io = |source| Error::Io {
            path: self.out.clone(),
            source,
        };
        if !self.resume || !self.out.exists() {
            return Ok((File::create(&self.out).map_err(io)?, HashSet::new()));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.out)
            .map_err(io)?;
        let (done, good_len) = read_done(&file, &self.out)?;
        file.set_len(good_len).map_err(io)?;
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok((file, done))
    }
}

/// Keys of the complete lines of `file` and the byte length they span. A last line without its
/// newline, or one that is not a record, is a torn write: it is left out (and cut by the
/// caller). A torn line anywhere else is an error naming the line.
fn read_done(file: &File, path: &Path) -> Result<(HashSet<String>, u64)> {
    let mut done = HashSet::new();
    let mut reader = BufReader::new(file);
    let mut good = 0u64;
    let mut line = Vec::new();
    let mut n = 0usize;
    loop {
        line.clear();
        let got = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if got == 0 {
            break;
        }
        n += 1;
        let complete = line.ends_with(b"\n");
        match serde_json::from_slice::<Record>(&line) {
            Ok(r) if complete => {
                done.insert(r.key);
                good += got as u64;
            }
            _ if !complete => break,
            Err(e) => {
                // A torn line followed by more lines is not something a kill leaves.
                let rest = reader.fill_buf().map(|b| !b.is_empty()).unwrap_or(false);
                if rest {
                    return Err(Error::InvalidArgument(format!(
                        "{} line {n} is not a caption record ({e}); fix or remove it, or start \
                         without --resume",
                        path.display()
                    )));
                }
                break;
            }
            Ok(_) => break,
        }
    }
    Ok((done, good))
}

fn write_sidecar(image: &Path, caption: &str) -> std::io::Result<()> {
    let txt = image.with_extension("txt");
    let tmp = image.with_extension("txt.part");
    std::fs::write(&tmp, caption.as_bytes())?;
    std::fs::rename(&tmp, &txt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_keys() {
        let keys: Vec<String> = (0..500)
            .map(|i| format!("dir{}/img{i}.jpg", i % 7))
            .collect();
        let n = 4;
        let shards: Vec<Shard> = (0..n).map(|i| Shard { index: i, count: n }).collect();
        let mut sizes = vec![0; n as usize];
        for k in &keys {
            let owners: Vec<_> = shards.iter().filter(|s| s.contains(k)).collect();
            assert_eq!(owners.len(), 1, "{k}");
            sizes[owners[0].index as usize] += 1;
        }
        assert!(sizes.iter().all(|&s| s > 80), "unbalanced: {sizes:?}");
        assert_eq!(Shard::parse("3/4").unwrap(), Shard { index: 3, count: 4 });
        for bad in ["4/4", "1", "a/2", "0/0", "-1/3"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_torn_last_line_is_cut_and_its_image_redone() {
        let dir = std::env::temp_dir().join(format!("gw-captioner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("c.jsonl");
        let rec = |k: &str| {
            let mut s = serde_json::to_string(&Record {
                key: k.into(),
                path: k.into(),
                caption: Some("x".into()),
                error: None,
                tokens: 1,
                prompt_tokens: 2,
                image_s: 0.0,
                prefill_s: 0.0,
                decode_s: 0.0,
                total_s: 0.0,
            })
            .unwrap();
            s.push('\n');
            s
        };
        let whole = rec("a") + &rec("b");
        let torn = rec("c");
        std::fs::write(&out, format!("{whole}{}", &torn[..torn.len() / 2])).unwrap();
        let f = File::open(&out).unwrap();
        let (done, len) = read_done(&f, &out).unwrap();
        assert_eq!(len as usize, whole.len());
        assert_eq!(done, HashSet::from(["a".to_string(), "b".to_string()]));
        // a broken line in the middle is refused, not skipped
        std::fs::write(&out, format!("{}garbage\n{whole}", rec("z"))).unwrap();
        let f = File::open(&out).unwrap();
        assert!(read_done(&f, &out).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

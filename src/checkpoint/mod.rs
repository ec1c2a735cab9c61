//! The one weight loader for both model halves (text decoder and vision tower), for HF and MLX
//! checkpoint layouts, float or MLX affine-quantized.
//!
//! ```text
//! Checkpoint::open(dir)      every file of the folder, once: config.json (parsed once), the mmap'd,
//!                            validated safetensors (single file or index + shards), and the
//!                            tokenizer, chat template, generation and processor files (files.rs)
//!   .plan()                  CPU only: builds and validates the tree of host tensors, and maps
//!                            every stored key to its role (module, dropped, unexpected, ...)
//!   .upload(ctx, opts)       the same construction, uploading to the GPU → ModelWeights
//! load(ctx, dir, opts)       open + upload
//! ```
//!
//! The tree is built *from the config* (sanitize by construction): KV-shared text layers
//! (`i >= num_hidden_layers - num_kv_shared_layers`) own no k_proj/v_proj/k_norm, so such
//! tensors in a file are dropped and their absence is normal; the rule is scoped to text keys
//! (vision layers with the same index keep theirs). A Linear/Embedding is quantized iff its
//! `.scales` tensor exists; bits and group come from the per-module override, else the global
//! `quantization` entry, and are checked against the shapes.
//!
//! Upload formats ([`LoadOptions`]): norms and small vectors are always f32 [`GpuTensor`]s;
//! float matrices are converted to `float_format`; quantized matrices stay in their stored
//! affine format; `quantize_on_load` quantizes float matrices of the text decoder and
//! `embed_vision` (not the vision tower, as `mlx_vlm.convert` does) whose input width is a
//! multiple of the group size.

pub mod cache;
mod error;
pub mod files;
pub mod host;
pub mod keys;
pub mod quant;
pub mod registry;
mod report;
pub mod safetensors;
mod tree;
pub(crate) mod var_builder;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use crate::model::text::{PerLayerTable, TextWeights};
pub use error::LoadError;
pub use files::CheckpointFiles;
pub use host::{HostLinear, HostQuant, HostTable, HostVector};
pub use report::LoadReport;
pub use tree::{ClippedLinear, EmbedderWeights, ModelWeights, VisionLayer, VisionWeights};

use crate::config::Gemma4Config;
use crate::gpu::{GpuContext, GpuError, GpuTensor, HostMatrix, Matrix, WeightFormat};
use keys::KeyKind;
use quant::QuantRules;
use safetensors::{StDType, StoredTensor, TensorStore};
use var_builder::VarBuilder;

/// Storage format for float matrices on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FloatFormat {
    /// f16 (half the memory of f32; the default).
    #[default]
    F16,
    /// f32.
    F32,
    /// As stored (bf16 checkpoints stay bf16).
    Native,
}

/// How to upload a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Format of float matrices.
    pub float_format: FloatFormat,
    /// Quantize float text matrices on load to `(bits, group)` (MLX affine).
    pub quantize_on_load: Option<(u32, u32)>,
    /// Upload the PLE table (`embed_tokens_per_layer`) instead of keeping it mmap'd on the host.
    pub per_layer_table_on_gpu: bool,
}

/// What a stored tensor is used for (see [`Plan::roles`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Part of this module (canonical path).
    Module(String),
    /// A K/V tensor of a KV-shared text layer, dropped by construction.
    DroppedKvShared,
    /// Dropped for another reason (clip scalars with `use_clipped_linears` off, vision tensors
    /// of a text-only config).
    Dropped(&'static str),
    /// An audio-tower tensor (never read).
    Audio,
    /// Ignored by every loader (tied lm_head, rotary buffers, clip scalars outside the tower).
    Ignored(&'static str),
    /// No module claims it.
    Unexpected,
}

/// The CPU-only result of [`Checkpoint::plan`].
#[derive(Debug)]
pub struct Plan {
    /// The tree of validated host tensors.
    pub weights: ModelWeights<HostLinear, HostVector>,
    /// Every stored key → its role.
    pub roles: BTreeMap<String, Role>,
}

/// An opened checkpoint folder: config, mapped and validated tensors, and the folder's other
/// files ([`CheckpointFiles`]), each read once.
#[derive(Debug)]
pub struct Checkpoint {
    /// The directory.
    pub dir: PathBuf,
    /// The parsed config.
    pub config: Gemma4Config,
    /// The stored tensors.
    pub store: TensorStore,
    /// Tokenizer, chat template, generation and processor files, as read.
    pub files: CheckpointFiles,
    rules: QuantRules,
    /// canonical key → stored key
    canon: BTreeMap<String, String>,
    /// stored key → role for keys that are not model tensors
    side: BTreeMap<String, Role>,
    /// stored keys whose canonical path duplicates another one's
    duplicates: Vec<String>,
}

impl Checkpoint {
    /// Reads `dir/config.json` (once), maps the safetensors files of `dir` and reads the
    /// folder's other files ([`CheckpointFiles`]).
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        let (config_path, config_json) = crate::config::read_json(dir)?;
        let config = Gemma4Config::from_value(&config_json, &config_path)?;
        let store = TensorStore::open_dir(dir)?;
        let files = CheckpointFiles::read(dir, config_json)?;
        let rules = QuantRules::new(config.quantization.as_ref());
        let mut canon = BTreeMap::new();
        let mut side = BTreeMap::new();
        let mut duplicates = Vec::new();
        for key in store.tensors.keys() {
            match keys::classify(key) {
                KeyKind::Model(c) => {
                    use std::collections::btree_map::Entry;
                    match canon.entry(c) {
                        Entry::Occupied(_) => duplicates.push(key.clone()),
                        Entry::Vacant(v) => {
                            v.insert(key.clone());
                        }
                    }
                }
                KeyKind::Audio => {
                    side.insert(key.clone(), Role::Audio);
                }
                KeyKind::Ignored(why) => {
                    side.insert(key.clone(), Role::Ignored(why));
                }
            }
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            store,
            files,
            rules,
            canon,
            side,
            duplicates,
        })
    }

    /// Drops the tensor store's mappings (after an upload: the GPU holds the weights, and a
    /// host-side PLE table keeps its own mapping), keeping the config and the other files.
    /// [`plan`](Self::plan) and [`upload`](Self::upload) then find no tensors.
    pub fn release_tensors(&mut self) {
        self.store = TensorStore::default();
        self.canon.clear();
        self.side.clear();
        self.duplicates.clear();
    }

    /// Builds and validates the whole tree on the CPU (no GPU), listing every key's role.
    pub fn plan(&self) -> Result<Plan, LoadError> {
        let mut sink = HostSink;
        let (weights, roles) = self.build(&mut sink, false)?;
        Ok(Plan { weights, roles })
    }

    /// Bytes of GPU memory the weights will take when uploaded with `opts` (what
    /// [`LoadReport::bytes_uploaded`] will say), counted on the CPU without uploading or
    /// converting anything. Quantize-on-load is counted with f16 scales (the quantizer's usual
    /// choice; a group whose range needs f32 scales takes 4 more bytes per group).
    ///
    /// With `caps` (the device's), a leaf the upload could not store on that device (a row, or
    /// an expert, wider than one storage binding; a vector over `max_buffer_size`) is the
    /// upload's [`GpuError::LimitExceeded`], found before anything is uploaded.
    pub fn gpu_bytes(
        &self,
        opts: &LoadOptions,
        caps: Option<&crate::gpu::Capabilities>,
    ) -> Result<u64, LoadError> {
        let mut counter = CountSink {
            opts: Some(opts),
            limits: caps.map(|c| (c.max_binding_size.min(c.max_buffer_size), c.max_buffer_size)),
            ..Default::default()
        };
        self.build(&mut counter, opts.per_layer_table_on_gpu)?;
        Ok(counter.gpu_bytes)
    }

    /// Builds the tree and uploads it to the GPU.
    pub fn upload(&self, ctx: &GpuContext, opts: &LoadOptions) -> Result<ModelWeights, LoadError> {
        self.upload_with_progress(ctx, opts, &mut |_| ControlFlow::Continue(()))
    }

    /// Like [`upload`](Self::upload), calling `progress` once before the first tensor and after
    /// every uploaded tensor (matrix or vector) with the bytes and tensors done so far and the
    /// totals (counted by a CPU-only pass over the tree first, so they are exact: the last call
    /// has `bytes_done == bytes_total`). Bytes are those read from the checkpoint (a quantized
    /// matrix's codes, scales and biases; f32 for vectors).
    ///
    /// Returning [`ControlFlow::Break`] stops the upload with [`LoadError::Cancelled`]; the
    /// buffers uploaded so far are dropped, nothing half-loaded is returned.
    pub fn upload_with_progress(
        &self,
        ctx: &GpuContext,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(&UploadProgress) -> ControlFlow<()>,
    ) -> Result<ModelWeights, LoadError> {
        let mut counter = CountSink::default();
        self.build(&mut counter, opts.per_layer_table_on_gpu)?;
        let mut state = UploadProgress {
            bytes_total: counter.progress.bytes_done,
            tensors_total: counter.progress.tensors_done,
            ..Default::default()
        };
        if progress(&state).is_break() {
            return Err(LoadError::Cancelled);
        }
        let mut sink = GpuSink {
            ctx,
            opts,
            uploaded: 0,
            formats: BTreeMap::new(),
            progress: Some((progress, &mut state)),
        };
        let (mut w, _) = self.build(&mut sink, opts.per_layer_table_on_gpu)?;
        w.report.bytes_uploaded = sink.uploaded;
        w.report.uploaded_by_format = sink.formats;
        ctx.wait_idle()?;
        Ok(w)
    }

    fn build<S: Sink>(
        &self,
        sink: &mut S,
        ple_on_gpu: bool,
    ) -> Result<Built<S::M, S::V>, LoadError> {
        let start = Instant::now();
        let mut b = Builder {
            ck: self,
            sink,
            used: BTreeMap::new(),
            formats: BTreeMap::new(),
        };
        let text = TextWeights::load(
            &self.config.text_config,
            &mut VarBuilder::root(&mut b, "language_model", MatrixRole::Text),
            ple_on_gpu,
        )?;
        let vision = match &self.config.vision_config {
            Some(_) => Some(b.vision()?),
            None => None,
        };
        let embedder = match &self.config.vision_embedder {
            Some(e) => {
                let h = self.config.text_config.hidden_size;
                Some(EmbedderWeights::load(
                    &mut VarBuilder::root(&mut b, "", MatrixRole::Vision),
                    e,
                    h,
                )?)
            }
            None => None,
        };
        let Builder { used, formats, .. } = b;
        // Roles of every stored key.
        let t = &self.config.text_config;
        let mut roles = self.side.clone();
        let mut report = LoadReport {
            files: self.store.files.len(),
            bytes_mapped: self.store.bytes_mapped,
            tensors_by_format: formats,
            ..Default::default()
        };
        for (c, raw) in &self.canon {
            let role = if let Some(m) = used.get(c) {
                Role::Module(m.clone())
            } else if keys::text_kv_layer(c).is_some_and(|i| t.is_kv_shared(i)) {
                Role::DroppedKvShared
            } else if keys::is_vision_clip(c)
                && !self
                    .config
                    .vision_config
                    .as_ref()
                    .is_some_and(|v| v.use_clipped_linears)
            {
                Role::Dropped("clip scalar with use_clipped_linears off")
            } else if !self.config.has_vision()
                && (c.starts_with("vision_tower.")
                    || c.starts_with("embed_vision.")
                    || c.starts_with("vision_embedder."))
            {
                Role::Dropped("vision tensor of a text-only config")
            } else {
                Role::Unexpected
            };
            roles.insert(raw.clone(), role);
        }
        for d in &self.duplicates {
            roles.insert(d.clone(), Role::Unexpected);
        }
        for (k, r) in &roles {
            match r {
                Role::DroppedKvShared | Role::Dropped(_) => report.dropped += 1,
                Role::Audio => report.audio_skipped += 1,
                Role::Ignored(_) => report.ignored += 1,
                Role::Unexpected => report.unexpected.push(k.clone()),
                Role::Module(_) => {}
            }
        }
        if !report.unexpected.is_empty() {
            let shown: Vec<&str> = report
                .unexpected
                .iter()
                .take(5)
                .map(String::as_str)
                .collect();
            log::warn!(
                "{}: {} unexpected tensor(s) ignored (e.g. {}); the checkpoint has tensors this \
                 config does not use",
                self.dir.display(),
                report.unexpected.len(),
                shown.join(", ")
            );
        }
        if let Some(PerLayerTable::Host(h)) = text.per_layer_table() {
            report.bytes_host = h.bytes();
        }
        report.elapsed = start.elapsed();
        Ok((
            ModelWeights {
                text,
                vision,
                embedder,
                report,
            },
            roles,
        ))
    }
}

/// Progress of [`Checkpoint::upload_with_progress`]: what was uploaded so far and in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadProgress {
    /// Checkpoint bytes uploaded so far.
    pub bytes_done: u64,
    /// Checkpoint bytes to upload in all.
    pub bytes_total: u64,
    /// Tensors (matrices and vectors) uploaded so far.
    pub tensors_done: usize,
    /// Tensors to upload in all.
    pub tensors_total: usize,
}

impl UploadProgress {
    fn add(&mut self, bytes: u64) {
        self.bytes_done += bytes;
        self.tensors_done += 1;
    }
}

/// Source bytes of a matrix leaf (codes or floats, plus scales and biases).
fn leaf_bytes(lin: &HostLinear) -> u64 {
    let q = lin
        .quant
        .as_ref()
        .map(|q| q.scales.bytes.len() + q.biases.bytes.len())
        .unwrap_or(0);
    (lin.weight.bytes.len() + q) as u64
}

/// Whether quantize-on-load applies to a matrix of `role` with `cols` columns: `(bits, group)`.
fn quantizes(opts: &LoadOptions, role: MatrixRole, cols: usize) -> Option<(u32, u32)> {
    opts.quantize_on_load.filter(|&(b, g)| {
        role == MatrixRole::Text
            && g > 0
            && cols.is_multiple_of(g as usize)
            && (cols * b as usize).is_multiple_of(32)
    })
}

/// The GPU format of a float matrix stored as `dt` under `format`, and whether its values must
/// be converted (`false`: uploaded as stored).
fn float_target(format: FloatFormat, dt: StDType) -> (WeightFormat, bool) {
    match (format, dt) {
        (FloatFormat::Native, StDType::F32) | (FloatFormat::F32, StDType::F32) => {
            (WeightFormat::F32, false)
        }
        (FloatFormat::Native, StDType::BF16) => (WeightFormat::BF16, false),
        (FloatFormat::Native, StDType::F16) | (FloatFormat::F16, StDType::F16) => {
            (WeightFormat::F16, false)
        }
        (FloatFormat::F32, _) => (WeightFormat::F32, true),
        _ => (WeightFormat::F16, true),
    }
}

/// The format a matrix leaf gets on the GPU under `opts` (quantize-on-load scales assumed f16,
/// as [`crate::quant::quantize_rows`] picks unless a group's range needs f32).
fn gpu_format(lin: &HostLinear, role: MatrixRole, opts: &LoadOptions) -> Result<WeightFormat, LoadError> {
    Ok(if let Some(q) = &lin.quant {
        WeightFormat::Affine {
            bits: q.bits,
            group: q.group as u32,
            scales: host::scale_dtype(&q.scales)?,
        }
    } else if let Some((bits, group)) = quantizes(opts, role, lin.cols) {
        WeightFormat::Affine {
            bits,
            group,
            scales: crate::gpu::ScaleDType::F16,
        }
    } else {
        float_target(opts.float_format, lin.weight.dtype).0
    })
}

/// The counting pass of [`Checkpoint::upload_with_progress`] (nothing is copied or uploaded):
/// source bytes and tensors for the progress totals and, with `opts`, the GPU bytes the upload
/// will create (as [`LoadReport::bytes_uploaded`] counts them).
#[derive(Default)]
struct CountSink<'a> {
    progress: UploadProgress,
    opts: Option<&'a LoadOptions>,
    gpu_bytes: u64,
    /// With `opts`: the device's largest buffer a matrix window may take
    /// (`min(max_storage_buffer_binding_size, max_buffer_size)`) and `max_buffer_size`; a leaf
    /// the upload could not store is the upload's [`GpuError::LimitExceeded`], found here.
    limits: Option<(u64, u64)>,
}

impl Sink for CountSink<'_> {
    type M = ();
    type V = ();
    fn matrix(&mut self, lin: &HostLinear, role: MatrixRole) -> Result<(), LoadError> {
        self.progress.add(leaf_bytes(lin));
        if let Some(opts) = self.opts {
            let f = gpu_format(lin, role, opts)?;
            let (rb, sbr) = (f.row_bytes(lin.cols), f.sb_row_bytes(lin.cols));
            self.gpu_bytes += (lin.rows * (rb + sbr)) as u64;
            if let Some((window, _)) = self.limits {
                // As `Matrix::upload`: windows of whole rows (whole experts when stacked).
                let widest = rb.max(sbr).max(1) as u64;
                let (what, needed) = match lin.rows_per_expert {
                    Some(rpe) => (
                        format!("one expert ({rpe} rows) of {}", lin.path),
                        rpe as u64 * widest,
                    ),
                    None => (format!("one row of {}", lin.path), widest),
                };
                if needed > window {
                    return Err(LoadError::Gpu(GpuError::LimitExceeded {
                        what,
                        needed,
                        limit: window,
                        limit_name: "max_storage_buffer_binding_size",
                    }));
                }
            }
        }
        Ok(())
    }
    fn vector(&mut self, key: &str, _: &[usize], data: Vec<f32>) -> Result<(), LoadError> {
        let bytes = (data.len() * 4) as u64;
        self.progress.add(bytes);
        self.gpu_bytes += bytes;
        if let Some((_, max_buffer)) = self.limits
            && bytes > max_buffer
        {
            return Err(LoadError::Gpu(GpuError::LimitExceeded {
                what: key.to_string(),
                needed: bytes,
                limit: max_buffer,
                limit_name: "max_buffer_size",
            }));
        }
        Ok(())
    }
}

/// Loads the checkpoint in `dir` onto the GPU.
pub fn load(ctx: &GpuContext, dir: &Path, opts: &LoadOptions) -> Result<ModelWeights, LoadError> {
    load_with_progress(ctx, dir, opts, &mut |_| ControlFlow::Continue(()))
}

/// [`load`] with a progress hook (see [`Checkpoint::upload_with_progress`]).
pub fn load_with_progress(
    ctx: &GpuContext,
    dir: &Path,
    opts: &LoadOptions,
    progress: &mut dyn FnMut(&UploadProgress) -> ControlFlow<()>,
) -> Result<ModelWeights, LoadError> {
    let ck = Checkpoint::open(dir)?;
    let w = ck.upload_with_progress(ctx, opts, progress)?;
    log::info!("{}: {}", dir.display(), w.report);
    Ok(w)
}

/// Whether a matrix belongs to the text side (eligible for quantize-on-load) or the vision tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixRole {
    /// Text decoder or `embed_vision`.
    Text,
    /// Vision tower.
    Vision,
}

/// Where the builder puts leaves: host tensors (plan) or GPU buffers (upload).
pub trait Sink {
    /// Matrix leaf.
    type M;
    /// Vector leaf.
    type V;
    /// Takes a validated matrix.
    fn matrix(&mut self, lin: &HostLinear, role: MatrixRole) -> Result<Self::M, LoadError>;
    /// Takes a validated f32 vector.
    fn vector(&mut self, key: &str, shape: &[usize], data: Vec<f32>) -> Result<Self::V, LoadError>;
}

/// The CPU-only sink.
#[derive(Debug)]
pub struct HostSink;

impl Sink for HostSink {
    type M = HostLinear;
    type V = HostVector;
    fn matrix(&mut self, lin: &HostLinear, _: MatrixRole) -> Result<HostLinear, LoadError> {
        Ok(lin.clone())
    }
    fn vector(
        &mut self,
        key: &str,
        shape: &[usize],
        data: Vec<f32>,
    ) -> Result<HostVector, LoadError> {
        Ok(HostVector {
            key: key.to_string(),
            shape: shape.to_vec(),
            data,
        })
    }
}

/// A tree plus the role of every stored key.
type Built<M, V> = (ModelWeights<M, V>, BTreeMap<String, Role>);

/// Format, data, scales, biases of a matrix about to be uploaded.
type Payload<'a> = (WeightFormat, &'a [u8], Option<&'a [u8]>, Option<&'a [u8]>);

/// The upload progress hook and its running totals.
type ProgressHook<'a> = (
    &'a mut dyn FnMut(&UploadProgress) -> ControlFlow<()>,
    &'a mut UploadProgress,
);

struct GpuSink<'a> {
    ctx: &'a GpuContext,
    opts: &'a LoadOptions,
    uploaded: u64,
    formats: BTreeMap<String, usize>,
    progress: Option<ProgressHook<'a>>,
}

impl GpuSink<'_> {
    /// Reports one uploaded leaf of `bytes` source bytes; `Err(Cancelled)` when the hook says stop.
    fn done(&mut self, bytes: u64) -> Result<(), LoadError> {
        if let Some((hook, state)) = &mut self.progress {
            state.add(bytes);
            if hook(state).is_break() {
                return Err(LoadError::Cancelled);
            }
        }
        Ok(())
    }
}

impl Sink for GpuSink<'_> {
    type M = Matrix;
    type V = GpuTensor;
    fn matrix(&mut self, lin: &HostLinear, role: MatrixRole) -> Result<Matrix, LoadError> {
        // Its files unchanged since open, before any of its mapped pages is read.
        lin.verify()?;
        let (rows, cols) = (lin.rows, lin.cols);
        let owned: (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>);
        let (format, data, scales, biases): Payload<'_> = if let Some(q) = &lin.quant {
            let st = host::scale_dtype(&q.scales)?;
            if q.biases.dtype != q.scales.dtype {
                return Err(LoadError::WrongDtype {
                    key: q.biases.key.clone(),
                    expected: format!("{} like the scales", q.scales.dtype),
                    found: q.biases.dtype.name().into(),
                });
            }
            (
                WeightFormat::Affine {
                    bits: q.bits,
                    group: q.group as u32,
                    scales: st,
                },
                &lin.weight.bytes[..],
                Some(&q.scales.bytes[..]),
                Some(&q.biases.bytes[..]),
            )
        } else if let Some((bits, group)) = quantizes(self.opts, role, cols) {
            let qz = crate::quant::quantize_rows(rows, cols, bits, group as usize, |r, out| {
                lin.row_f32(r, out)
            });
            owned = (
                bytemuck::cast_slice(&qz.words).to_vec(),
                Some(qz.scales),
                Some(qz.biases),
            );
            (
                WeightFormat::Affine {
                    bits,
                    group,
                    scales: qz.scale_dtype,
                },
                &owned.0,
                owned.1.as_deref(),
                owned.2.as_deref(),
            )
        } else {
            let dt = lin.weight.dtype;
            match float_target(self.opts.float_format, dt) {
                (f, false) => (f, &lin.weight.bytes[..], None, None),
                (WeightFormat::F32, true) => {
                    owned = (lin.to_float_bytes(false), None, None);
                    (WeightFormat::F32, &owned.0, None, None)
                }
                (_, true) => {
                    owned = (lin.to_float_bytes(true), None, None);
                    (WeightFormat::F16, &owned.0, None, None)
                }
            }
        };
        let host = HostMatrix {
            rows,
            cols,
            format,
            data,
            scales,
            biases,
        };
        let m = match lin.rows_per_expert {
            Some(rpe) => Matrix::upload_stacked(self.ctx, &lin.path, &host, rpe, None)?,
            None => Matrix::upload(self.ctx, &lin.path, &host, None)?,
        };
        self.uploaded += m.bytes();
        let name = match format {
            WeightFormat::F32 => "f32".to_string(),
            WeightFormat::F16 => "f16".to_string(),
            WeightFormat::BF16 => "bf16".to_string(),
            WeightFormat::Affine { bits, .. } => format!("affine{bits}"),
        };
        *self.formats.entry(name).or_default() += 1;
        self.done(leaf_bytes(lin))?;
        Ok(m)
    }

    fn vector(
        &mut self,
        _key: &str,
        shape: &[usize],
        data: Vec<f32>,
    ) -> Result<GpuTensor, LoadError> {
        self.uploaded += (data.len() * 4) as u64;
        let t = GpuTensor::from_f32(self.ctx, shape, &data)?;
        self.done((data.len() * 4) as u64)?;
        Ok(t)
    }
}

/// A quantized weight's dtypes: u32 codes with f16 / bf16 / f32 scales and biases.
fn check_quant_dtypes(
    w: &StoredTensor,
    scales: &StoredTensor,
    biases: &StoredTensor,
) -> Result<(), LoadError> {
    if w.dtype != StDType::U32 {
        return Err(LoadError::WrongDtype {
            key: w.key.clone(),
            expected: "u32 (packed codes of a quantized weight)".into(),
            found: w.dtype.name().into(),
        });
    }
    host::scale_dtype(scales)?;
    host::scale_dtype(biases)?;
    Ok(())
}

/// A float weight of `shape`.
fn check_float(w: &StoredTensor, shape: &[usize]) -> Result<(), LoadError> {
    if !w.dtype.is_model_float() {
        return Err(LoadError::WrongDtype {
            key: w.key.clone(),
            expected: "f32, f16 or bf16 (or u32 with .scales/.biases)".into(),
            found: w.dtype.name().into(),
        });
    }
    if w.shape != shape {
        return Err(LoadError::ShapeMismatch {
            key: w.key.clone(),
            expected: shape.to_vec(),
            found: w.shape.clone(),
        });
    }
    Ok(())
}

struct Builder<'a, S: Sink> {
    ck: &'a Checkpoint,
    sink: &'a mut S,
    /// canonical key → module that consumed it
    used: BTreeMap<String, String>,
    formats: BTreeMap<String, usize>,
}

impl<S: Sink> Builder<'_, S> {
    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn get(&self, key: &str) -> Option<&StoredTensor> {
        self.ck
            .canon
            .get(key)
            .and_then(|raw| self.ck.store.tensors.get(raw))
    }

    fn require(
        &mut self,
        key: &str,
        module: &str,
        kv_shared: bool,
    ) -> Result<StoredTensor, LoadError> {
        let t = self
            .get(key)
            .cloned()
            .ok_or_else(|| LoadError::MissingTensor {
                key: key.to_string(),
                module: module.to_string(),
                kv_shared,
            })?;
        self.used.insert(key.to_string(), module.to_string());
        Ok(t)
    }

    fn vector(
        &mut self,
        key: &str,
        shape: &[usize],
        module: &str,
        kv_shared: bool,
    ) -> Result<S::V, LoadError> {
        let t = self.require(key, module, kv_shared)?;
        if t.shape != shape {
            return Err(LoadError::ShapeMismatch {
                key: t.key.clone(),
                expected: shape.to_vec(),
                found: t.shape.clone(),
            });
        }
        let data = t.to_f32()?;
        self.sink.vector(key, shape, data)
    }

    /// [`vector`](Self::vector) with every value multiplied by `factor` on the host.
    fn vector_scaled(
        &mut self,
        key: &str,
        shape: &[usize],
        module: &str,
        factor: f32,
    ) -> Result<S::V, LoadError> {
        let t = self.require(key, module, false)?;
        if t.shape != shape {
            return Err(LoadError::ShapeMismatch {
                key: t.key.clone(),
                expected: shape.to_vec(),
                found: t.shape.clone(),
            });
        }
        let mut data = t.to_f32()?;
        data.iter_mut().for_each(|v| *v *= factor);
        self.sink.vector(key, shape, data)
    }

    fn vec1(&mut self, key: &str, n: usize, module: &str, kv: bool) -> Result<S::V, LoadError> {
        self.vector(key, &[n], module, kv)
    }

    /// A scalar tensor (`[]` or `[1]`); None when absent and not required.
    fn scalar(
        &mut self,
        key: &str,
        module: &str,
        required: bool,
    ) -> Result<Option<f32>, LoadError> {
        let t = if required {
            self.require(key, module, false)?
        } else {
            match self.get(key).cloned() {
                Some(t) => {
                    self.used.insert(key.to_string(), module.to_string());
                    t
                }
                None => return Ok(None),
            }
        };
        if t.numel() != 1 || t.shape.len() > 1 {
            return Err(LoadError::ShapeMismatch {
                key: t.key.clone(),
                expected: vec![1],
                found: t.shape.clone(),
            });
        }
        let v = t.to_f32()?;
        Ok(v.first().copied())
    }

    /// Validates module `path` as a `[rows, cols]` Linear/Embedding (`path.weight`, plus
    /// `.scales`/`.biases` when quantized).
    fn host_linear(
        &mut self,
        path: &str,
        rows: usize,
        cols: usize,
        kv_shared: bool,
    ) -> Result<HostLinear, LoadError> {
        let wkey = format!("{path}.weight");
        let w = self.require(&wkey, path, kv_shared)?;
        let skey = format!("{path}.scales");
        let quant = if self.get(&skey).is_some() {
            let p = self.ck.rules.params_for(path)?;
            let s = self.require(&skey, path, kv_shared)?;
            let b = self.require(&format!("{path}.biases"), path, kv_shared)?;
            check_quant_dtypes(&w, &s, &b)?;
            quant::check_shapes(&w.key, rows, cols, p, &w.shape, &s.shape, &b.shape)?;
            Some(HostQuant {
                bits: p.bits,
                group: p.group_size as usize,
                scales: s,
                biases: b,
            })
        } else {
            check_float(&w, &[rows, cols])?;
            None
        };
        let lin = HostLinear {
            path: path.to_string(),
            rows,
            cols,
            weight: w,
            quant,
            rows_per_expert: None,
        };
        *self.formats.entry(lin.format_name()).or_default() += 1;
        Ok(lin)
    }

    /// Validates module `path` as a stacked expert tensor `[experts, rows, cols]`: HF's bare
    /// float parameter (`experts.gate_up_proj`, no `.weight`), or `path.weight` (float, or u32
    /// codes with `.scales`/`.biases` of shape `[experts, rows, groups]`: MLX `switch_glu`),
    /// and hands it to the sink as one matrix of `experts · rows` rows.
    fn stacked(
        &mut self,
        path: &str,
        experts: usize,
        rows: usize,
        cols: usize,
        role: MatrixRole,
    ) -> Result<S::M, LoadError> {
        let wkey = format!("{path}.weight");
        let wkey = if self.get(&wkey).is_some() {
            wkey
        } else {
            path.to_string()
        };
        let mut w = self.require(&wkey, path, false)?;
        let skey = format!("{path}.scales");
        let quant = if self.get(&skey).is_some() {
            let p = self.ck.rules.params_for(path)?;
            let mut sc = self.require(&skey, path, false)?;
            let mut bi = self.require(&format!("{path}.biases"), path, false)?;
            check_quant_dtypes(&w, &sc, &bi)?;
            for t in [&mut w, &mut sc, &mut bi] {
                let [e, r, c] = t.shape[..] else {
                    return Err(LoadError::ShapeMismatch {
                        key: t.key.clone(),
                        expected: vec![experts, rows, 0],
                        found: t.shape.clone(),
                    });
                };
                if e != experts || r != rows {
                    return Err(LoadError::ShapeMismatch {
                        key: t.key.clone(),
                        expected: vec![experts, rows, c],
                        found: t.shape.clone(),
                    });
                }
                t.shape = vec![experts * rows, c];
            }
            quant::check_shapes(&w.key, experts * rows, cols, p, &w.shape, &sc.shape, &bi.shape)?;
            Some(HostQuant {
                bits: p.bits,
                group: p.group_size as usize,
                scales: sc,
                biases: bi,
            })
        } else {
            check_float(&w, &[experts, rows, cols])?;
            w.shape = vec![experts * rows, cols];
            None
        };
        let lin = HostLinear {
            path: path.to_string(),
            rows: experts * rows,
            cols,
            weight: w,
            quant,
            rows_per_expert: Some(rows),
        };
        *self.formats.entry(lin.format_name()).or_default() += 1;
        self.sink.matrix(&lin, role)
    }

    fn linear(
        &mut self,
        path: &str,
        rows: usize,
        cols: usize,
        kv_shared: bool,
        role: MatrixRole,
    ) -> Result<S::M, LoadError> {
        let lin = self.host_linear(path, rows, cols, kv_shared)?;
        self.sink.matrix(&lin, role)
    }

    /// The vision tower and its embedder into the text stream, each block loading itself
    /// through a prefix view (`crate::model::vision`).
    fn vision(&mut self) -> Result<VisionWeights<S::M, S::V>, LoadError> {
        let Some(v) = self.ck.config.vision_config.clone() else {
            return Err(LoadError::Unsupported {
                what: "no vision_config".into(),
            });
        };
        let h = self.ck.config.text_config.hidden_size;
        VisionWeights::load(&mut VarBuilder::root(self, "", MatrixRole::Vision), &v, h)
    }
}

impl Plan {
    /// The stored key of every tensor with role `Module(m)` for module `m`.
    pub fn keys_of(&self, module: &str) -> Vec<&str> {
        self.roles
            .iter()
            .filter(|(_, r)| matches!(r, Role::Module(m) if m == module))
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

/// All tensor keys (stored form) of a checkpoint with their canonical path, for diagnostics.
pub fn canonical_keys(store: &TensorStore) -> BTreeSet<String> {
    store
        .tensors
        .keys()
        .filter_map(|k| match keys::classify(k) {
            KeyKind::Model(c) => Some(c),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------

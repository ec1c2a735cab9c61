//! A loaded Gemma 4 model: configuration, weights on the GPU, the text decoder and the vision
//! encoder, with the glue that runs a (multimodal) prompt of token ids.

pub mod embed;
pub mod media;
pub mod text;
pub mod vision;

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use crate::config::Gemma4Config;
use crate::error::{Error, Result};
use crate::generate::{CancelToken, GenerationOptions};
use crate::gpu::{GpuContext, GpuTensor};
use crate::loading::{LoadHandle, LoadHooks, LoadProgress, LoadStage};
use crate::prompt::preprocess::{self, ImageOptions};
use crate::prompt::ChatTemplate;
use crate::model::text::{Logits, TextDecoder};
use crate::prompt::tokenizer::Tokenizer;
use crate::model::vision::{ImagePatches, VisionEmbedder, VisionEncoder, VisionModel};
use crate::checkpoint::{Checkpoint, FloatFormat, LoadError, LoadOptions, LoadReport, UploadProgress};
use crate::gpu::GpuError;
use crate::memory::MemoryEstimate;

/// Options for loading a model.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Soft-token budget per image (70, 140, 280, 560, 1120); default from the checkpoint.
    pub max_soft_tokens: Option<u32>,
    /// Maximum context of a session (KV cache size of full-attention layers).
    pub max_context: usize,
    /// Prefill chunk length (tokens per prefill submit). On bidirectional-vision models
    /// (12B / 26B / 31B) sessions raise it to hold a whole image block.
    pub prefill_chunk: usize,
    /// Most positions per KV-cache buffer: each layer's cache is split into buffers of at most
    /// this many positions. `None` (default): as many as one storage binding of the device
    /// holds, so a cache is split only where it must be. Lower it to keep single allocations
    /// small (some drivers are slow or fail on multi-GiB buffers); each extra window a query
    /// reaches costs one attention dispatch.
    pub kv_window_positions: Option<usize>,
    /// GPU memory the model may take, in bytes: loading refuses up front, before anything is
    /// uploaded, when the weights plus one session at [`max_context`](Self::max_context) (KV
    /// cache and workspace, see [`Model::estimate_memory`]) need more, with
    /// [`GpuError::DoesNotFit`](crate::gpu::GpuError::DoesNotFit) saying what to try. wgpu
    /// does not report the size of a device's memory, so there is no check without a budget
    /// (an upload that runs out of memory still fails with `DoesNotFit`, releasing everything
    /// it created). `None` (default): no budget.
    pub memory_budget: Option<u64>,
    /// Weight upload options.
    pub load: LoadOptions,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            max_soft_tokens: None,
            max_context: 8192,
            prefill_chunk: 512,
            kv_window_positions: None,
            memory_budget: None,
            load: LoadOptions {
                float_format: FloatFormat::Native,
                ..Default::default()
            },
        }
    }
}

/// Logits of every prompt position plus a greedy continuation.
#[derive(Debug, Clone)]
pub struct LogitsOutput {
    /// `[prompt_len, vocab]`, row-major.
    pub logits: Vec<f32>,
    /// Vocabulary size.
    pub vocab: usize,
    /// Greedy continuation through the KV cache.
    pub greedy: Vec<u32>,
}

/// A loaded model: configuration, weights on the GPU, the text decoder and vision encoder, and
/// (when the checkpoint directory has them) the tokenizer, chat template and generation
/// defaults.
///
/// `Model` is a cheap handle (`Clone` shares the weights through an `Arc`) and `Send + Sync`:
/// sessions ([`ChatSession`](crate::ChatSession)) and threads each hold a clone.
#[derive(Clone)]
pub struct Model {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) ctx: GpuContext,
    /// The checkpoint folder, read once at load (config, tensor store, small files).
    pub(crate) checkpoint: Checkpoint,
    pub(crate) text: TextDecoder,
    pub(crate) vision: Option<VisionModel>,
    pub(crate) report: LoadReport,
    pub(crate) options: ModelOptions,
    pub(crate) tokenizer: Option<Arc<Tokenizer>>,
    pub(crate) template: Option<Arc<ChatTemplate>>,
    pub(crate) generation: GenerationOptions,
    /// GPU memory of every live session and one-shot generation ([`Model::memory_report`]).
    pub(crate) sessions: crate::memory::SessionRegistry,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Cached bind groups hold the weight buffers alive; a host's context outlives the model.
        self.ctx.clear_bind_groups();
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("dir", &self.inner.checkpoint.dir)
            .field("adapter", &self.inner.ctx.adapter_name())
            .field("vision", &self.inner.vision.is_some())
            .field("tokenizer", &self.inner.tokenizer.is_some())
            .finish_non_exhaustive()
    }
}

/// The checkpoint's text-side assets: the tokenizer, the chat template and the generation
/// defaults. They are optional: a directory with only config + weights still loads (logits,
/// token-id generation); the text API then reports what is missing. Each is built from the file
/// as `Checkpoint::open` read it.
type TextAssets = (
    Option<Arc<Tokenizer>>,
    Option<Arc<ChatTemplate>>,
    GenerationOptions,
);

fn text_assets(dir: &Path, files: &mut crate::checkpoint::files::CheckpointFiles) -> Result<TextAssets> {
    let tokenizer = match files.tokenizer.take() {
        Some(bytes) => Some(Arc::new(Tokenizer::from_bytes(
            &bytes,
            &dir.join(crate::checkpoint::files::TOKENIZER),
        )?)),
        None => None,
    };
    let template = match &tokenizer {
        Some(_) => Some(Arc::new(ChatTemplate::from_sources(
            dir,
            files.tokenizer_config.as_deref(),
            files.chat_template_jinja.take(),
            files.chat_template_json.as_deref(),
        )?)),
        None => None,
    };
    let generation = GenerationOptions::from_sources(
        Some(&files.config_json),
        files.generation_config.as_deref(),
        &dir.join(crate::checkpoint::files::GENERATION_CONFIG),
    )?;
    Ok((tokenizer, template, generation))
}

impl Model {
    /// Loads the checkpoint in `dir` on `ctx`.
    pub fn load_with(ctx: &GpuContext, dir: &Path, options: &ModelOptions) -> Result<Self> {
        Self::load_hooked(ctx, dir, options, &LoadHooks::default())
    }

    /// [`load_with`](Self::load_with) with progress events and cancellation checks (before and
    /// after every uploaded tensor, and between the stages).
    pub(crate) fn load_hooked(
        ctx: &GpuContext,
        dir: &Path,
        options: &ModelOptions,
        hooks: &LoadHooks,
    ) -> Result<Self> {
        hooks.emit(LoadProgress {
            stage: LoadStage::Opening,
            ..Default::default()
        });
        hooks.check()?;
        ctx.check_health()?;
        let mut checkpoint = Checkpoint::open(dir)?;
        let estimate = estimate(ctx, &checkpoint, options)?;
        if let Some(budget) = options.memory_budget
            && estimate.total() > budget
        {
            return Err(does_not_fit(
                &estimate,
                budget,
                "ModelOptions::memory_budget".into(),
                options,
            ));
        }
        let (weights, uploaded) = upload(ctx, &checkpoint, options, hooks, &estimate)?;
        log::info!("{}: {}", dir.display(), weights.report);
        checkpoint.release_tensors();
        hooks.emit(LoadProgress::stage(LoadStage::Preparing, &uploaded));
        let report = weights.report.clone();
        let config = &checkpoint.config;
        let text = TextDecoder::new(
            ctx,
            &config.text_config,
            Arc::new(weights.text),
            Some(config.image_token_id),
        )?
        .with_kv_window(options.kv_window_positions);
        let vision = vision_model(ctx, config, weights.vision, weights.embedder)?;
        let (tokenizer, template, generation) = text_assets(dir, &mut checkpoint.files)?;
        hooks.check()?;
        let model = Model {
            inner: Arc::new(Inner {
                ctx: ctx.clone(),
                checkpoint,
                text,
                vision,
                report,
                options: options.clone(),
                tokenizer,
                template,
                generation,
                sessions: Default::default(),
            }),
        };
        hooks.emit(LoadProgress::stage(LoadStage::Done, &uploaded));
        Ok(model)
    }

    /// What loading the checkpoint in `dir` with `options` will take on `ctx`'s device: the
    /// weights as they will be stored (after quantize-on-load and the float format; the
    /// per-layer table when it goes to the GPU) and one session at
    /// [`ModelOptions::max_context`] (its KV cache, and its workspace for the prefill chunk
    /// of this device). Reads only the checkpoint's headers and config; nothing is uploaded.
    /// [`ModelOptions::memory_budget`] is checked against [`MemoryEstimate::total`].
    pub fn estimate_memory(
        ctx: &GpuContext,
        dir: &Path,
        options: &ModelOptions,
    ) -> Result<MemoryEstimate> {
        estimate(ctx, &Checkpoint::open(dir)?, options)
    }

    /// Loads the checkpoint in `dir` on a GPU context of its own (the default adapter).
    ///
    /// ```no_run
    /// let model = gemma_wgpu::Model::load("path/to/gemma-4-E2B-it")?;
    /// println!("{}", model.caption("photo.jpg")?);
    /// # Ok::<(), gemma_wgpu::Error>(())
    /// ```
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let ctx = GpuContext::new()?;
        Self::load_with(&ctx, dir.as_ref(), &ModelOptions::default())
    }

    /// Loads a model by registry name (`models.toml`, e.g. `gemma-4-E2B-it-qat-4bit`), Hugging
    /// Face repository id, or local directory, on a GPU context of its own. A registry model
    /// not yet in the Hugging Face cache is downloaded with a progress bar (feature `hub`);
    /// without network access (or without the feature) the error says how to get it.
    pub fn from_pretrained(name_or_dir: &str) -> Result<Self> {
        ModelBuilder::new(name_or_dir).build()
    }

    /// A [`ModelBuilder`] for `name_or_dir` (registry name, repository id or directory).
    pub fn builder(name_or_dir: impl Into<String>) -> ModelBuilder {
        ModelBuilder::new(name_or_dir)
    }

    /// The GPU context the model lives on.
    pub fn context(&self) -> &GpuContext {
        &self.inner.ctx
    }

    /// The options the model was loaded with.
    pub fn options(&self) -> &ModelOptions {
        &self.inner.options
    }

    /// The tokenizer (`tokenizer.json`), if the checkpoint directory has one.
    pub fn tokenizer(&self) -> Option<&Arc<Tokenizer>> {
        self.inner.tokenizer.as_ref()
    }

    /// The chat template, if the checkpoint directory has a tokenizer (the template falls back
    /// to the built-in Gemma 4 template when the directory has none).
    pub fn chat_template(&self) -> Option<&Arc<ChatTemplate>> {
        self.inner.template.as_ref()
    }

    /// Generation defaults from `generation_config.json` (or the crate's defaults): what
    /// [`caption`](Self::caption), [`ask`](Self::ask) and
    /// [`ChatSession::send`](crate::ChatSession::send) callers usually start from.
    pub fn generation_defaults(&self) -> &GenerationOptions {
        &self.inner.generation
    }

    /// The configuration.
    pub fn config(&self) -> &Gemma4Config {
        &self.inner.checkpoint.config
    }

    /// What loading did (bytes, tensors, time).
    pub fn load_report(&self) -> &LoadReport {
        &self.inner.report
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.inner.checkpoint.dir
    }

    /// The text decoder.
    #[cfg_attr(not(feature = "dev"), doc(hidden))]
    pub fn text(&self) -> &TextDecoder {
        &self.inner.text
    }

    /// The image path (vision tower or the unified model's embedder), if the checkpoint has one.
    #[cfg_attr(not(feature = "dev"), doc(hidden))]
    pub fn vision(&self) -> Option<&VisionModel> {
        self.inner.vision.as_ref()
    }

    /// Image preprocessing options: patch size and pooling kernel from the vision config; the
    /// soft-token budget from [`ModelOptions::max_soft_tokens`], else the checkpoint's
    /// `processor_config.json`, else the vision config's `default_output_length` (280 for the
    /// unified model, its processor's default). The unified model's options cut 48-px model
    /// patches after torchvision's resize ([`ImageOptions::unified`]).
    #[cfg_attr(not(feature = "dev"), doc(hidden))]
    pub fn image_options(&self) -> Result<ImageOptions> {
        self.image_options_with(None)
    }

    /// [`image_options`](Self::image_options) with an image's own soft-token budget (`Some`)
    /// in place of the model's.
    #[cfg_attr(not(feature = "dev"), doc(hidden))]
    pub fn image_options_with(&self, max_soft_tokens: Option<u32>) -> Result<ImageOptions> {
        image_options_for(&self.inner.checkpoint, &self.inner.options, max_soft_tokens)
    }

    /// The prefill chunk of a session: [`ModelOptions::prefill_chunk`], raised on a
    /// bidirectional-vision model (`use_bidirectional_attention: "vision"`: 12B / 26B / 31B) to
    /// hold the largest image block the model's preprocessing makes (the soft-token budget plus
    /// the two delimiters), since a block must be prefilled in one chunk. The sliding-window
    /// rings follow (`sliding_window + chunk` slots).
    pub(crate) fn session_chunk(&self) -> usize {
        session_chunk_for(&self.inner.checkpoint, &self.inner.options)
    }

    /// On a bidirectional-vision model an image block is prefilled in one chunk: refuses a
    /// per-image budget whose block the session chunk cannot hold.
    fn check_block_fits(&self, budget: u32) -> Result<()> {
        if !self.config().text_config.bidirectional_vision() {
            return Ok(());
        }
        let (need, chunk) = (budget as usize + 2, self.session_chunk());
        if need > chunk {
            return Err(Error::InvalidArgument(format!(
                "an image at a budget of {budget} soft tokens is a block of {need} tokens, which \
                 this model (bidirectional image blocks) must prefill in one chunk, but the \
                 session chunk is {chunk}: load the model with \
                 ModelBuilder::with_max_soft_tokens({budget}) or with_prefill_chunk({need})"
            )));
        }
        Ok(())
    }

    /// Decodes and preprocesses an image file (any supported format, EXIF-oriented).
    #[cfg_attr(not(feature = "dev"), doc(hidden))]
    pub fn prepare_image_file(&self, path: &Path) -> Result<ImagePatches> {
        self.prepare_image_file_with(path, None)
    }

    /// [`prepare_image_file`](Self::prepare_image_file) at the soft-token budget
    /// `max_soft_tokens` (`None`: the model's).
    #[cfg_attr(not(feature = "dev"), doc(hidden))]
    pub fn prepare_image_file_with(
        &self,
        path: &Path,
        max_soft_tokens: Option<u32>,
    ) -> Result<ImagePatches> {
        let opts = self.image_options_with(max_soft_tokens)?;
        let img = preprocess::load_image(path, &opts)?;
        self.prepare_image_with(&img, max_soft_tokens)
    }

    /// Preprocesses a decoded image into patches for the tower.
    #[cfg_attr(not(feature = "dev"), doc(hidden))]
    pub fn prepare_image(&self, img: &image::DynamicImage) -> Result<ImagePatches> {
        self.prepare_image_with(img, None)
    }

    /// [`prepare_image`](Self::prepare_image) at the soft-token budget `max_soft_tokens`
    /// (`None`: the model's).
    #[cfg_attr(not(feature = "dev"), doc(hidden))]
    pub fn prepare_image_with(
        &self,
        img: &image::DynamicImage,
        max_soft_tokens: Option<u32>,
    ) -> Result<ImagePatches> {
        let opts = self.image_options_with(max_soft_tokens)?;
        if let Some(b) = max_soft_tokens {
            self.check_block_fits(b)?;
        }
        let p = preprocess::preprocess(img, &opts)?;
        Ok(ImagePatches {
            pixel_values: p.pixel_values,
            positions: p.positions,
            grid: p.grid,
        })
    }

    /// Reads pre-patchified pixels from a safetensors file with `pixel_values` `[n, 3·p·p]` f32
    /// and `image_position_ids` `[n, 2]` i64 (x, y); padding rows (-1, -1) are dropped.
    #[cfg_attr(not(feature = "dev"), doc(hidden))]
    pub fn prepare_pixel_values_file(&self, path: &Path) -> Result<ImagePatches> {
        let cfg = &self.inner.checkpoint.config;
        let width = match (&cfg.vision_config, &cfg.vision_embedder) {
            (Some(vc), _) => vc.patch_values(),
            (None, Some(ec)) => ec.patch_values(),
            (None, None) => {
                return Err(Error::InvalidArgument(
                    "this checkpoint has no vision tower".into(),
                ));
            }
        };
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            Error::InvalidArgument(format!("{}: not a safetensors file: {e}", path.display()))
        })?;
        let get = |name: &str| {
            st.tensor(name).map_err(|_| {
                Error::InvalidArgument(format!("{}: no tensor `{name}`", path.display()))
            })
        };
        let pv = get("pixel_values")?;
        let pos = get("image_position_ids")?;
        let pv_shape: Vec<usize> = pv.shape().iter().copied().filter(|&d| d != 1).collect();
        if pv.dtype() != safetensors::Dtype::F32 || pv_shape.len() != 2 || pv_shape[1] != width {
            return Err(Error::InvalidArgument(format!(
                "{}: pixel_values must be f32 [n, {width}], found {:?} {:?}",
                path.display(),
                pv.dtype(),
                pv.shape()
            )));
        }
        let n = pv_shape[0];
        let positions: Vec<i64> = match pos.dtype() {
            safetensors::Dtype::I64 => bytemuck::pod_collect_to_vec(pos.data()),
            safetensors::Dtype::I32 => {
                let v: Vec<i32> = bytemuck::pod_collect_to_vec(pos.data());
                v.into_iter().map(i64::from).collect()
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "{}: image_position_ids must be i64, found {other:?}",
                    path.display()
                )));
            }
        };
        if positions.len() != 2 * n {
            return Err(Error::InvalidArgument(format!(
                "{}: image_position_ids has {} values, expected {}",
                path.display(),
                positions.len(),
                2 * n
            )));
        }
        let values: Vec<f32> = bytemuck::pod_collect_to_vec(pv.data());
        grid_patches(path, &values, &positions, n, width)
    }

    /// Encodes images (in prompt order) and concatenates their soft tokens: `[total, H]`.
    #[cfg_attr(not(feature = "dev"), doc(hidden))]
    pub fn encode_images(&self, images: &[ImagePatches]) -> Result<Option<GpuTensor>> {
        self.inner.ctx.check_health()?;
        let parts = media::encode_each(self.vision(), images, Ok)?;
        media::concat_features(&self.inner.ctx, &parts)
    }

    /// Runs the fully expanded prompt `ids` (each image as boi, n soft tokens, eoi) with the
    /// given images, returns the logits at every position and a greedy continuation of
    /// `greedy` tokens through the KV cache.
    #[cfg_attr(not(feature = "dev"), doc(hidden))]
    pub fn logits_and_greedy(
        &self,
        ids: &[u32],
        images: &[ImagePatches],
        greedy: usize,
    ) -> Result<LogitsOutput> {
        let placed = self.place_images(ids, images)?;
        let (mut cache, mut ws) = self.inner.text.new_session(
            self.inner.options.max_context.max(ids.len() + greedy + 1),
            self.session_chunk().max(self.inner.text.min_chunk(ids)),
        )?;
        let logits =
            self.inner
                .text
                .forward(&mut cache, &mut ws, ids, placed.as_ref(), Logits::All)?;
        let vocab = self.inner.checkpoint.config.text_config.vocab_size;
        let mut out = Vec::new();
        if greedy > 0 {
            let last = &logits[(ids.len() - 1) * vocab..];
            let mut next = crate::model::text::argmax_host(last);
            out.push(next);
            while out.len() < greedy {
                next = self.inner.text.step_greedy(&mut cache, &mut ws, next)?;
                out.push(next);
            }
        }
        Ok(LogitsOutput {
            logits,
            vocab,
            greedy: out,
        })
    }
}

impl Model {
    /// Encodes `images` and pairs their feature rows with the soft tokens of `ids`.
    fn place_images(&self, ids: &[u32], images: &[ImagePatches]) -> Result<Option<media::MediaRuns>> {
        self.inner.ctx.check_health()?;
        let parts = media::encode_each(self.vision(), images, Ok)?;
        media::MediaRuns::place(
            &self.inner.ctx,
            ids,
            self.inner.checkpoint.config.image_token_id,
            &parts,
        )
    }

    /// The routing decisions of every MoE layer for the fully expanded prompt `ids` with its
    /// images (see [`TextDecoder::router_trace`]).
    #[cfg_attr(not(feature = "dev"), doc(hidden))]
    pub fn router_trace(
        &self,
        ids: &[u32],
        images: &[ImagePatches],
    ) -> Result<Vec<(Vec<u32>, Vec<f32>)>> {
        let placed = self.place_images(ids, images)?;
        self.inner.text.router_trace(ids, placed.as_ref())
    }
}

/// Builder for loading a model with non-default options.
///
/// ```no_run
/// use gemma_wgpu::{FloatFormat, ModelBuilder};
/// let model = ModelBuilder::new("gemma-4-E2B-it")
///     .with_float_format(FloatFormat::F16)
///     .quantize_on_load(4, 64)
///     .with_max_context(4096)
///     .build()?;
/// # Ok::<(), gemma_wgpu::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ModelBuilder {
    source: String,
    ctx: Option<GpuContext>,
    options: ModelOptions,
    allow_download: bool,
    revision: Option<String>,
    hooks: LoadHooks,
}

impl ModelBuilder {
    /// A builder for a registry name, Hugging Face repository id or local checkpoint directory,
    /// with [`ModelOptions::default`] (floats uploaded as stored).
    pub fn new(name_or_dir: impl Into<String>) -> Self {
        ModelBuilder {
            source: name_or_dir.into(),
            ctx: None,
            options: ModelOptions::default(),
            allow_download: true,
            revision: None,
            hooks: LoadHooks::default(),
        }
    }

    /// Runs on this GPU context instead of creating one.
    pub fn with_context(mut self, ctx: GpuContext) -> Self {
        self.ctx = Some(ctx);
        self
    }

    /// Runs on the host application's wgpu device and queue (see [`GpuContext::from_device`]).
    pub fn with_device(mut self, device: wgpu::Device, queue: wgpu::Queue) -> Self {
        self.ctx = Some(GpuContext::from_device(device, queue));
        self
    }

    /// Calls `progress` with every [`LoadProgress`] event (stage changes, and after every
    /// uploaded tensor). It runs on the loading thread: a UI typically stores the event and
    /// requests a repaint.
    pub fn with_progress(
        mut self,
        progress: impl Fn(&LoadProgress) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.progress = Some(Arc::new(progress));
        self
    }

    /// Makes loading stop with [`Error::Cancelled`] soon after `token` is cancelled (checked
    /// after every uploaded tensor); everything uploaded so far is released.
    pub fn with_cancel(mut self, token: CancelToken) -> Self {
        self.hooks.cancel = Some(token);
        self
    }

    /// Storage format of float matrices (default [`FloatFormat::Native`]: as stored).
    pub fn with_float_format(mut self, format: FloatFormat) -> Self {
        self.options.load.float_format = format;
        self
    }

    /// Quantizes float text matrices on load to MLX affine `bits` (2-8) with `group` values per
    /// scale (32, 64 or 128).
    pub fn quantize_on_load(mut self, bits: u32, group: u32) -> Self {
        self.options.load.quantize_on_load = Some((bits, group));
        self
    }

    /// Maximum context of a chat session (KV cache size); default 8192.
    pub fn with_max_context(mut self, tokens: usize) -> Self {
        self.options.max_context = tokens.max(1);
        self
    }

    /// Soft-token budget per image (70, 140, 280, 560 or 1120); default from the checkpoint.
    pub fn with_max_soft_tokens(mut self, tokens: u32) -> Self {
        self.options.max_soft_tokens = Some(tokens);
        self
    }

    /// Prefill chunk length (tokens per prefill submit); default 512.
    pub fn with_prefill_chunk(mut self, tokens: usize) -> Self {
        self.options.prefill_chunk = tokens.max(1);
        self
    }

    /// Splits each layer's KV cache into buffers of at most `positions` positions (default:
    /// as many as one storage binding holds); see [`ModelOptions::kv_window_positions`].
    pub fn with_kv_window_positions(mut self, positions: usize) -> Self {
        self.options.kv_window_positions = Some(positions.max(1));
        self
    }

    /// GPU memory the model may take (see [`ModelOptions::memory_budget`]): loading refuses
    /// up front with [`GpuError::DoesNotFit`](crate::gpu::GpuError::DoesNotFit) when the
    /// weights plus one session at the maximum context need more than `bytes`.
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.options.memory_budget = Some(bytes);
        self
    }

    /// Uploads the per-layer embedding table to the GPU (faster decode, more GPU memory)
    /// instead of gathering its rows on the host from the memory-mapped file.
    pub fn per_layer_table_on_gpu(mut self, on: bool) -> Self {
        self.options.load.per_layer_table_on_gpu = on;
        self
    }

    /// Whether a registry model missing from the Hugging Face cache may be downloaded (default
    /// true; needs the `hub` feature).
    pub fn allow_download(mut self, allow: bool) -> Self {
        self.allow_download = allow;
        self
    }

    /// Pins the Hugging Face revision (commit hash or tag) of a registry model, for
    /// reproducible downloads: it overrides the entry's `revision` in `models.toml`, and only a
    /// cached snapshot of that revision is used. Refused for a local directory.
    pub fn with_revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = Some(revision.into());
        self
    }

    /// Resolves the model (downloading it if needed and allowed) and loads it.
    pub fn build(self) -> Result<Model> {
        let hooks = self.hooks.clone();
        self.build_hooked(&hooks)
    }

    /// Loads on a worker thread and returns at once: the [`LoadHandle`] gives the progress,
    /// cancels, and yields the model (polled from a UI frame loop, awaited, or waited for).
    pub fn build_async(self) -> LoadHandle {
        let hooks = self.hooks.clone();
        LoadHandle::spawn(self, hooks)
    }

    pub(crate) fn build_hooked(self, hooks: &LoadHooks) -> Result<Model> {
        hooks.emit(LoadProgress {
            stage: LoadStage::Locating,
            ..Default::default()
        });
        let dir = crate::checkpoint::registry::locate_revision(
            &self.source,
            self.revision.as_deref(),
            self.allow_download,
        )?;
        hooks.check()?;
        let ctx = match self.ctx {
            Some(c) => c,
            None => GpuContext::new()?,
        };
        Model::load_hooked(&ctx, &dir, &self.options, hooks)
    }
}

/// Uploads the weights of `checkpoint` with progress and cancellation; out of memory is
/// `DoesNotFit` against `estimate` (everything the upload created is dropped with its partial
/// tree).
fn upload(
    ctx: &GpuContext,
    checkpoint: &Checkpoint,
    options: &ModelOptions,
    hooks: &LoadHooks,
    estimate: &MemoryEstimate,
) -> Result<(crate::checkpoint::ModelWeights, UploadProgress)> {
    let bytes0 = ctx.counters().bytes_allocated();
    let mut uploaded = UploadProgress::default();
let weights = checkpoint
        .upload_with_progress(ctx, &options.load, &mut |u: &UploadProgress| {
            uploaded = *u;
            hooks.emit(LoadProgress::stage(LoadStage::Uploading, u));
            if hooks.cancelled() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .map_err(|e| match e {
            LoadError::Cancelled => Error::Cancelled,
            // Everything the upload created is dropped with its partial tree.
            LoadError::Gpu(GpuError::OutOfMemory { context, message }) => {
                let got = ctx.counters().bytes_allocated().saturating_sub(bytes0);
                does_not_fit(
                    estimate,
                    got,
                    format!(
                        "device memory: the device ran out after {got} bytes, creating \
                         {context}: {message}"
                    ),
                    options,
                )
            }
            e => Error::Load(e),
        })?;
    Ok((weights, uploaded))
}

/// The image path of a checkpoint: the vision tower, the unified model's embedder, or none.
fn vision_model(
    ctx: &GpuContext,
    config: &Gemma4Config,
    vision: Option<crate::checkpoint::VisionWeights>,
    embedder: Option<crate::checkpoint::EmbedderWeights>,
) -> Result<Option<VisionModel>> {
    let hidden = config.text_config.hidden_size;
    let vision = match (vision, &config.vision_config) {
        (Some(w), Some(vc)) => Some(VisionModel::Tower(VisionEncoder::new(
            ctx,
            vc,
            hidden,
            Arc::new(w),
        )?)),
        _ => match (embedder, &config.vision_embedder) {
            (Some(w), Some(ec)) => Some(VisionModel::Embedder(VisionEmbedder::new(
                ctx,
                ec,
                hidden,
                Arc::new(w),
            ))),
            _ => None,
        },
    };
    Ok(vision)
}

/// Image preprocessing options of `checkpoint` under `options` (see [`Model::image_options`]).
fn image_options_for(
    checkpoint: &Checkpoint,
    options: &ModelOptions,
    image_budget: Option<u32>,
) -> Result<ImageOptions> {
    let cfg = &checkpoint.config;
    let budget = |default: u32| match image_budget.or(options.max_soft_tokens) {
        Some(b) => b,
        None => checkpoint.files.processor_budget.unwrap_or(default),
    };
    if let Some(ec) = &cfg.vision_embedder {
        return Ok(ImageOptions::unified(
            ec.patch_size as u32,
            ec.pooling_kernel_size as u32,
            budget(preprocess::UNIFIED_DEFAULT_SOFT_TOKENS),
        )?);
    }
    let vc = cfg
        .vision_config
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("this checkpoint has no vision tower".into()))?;
    Ok(ImageOptions::from_vision_config(
        vc.patch_size as u32,
        vc.pooling_kernel_size as u32,
        budget(vc.default_output_length as u32),
    )?)
}

/// The prefill chunk of a session of `checkpoint` under `options` (see [`Model::session_chunk`]).
fn session_chunk_for(checkpoint: &Checkpoint, options: &ModelOptions) -> usize {
    let chunk = options.prefill_chunk.max(1);
    if !checkpoint.config.text_config.bidirectional_vision() {
        return chunk;
    }
    match image_options_for(checkpoint, options, None) {
        Ok(o) => chunk.max(o.max_soft_tokens as usize + 2),
        Err(_) => chunk,
    }
}

/// The memory estimate of `checkpoint` under `options` on `ctx` (see [`Model::estimate_memory`]).
fn estimate(ctx: &GpuContext, checkpoint: &Checkpoint, options: &ModelOptions) -> Result<MemoryEstimate> {
    let weights = checkpoint.gpu_bytes(&options.load, Some(ctx.caps()))?;
    let session = crate::generate::state::session_estimate(
        ctx,
        &checkpoint.config.text_config,
        options.kv_window_positions,
        options.max_context,
        session_chunk_for(checkpoint, options),
    )?;
    Ok(MemoryEstimate {
        weights,
        kv_cache: session.kv_cache,
        scratch: session.scratch,
        max_context: options.max_context,
    })
}

/// The [`GpuError::DoesNotFit`] of `estimate` against `available` bytes of `limit`, with what
/// to try under `options`.
fn does_not_fit(
    estimate: &MemoryEstimate,
    available: u64,
    limit: String,
    options: &ModelOptions,
) -> Error {
    let mut advice = Vec::new();
    match options.load.quantize_on_load {
        None => advice.push(
            "a smaller quantization (an MLX 4-bit checkpoint, or ModelBuilder::quantize_on_load(4, 64))"
                .to_string(),
        ),
        Some((bits, _)) if bits > 2 => advice.push(format!(
            "fewer bits than {bits} (ModelBuilder::quantize_on_load), or a smaller model"
        )),
        Some(_) => advice.push("a smaller model".to_string()),
    }
    if options.load.float_format == FloatFormat::F32 {
        advice.push("f16 weights (ModelBuilder::with_float_format(FloatFormat::F16))".into());
    }
    if options.load.per_layer_table_on_gpu {
        advice.push(
            "the per-layer table on the host (ModelBuilder::per_layer_table_on_gpu(false))".into(),
        );
    }
    advice.push(format!(
        "a shorter context (ModelBuilder::with_max_context: the KV cache takes {} bytes at {} \
         tokens)",
        estimate.kv_cache, estimate.max_context
    ));
    Error::Gpu(GpuError::DoesNotFit {
        needed: estimate.total(),
        available,
        limit,
        breakdown: estimate.to_string(),
        advice: advice.join("; "),
    })
}

/// The patches of `n` rows of `width` pixel values at `positions` (x, y pairs), padding rows
/// (negative positions) dropped; the rest must fill a row-major grid.
fn grid_patches(
    path: &Path,
    values: &[f32],
    positions: &[i64],
    n: usize,
    width: usize,
) -> Result<ImagePatches> {
    let mut pixel_values = Vec::with_capacity(values.len());
    let mut pos_out = Vec::with_capacity(n);
    for i in 0..n {
        let (x, y) = (positions[2 * i], positions[2 * i + 1]);
        if x < 0 || y < 0 {
            continue;
        }
        pos_out.push([x as u32, y as u32]);
        pixel_values.extend_from_slice(&values[i * width..(i + 1) * width]);
    }
    let rows = pos_out.iter().map(|p| p[1] + 1).max().unwrap_or(0);
    let cols = pos_out.iter().map(|p| p[0] + 1).max().unwrap_or(0);
    for (i, p) in pos_out.iter().enumerate() {
        if cols == 0 || *p != [i as u32 % cols, i as u32 / cols] {
            return Err(Error::InvalidArgument(format!(
                "{}: patch {i} has position {:?}; patches must be in row-major grid order",
                path.display(),
                p
            )));
        }
    }
    if pos_out.len() != (rows * cols) as usize {
        return Err(Error::InvalidArgument(format!(
            "{}: {} patches do not fill a {rows}x{cols} grid",
            path.display(),
            pos_out.len()
        )));
    }
    Ok(ImagePatches {
        pixel_values,
        positions: pos_out,
        grid: (rows, cols),
    })
}

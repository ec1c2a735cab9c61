//! The decoder's forward pass: embed → layers → head, in prefill chunks or one decoded token,
//! each recorded into one [`Recorder`] and submitted once.

use std::ops::Range;
use std::sync::Arc;

use crate::config::TextConfig;
use crate::error::{Error, Result};
use crate::gpu::ops::{self, SampleScratch};
use crate::gpu::{GpuContext, GpuTensor, Matrix, Recorder};
use crate::model::media::{self, MediaRuns};
use crate::checkpoint::var_builder::VarBuilder;
use crate::checkpoint::{LoadError, Sink};

use super::attention::{AttnEnv, RopeTables};
use super::cache::KvCache;
use super::embedding::{TokenEmbedding, scatter_media_rows};
use super::head::LmHead;
use super::layer::{DecoderLayer, LayerRows};
use super::per_layer::{PerLayerEmbedding, PerLayerTable};
use super::workspace::Workspace;

/// Which logits a forward pass produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None (e.g. prefill of a prompt prefix).
    None,
    /// The last position only (generation).
    Last,
    /// Every position of the chunk (conformance dumps, parity tests).
    All,
}

/// Text decoder weights (canonical key prefix `language_model.`), one block per part of the
/// spec: embedding → per-layer inputs → layers → head.
#[derive(Debug)]
pub struct TextWeights<M = Matrix, V = GpuTensor> {
    /// `embed_tokens`; also the tied LM head.
    pub embed: TokenEmbedding<M>,
    /// The per-layer-embedding inputs (PLE models).
    pub per_layer: Option<PerLayerEmbedding<M, V>>,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer<M, V>>,
    /// Final norm and softcap.
    pub head: LmHead<V>,
}

impl<M, V> TextWeights<M, V> {
    /// Loads the decoder from `vb` (module `language_model`), the PLE table on the GPU when
    /// `ple_on_gpu`.
    pub(crate) fn load<S: Sink<M = M, V = V>>(
        cfg: &TextConfig,
        vb: &mut VarBuilder<'_, '_, S>,
        ple_on_gpu: bool,
    ) -> Result<Self, LoadError> {
        if !cfg.tie_word_embeddings {
            return Err(LoadError::Unsupported {
                what: "tie_word_embeddings = false (a separate lm_head) is not implemented".into(),
            });
        }
        let embed = TokenEmbedding::load(vb, cfg.vocab_size, cfg.hidden_size)?;
        let per_layer = cfg
            .has_ple()
            .then(|| PerLayerEmbedding::load(cfg, vb, ple_on_gpu))
            .transpose()?;
        let head = LmHead::load(cfg, vb)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(cfg, i, &mut vb.pp(format_args!("layers.{i}"))))
            .collect::<Result<_, _>>()?;
        Ok(TextWeights {
            embed,
            per_layer,
            layers,
            head,
        })
    }

    /// The PLE table, if the model has one.
    pub fn per_layer_table(&self) -> Option<&PerLayerTable<M>> {
        self.per_layer.as_ref().map(|p| &p.table)
    }

    /// Every matrix with its canonical module path (for inspection and tests).
    pub fn matrices(&self) -> Vec<(String, &M)> {
        let t = |n: &str| format!("language_model.{n}");
        let mut v: Vec<(String, &M)> = vec![(t("embed_tokens"), &self.embed.embed_tokens)];
        if let Some(p) = &self.per_layer {
            if let PerLayerTable::Gpu(m) = &p.table {
                v.push((t("embed_tokens_per_layer"), m));
            }
            v.push((t("per_layer_model_projection"), &p.model_projection));
        }
        for (i, l) in self.layers.iter().enumerate() {
            let p = |n: &str| format!("language_model.layers.{i}.{n}");
            let a = &l.self_attn;
            v.push((p("self_attn.q_proj"), &a.q_proj));
            if let Some(m) = a.kv.k_proj() {
                v.push((p("self_attn.k_proj"), m));
            }
            if let Some(m) = a.kv.v_proj() {
                v.push((p("self_attn.v_proj"), m));
            }
            v.push((p("self_attn.o_proj"), &a.o_proj));
            let mlp = l.mlp.dense();
            v.push((p("mlp.gate_proj"), &mlp.gate_proj));
            v.push((p("mlp.up_proj"), &mlp.up_proj));
            v.push((p("mlp.down_proj"), &mlp.down_proj));
            if let Some(pli) = &l.per_layer_input {
                v.push((p("per_layer_input_gate"), &pli.gate));
                v.push((p("per_layer_projection"), &pli.projection));
            }
        }
        v
    }
}

/// The text decoder: weights plus per-device constants (RoPE tables).
pub struct TextDecoder {
    ctx: GpuContext,
    cfg: TextConfig,
    w: Arc<TextWeights>,
    rope: RopeTables,
    /// Media token id whose embedding rows are replaced (image soft token), if any.
    media_token: Option<u32>,
    /// First layer of the trailing run of layers that own no KV cache (the KV-shared layers;
    /// `num_hidden_layers` when the last layer owns its cache).
    shared_tail: usize,
    /// Image blocks attend bidirectionally on sliding layers (`use_bidirectional_attention:
    /// "vision"` and a media token): prefill chunks then never cut a block.
    bidir: bool,
    /// Most positions per KV-cache buffer (`None`: what one storage binding holds).
    kv_window: Option<usize>,
}

/// The sequences a recorded forward pass runs over.
#[derive(Clone, Copy)]
pub(crate) enum Seqs<'a> {
    /// One sequence's chunk, at consecutive positions from its cache's position.
    Chunk(&'a KvCache),
    /// A batched decode step: row `b` is the next token of sequence `b`, at the position of
    /// its own cache.
    Batch(&'a [&'a KvCache]),
}

/// One sequence of a batched decode step ([`TextDecoder::step_batch`]).
pub struct BatchSeq<'a> {
    /// The sequence's KV cache (advanced by one).
    pub cache: &'a mut KvCache,
    /// The token it feeds at the cache's position.
    pub token: u32,
}

/// What a token-selection hook of [`TextDecoder::step_with`] / [`TextDecoder::select_last`]
/// works on: the last position's logits (`[vocab]` f32, may be modified in place), the u32
/// output the selected id must be written to, and the selection ops' scratch.
pub struct Selection<'a> {
    /// The logits row (`[vocab]`).
    pub logits: &'a GpuTensor,
    /// Where the selected token id goes (u32 `[1]`).
    pub out: &'a GpuTensor,
    /// Scratch for [`ops::argmax`] / [`ops::sample()`] / [`ops::top_k`].
    pub scratch: &'a SampleScratch,
}

impl TextDecoder {
    /// The decoder's weights (for inspection and tests).
    pub fn weights(&self) -> &TextWeights {
        &self.w
    }

    /// Builds the decoder over loaded weights.
    pub fn new(
        ctx: &GpuContext,
        cfg: &TextConfig,
        weights: Arc<TextWeights>,
        media_token: Option<u32>,
    ) -> Result<Self> {
        Ok(TextDecoder {
            ctx: ctx.clone(),
            cfg: cfg.clone(),
            w: weights,
            rope: RopeTables::new(ctx, cfg)?,
            media_token,
            shared_tail: (0..cfg.num_hidden_layers)
                .rev()
                .take_while(|&i| cfg.kv_source(i) != Some(i))
                .last()
                .unwrap_or(cfg.num_hidden_layers),
            bidir: cfg.bidirectional_vision() && media_token.is_some(),
            kv_window: None,
        })
    }

    /// Splits every layer's KV cache of later sessions into buffers of at most `positions`
    /// positions (default and `None`: as many as one storage binding holds).
    pub fn with_kv_window(mut self, positions: Option<usize>) -> Self {
        self.kv_window = positions.map(|p| p.max(1));
        self
    }

    /// The image blocks of `ids` that must each be prefilled in one chunk (their soft tokens
    /// see each other on sliding layers); none unless the model is bidirectional-vision.
    pub fn image_blocks(&self, ids: &[u32]) -> Vec<(usize, usize)> {
        match (self.bidir, self.media_token) {
            (true, Some(t)) => media::image_blocks(ids, t),
            _ => Vec::new(),
        }
    }

    /// The smallest prefill chunk for a prompt `ids`: its longest image block on a
    /// bidirectional-vision model (a chunk must hold a whole block), else 1.
    pub fn min_chunk(&self, ids: &[u32]) -> usize {
        self.image_blocks(ids)
            .iter()
            .map(|(s, e)| e - s)
            .max()
            .unwrap_or(1)
    }

    /// The configuration.
    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    /// Allocates the KV cache for up to `max_context` tokens and a workspace for prefill chunks
    /// of `chunk` tokens (sliding rings of `sliding_window + chunk` slots). On a
    /// bidirectional-vision model `chunk` must be at least the longest image block a prompt
    /// will hold ([`min_chunk`](Self::min_chunk)); [`forward`](Self::forward) refuses a longer
    /// block.
    ///
    /// The chunk is lowered where its per-token buffers would not fit one storage binding of
    /// the device (the cache rings are split into windows that do, see [`LayerCache`](super::LayerCache)).
    pub fn new_session(&self, max_context: usize, chunk: usize) -> Result<(KvCache, Workspace)> {
        session_buffers(&self.ctx, &self.cfg, self.kv_window, max_context, chunk)
    }

    /// The routing decisions of every MoE layer for the prompt `ids` (run in one chunk from
    /// position 0): per layer, the chosen expert ids `[L, k]` and their weights `[L, k]`
    /// (renormalised and scaled by `per_expert_scale`), in the router's order. An error on a
    /// dense model.
    pub fn router_trace(
        &self,
        ids: &[u32],
        media: Option<&MediaRuns>,
    ) -> Result<Vec<(Vec<u32>, Vec<f32>)>> {
        let shape = self
            .cfg
            .moe()
            .ok_or_else(|| Error::InvalidArgument("not a mixture-of-experts model".into()))?;
        let l = ids.len().max(1);
        let (mut cache, mut ws) = self.new_session(l + 1, l)?;
        if ws.chunk < l {
            return Err(Error::InvalidArgument(format!(
                "a router trace runs the prompt in one chunk; {l} tokens exceed the largest \
                 chunk of this device ({})",
                ws.chunk
            )));
        }
        let layers = self.cfg.num_hidden_layers;
        ws.moe
            .as_mut()
            .ok_or_else(|| Error::InvalidArgument("the workspace has no MoE buffers".into()))?
            .enable_trace(&self.ctx, layers)?;
        self.forward(&mut cache, &mut ws, ids, media, Logits::Last)?;
        let Some((tid, tw)) = ws.moe.as_ref().and_then(|m| m.trace.as_ref()) else {
            return Err(Error::InvalidArgument("no router trace".into()));
        };
        let (all_ids, all_w) = (tid.to_u32(&self.ctx)?, tw.to_f32(&self.ctx)?);
        let per = ws.chunk * shape.top_k;
        let n = ids.len() * shape.top_k;
        Ok((0..layers)
            .map(|i| {
                (
                    all_ids[i * per..i * per + n].to_vec(),
                    all_w[i * per..i * per + n].to_vec(),
                )
            })
            .collect())
    }

    /// Runs `ids` through the decoder at the cache's current position, in chunks of the
    /// workspace size, and advances the cache. Returns the requested logits (`[rows, vocab]`,
    /// flattened) read back to the host.
    pub fn forward(
        &self,
        cache: &mut KvCache,
        ws: &mut Workspace,
        ids: &[u32],
        media: Option<&MediaRuns>,
        logits: Logits,
    ) -> Result<Vec<f32>> {
        let n = ids.len();
        let blocks = self.check_prompt(cache, ws, ids)?;
        let mut out = Vec::new();
        let mut start = 0;
        while start < n {
            // All positions' logits: sub-chunks that fit the logits buffer (exact: chunked
            // prefill gives the same result). With image blocks the chunk keeps its full size
            // and the head runs in sub-batches of the logits buffer instead.
            let step = match logits {
                Logits::All if blocks.is_empty() => ws.chunk.min(ws.logits_rows),
                _ => ws.chunk,
            };
            let end = media::chunk_end(&blocks, start, step, n).ok_or_else(|| {
                Error::InvalidArgument("an image block is longer than the prefill chunk".into())
            })?;
            let len = end - start;
            let chunk_ids = &ids[start..end];
            let last_chunk = end == n;
            let want = match logits {
                Logits::All => Logits::All,
                Logits::Last if last_chunk => Logits::Last,
                _ => Logits::None,
            };
            let bounds = self.chunk_bounds(&blocks, cache.position(), start..end);
            let mut rec = self.ctx.recorder();
            let chunk_media = media.map(|m| (m, start..end));
            let head_now = want != Logits::All || len <= ws.logits_rows;
            self.record_rows(
                &mut rec,
                Seqs::Chunk(cache),
                ws,
                chunk_ids,
                chunk_media,
                bounds.as_deref(),
                want,
                head_now,
            )?;
            rec.submit()?;
            match want {
                Logits::All if head_now => out.extend(ws.logits.rows(0, len).to_f32(&self.ctx)?),
                Logits::All => self.head_in_batches(ws, len, &mut out)?,
                Logits::Last => out.extend(ws.logits.rows(0, 1).to_f32(&self.ctx)?),
                Logits::None => {}
            }
            cache.advance(len);
            start = end;
        }
        Ok(out)
    }

    /// Checks a whole prompt before any of it runs (so a failure leaves the cache as it was):
    /// context room, ids inside the vocabulary, and every image block of a bidirectional-vision
    /// model within one prefill chunk. Returns the image blocks.
    fn check_prompt(
        &self,
        cache: &KvCache,
        ws: &Workspace,
        ids: &[u32],
    ) -> Result<Vec<(usize, usize)>> {
        let n = ids.len();
        if cache.position() + n > cache.max_context() {
            return Err(Error::InvalidArgument(format!(
                "context overflow: position {} + {n} tokens exceeds the maximum context of {} \
                 (raise it when creating the session)",
                cache.position(),
                cache.max_context()
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {} ids",
                self.cfg.vocab_size
            )));
        }
        // Image blocks (bidirectional-vision models) are never cut by a chunk boundary.
        let blocks = self.image_blocks(ids);
        if let Some(&(s, e)) = blocks.iter().find(|&&(s, e)| e - s > ws.chunk) {
            return Err(Error::InvalidArgument(format!(
                "the image block at positions {s}..{e} has {} soft tokens but the session's \
                 prefill chunk is {} tokens: on this model an image's soft tokens attend to each \
                 other and must be prefilled in one chunk (create the session with a larger \
                 chunk)",
                e - s,
                ws.chunk
            )));
        }
        Ok(blocks)
    }

    /// The LM head over a recorded chunk's `len` final-normed rows, one logits buffer at a time,
    /// appending the logits to `out`.
    fn head_in_batches(&self, ws: &mut Workspace, len: usize, out: &mut Vec<f32>) -> Result<()> {
        let mut r = 0;
        while r < len {
            let m = ws.logits_rows.min(len - r);
            let mut rec = self.ctx.recorder();
            self.record_head(&mut rec, ws, len, r..r + m)?;
            rec.submit()?;
            out.extend(ws.logits.rows(0, m).to_f32(&self.ctx)?);
            r += m;
        }
        Ok(())
    }

    /// The per-query key bounds of the chunk `range` of the forward pass's ids on a
    /// bidirectional-vision model, when the chunk holds image soft tokens (else `None`: plain
    /// causal attention). `pos0`: absolute position of the chunk's first token.
    fn chunk_bounds(
        &self,
        blocks: &[(usize, usize)],
        pos0: usize,
        range: Range<usize>,
    ) -> Option<Vec<u32>> {
        if !blocks
            .iter()
            .any(|&(s, e)| s < range.end && range.start < e)
        {
            return None;
        }
        let mut b = Vec::with_capacity(2 * range.len());
        // block_bounds takes the position of ids[0]: the chunk starts at range.start.
        let rule = self.cfg.image_block_mask;
        media::block_bounds(blocks, pos0 - range.start, range, rule, &mut b);
        Some(b)
    }

    /// One greedy decode step: feeds `token` at the cache position, samples the next token with
    /// argmax on the GPU and reads back only its id (4 bytes). One submit.
    pub fn step_greedy(&self, cache: &mut KvCache, ws: &mut Workspace, token: u32) -> Result<u32> {
        self.step_with(cache, ws, token, |rec, sel| {
            ops::argmax(rec, sel.logits, sel.out, sel.scratch)?;
            Ok(())
        })
    }

    /// One decode step with a caller-chosen token selection: feeds `token` at the cache
    /// position, records the decoder, then `select` (which must write the next token id into
    /// [`Selection::out`], e.g. with [`ops::sample()`] or [`ops::argmax`], optionally after
    /// in-place logit processing such as [`ops::repetition_penalty`]) into the **same**
    /// recorder; one submit, and only the 4-byte id is read back. Advances the cache by one.
    pub fn step_with(
        &self,
        cache: &mut KvCache,
        ws: &mut Workspace,
        token: u32,
        select: impl FnOnce(&mut Recorder, &Selection<'_>) -> Result<()>,
    ) -> Result<u32> {
        let mut rec = self.ctx.recorder();
        let seqs = Seqs::Chunk(cache);
        self.record_rows(&mut rec, seqs, ws, &[token], None, None, Logits::Last, true)?;
        let logits = ws.logits.view(0, &[self.cfg.vocab_size]);
        let out = ws.token.view(0, &[1]);
        select(
            &mut rec,
            &Selection {
                logits: &logits,
                out: &out,
                scratch: &ws.sample_scratch,
            },
        )?;
        rec.read_back(&ws.readback, &out)?;
        rec.submit()?;
        ws.last_step = rec.stats();
        let id = ws.readback.read_u32(&self.ctx)?;
        cache.advance(1);
        Ok(id)
    }

    /// The most sequences one [`step_batch`](Self::step_batch) over `ws` takes.
    pub fn max_batch(&self, ws: &Workspace) -> usize {
        ws.chunk
            .min(ws.logits_rows)
            .min(ops::MATVEC_MAX_ROWS)
            .min(ws.token.numel())
    }

    /// A workspace for batched decode steps of up to `rows` sequences whose caches hold up to
    /// `max_context` tokens (no KV cache of its own).
    pub fn batch_workspace(&self, rows: usize, max_context: usize) -> Result<Workspace> {
        let rows = rows.clamp(1, ops::MATVEC_MAX_ROWS);
        // The windows a cache of this context is split into, measured on a dry run.
        let (dry, _) = self.ctx.measuring();
        let windows = KvCache::new(&dry, &self.cfg, max_context, 1, self.kv_window)?.max_windows();
        Workspace::new(&self.ctx, &self.cfg, rows, windows)
    }

    /// One decode step of several sequences at once ([`max_batch`](Self::max_batch) at
    /// most): row `b` feeds `seqs[b].token` at the position of `seqs[b].cache`, every weight
    /// matrix is read once for all rows, and `select(b, …)` records the token selection of
    /// sequence `b` (as [`step_with`](Self::step_with)'s hook does) into the **same**
    /// recorder: one submit for the whole batch, and only the `4·B` bytes of the selected ids
    /// are read back. Every sequence's logits are bit-identical to a [`step_with`] of that
    /// sequence alone (the matvec computes each row with the same instructions for any batch
    /// size; attention and the per-row kernels run per sequence). Advances every cache by one.
    pub fn step_batch(
        &self,
        seqs: &mut [BatchSeq<'_>],
        ws: &mut Workspace,
        mut select: impl FnMut(usize, &mut Recorder, &Selection<'_>) -> Result<()>,
    ) -> Result<Vec<u32>> {
        let n = seqs.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let most = self.max_batch(ws);
        if n > most {
            return Err(Error::InvalidArgument(format!(
                "a batched step of {n} sequences exceeds this workspace's {most}"
            )));
        }
        for (b, s) in seqs.iter().enumerate() {
            let c = &s.cache;
            if c.position() + 1 > c.max_context() {
                return Err(Error::InvalidArgument(format!(
                    "context overflow: sequence {b} is at position {} of its maximum context {}",
                    c.position(),
                    c.max_context()
                )));
            }
            if c.max_windows() > ws.kv_windows {
                return Err(Error::InvalidArgument(format!(
                    "sequence {b}'s KV cache is split into {} windows but the batch workspace \
                     was made for {} (make it for the largest context of the batch)",
                    c.max_windows(),
                    ws.kv_windows
                )));
            }
        }
        let ids: Vec<u32> = seqs.iter().map(|s| s.token).collect();
        let mut rec = self.ctx.recorder();
        {
            let caches: Vec<&KvCache> = seqs.iter().map(|s| &*s.cache).collect();
            let all = Logits::All;
            self.record_rows(&mut rec, Seqs::Batch(&caches), ws, &ids, None, None, all, true)?;
        }
        let vocab = self.cfg.vocab_size;
        for b in 0..n {
            let logits = ws.logits.view(b * vocab, &[vocab]);
            let out = ws.token.view(b, &[1]);
            let sel = Selection {
                logits: &logits,
                out: &out,
                scratch: &ws.sample_scratch,
            };
            select(b, &mut rec, &sel)?;
        }
        rec.read_back(&ws.readback, &ws.token.view(0, &[n]))?;
        rec.submit()?;
        ws.last_step = rec.stats();
        let bytes = ws.readback.read(&self.ctx, 4 * n as u64)?;
        for s in seqs.iter_mut() {
            s.cache.advance(1);
        }
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Selects a token from the logits the last [`forward`](Self::forward) with
    /// [`Logits::Last`] left on the GPU (the prompt's last position), with the same `select`
    /// hook as [`step_with`](Self::step_with); one submit, 4 bytes read back. The cache is not
    /// touched.
    pub fn select_last(
        &self,
        ws: &mut Workspace,
        select: impl FnOnce(&mut Recorder, &Selection<'_>) -> Result<()>,
    ) -> Result<u32> {
        let mut rec = self.ctx.recorder();
        let logits = ws.logits.view(0, &[self.cfg.vocab_size]);
        let out = ws.token.view(0, &[1]);
        select(
            &mut rec,
            &Selection {
                logits: &logits,
                out: &out,
                scratch: &ws.sample_scratch,
            },
        )?;
        rec.submit()?;
        Ok(out.to_u32(&self.ctx)?[0])
    }

    /// Greedy generation of up to `max_new` tokens after the prompt (the prompt is prefilled
    /// first). Stops early at any of `stop` ids (the stop id is included).
    pub fn generate_greedy(
        &self,
        cache: &mut KvCache,
        ws: &mut Workspace,
        prompt: &[u32],
        media: Option<&MediaRuns>,
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        let logits = self.forward(cache, ws, prompt, media, Logits::Last)?;
        let mut next = argmax_host(&logits);
        let mut out = Vec::with_capacity(max_new);
        while out.len() < max_new {
            out.push(next);
            if stop.contains(&next) || out.len() == max_new {
                break;
            }
            next = self.step_greedy(cache, ws, next)?;
        }
        Ok(out)
    }

    /// Records one chunk of one sequence ([`Seqs::Chunk`]) or a batched decode step
    /// ([`Seqs::Batch`]: one row per sequence; no media, causal, [`Logits::All`]): embed (with
    /// the media scatter) → per-layer inputs → layers → head.
    /// `media`: the forward pass's placed media and the chunk's positions within its ids.
    /// `bounds`: per query, the exclusive key bound of sliding layers (image blocks of
    /// bidirectional-vision models; `None`: causal). `head`: record the LM head too (else
    /// the final-normed rows stay in `ws.xn` for [`record_head`](Self::record_head)).
    #[allow(clippy::too_many_arguments)]
    fn record_rows(
        &self,
        rec: &mut Recorder,
        seqs: Seqs<'_>,
        ws: &mut Workspace,
        ids: &[u32],
        media: Option<(&MediaRuns, Range<usize>)>,
        bounds: Option<&[u32]>,
        want: Logits,
        head: bool,
    ) -> Result<()> {
        let (w, l) = (&*self.w, ids.len());
        let eps = self.cfg.rms_norm_eps as f32;
        let pos0 = match seqs {
            Seqs::Chunk(cache) => cache.position(),
            Seqs::Batch(_) => 0,
        };
        if let Seqs::Chunk(cache) = seqs
            && pos0 + l > cache.max_context()
        {
            return Err(Error::InvalidArgument(format!(
                "context overflow: position {} + {} tokens exceeds the maximum context of {} \
                 (raise it when creating the session)",
                pos0,
                l,
                cache.max_context()
            )));
        }
        let (h, xn) = (ws.h.rows(0, l), ws.xn.rows(0, l));
        let (bounds, ple) = self.record_inputs(rec, ws, ids, media, bounds, &h)?;
        // The first layer's input norm; every later one (and the final norm) is fused into the
        // residual kernel that produces its input (`next_norm`).
        if let Some(first) = w.layers.first() {
            ops::rms_norm(rec, &h, Some(&first.input_layernorm), &xn, eps)?;
        }
        let env = AttnEnv {
            ws,
            seqs,
            rope: &self.rope,
            eps,
        };
        for (i, layer) in w.layers.iter().enumerate() {
            // Every row of a batch is some sequence's last position.
            let r0 = match seqs {
                Seqs::Chunk(_) => self.first_live_row(i, l, want),
                Seqs::Batch(_) => 0,
            };
            let rows = LayerRows {
                h: h.rows(r0, l - r0),
                xn: xn.rows(r0, l - r0),
                ple: ple.as_ref().map(|p| p.rows(r0, l - r0)),
                bounds: bounds.as_ref().map(|b| b.rows(2 * r0, 2 * (l - r0))),
                pos0: pos0 + r0,
            };
            let next_norm = match w.layers.get(i + 1) {
                Some(next) => Some(&next.input_layernorm),
                None if want != Logits::None => Some(&w.head.norm),
                None => None,
            };
            layer.record(rec, &env, &rows, next_norm)?;
        }
        // Tied LM head over the final-normed rows (xn; h itself when there are no layers).
        let n = match want {
            Logits::None => return Ok(()),
            _ if !head => return Ok(()),
            Logits::Last => 1,
            Logits::All => l,
        };
        self.record_head(rec, ws, l, l - n..l)
    }

    /// Records the chunk's inputs into `h` (`[L, H]`): h0 = embed(ids') * sqrt(H) (ids' = ids
    /// with media positions -> pad) with the media rows replaced by the projected features;
    /// writes the image-block `bounds` and records the per-layer inputs. Returns the bounds
    /// tensor and the per-layer inputs (when the model has them).
    fn record_inputs(
        &self,
        rec: &mut Recorder,
        ws: &mut Workspace,
        ids: &[u32],
        media: Option<(&MediaRuns, Range<usize>)>,
        bounds: Option<&[u32]>,
        h: &GpuTensor,
    ) -> Result<(Option<GpuTensor>, Option<GpuTensor>)> {
        let (w, l) = (&*self.w, ids.len());
        let lookup_ids = self.lookup_ids(ids)?;
        let ids_t = ws.ids.rows(0, l);
        ids_t.write_u32(&self.ctx, &lookup_ids)?;
        w.embed.record(rec, &ids_t, h)?;
        if let Some((m, positions)) = media {
            scatter_media_rows(rec, m, positions, h)?;
        }
        let bounds = match bounds {
            Some(b) => {
                let t = ws.attn_bounds.rows(0, l).reshape(&[2 * l]);
                t.write_u32(&self.ctx, b)?;
                Some(t)
            }
            None => None,
        };
        let eps = self.cfg.rms_norm_eps as f32;
        let ple = match &w.per_layer {
            Some(p) => Some(p.record(rec, &self.ctx, ws, &lookup_ids, &ids_t, h, eps)?),
            None => None,
        };
        Ok((bounds, ple))
    }

    /// Records the LM head over `rows` of the last `l`-token chunk (final-normed in `ws.xn`;
    /// `ws.h` when the model has no layers) into `ws.logits` rows `0..rows.len()`.
    fn record_head(
        &self,
        rec: &mut Recorder,
        ws: &Workspace,
        l: usize,
        rows: Range<usize>,
    ) -> Result<()> {
        let w = &*self.w;
        let eps = self.cfg.rms_norm_eps as f32;
        let x = if w.layers.is_empty() { &ws.h } else { &ws.xn };
        let x = x.rows(0, l).rows(rows.start, rows.len());
        let logits = ws.logits.rows(0, rows.len());
        let normed = !w.layers.is_empty();
        w.head
            .record(rec, &w.embed, &x, normed, &ws.final_h, &logits, eps)
    }

    /// The chunk's token ids for the embedding lookups (media positions -> pad), checked
    /// against the vocabulary.
    fn lookup_ids(&self, ids: &[u32]) -> Result<Vec<u32>> {
        let c = &self.cfg;
        let lookup: Vec<u32> = ids
            .iter()
            .map(|&t| {
                if Some(t) == self.media_token {
                    c.pad_token_id
                } else {
                    t
                }
            })
            .collect();
        if let Some(&t) = lookup.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::InvalidArgument(format!(
                "token id {t} is outside the vocabulary of {} ids",
                c.vocab_size
            )));
        }
        Ok(lookup)
    }

    /// First row of an `l`-token chunk that layer `i` computes: from the first layer of the
    /// trailing run of KV-shared layers on, only the last position matters unless every
    /// position's logits are wanted (those layers write no cache that a later layer or step
    /// reads, so the other rows would be dead work).
    fn first_live_row(&self, i: usize, l: usize, want: Logits) -> usize {
        if want != Logits::All && i >= self.shared_tail {
            l - 1
        } else {
            0
        }
    }
}

/// Index of the largest value (first on ties), as torch.argmax.
pub fn argmax_host(v: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// The KV cache and workspace of a session of a model with config `cfg` on `ctx` (see
/// [`TextDecoder::new_session`]); also run on a dry-run context to estimate their size before
/// a model is loaded.
pub(crate) fn session_buffers(
    ctx: &GpuContext,
    cfg: &TextConfig,
    kv_window: Option<usize>,
    max_context: usize,
    chunk: usize,
) -> Result<(KvCache, Workspace)> {
    let chunk = chunk.clamp(1, Workspace::max_chunk(ctx, cfg));
    let cache = KvCache::new(ctx, cfg, max_context, chunk, kv_window)?;
    let ws = Workspace::new(ctx, cfg, chunk, cache.max_windows())?;
    Ok((cache, ws))
}

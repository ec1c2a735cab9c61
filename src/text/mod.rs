//! The Gemma 4 text decoder (spec: `gemma4-architecture.md` §1).
//!
//! Per layer: input norm → attention (q/k norms, weightless v norm, RoPE per layer type,
//! sliding-window or full attention, KV sharing) → post-attention norm + residual → pre-FF norm →
//! gelu_tanh-gated MLP → post-FF norm + residual → per-layer-input block → `× layer_scalar`.
//! Final norm, tied LM head, softcap.
//!
//! The model code only calls ops from [`crate::gpu::ops`]; everything for one prefill chunk or
//! one decoded token is recorded into one [`Recorder`] and submitted once.

mod cache;

pub use cache::KvCache;

use std::sync::Arc;

use crate::config::{LayerType, TextConfig};
use crate::error::{Error, Result};
use crate::gpu::ops::{
    self, AttnMask, AttnScratch, AttnShape, BLayout, Elementwise, KvLayout, SampleScratch,
    elementwise_inplace,
};
use crate::gpu::{DType, GpuContext, GpuTensor, Readback, Recorder, RecorderStats};
use crate::weights::{PerLayerTable, TextWeights};

/// Largest logits buffer a workspace allocates (bytes): `[chunk, vocab]` f32 logits of a 262k
/// vocabulary would take 1 MiB per row.
pub const MAX_LOGITS_BYTES: u64 = 64 << 20;

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

/// Image (or other media) features to scatter into the embedding stream of a forward pass.
#[derive(Debug, Clone, Copy)]
pub struct MediaFeatures<'a> {
    /// `[n_soft_tokens, hidden]` features, in prompt order.
    pub features: &'a GpuTensor,
    /// Index of the first feature row that belongs to this forward pass.
    pub first_row: usize,
}

/// The text decoder: weights plus per-device constants (RoPE tables).
pub struct TextDecoder {
    ctx: GpuContext,
    cfg: TextConfig,
    w: Arc<TextWeights>,
    /// inv_freq per layer type (sliding, full)
    inv_freq: [GpuTensor; 2],
    /// Media token id whose embedding rows are replaced (image soft token), if any.
    media_token: Option<u32>,
    /// First layer of the trailing run of layers that own no KV cache (the KV-shared layers;
    /// `num_hidden_layers` when the last layer owns its cache).
    shared_tail: usize,
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

/// Per-session buffers: hidden states and every intermediate, sized for `chunk` tokens.
/// Allocated once; reused by every prefill chunk and decode step.
pub struct Workspace {
    chunk: usize,
    ids: GpuTensor,
    h: GpuTensor,
    xn: GpuTensor,
    qkv: GpuTensor,
    q: GpuTensor,
    attn: GpuTensor,
    o: GpuTensor,
    gate: GpuTensor,
    up: GpuTensor,
    ple: GpuTensor,
    ple_tok: GpuTensor,
    ple_gate: GpuTensor,
    final_h: GpuTensor,
    logits: GpuTensor,
    /// Rows of `logits`: all positions of a chunk when they fit one binding and
    /// [`MAX_LOGITS_BYTES`]; fewer for large vocabularies ([`Logits::All`] then runs in
    /// sub-chunks of this many tokens).
    logits_rows: usize,
    token: GpuTensor,
    attn_scratch: AttnScratch,
    sample_scratch: SampleScratch,
    readback: Readback,
    host_ple: Vec<f32>,
    last_step: RecorderStats,
}

impl Workspace {
    /// Dispatches, submits and copies of the last decode step (the debug counter of the
    /// decode loop: one submit per token).
    pub fn last_step_stats(&self) -> RecorderStats {
        self.last_step
    }

    /// Bytes of GPU memory held by the workspace (every buffer it owns).
    pub fn bytes(&self) -> u64 {
        let tensors = [
            &self.ids,
            &self.h,
            &self.xn,
            &self.qkv,
            &self.q,
            &self.attn,
            &self.o,
            &self.gate,
            &self.up,
            &self.ple,
            &self.ple_tok,
            &self.ple_gate,
            &self.final_h,
            &self.logits,
            &self.token,
        ];
        tensors.iter().map(|t| t.buffer.size()).sum::<u64>()
            + self.attn_scratch.bytes()
            + self.sample_scratch.bytes()
    }
}

impl TextDecoder {
    /// Builds the decoder over loaded weights.
    pub fn new(
        ctx: &GpuContext,
        cfg: &TextConfig,
        weights: Arc<TextWeights>,
        media_token: Option<u32>,
    ) -> Result<Self> {
        // One inverse-frequency table per layer type, from the first layer of that type.
        let mk = |t: LayerType| -> Result<GpuTensor> {
            let f = match (0..cfg.num_hidden_layers).find(|&i| cfg.layer_types[i] == t) {
                Some(i) => {
                    let r = cfg.rope(i);
                    let partial =
                        (r.rope_type == "proportional").then_some(r.partial_rotary_factor as f32);
                    ops::rope_inv_freq(cfg.layer_head_dim(i), r.rope_theta, partial)
                }
                None => vec![0.0; 1],
            };
            Ok(GpuTensor::from_f32(ctx, &[f.len()], &f)?)
        };
        Ok(TextDecoder {
            ctx: ctx.clone(),
            cfg: cfg.clone(),
            w: weights,
            inv_freq: [
                mk(LayerType::SlidingAttention)?,
                mk(LayerType::FullAttention)?,
            ],
            media_token,
            shared_tail: (0..cfg.num_hidden_layers)
                .rev()
                .take_while(|&i| cfg.kv_source(i) != Some(i))
                .last()
                .unwrap_or(cfg.num_hidden_layers),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    /// Allocates the KV cache for up to `max_context` tokens and a workspace for prefill chunks
    /// of `chunk` tokens.
    pub fn new_session(&self, max_context: usize, chunk: usize) -> Result<(KvCache, Workspace)> {
        let chunk = chunk.max(1);
        let cache = KvCache::new(&self.ctx, &self.cfg, max_context, chunk)?;
        let ws = self.workspace(chunk)?;
        Ok((cache, ws))
    }

    fn workspace(&self, chunk: usize) -> Result<Workspace> {
        let c = &self.cfg;
        let ctx = &self.ctx;
        let h = c.hidden_size;
        let max_hd = (0..c.num_hidden_layers)
            .map(|i| c.layer_head_dim(i))
            .max()
            .unwrap_or(c.head_dim);
        let max_qkv = (0..c.num_hidden_layers)
            .map(|i| (c.num_attention_heads + 2 * c.layer_kv_heads(i)) * c.layer_head_dim(i))
            .max()
            .unwrap_or(1);
        let max_i = (0..c.num_hidden_layers)
            .map(|i| c.intermediate(i))
            .max()
            .unwrap_or(c.intermediate_size);
        let np = c.num_hidden_layers * c.hidden_size_per_layer_input;
        let z = |shape: &[usize]| GpuTensor::zeros(ctx, shape, DType::F32);
        let row_bytes = (c.vocab_size.max(1) * 4) as u64;
        let logits_rows = (ctx.caps().max_binding_size.min(MAX_LOGITS_BYTES) / row_bytes)
            .clamp(1, chunk as u64) as usize;
        Ok(Workspace {
            chunk,
            ids: GpuTensor::zeros(ctx, &[chunk], DType::U32)?,
            h: z(&[chunk, h])?,
            xn: z(&[chunk, h])?,
            qkv: z(&[chunk, max_qkv])?,
            q: z(&[chunk, c.num_attention_heads * max_hd])?,
            attn: z(&[chunk, c.num_attention_heads * max_hd])?,
            o: z(&[chunk, h])?,
            gate: z(&[chunk, max_i])?,
            up: z(&[chunk, max_i])?,
            ple: z(&[chunk, np.max(1)])?,
            ple_tok: z(&[chunk, np.max(1)])?,
            ple_gate: z(&[chunk, c.hidden_size_per_layer_input.max(1)])?,
            final_h: z(&[chunk, h])?,
            logits: z(&[logits_rows, c.vocab_size])?,
            logits_rows,
            token: GpuTensor::zeros(ctx, &[1], DType::U32)?,
            attn_scratch: AttnScratch::new(ctx, c.num_attention_heads, 64, max_hd)?,
            sample_scratch: SampleScratch::new(ctx, c.vocab_size)?,
            readback: Readback::new(ctx, 4)?,
            host_ple: vec![0.0; chunk * np],
            last_step: RecorderStats::default(),
        })
    }

    /// Runs `ids` through the decoder at the cache's current position, in chunks of the
    /// workspace size, and advances the cache. Returns the requested logits (`[rows, vocab]`,
    /// flattened) read back to the host.
    pub fn forward(
        &self,
        cache: &mut KvCache,
        ws: &mut Workspace,
        ids: &[u32],
        media: Option<&GpuTensor>,
        logits: Logits,
    ) -> Result<Vec<f32>> {
        let n = ids.len();
        // Check the whole prompt before running any of it, so a failure leaves the cache as it was.
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
        let mut out = Vec::new();
        let mut media_row = 0usize;
        let mut start = 0;
        while start < n {
            // All positions' logits: sub-chunks that fit the logits buffer (exact: chunked
            // prefill gives the same result).
            let step = match logits {
                Logits::All => ws.chunk.min(ws.logits_rows),
                _ => ws.chunk,
            };
            let len = step.min(n - start);
            let chunk_ids = &ids[start..start + len];
            let last_chunk = start + len == n;
            let want = match logits {
                Logits::All => Logits::All,
                Logits::Last if last_chunk => Logits::Last,
                _ => Logits::None,
            };
            let mut rec = self.ctx.recorder();
            self.record_chunk(&mut rec, cache, ws, chunk_ids, media, &mut media_row, want)?;
            rec.submit()?;
            match want {
                Logits::All => {
                    let v = self.cfg.vocab_size;
                    out.extend(self.ctx.read_f32(&ws.logits.buffer, 0, len * v)?);
                }
                Logits::Last => {
                    let v = self.cfg.vocab_size;
                    out.extend(self.ctx.read_f32(&ws.logits.buffer, 0, v)?);
                }
                Logits::None => {}
            }
            cache.advance(len);
            start += len;
        }
        if let Some(m) = media
            && media_row != m.shape[0]
        {
            return Err(Error::InvalidArgument(format!(
                "{} image soft tokens in the prompt but {} image feature rows were given",
                media_row, m.shape[0]
            )));
        }
        Ok(out)
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
        let mut media_row = 0;
        self.record_chunk(
            &mut rec,
            cache,
            ws,
            &[token],
            None,
            &mut media_row,
            Logits::Last,
        )?;
        let logits = ws.logits.view(0, &[self.cfg.vocab_size]);
        select(
            &mut rec,
            &Selection {
                logits: &logits,
                out: &ws.token,
                scratch: &ws.sample_scratch,
            },
        )?;
        ws.readback.record(&mut rec, &ws.token.buffer, 0, 4)?;
        rec.submit()?;
        ws.last_step = rec.stats();
        let id = ws.readback.read_u32(&self.ctx)?;
        cache.advance(1);
        Ok(id)
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
        select(
            &mut rec,
            &Selection {
                logits: &logits,
                out: &ws.token,
                scratch: &ws.sample_scratch,
            },
        )?;
        rec.submit()?;
        Ok(self.ctx.read_u32(&ws.token.buffer, 0, 1)?[0])
    }

    /// Greedy generation of up to `max_new` tokens after the prompt (the prompt is prefilled
    /// first). Stops early at any of `stop` ids (the stop id is included).
    pub fn generate_greedy(
        &self,
        cache: &mut KvCache,
        ws: &mut Workspace,
        prompt: &[u32],
        media: Option<&GpuTensor>,
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

    #[allow(clippy::too_many_arguments)]
    fn record_chunk(
        &self,
        rec: &mut Recorder,
        cache: &mut KvCache,
        ws: &mut Workspace,
        ids: &[u32],
        media: Option<&GpuTensor>,
        media_row: &mut usize,
        want: Logits,
    ) -> Result<()> {
        let c = &self.cfg;
        let w = &*self.w;
        let eps = c.rms_norm_eps as f32;
        let l = ids.len();
        let hdim = c.hidden_size;
        let pos0 = cache.position();
        if pos0 + l > cache.max_context() {
            return Err(Error::InvalidArgument(format!(
                "context overflow: position {} + {} tokens exceeds the maximum context of {} \
                 (raise it when creating the session)",
                pos0,
                l,
                cache.max_context()
            )));
        }
        // Inputs of this chunk: ids (media positions -> pad for lookups), positions.
        let pad = c.pad_token_id;
        let is_media = |t: u32| Some(t) == self.media_token;
        let lookup_ids: Vec<u32> = ids
            .iter()
            .map(|&t| if is_media(t) { pad } else { t })
            .collect();
        for &t in &lookup_ids {
            if t as usize >= c.vocab_size {
                return Err(Error::InvalidArgument(format!(
                    "token id {t} is outside the vocabulary of {} ids",
                    c.vocab_size
                )));
            }
        }
        self.ctx
            .write(&ws.ids.buffer, 0, bytemuck::cast_slice(&lookup_ids));
        let ids_t = ws.ids.view(0, &[l]);
        let ids_t = GpuTensor {
            dtype: DType::U32,
            ..ids_t
        };
        let h = ws.h.view(0, &[l, hdim]);
        let xn = ws.xn.view(0, &[l, hdim]);

        // h0 = embed(ids') * sqrt(H); media rows replaced by the projected features.
        ops::embedding(rec, &w.embed_tokens, &ids_t, &h, (hdim as f32).sqrt())?;
        if let Some(m) = media {
            let mut i = 0;
            while i < l {
                if !is_media(ids[i]) {
                    i += 1;
                    continue;
                }
                let run_start = i;
                while i < l && is_media(ids[i]) {
                    i += 1;
                }
                let run = i - run_start;
                if *media_row + run > m.shape[0] {
                    return Err(Error::InvalidArgument(format!(
                        "the prompt has more image soft tokens than the {} image feature rows given",
                        m.shape[0]
                    )));
                }
                rec.copy(
                    &m.buffer,
                    m.offset + (*media_row * hdim * 4) as u64,
                    &h.buffer,
                    h.offset + (run_start * hdim * 4) as u64,
                    (run * hdim * 4) as u64,
                );
                *media_row += run;
            }
        }

        // Per-layer inputs: PLE = (RMSNorm(proj(h0) * H^-1/2) + table[ids'] * sqrt(P)) * 2^-1/2
        let p = c.hidden_size_per_layer_input;
        let nl = c.num_hidden_layers;
        let ple = ws.ple.view(0, &[l, nl * p]);
        // Where the finished per-layer inputs end up ([l, nl * p]).
        let mut ple_in = ple.clone();
        if p > 0 {
            let table_scale = (p as f32).sqrt();
            let ple_tok = ws.ple_tok.view(0, &[l, nl * p]);
            match &w.embed_per_layer {
                PerLayerTable::Host(table) => {
                    let buf = &mut ws.host_ple[..l * nl * p];
                    table.gather(&lookup_ids, buf)?;
                    for v in buf.iter_mut() {
                        *v *= table_scale;
                    }
                    self.ctx
                        .write(&ple_tok.buffer, 0, bytemuck::cast_slice(buf));
                }
                PerLayerTable::Gpu(m) => {
                    ops::embedding(rec, m, &ids_t, &ple_tok, table_scale)?;
                }
                PerLayerTable::None => {
                    return Err(Error::InvalidArgument(
                        "the config asks for per-layer inputs but the checkpoint has no \
                         embed_tokens_per_layer table"
                            .into(),
                    ));
                }
            }
            let proj = w.per_layer_model_projection.as_ref().ok_or_else(|| {
                Error::InvalidArgument("per_layer_model_projection missing".into())
            })?;
            ops::linear(rec, proj, &h, &ple)?;
            if let Some(norm_w) = w.per_layer_projection_norm.as_ref() {
                // One dispatch: ple_tok = (ple_tok + RMSNorm(ple * H^-1/2)) * 2^-1/2, using
                // RMSNorm(x * s) = x / sqrt(mean(x^2) + eps / s^2) with s^2 = 1 / H.
                ops::residual_norm(
                    rec,
                    &ple_tok.view(0, &[l * nl, p]),
                    &ple.view(0, &[l * nl, p]),
                    norm_w,
                    0.5f32.sqrt(),
                    None,
                    eps * hdim as f32,
                )?;
                ple_in = ple_tok;
            } else {
                elementwise_inplace(
                    rec,
                    Elementwise::Scale((hdim as f32).powf(-0.5)),
                    &ple,
                    None,
                )?;
                let ple_rows = ple.view(0, &[l * nl, p]);
                ops::rms_norm(
                    rec,
                    &ple_rows,
                    w.per_layer_projection_norm.as_ref(),
                    &ple_rows,
                    eps,
                )?;
                elementwise_inplace(
                    rec,
                    Elementwise::Add,
                    &ple,
                    Some((&ple_tok, BLayout::Broadcast)),
                )?;
                elementwise_inplace(rec, Elementwise::Scale(0.5f32.sqrt()), &ple, None)?;
            }
        }

        // The first layer's input norm; every later pre-norm (and the final norm) is fused into
        // the residual add that produces its input.
        if let Some(first) = w.layers.first() {
            ops::rms_norm(rec, &h, Some(&first.input_layernorm), &xn, eps)?;
        }
        for (i, layer) in w.layers.iter().enumerate() {
            // From the first layer of the trailing run of KV-shared layers on, only the last
            // position matters unless every position's logits are wanted: those layers write no
            // cache that a later layer or step reads, so the other rows would be dead work.
            let r0 = if want != Logits::All && i >= self.shared_tail {
                l - 1
            } else {
                0
            };
            let (l, pos0) = (l - r0, pos0 + r0);
            let h = h.view(r0 * hdim, &[l, hdim]);
            let xn = xn.view(r0 * hdim, &[l, hdim]);
            let ple_in = ple_in.view(r0 * nl * p, &[l * nl * p]);
            let lt = c.layer_types[i];
            let hd = c.layer_head_dim(i);
            let nh = c.num_attention_heads;
            let nkv = c.layer_kv_heads(i);
            let inv_freq = &self.inv_freq[if lt == LayerType::SlidingAttention {
                0
            } else {
                1
            }];
            // The norm after this layer: the next layer's input norm, or the final norm when
            // logits are wanted (into xn, which the LM head reads).
            let next_norm = match w.layers.get(i + 1) {
                Some(nl) => Some((&nl.input_layernorm, &xn)),
                None if want != Logits::None => Some((&w.norm, &xn)),
                None => None,
            };

            // --- attention: fused q/k/v projection, norms + RoPE + cache write, attention ---
            let src = c.kv_source(i).ok_or_else(|| {
                Error::InvalidArgument(format!("layer {i} has no layer to share K/V with"))
            })?;
            let owns_kv = src == i;
            let v_from_k = owns_kv && c.k_eq_v(i);
            let mut mats = vec![&layer.q_proj];
            let mut kv_norm = None;
            if owns_kv {
                let (Some(kp), Some(kn)) = (&layer.k_proj, &layer.k_norm) else {
                    return Err(Error::InvalidArgument(format!(
                        "layer {i} owns its KV cache but has no k_proj/k_norm"
                    )));
                };
                mats.push(kp);
                kv_norm = Some(kn);
                if !v_from_k {
                    let Some(vp) = &layer.v_proj else {
                        return Err(Error::InvalidArgument(format!(
                            "layer {i} owns its KV cache but has no v_proj"
                        )));
                    };
                    mats.push(vp);
                }
            }
            let row: usize = mats.iter().map(|m| m.rows).sum();
            let qkv = ws.qkv.view(0, &[l, row]);
            ops::linear_multi(rec, &mats, &xn, &qkv)?;
            let q = ws.q.view(0, &[l, nh, hd]);
            {
                let kv = match kv_norm {
                    Some(k_norm) => {
                        let lc = cache.layer(i)?;
                        Some(ops::KvTarget {
                            k_norm,
                            k_cache: &lc.k,
                            v_cache: &lc.v,
                            v_from_k,
                        })
                    }
                    None => None,
                };
                ops::attention_input(
                    rec,
                    &ops::AttnInput {
                        qkv: &qkv,
                        q_out: &q,
                        q_norm: &layer.q_norm,
                        inv_freq,
                        n_heads: nh,
                        n_kv_heads: nkv,
                        head_dim: hd,
                        pos0,
                        eps,
                        kv,
                    },
                )?;
            }
            let lc = cache.layer(src)?;
            let shape = AttnShape {
                n_heads: nh as u32,
                n_kv_heads: nkv as u32,
                head_dim: hd as u32,
                cap: lc.cap as u32,
                scale: 1.0,
                layout: KvLayout::HeadMajor,
                mask: AttnMask::Causal {
                    window: if lt == LayerType::SlidingAttention {
                        Some(c.sliding_window as u32)
                    } else {
                        None
                    },
                },
            };
            let attn = ws.attn.view(0, &[l, nh, hd]);
            if l == 1 {
                ops::attention_decode(
                    rec,
                    &q,
                    &lc.k,
                    &lc.v,
                    &attn,
                    &shape,
                    pos0 as u32,
                    &ws.attn_scratch,
                )?;
            } else {
                ops::attention_prefill(rec, &q, &lc.k, &lc.v, &attn, &shape, pos0 as u32)?;
            }
            let o = ws.o.view(0, &[l, hdim]);
            ops::linear(rec, &layer.o_proj, &attn.view(0, &[l, nh * hd]), &o)?;
            // h += post_attention_norm(o); xn = pre_feedforward_norm(h)
            ops::residual_norm(
                rec,
                &h,
                &o,
                &layer.post_attention_layernorm,
                1.0,
                Some((&layer.pre_feedforward_layernorm, &xn)),
                eps,
            )?;

            // --- MLP: gelu_tanh(gate) * up, down, h += post_feedforward_norm(.) ---
            let inter = c.intermediate(i);
            let gate = ws.gate.view(0, &[l, inter]);
            let up = ws.up.view(0, &[l, inter]);
            ops::linear_gelu_gate(rec, &layer.gate_proj, &layer.up_proj, &xn, &gate, &up)?;
            ops::linear(rec, &layer.down_proj, &gate, &o)?;
            if p == 0 {
                ops::residual_norm(
                    rec,
                    &h,
                    &o,
                    &layer.post_feedforward_layernorm,
                    layer.layer_scalar,
                    next_norm,
                    eps,
                )?;
                continue;
            }
            ops::residual_norm(
                rec,
                &h,
                &o,
                &layer.post_feedforward_layernorm,
                1.0,
                None,
                eps,
            )?;

            // --- per-layer input: h += norm(proj(gelu(gate(h)) * ple_i)), then × layer_scalar ---
            let (Some(g), Some(pp), Some(pn)) = (
                &layer.per_layer_input_gate,
                &layer.per_layer_projection,
                &layer.post_per_layer_input_norm,
            ) else {
                return Err(Error::InvalidArgument(format!(
                    "layer {i} lacks its per-layer-input weights"
                )));
            };
            let pg = ws.ple_gate.view(0, &[l, p]);
            ops::linear_gelu_mul(
                rec,
                g,
                &h,
                &ple_in.view(i * p, &[(l - 1) * nl * p + p]),
                nl * p,
                &pg,
            )?;
            ops::linear(rec, pp, &pg, &o)?;
            ops::residual_norm(rec, &h, &o, pn, layer.layer_scalar, next_norm, eps)?;
        }

        // Tied LM head over the final-normed rows (xn), softcap.
        let rows = match want {
            Logits::None => return Ok(()),
            Logits::Last => 1,
            Logits::All => l,
        };
        let first = l - rows;
        let hn = if w.layers.is_empty() {
            let hn = ws.final_h.view(0, &[rows, hdim]);
            ops::rms_norm(
                rec,
                &h.view(first * hdim, &[rows, hdim]),
                Some(&w.norm),
                &hn,
                eps,
            )?;
            hn
        } else {
            xn.view(first * hdim, &[rows, hdim])
        };
        let logits = ws.logits.view(0, &[rows, c.vocab_size]);
        ops::linear(rec, &w.embed_tokens, &hn, &logits)?;
        if let Some(cap) = c.final_logit_softcapping {
            elementwise_inplace(rec, Elementwise::Softcap(cap as f32), &logits, None)?;
        }
        Ok(())
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

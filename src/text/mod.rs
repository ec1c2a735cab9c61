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
    elementwise, elementwise_inplace,
};
use crate::gpu::{DType, GpuContext, GpuTensor, Readback, Recorder, RecorderStats};
use crate::weights::{PerLayerTable, TextWeights};

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
    positions: GpuTensor,
    h: GpuTensor,
    xn: GpuTensor,
    q: GpuTensor,
    k: GpuTensor,
    v: GpuTensor,
    attn: GpuTensor,
    o: GpuTensor,
    gate: GpuTensor,
    up: GpuTensor,
    ple: GpuTensor,
    ple_tok: GpuTensor,
    ple_gate: GpuTensor,
    final_h: GpuTensor,
    logits: GpuTensor,
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
            &self.positions,
            &self.h,
            &self.xn,
            &self.q,
            &self.k,
            &self.v,
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
        let max_kv = (0..c.num_hidden_layers)
            .map(|i| c.layer_kv_heads(i))
            .max()
            .unwrap_or(1);
        let max_i = (0..c.num_hidden_layers)
            .map(|i| c.intermediate(i))
            .max()
            .unwrap_or(c.intermediate_size);
        let np = c.num_hidden_layers * c.hidden_size_per_layer_input;
        let z = |shape: &[usize]| GpuTensor::zeros(ctx, shape, DType::F32);
        Ok(Workspace {
            chunk,
            ids: GpuTensor::zeros(ctx, &[chunk], DType::U32)?,
            positions: GpuTensor::zeros(ctx, &[chunk], DType::U32)?,
            h: z(&[chunk, h])?,
            xn: z(&[chunk, h])?,
            q: z(&[chunk, c.num_attention_heads * max_hd])?,
            k: z(&[chunk, max_kv * max_hd])?,
            v: z(&[chunk, max_kv * max_hd])?,
            attn: z(&[chunk, c.num_attention_heads * max_hd])?,
            o: z(&[chunk, h])?,
            gate: z(&[chunk, max_i])?,
            up: z(&[chunk, max_i])?,
            ple: z(&[chunk, np.max(1)])?,
            ple_tok: z(&[chunk, np.max(1)])?,
            ple_gate: z(&[chunk, c.hidden_size_per_layer_input.max(1)])?,
            final_h: z(&[chunk, h])?,
            logits: z(&[chunk, c.vocab_size])?,
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
            let len = ws.chunk.min(n - start);
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
        let positions: Vec<u32> = (0..l).map(|i| (pos0 + i) as u32).collect();
        self.ctx
            .write(&ws.ids.buffer, 0, bytemuck::cast_slice(&lookup_ids));
        self.ctx
            .write(&ws.positions.buffer, 0, bytemuck::cast_slice(&positions));
        let ids_t = ws.ids.view(0, &[l]);
        let ids_t = GpuTensor {
            dtype: DType::U32,
            ..ids_t
        };
        let pos_t = GpuTensor {
            dtype: DType::U32,
            ..ws.positions.view(0, &[l])
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

        for (i, layer) in w.layers.iter().enumerate() {
            let lt = c.layer_types[i];
            let hd = c.layer_head_dim(i);
            let nh = c.num_attention_heads;
            let nkv = c.layer_kv_heads(i);
            let inv_freq = &self.inv_freq[if lt == LayerType::SlidingAttention {
                0
            } else {
                1
            }];

            // --- attention ---
            ops::rms_norm(rec, &h, Some(&layer.input_layernorm), &xn, eps)?;
            let q = ws.q.view(0, &[l, nh * hd]);
            ops::linear(rec, &layer.q_proj, &xn, &q)?;
            let q_heads = q.view(0, &[l * nh, hd]);
            ops::rms_norm(rec, &q_heads, Some(&layer.q_norm), &q_heads, eps)?;
            ops::rope(rec, &q.view(0, &[l, nh, hd]), &pos_t, inv_freq)?;
            let src = c.kv_source(i).ok_or_else(|| {
                Error::InvalidArgument(format!("layer {i} has no layer to share K/V with"))
            })?;
            if src == i {
                let (kp, vp, kn) = match (&layer.k_proj, &layer.v_proj, &layer.k_norm) {
                    (Some(a), Some(b), Some(n)) => (a, b, n),
                    _ => {
                        return Err(Error::InvalidArgument(format!(
                            "layer {i} owns its KV cache but has no k_proj/v_proj/k_norm"
                        )));
                    }
                };
                let k = ws.k.view(0, &[l, nkv * hd]);
                let v = ws.v.view(0, &[l, nkv * hd]);
                ops::linear(rec, kp, &xn, &k)?;
                ops::linear(rec, vp, &xn, &v)?;
                let k_heads = k.view(0, &[l * nkv, hd]);
                let v_heads = v.view(0, &[l * nkv, hd]);
                ops::rms_norm(rec, &k_heads, Some(kn), &k_heads, eps)?;
                ops::rms_norm(rec, &v_heads, None, &v_heads, eps)?;
                ops::rope(rec, &k.view(0, &[l, nkv, hd]), &pos_t, inv_freq)?;
                let lc = cache.layer(i)?;
                ops::kv_write(rec, &k.view(0, &[l, nkv, hd]), &lc.k, pos0 as u32)?;
                ops::kv_write(rec, &v.view(0, &[l, nkv, hd]), &lc.v, pos0 as u32)?;
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
            let qv = q.view(0, &[l, nh, hd]);
            if l == 1 {
                ops::attention_decode(
                    rec,
                    &qv,
                    &lc.k,
                    &lc.v,
                    &attn,
                    &shape,
                    pos0 as u32,
                    &ws.attn_scratch,
                )?;
            } else {
                ops::attention_prefill(rec, &qv, &lc.k, &lc.v, &attn, &shape, pos0 as u32)?;
            }
            let o = ws.o.view(0, &[l, hdim]);
            ops::linear(rec, &layer.o_proj, &attn.view(0, &[l, nh * hd]), &o)?;
            ops::rms_norm(rec, &o, Some(&layer.post_attention_layernorm), &o, eps)?;
            elementwise_inplace(rec, Elementwise::Add, &h, Some((&o, BLayout::Broadcast)))?;

            // --- MLP ---
            let inter = c.intermediate(i);
            ops::rms_norm(rec, &h, Some(&layer.pre_feedforward_layernorm), &xn, eps)?;
            let gate = ws.gate.view(0, &[l, inter]);
            let up = ws.up.view(0, &[l, inter]);
            ops::linear(rec, &layer.gate_proj, &xn, &gate)?;
            ops::linear(rec, &layer.up_proj, &xn, &up)?;
            elementwise_inplace(
                rec,
                Elementwise::GeluMul,
                &gate,
                Some((&up, BLayout::Broadcast)),
            )?;
            ops::linear(rec, &layer.down_proj, &gate, &o)?;
            ops::rms_norm(rec, &o, Some(&layer.post_feedforward_layernorm), &o, eps)?;
            elementwise_inplace(rec, Elementwise::Add, &h, Some((&o, BLayout::Broadcast)))?;

            // --- per-layer input ---
            if p > 0 {
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
                ops::linear(rec, g, &h, &pg)?;
                elementwise_inplace(
                    rec,
                    Elementwise::GeluMul,
                    &pg,
                    Some((
                        &ple.view(i * p, &[(l - 1) * nl * p + p]),
                        BLayout::Rows {
                            cols: p,
                            stride: nl * p,
                        },
                    )),
                )?;
                ops::linear(rec, pp, &pg, &o)?;
                ops::rms_norm(rec, &o, Some(pn), &o, eps)?;
                elementwise_inplace(rec, Elementwise::Add, &h, Some((&o, BLayout::Broadcast)))?;
            }
            if layer.layer_scalar != 1.0 {
                elementwise_inplace(rec, Elementwise::Scale(layer.layer_scalar), &h, None)?;
            }
        }

        // Final norm, tied LM head, softcap.
        let rows = match want {
            Logits::None => return Ok(()),
            Logits::Last => 1,
            Logits::All => l,
        };
        let first = l - rows;
        let hn = ws.final_h.view(0, &[rows, hdim]);
        ops::rms_norm(
            rec,
            &h.view(first * hdim, &[rows, hdim]),
            Some(&w.norm),
            &hn,
            eps,
        )?;
        let logits = ws.logits.view(0, &[rows, c.vocab_size]);
        ops::linear(rec, &w.embed_tokens, &hn, &logits)?;
        if let Some(cap) = c.final_logit_softcapping {
            elementwise_inplace(rec, Elementwise::Softcap(cap as f32), &logits, None)?;
        }
        let _ = elementwise; // out-of-place form kept for symmetry with other model code
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

//! Per-session buffers of the decoder: hidden states and every intermediate, sized for one
//! prefill chunk, allocated once and reused by every chunk and decode step.

use crate::config::TextConfig;
use crate::error::Result;
use crate::gpu::ops::{AttnScratch, SampleScratch};
use crate::gpu::{DType, GpuContext, GpuTensor, Readback, RecorderStats};

/// Largest logits buffer a workspace allocates (bytes): `[chunk, vocab]` f32 logits of a 262k
/// vocabulary would take 1 MiB per row.
pub const MAX_LOGITS_BYTES: u64 = 64 << 20;

/// Per-session buffers: hidden states and every intermediate, sized for `chunk` tokens.
/// Allocated once; reused by every prefill chunk and decode step.
pub struct Workspace {
    pub(crate) chunk: usize,
    pub(crate) ids: GpuTensor,
    pub(crate) h: GpuTensor,
    pub(crate) xn: GpuTensor,
    pub(crate) qkv: GpuTensor,
    pub(crate) q: GpuTensor,
    pub(crate) attn: GpuTensor,
    pub(crate) o: GpuTensor,
    pub(crate) gate: GpuTensor,
    pub(crate) up: GpuTensor,
    pub(crate) ple: GpuTensor,
    pub(crate) ple_tok: GpuTensor,
    pub(crate) ple_gate: GpuTensor,
    pub(crate) final_h: GpuTensor,
    pub(crate) logits: GpuTensor,
    /// Rows of `logits`: all positions of a chunk when they fit one binding and
    /// [`MAX_LOGITS_BYTES`]; fewer for large vocabularies ([`Logits::All`](super::Logits::All)
    /// then runs in sub-chunks of this many tokens).
    pub(crate) logits_rows: usize,
    pub(crate) token: GpuTensor,
    /// Per query of a chunk, the (lowest, exclusive upper) key bounds of the image-block
    /// overlay (u32 `[chunk, 2]`; image blocks of bidirectional-vision models), written per chunk.
    pub(crate) attn_bounds: GpuTensor,
    pub(crate) attn_scratch: AttnScratch,
    /// The online-softmax state of prefill attention over a windowed KV cache (`None` when
    /// every ring fits one binding).
    pub(crate) prefill_scratch: Option<AttnScratch>,
    /// The MoE layers' routing and expert buffers (MoE models).
    pub(crate) moe: Option<super::moe::MoeWorkspace>,
    pub(crate) sample_scratch: SampleScratch,
    /// Holds the selected token ids of a step (`[chunk]` u32: one per sequence of a batched
    /// step) on their way back.
    pub(crate) readback: Readback,
    /// The most windows a KV cache ring decoded with this workspace may be split into.
    pub(crate) kv_windows: usize,
    pub(crate) host_ple: Vec<f32>,
    pub(crate) last_step: RecorderStats,
}

/// The widest per-token row of a workspace tensor of config `c`, in f32 elements.
fn widest_row(c: &TextConfig) -> usize {
    (0..c.num_hidden_layers)
        .map(|i| {
            let hd = c.layer_head_dim(i);
            let qkv = (c.num_attention_heads + 2 * c.layer_kv_heads(i)) * hd;
            qkv.max(c.intermediate(i))
                .max(c.num_attention_heads * hd)
        })
        .chain([
            c.hidden_size,
            c.num_hidden_layers * c.hidden_size_per_layer_input,
        ])
        // MoE prefill: per token k rows of the expert width and of H (grouped GEMM scratch)
        .chain(c.moe().map(|m| m.top_k * c.hidden_size.max(m.intermediate)))
        .max()
        .unwrap_or(1)
        .max(1)
}

/// Flash-decode chunks of the decode scratch: 64, or more than the windows of a split cache
/// (each window interval takes at least one), as far as one binding holds them; a split cache
/// whose windows outnumber that decodes window after window through the prefill scratch.
fn decode_chunks(ctx: &GpuContext, n_heads: usize, hd: usize, kv_windows: usize) -> usize {
    let limit = ctx.caps().max_binding_size.min(ctx.caps().max_buffer_size);
    let fit = (limit / (n_heads.max(1) * hd.max(4) * 4) as u64).max(1) as usize;
    64.max(kv_windows + 2).min(fit)
}

impl Workspace {
    /// The largest prefill chunk whose per-token buffers (hidden states, q/k/v, MLP rows, PLE
    /// rows, attention state) each fit one storage binding of `ctx`; the logits are batched
    /// separately.
    pub(crate) fn max_chunk(ctx: &GpuContext, c: &TextConfig) -> usize {
        let limit = ctx.caps().max_binding_size.min(ctx.caps().max_buffer_size);
        (limit / (4 * widest_row(c) as u64)).max(1) as usize
    }

    /// Allocates the buffers for chunks of up to `chunk` tokens of a model with config `c`
    /// whose KV cache rings are split into at most `kv_windows` windows (1: whole rings).
    pub(crate) fn new(
        ctx: &GpuContext,
        c: &TextConfig,
        chunk: usize,
        kv_windows: usize,
    ) -> Result<Self> {
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
            token: GpuTensor::zeros(ctx, &[chunk.max(1)], DType::U32)?,
            attn_bounds: GpuTensor::zeros(ctx, &[chunk, 2], DType::U32)?,
            attn_scratch: AttnScratch::new(
                ctx,
                c.num_attention_heads,
                decode_chunks(ctx, c.num_attention_heads, max_hd, kv_windows),
                max_hd,
            )?,
            prefill_scratch: if kv_windows > 1 {
                Some(AttnScratch::for_prefill(
                    ctx,
                    chunk,
                    c.num_attention_heads,
                    max_hd,
                )?)
            } else {
                None
            },
            moe: match c.moe() {
                Some(shape) => Some(super::moe::MoeWorkspace::new(ctx, c, shape, chunk)?),
                None => None,
            },
            sample_scratch: SampleScratch::new(ctx, c.vocab_size)?,
            readback: Readback::new(ctx, 4 * chunk.max(1) as u64)?,
            kv_windows,
            host_ple: vec![0.0; chunk * np],
            last_step: RecorderStats::default(),
        })
    }

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
            &self.attn_bounds,
        ];
        tensors.iter().map(|t| t.buffer_size()).sum::<u64>()
            + self.attn_scratch.bytes()
            + self.prefill_scratch.as_ref().map_or(0, AttnScratch::bytes)
            + self.moe.as_ref().map_or(0, super::moe::MoeWorkspace::bytes)
            + self.sample_scratch.bytes()
    }
}

//! The Gemma 4 vision tower and multimodal embedder (spec: `gemma4-architecture.md` §3).
//!
//! Patch embedding `(2p − 1) @ W + pos_x + pos_y`; encoder layers with clipped linears, q/k norms,
//! weightless v norm, 2-D RoPE, scale 1.0, bidirectional attention; k×k average pooling × sqrt(Hv);
//! weightless RMSNorm; `embedding_projection` to the text hidden size. One image is one submit,
//! through the matrix-matrix kernels.

use std::sync::Arc;

use crate::config::VisionConfig;
use crate::error::{Error, Result};
use crate::gpu::ops::{
    self, AttnMask, AttnShape, BLayout, Elementwise, KvLayout, elementwise, elementwise_inplace,
};
use crate::gpu::{DType, GpuContext, GpuTensor, Recorder};
use crate::weights::{ClippedLinear, VisionWeights};

/// Patches of one image, ready for the tower.
#[derive(Debug, Clone)]
pub struct ImagePatches {
    /// `[n_patches, 3·p·p]` values in [0, 1], (y, x, channel) order inside a patch.
    pub pixel_values: Vec<f32>,
    /// `(x, y)` patch position per patch, row-major patch order.
    pub positions: Vec<[u32; 2]>,
    /// Patch grid `(rows, cols)`.
    pub grid: (u32, u32),
}

impl ImagePatches {
    /// Soft tokens this image produces with pooling kernel `k`.
    pub fn soft_tokens(&self, k: u32) -> usize {
        ((self.grid.0 / k) * (self.grid.1 / k)) as usize
    }
}

/// The vision tower plus the embedder into the text stream.
pub struct VisionEncoder {
    ctx: GpuContext,
    cfg: VisionConfig,
    text_hidden: usize,
    w: Arc<VisionWeights>,
    inv_freq: GpuTensor,
    pos_table: crate::gpu::Matrix,
}

struct Bufs {
    x: GpuTensor,
    xn: GpuTensor,
    clip_in: GpuTensor,
    q: GpuTensor,
    k: GpuTensor,
    v: GpuTensor,
    attn: GpuTensor,
    o: GpuTensor,
    gate: GpuTensor,
    up: GpuTensor,
    pos: GpuTensor,
    ids: GpuTensor,
}

impl VisionEncoder {
    /// Builds the encoder over loaded weights.
    pub fn new(
        ctx: &GpuContext,
        cfg: &VisionConfig,
        text_hidden: usize,
        weights: Arc<VisionWeights>,
    ) -> Result<Self> {
        let f = ops::rope_2d_inv_freq(cfg.head_dim(), cfg.rope_parameters.rope_theta);
        let inv_freq = GpuTensor::from_f32(ctx, &[f.len()], &f)?;
        // The [2, P, Hv] position table viewed as a [2P, Hv] f32 matrix for the gather op.
        let t = &weights.position_table;
        let pos_table = crate::gpu::Matrix {
            rows: 2 * cfg.position_embedding_size,
            cols: cfg.hidden_size,
            format: crate::gpu::WeightFormat::F32,
            windows: vec![crate::gpu::MatrixWindow {
                row_start: 0,
                rows: 2 * cfg.position_embedding_size,
                data: t.buffer.clone(),
                scale_bias: None,
            }],
        };
        Ok(VisionEncoder {
            ctx: ctx.clone(),
            cfg: cfg.clone(),
            text_hidden,
            w: weights,
            inv_freq,
            pos_table,
        })
    }

    /// Encodes one image: returns `[soft_tokens, text_hidden]` features (after the embedder) and,
    /// when `keep_pooled`, also the pooled tower output `[soft_tokens, Hv]` (before the embedder).
    pub fn encode(
        &self,
        img: &ImagePatches,
        keep_pooled: bool,
    ) -> Result<(GpuTensor, Option<GpuTensor>)> {
        let c = &self.cfg;
        let p = c.patch_size;
        let k = c.pooling_kernel_size as u32;
        let n = img.positions.len();
        let (gh, gw) = img.grid;
        if n == 0 || n != (gh * gw) as usize || img.pixel_values.len() != n * 3 * p * p {
            return Err(Error::InvalidArgument(format!(
                "image patches: {} positions, grid {:?}, {} values (patch size {p})",
                n,
                img.grid,
                img.pixel_values.len()
            )));
        }
        if gh % k != 0 || gw % k != 0 {
            return Err(Error::InvalidArgument(format!(
                "patch grid {gh}x{gw} is not a multiple of the pooling kernel {k}"
            )));
        }
        for pos in &img.positions {
            if pos[0] as usize >= c.position_embedding_size
                || pos[1] as usize >= c.position_embedding_size
            {
                return Err(Error::InvalidArgument(format!(
                    "patch position {pos:?} exceeds the position table size {}",
                    c.position_embedding_size
                )));
            }
        }
        let hv = c.hidden_size;
        let nh = c.num_attention_heads;
        let nkv = c.kv_heads();
        let hd = c.head_dim();
        let ctx = &self.ctx;
        let z = |shape: &[usize]| GpuTensor::zeros(ctx, shape, DType::F32);
        let b = Bufs {
            x: z(&[n, hv])?,
            xn: z(&[n, hv])?,
            clip_in: z(&[n, c.intermediate_size.max(hv).max(nh * hd)])?,
            q: z(&[n, nh * hd])?,
            k: z(&[n, nkv * hd])?,
            v: z(&[n, nkv * hd])?,
            attn: z(&[n, nh * hd])?,
            o: z(&[n, hv])?,
            gate: z(&[n, c.intermediate_size])?,
            up: z(&[n, c.intermediate_size])?,
            pos: GpuTensor::from_u32(
                ctx,
                &[n, 2],
                &img.positions
                    .iter()
                    .flat_map(|p| [p[0], p[1]])
                    .collect::<Vec<_>>(),
            )?,
            ids: GpuTensor::from_u32(
                ctx,
                &[2 * n],
                &img.positions
                    .iter()
                    .map(|p| p[0])
                    .chain(
                        img.positions
                            .iter()
                            .map(|p| p[1] + c.position_embedding_size as u32),
                    )
                    .collect::<Vec<_>>(),
            )?,
        };
        let pixels = GpuTensor::from_f32(ctx, &[n, 3 * p * p], &img.pixel_values)?;
        let soft = img.soft_tokens(k);
        let pooled = z(&[soft, hv])?;
        let normed = z(&[soft, hv])?;
        let features = z(&[soft, self.text_hidden])?;

        let mut rec = ctx.recorder();
        // Patch embedding: (2p - 1) @ W^T + pos_x + pos_y
        elementwise_inplace(&mut rec, Elementwise::ScaleShift(2.0, -1.0), &pixels, None)?;
        ops::linear(&mut rec, &self.w.input_proj, &pixels, &b.x)?;
        let pe = z(&[2 * n, hv])?;
        ops::embedding(&mut rec, &self.pos_table, &b.ids, &pe, 1.0)?;
        elementwise_inplace(
            &mut rec,
            Elementwise::Add,
            &b.x,
            Some((&pe.view(0, &[n, hv]), BLayout::Broadcast)),
        )?;
        elementwise_inplace(
            &mut rec,
            Elementwise::Add,
            &b.x,
            Some((&pe.view(n * hv, &[n, hv]), BLayout::Broadcast)),
        )?;

        let eps = c.rms_norm_eps as f32;
        let shape = AttnShape {
            n_heads: nh as u32,
            n_kv_heads: nkv as u32,
            head_dim: hd as u32,
            cap: n as u32,
            scale: 1.0,
            layout: KvLayout::TokenMajor,
            mask: AttnMask::Bidirectional { n_keys: n as u32 },
        };
        for layer in &self.w.layers {
            ops::rms_norm(&mut rec, &b.x, Some(&layer.input_layernorm), &b.xn, eps)?;
            self.clipped(&mut rec, &layer.q_proj, &b.xn, &b.q, &b.clip_in)?;
            self.clipped(&mut rec, &layer.k_proj, &b.xn, &b.k, &b.clip_in)?;
            self.clipped(&mut rec, &layer.v_proj, &b.xn, &b.v, &b.clip_in)?;
            let qh = b.q.view(0, &[n * nh, hd]);
            let kh = b.k.view(0, &[n * nkv, hd]);
            let vh = b.v.view(0, &[n * nkv, hd]);
            ops::rms_norm(&mut rec, &qh, Some(&layer.q_norm), &qh, eps)?;
            ops::rms_norm(&mut rec, &kh, Some(&layer.k_norm), &kh, eps)?;
            ops::rms_norm(&mut rec, &vh, None, &vh, eps)?;
            ops::rope_2d(&mut rec, &b.q.view(0, &[n, nh, hd]), &b.pos, &self.inv_freq)?;
            ops::rope_2d(
                &mut rec,
                &b.k.view(0, &[n, nkv, hd]),
                &b.pos,
                &self.inv_freq,
            )?;
            ops::attention_prefill(
                &mut rec,
                &b.q.view(0, &[n, nh, hd]),
                &b.k.view(0, &[n, nkv, hd]),
                &b.v.view(0, &[n, nkv, hd]),
                &b.attn.view(0, &[n, nh, hd]),
                &shape,
                0,
            )?;
            self.clipped(&mut rec, &layer.o_proj, &b.attn, &b.o, &b.clip_in)?;
            ops::rms_norm(
                &mut rec,
                &b.o,
                Some(&layer.post_attention_layernorm),
                &b.o,
                eps,
            )?;
            elementwise_inplace(
                &mut rec,
                Elementwise::Add,
                &b.x,
                Some((&b.o, BLayout::Broadcast)),
            )?;

            ops::rms_norm(
                &mut rec,
                &b.x,
                Some(&layer.pre_feedforward_layernorm),
                &b.xn,
                eps,
            )?;
            self.clipped(&mut rec, &layer.gate_proj, &b.xn, &b.gate, &b.clip_in)?;
            self.clipped(&mut rec, &layer.up_proj, &b.xn, &b.up, &b.clip_in)?;
            elementwise_inplace(
                &mut rec,
                Elementwise::GeluMul,
                &b.gate,
                Some((&b.up, BLayout::Broadcast)),
            )?;
            self.clipped(&mut rec, &layer.down_proj, &b.gate, &b.o, &b.clip_in)?;
            ops::rms_norm(
                &mut rec,
                &b.o,
                Some(&layer.post_feedforward_layernorm),
                &b.o,
                eps,
            )?;
            elementwise_inplace(
                &mut rec,
                Elementwise::Add,
                &b.x,
                Some((&b.o, BLayout::Broadcast)),
            )?;
        }
        ops::avg_pool_2d(&mut rec, &b.x, &pooled, gh, gw, k, (hv as f32).sqrt())?;
        ops::rms_norm(&mut rec, &pooled, None, &normed, eps)?;
        ops::linear(&mut rec, &self.w.embedding_projection, &normed, &features)?;
        rec.submit()?;
        let _ = elementwise;
        Ok((features, if keep_pooled { Some(pooled) } else { None }))
    }

    /// `y = clamp(clamp(x, in_min, in_max) @ W^T, out_min, out_max)`; absent bounds: no clamp.
    fn clipped(
        &self,
        rec: &mut Recorder,
        l: &ClippedLinear,
        x: &GpuTensor,
        y: &GpuTensor,
        tmp: &GpuTensor,
    ) -> Result<()> {
        let input = if l.input_min.is_some() || l.input_max.is_some() {
            let t = tmp.view(0, &x.shape);
            elementwise(
                rec,
                Elementwise::Clamp(
                    l.input_min.unwrap_or(f32::MIN),
                    l.input_max.unwrap_or(f32::MAX),
                ),
                x,
                None,
                &t,
            )?;
            t
        } else {
            x.clone()
        };
        ops::linear(rec, &l.w, &input, y)?;
        if l.output_min.is_some() || l.output_max.is_some() {
            elementwise_inplace(
                rec,
                Elementwise::Clamp(
                    l.output_min.unwrap_or(f32::MIN),
                    l.output_max.unwrap_or(f32::MAX),
                ),
                y,
                None,
            )?;
        }
        Ok(())
    }
}

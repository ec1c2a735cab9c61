//! The SigLIP-style tower (spec §3): patch embedding → encoder layers → pooling, then the
//! multimodal embedder into the text stream. One image is one submit.

use std::sync::Arc;

use super::layer::{LayerInputs, LayerScratch, VisionLayer};
use super::patch_embed::{self, PatchEmbedder};
use super::patches::ImagePatches;
use super::pool::Pooler;
use crate::config::VisionConfig;
use crate::error::Result;
use crate::gpu::ops::{self, AttnMask, AttnShape, KvLayout};
use crate::gpu::{DType, GpuContext, GpuTensor, Matrix, Recorder};
use crate::model::embed::MultimodalEmbedder;
use crate::checkpoint::var_builder::VarBuilder;
use crate::checkpoint::{LoadError, MatrixRole, Sink};

/// Vision tower weights (canonical prefixes `vision_tower.` and `embed_vision.`).
#[derive(Debug)]
pub struct VisionWeights<M = Matrix, V = GpuTensor> {
    /// `vision_tower.patch_embedder`.
    pub patch_embedder: PatchEmbedder<M, V>,
    /// `vision_tower.encoder.layers.{j}`.
    pub layers: Vec<VisionLayer<M, V>>,
    /// Pooling (and the `standardize` tensors of `vision_tower`).
    pub pooler: Pooler<V>,
    /// `embed_vision`: the multimodal embedder into the text stream.
    pub embed_vision: MultimodalEmbedder<M>,
}

impl<M, V> VisionWeights<M, V> {
    /// Loads the tower and its embedder from the checkpoint root `root`.
    pub(crate) fn load<S: Sink<M = M, V = V>>(
        root: &mut VarBuilder<'_, '_, S>,
        cfg: &VisionConfig,
        text_hidden: usize,
    ) -> Result<Self, LoadError> {
        let mut tower = root.pp("vision_tower");
        let patch_embedder = PatchEmbedder::load(&mut tower.pp("patch_embedder"), cfg)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|j| VisionLayer::load(&mut tower.pp(format_args!("encoder.layers.{j}")), cfg))
            .collect::<Result<Vec<_>, _>>()?;
        let embed_vision =
            MultimodalEmbedder::load(&mut root.pp("embed_vision").with_role(MatrixRole::Text), cfg.hidden_size, text_hidden)?;
        let pooler = Pooler::load(&mut root.pp("vision_tower"), cfg)?;
        Ok(VisionWeights {
            patch_embedder,
            layers,
            pooler,
            embed_vision,
        })
    }

    /// Every matrix with its canonical module path (for inspection and tests).
    pub fn matrices(&self) -> Vec<(String, &M)> {
        let mut v = vec![(
            "vision_tower.patch_embedder.input_proj".to_string(),
            &self.patch_embedder.input_proj,
        )];
        for (j, l) in self.layers.iter().enumerate() {
            v.extend(l.matrices(&format!("vision_tower.encoder.layers.{j}")));
        }
        v.push((
            "embed_vision.embedding_projection".into(),
            &self.embed_vision.embedding_projection,
        ));
        v
    }
}

/// The vision tower plus the embedder into the text stream, on the GPU.
pub struct VisionEncoder {
    ctx: GpuContext,
    cfg: VisionConfig,
    text_hidden: usize,
    w: Arc<VisionWeights>,
    inv_freq: GpuTensor,
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
        Ok(VisionEncoder {
            ctx: ctx.clone(),
            cfg: cfg.clone(),
            text_hidden,
            w: weights,
            inv_freq,
        })
    }

    /// The weights.
    pub fn weights(&self) -> &VisionWeights {
        &self.w
    }

    /// Encodes one image: returns `[soft_tokens, text_hidden]` features (after the embedder) and,
    /// when `keep_pooled`, also the pooled tower output `[soft_tokens, Hv]` (before the embedder).
    pub fn encode(
        &self,
        img: &ImagePatches,
        keep_pooled: bool,
    ) -> Result<(GpuTensor, Option<GpuTensor>)> {
        let mut out = self.encode_many(&[img], keep_pooled)?;
        out.pop().ok_or_else(|| {
            crate::error::Error::InvalidArgument("the encode of one image returned nothing".into())
        })
    }

    /// The most patches [`encode_many`](Self::encode_many) should take at once: at most
    /// [`MAX_PATCHES_TOGETHER`](crate::model::media::MAX_PATCHES_TOGETHER), and no more than
    /// the rows of the widest activation (the MLP's) that fit one storage binding, so that
    /// grouping never needs a binding that each image alone would not.
    pub fn max_patches_together(&self) -> usize {
        let row_bytes = 4 * self.cfg.intermediate_size.max(self.cfg.hidden_size).max(1) as u64;
        let fit = self.ctx.caps().max_binding_size / row_bytes;
        crate::model::media::MAX_PATCHES_TOGETHER.min(fit as usize)
    }

    /// Encodes several images together, in one submit: their patches go through the tower as
    /// one sequence (every linear, norm and MLP over all rows at once: fewer, fuller
    /// dispatches), while attention, RoPE positions and pooling stay per image (each image's
    /// patches attend only to each other). Returns per image what [`encode`](Self::encode)
    /// returns for it alone (the same values: every op computes a row from that row alone).
    pub fn encode_many(
        &self,
        imgs: &[&ImagePatches],
        keep_pooled: bool,
    ) -> Result<Vec<(GpuTensor, Option<GpuTensor>)>> {
        let c = &self.cfg;
        for img in imgs {
            img.check(c)?;
        }
        if imgs.is_empty() {
            return Ok(Vec::new());
        }
        let (hv, k) = (c.hidden_size, c.pooling_kernel_size as u32);
        let b = self.upload(imgs)?;
        let n = b.patches.last().map_or(0, |&(p0, np)| p0 + np);
        let soft = b.soft.last().map_or(0, |&(s0, ns)| s0 + ns);
        let ctx = &self.ctx;
        let z = |shape: &[usize]| GpuTensor::zeros(ctx, shape, DType::F32);
        let scratch = LayerScratch::new(ctx, c, n)?;
        let pe = z(&[2 * n, hv])?;
        let pooled = z(&[soft, hv])?;
        let normed = z(&[soft, hv])?;
        let features = z(&[soft, self.text_hidden])?;
        let inputs = LayerInputs {
            n,
            eps: c.rms_norm_eps as f32,
            attn: AttnShape {
                n_heads: c.num_attention_heads as u32,
                n_kv_heads: c.kv_heads() as u32,
                head_dim: c.head_dim() as u32,
                cap: n as u32,
                scale: 1.0,
                layout: KvLayout::TokenMajor,
                mask: AttnMask::Bidirectional { n_keys: n as u32 },
            },
            images: &b.patches,
            positions: &b.positions,
            inv_freq: &self.inv_freq,
        };

        let mut rec = ctx.recorder();
        let w = &*self.w;
        w.patch_embedder
            .record(&mut rec, &b.pixels, &b.ids, &pe, &scratch.x)?;
        for layer in &w.layers {
            layer.record(&mut rec, &scratch, &inputs)?;
        }
        for (img, (&(p0, np), &(s0, ns))) in imgs.iter().zip(b.patches.iter().zip(&b.soft)) {
            let x = scratch.x.view(p0 * hv, &[np, hv]);
            let pooled = pooled.view(s0 * hv, &[ns, hv]);
            w.pooler.record(&mut rec, &x, &pooled, img.grid, k)?;
        }
        w.embed_vision
            .record(&mut rec, &pooled, &normed, &features, inputs.eps)?;
        let out = if let [_] = imgs {
            vec![(features, keep_pooled.then_some(pooled))]
        } else {
            // each image's rows in a tensor of its own (a conversation keeps them one by one)
            let pooled = keep_pooled.then_some(&pooled);
            let mut out = Vec::with_capacity(imgs.len());
            for &(s0, ns) in &b.soft {
                let f = rows_of(&mut rec, &features, s0, ns)?;
                let p = pooled.map(|p| rows_of(&mut rec, p, s0, ns)).transpose()?;
                out.push((f, p));
            }
            out
        };
        rec.submit()?;
        Ok(out)
    }

    /// Uploads the patches of `imgs` as one sequence: pixels, patch positions, position-table
    /// ids, and each image's patch and soft-token ranges.
    fn upload(&self, imgs: &[&ImagePatches]) -> Result<PatchBatch> {
        let c = &self.cfg;
        let k = c.pooling_kernel_size as u32;
        let (mut patches, mut soft) = (Vec::new(), Vec::new());
        let (mut n, mut s) = (0usize, 0usize);
        for img in imgs {
            patches.push((n, img.len()));
            soft.push((s, img.soft_tokens(k)));
            n += img.len();
            s += img.soft_tokens(k);
        }
        let ctx = &self.ctx;
        let pos: Vec<[u32; 2]> = imgs.iter().flat_map(|i| i.positions.iter().copied()).collect();
        let flat: Vec<u32> = pos.iter().flat_map(|p| [p[0], p[1]]).collect();
        let ids = patch_embed::table_ids(&pos, c.position_embedding_size);
        let values: Vec<f32> = imgs.iter().flat_map(|i| i.pixel_values.iter().copied()).collect();
        Ok(PatchBatch {
            patches,
            soft,
            positions: GpuTensor::from_u32(ctx, &[n, 2], &flat)?,
            ids: GpuTensor::from_u32(ctx, &[2 * n], &ids)?,
            pixels: GpuTensor::from_f32(ctx, &[n, c.patch_values()], &values)?,
        })
    }
}


/// The patches of several images as one sequence on the GPU ([`VisionEncoder::encode_many`]).
struct PatchBatch {
    /// `(first patch, patches)` per image.
    patches: Vec<(usize, usize)>,
    /// `(first soft token, soft tokens)` per image.
    soft: Vec<(usize, usize)>,
    /// `(x, y)` per patch `[n, 2]`.
    positions: GpuTensor,
    /// Position-table ids `[2n]`.
    ids: GpuTensor,
    /// Pixel values `[n, 3 p p]`.
    pixels: GpuTensor,
}

/// A new tensor holding rows `r0 .. r0 + n` of `src` (recorded on `rec`).
fn rows_of(rec: &mut Recorder, src: &GpuTensor, r0: usize, n: usize) -> Result<GpuTensor> {
    let mut shape = src.shape.clone();
    shape[0] = n;
    let t = GpuTensor::zeros(rec.ctx(), &shape, DType::F32)?;
    rec.copy_rows(src, r0, &t, 0, n)?;
    Ok(t)
}

//! The 12B unified model's encoder-free vision embedder (transformers'
//! `Gemma4UnifiedVisionEmbedder`): no tower, one projection per 48-px model patch.
//!
//! ```text
//! pixels [n, 3·48²] in [0, 1]  (y, x, channel) inside a patch
//!   patch_ln1 (LayerNorm) → patch_dense (Linear + bias, f32 accumulation) → patch_ln2
//!   + pos_embedding[x, 0] + pos_embedding[y, 1]        (table [P, 2, E])
//!   pos_norm (LayerNorm)                               → last hidden state [n, E]
//!   embed_vision: weightless RMSNorm → embedding_projection  → features [n, H]
//! ```
//!
//! One soft token per model patch. One image is one submit.

use crate::checkpoint::var_builder::VarBuilder;
use crate::checkpoint::{LoadError, MatrixRole, Sink};
use crate::config::VisionEmbedderConfig;
use crate::error::{Error, Result};
use crate::gpu::ops::{self, BLayout, Elementwise, elementwise_inplace};
use crate::gpu::{DType, GpuContext, GpuTensor, Matrix, Recorder};
use crate::model::embed::MultimodalEmbedder;

use super::ImagePatches;
use std::sync::Arc;

/// A LayerNorm's weight and bias (`{module}.weight`, `{module}.bias`).
#[derive(Debug)]
pub struct LayerNormWeights<V = GpuTensor> {
    /// `weight` `[dim]`.
    pub weight: V,
    /// `bias` `[dim]`.
    pub bias: V,
}

impl<V> LayerNormWeights<V> {
    fn load<S: Sink<V = V>>(vb: &mut VarBuilder<'_, '_, S>, dim: usize) -> Result<Self, LoadError> {
        Ok(LayerNormWeights {
            weight: vb.vector("weight", &[dim])?,
            bias: vb.vector("bias", &[dim])?,
        })
    }
}

impl LayerNormWeights {
    fn record(&self, rec: &mut Recorder, x: &GpuTensor, eps: f32) -> Result<()> {
        ops::layer_norm(rec, x, &self.weight, &self.bias, x, eps)?;
        Ok(())
    }
}

/// The embedder's weights (canonical prefixes `vision_embedder.` and `embed_vision.`).
#[derive(Debug)]
pub struct EmbedderWeights<M = Matrix, V = GpuTensor> {
    /// `vision_embedder.patch_ln1` over the `3·48²` pixel values.
    pub patch_ln1: LayerNormWeights<V>,
    /// `vision_embedder.patch_dense.weight` `[E, 3·48²]`.
    pub patch_dense: M,
    /// `vision_embedder.patch_dense.bias` `[E]`.
    pub patch_dense_bias: V,
    /// `vision_embedder.patch_ln2` over `E`.
    pub patch_ln2: LayerNormWeights<V>,
    /// `vision_embedder.pos_embedding` `[P, 2, E]` as f32 (row `2·i` the x table's row `i`,
    /// row `2·i + 1` the y table's).
    pub pos_embedding: V,
    /// `vision_embedder.pos_norm` over `E`.
    pub pos_norm: LayerNormWeights<V>,
    /// `embed_vision`: the multimodal embedder into the text stream.
    pub embed_vision: MultimodalEmbedder<M>,
}

impl<M, V> EmbedderWeights<M, V> {
    /// Loads the embedder from the checkpoint root `root`.
    pub(crate) fn load<S: Sink<M = M, V = V>>(
        root: &mut VarBuilder<'_, '_, S>,
        cfg: &VisionEmbedderConfig,
        text_hidden: usize,
    ) -> Result<Self, LoadError> {
        let e = cfg.mm_embed_dim;
        let mut vb = root.pp("vision_embedder");
        let patch_ln1 = LayerNormWeights::load(&mut vb.pp("patch_ln1"), cfg.patch_values())?;
        let patch_dense = vb.linear("patch_dense", e, cfg.patch_values())?;
        let patch_dense_bias = vb.pp("patch_dense").vector("bias", &[e])?;
        let patch_ln2 = LayerNormWeights::load(&mut vb.pp("patch_ln2"), e)?;
        let pos_embedding = vb.vector("pos_embedding", &[cfg.mm_posemb_size, 2, e])?;
        let pos_norm = LayerNormWeights::load(&mut vb.pp("pos_norm"), e)?;
        let embed_vision = MultimodalEmbedder::load(
            &mut root.pp("embed_vision").with_role(MatrixRole::Text),
            cfg.output_proj_dims,
            text_hidden,
        )?;
        Ok(EmbedderWeights {
            patch_ln1,
            patch_dense,
            patch_dense_bias,
            patch_ln2,
            pos_embedding,
            pos_norm,
            embed_vision,
        })
    }

    /// Every matrix with its canonical module path (for inspection and tests).
    pub fn matrices(&self) -> Vec<(String, &M)> {
        vec![
            ("vision_embedder.patch_dense".into(), &self.patch_dense),
            (
                "embed_vision.embedding_projection".into(),
                &self.embed_vision.embedding_projection,
            ),
        ]
    }
}

/// Row ids into the position table viewed as `[2·P, E]`: every patch's x row (`2·x`), then
/// every patch's y row (`2·y + 1`).
pub(crate) fn table_ids(positions: &[[u32; 2]]) -> Vec<u32> {
    positions
        .iter()
        .map(|p| 2 * p[0])
        .chain(positions.iter().map(|p| 2 * p[1] + 1))
        .collect()
}

impl ImagePatches {
    /// Checks the patches against the embedder's config: a full grid of `3·48²`-value model
    /// patches with positions inside the position table.
    pub(crate) fn check_embedder(&self, c: &VisionEmbedderConfig) -> Result<()> {
        let n = self.positions.len();
        let (gh, gw) = self.grid;
        let width = c.patch_values();
        if n == 0 || n != (gh * gw) as usize || self.pixel_values.len() != n * width {
            return Err(Error::InvalidArgument(format!(
                "image patches: {} positions, grid {:?}, {} values (model patches of {width} \
                 values expected)",
                n,
                self.grid,
                self.pixel_values.len()
            )));
        }
        for pos in &self.positions {
            if pos[0] as usize >= c.mm_posemb_size || pos[1] as usize >= c.mm_posemb_size {
                return Err(Error::InvalidArgument(format!(
                    "patch position {pos:?} exceeds the position table size {}",
                    c.mm_posemb_size
                )));
            }
        }
        Ok(())
    }
}

/// The vision embedder on the GPU.
pub struct VisionEmbedder {
    ctx: GpuContext,
    cfg: VisionEmbedderConfig,
    text_hidden: usize,
    w: Arc<EmbedderWeights>,
}

impl VisionEmbedder {
    /// Builds the embedder over loaded weights.
    pub fn new(
        ctx: &GpuContext,
        cfg: &VisionEmbedderConfig,
        text_hidden: usize,
        weights: Arc<EmbedderWeights>,
    ) -> Self {
        VisionEmbedder {
            ctx: ctx.clone(),
            cfg: cfg.clone(),
            text_hidden,
            w: weights,
        }
    }

    /// The weights.
    pub fn weights(&self) -> &EmbedderWeights {
        &self.w
    }

    /// The configuration.
    pub fn config(&self) -> &VisionEmbedderConfig {
        &self.cfg
    }

    /// Encodes one image: returns `[patches, text_hidden]` features (after `embed_vision`) and,
    /// when `keep_hidden`, also the embedder's last hidden state `[patches, E]` (after
    /// `pos_norm`, before `embed_vision`).
    pub fn encode(
        &self,
        img: &ImagePatches,
        keep_hidden: bool,
    ) -> Result<(GpuTensor, Option<GpuTensor>)> {
        let c = &self.cfg;
        img.check_embedder(c)?;
        let (n, e) = (img.len(), c.mm_embed_dim);
        let ctx = &self.ctx;
        let z = |shape: &[usize]| GpuTensor::zeros(ctx, shape, DType::F32);
        let pixels = GpuTensor::from_f32(ctx, &[n, c.patch_values()], &img.pixel_values)?;
        let ids = GpuTensor::from_u32(ctx, &[2 * n], &table_ids(&img.positions))?;
        let pe = z(&[2 * n, e])?;
        let h = z(&[n, e])?;
        let normed = z(&[n, e])?;
        let features = z(&[n, self.text_hidden])?;
        let (ln_eps, rms_eps) = (c.layer_norm_eps as f32, c.rms_norm_eps as f32);
        let w = &*self.w;

        let mut rec = ctx.recorder();
        w.patch_ln1.record(&mut rec, &pixels, ln_eps)?;
        // The matrix kernels accumulate in f32 whatever the weight format.
        ops::linear(&mut rec, &w.patch_dense, &pixels, &h)?;
        elementwise_inplace(
            &mut rec,
            Elementwise::Add,
            &h,
            Some((&w.patch_dense_bias, BLayout::Broadcast)),
        )?;
        w.patch_ln2.record(&mut rec, &h, ln_eps)?;
        // The [P, 2, E] table as a [2P, E] f32 matrix for the gather op.
        ops::embedding(&mut rec, &w.pos_embedding.as_f32_matrix()?, &ids, &pe, 1.0)?;
        for half in [pe.rows(0, n), pe.rows(n, n)] {
            elementwise_inplace(&mut rec, Elementwise::Add, &h, Some((&half, BLayout::Broadcast)))?;
        }
        w.pos_norm.record(&mut rec, &h, ln_eps)?;
        w.embed_vision
            .record(&mut rec, &h, &normed, &features, rms_eps)?;
        rec.submit()?;
        Ok((features, keep_hidden.then_some(h)))
    }
}

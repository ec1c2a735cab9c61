//! The attention block of a decoder layer (spec §1.5, §1.6) and where its keys and values come
//! from (§1.1): [`KvSource`].

use crate::config::{ImageBlockMask, LayerType, TextConfig};
use crate::error::Result;
use crate::gpu::ops::{self, AttnMask, AttnShape, KvLayout};
use crate::gpu::{GpuContext, GpuTensor, Matrix, Recorder};
use crate::checkpoint::var_builder::VarBuilder;
use crate::checkpoint::{LoadError, Sink};

use super::cache::KvCache;
use super::decoder::Seqs;
use super::workspace::Workspace;

/// Where a layer's keys and values come from.
#[derive(Debug)]
pub enum KvSource<M = Matrix, V = GpuTensor> {
    /// The layer projects K and V and writes them into its own cache.
    Own {
        /// `k_proj` `[nkv·hd, H]`.
        k_proj: M,
        /// `v_proj` `[nkv·hd, H]`.
        v_proj: M,
        /// `k_norm` `[hd]`.
        k_norm: V,
    },
    /// The layer projects K only; V is the raw K projection (`attention_k_eq_v`, full layers).
    OwnKEqV {
        /// `k_proj` `[nkv·hd, H]`.
        k_proj: M,
        /// `k_norm` `[hd]`.
        k_norm: V,
    },
    /// A KV-shared layer: it reads the cache of layer `layer` and owns no K/V tensors.
    Shared {
        /// The layer whose cache it reads.
        layer: usize,
    },
}

impl<M, V> KvSource<M, V> {
    /// The K projection (`None` on KV-shared layers).
    pub fn k_proj(&self) -> Option<&M> {
        match self {
            KvSource::Own { k_proj, .. } | KvSource::OwnKEqV { k_proj, .. } => Some(k_proj),
            KvSource::Shared { .. } => None,
        }
    }

    /// The V projection (`None` on KV-shared and k_eq_v layers).
    pub fn v_proj(&self) -> Option<&M> {
        match self {
            KvSource::Own { v_proj, .. } => Some(v_proj),
            _ => None,
        }
    }

    /// The K norm (`None` on KV-shared layers).
    pub fn k_norm(&self) -> Option<&V> {
        match self {
            KvSource::Own { k_norm, .. } | KvSource::OwnKEqV { k_norm, .. } => Some(k_norm),
            KvSource::Shared { .. } => None,
        }
    }
}

/// The RoPE inverse-frequency tables, one per layer type (spec §1.6).
#[derive(Debug)]
pub struct RopeTables {
    sliding: GpuTensor,
    full: GpuTensor,
}

impl RopeTables {
    /// Each type's table from the first layer of that type (a one-element dummy when the model
    /// has no layer of the type).
    pub fn new(ctx: &GpuContext, cfg: &TextConfig) -> Result<Self> {
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
        Ok(RopeTables {
            sliding: mk(LayerType::SlidingAttention)?,
            full: mk(LayerType::FullAttention)?,
        })
    }

    /// The table of layer type `t`.
    pub fn get(&self, t: LayerType) -> &GpuTensor {
        match t {
            LayerType::SlidingAttention => &self.sliding,
            LayerType::FullAttention => &self.full,
        }
    }
}

/// What attention reads besides its weights and input: the workspace, the cache(s), the RoPE
/// tables.
pub(crate) struct AttnEnv<'a> {
    /// Scratch buffers.
    pub ws: &'a Workspace,
    /// The KV cache of the chunk's sequence, or one per row of a batched decode step.
    pub seqs: Seqs<'a>,
    /// RoPE tables.
    pub rope: &'a RopeTables,
    /// RMSNorm epsilon.
    pub eps: f32,
}

/// Self-attention of one decoder layer (module `self_attn`).
#[derive(Debug)]
pub struct Attention<M = Matrix, V = GpuTensor> {
    /// `q_proj` `[nH·hd, H]`.
    pub q_proj: M,
    /// `o_proj` `[H, nH·hd]`.
    pub o_proj: M,
    /// `q_norm` `[hd]`.
    pub q_norm: V,
    /// Keys and values.
    pub kv: KvSource<M, V>,
    /// The layer's index (its cache slot when it owns one).
    pub layer: usize,
    /// Sliding-window or full attention (mask and RoPE table).
    pub layer_type: LayerType,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Head size.
    pub head_dim: usize,
    /// The sliding window (sliding layers only).
    pub window: Option<usize>,
    /// Whether the image-block overlay reaches this layer (bidirectional-vision models:
    /// sliding layers of gemma4, every layer of gemma4_unified; [`ImageBlockMask`]).
    pub image_blocks: bool,
}

impl<M, V> Attention<M, V> {
    /// Loads layer `i`'s attention from `vb` (module `…layers.{i}.self_attn`); which K/V
    /// tensors exist follows from the config (sanitize by construction).
    pub(crate) fn load<S: Sink<M = M, V = V>>(
        cfg: &TextConfig,
        i: usize,
        vb: &mut VarBuilder<'_, '_, S>,
    ) -> Result<Self, LoadError> {
        let (h, nh, nkv, hd) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.layer_kv_heads(i),
            cfg.layer_head_dim(i),
        );
        let shared = cfg.is_kv_shared(i);
        let q_proj = vb.linear("q_proj", nh * hd, h)?;
        let k_proj = (!shared)
            .then(|| vb.linear("k_proj", nkv * hd, h))
            .transpose()?;
        let v_proj = (!shared && !cfg.k_eq_v(i))
            .then(|| vb.linear("v_proj", nkv * hd, h))
            .transpose()?;
        let o_proj = vb.linear("o_proj", h, nh * hd)?;
        let q_norm = vb.norm("q_norm", hd)?;
        let k_norm = (!shared).then(|| vb.norm("k_norm", hd)).transpose()?;
        let kv = match (k_proj, v_proj, k_norm) {
            (Some(k_proj), Some(v_proj), Some(k_norm)) => KvSource::Own {
                k_proj,
                v_proj,
                k_norm,
            },
            (Some(k_proj), None, Some(k_norm)) => KvSource::OwnKEqV { k_proj, k_norm },
            _ => KvSource::Shared {
                layer: cfg.kv_source(i).ok_or_else(|| LoadError::Unsupported {
                    what: format!("layer {i} has no layer to share K/V with"),
                })?,
            },
        };
        let layer_type = cfg.layer_types[i];
        Ok(Attention {
            q_proj,
            o_proj,
            q_norm,
            kv,
            layer: i,
            layer_type,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            window: (layer_type == LayerType::SlidingAttention).then_some(cfg.sliding_window),
            image_blocks: match cfg.image_block_mask {
                ImageBlockMask::SlidingLayers => layer_type == LayerType::SlidingAttention,
                ImageBlockMask::EveryLayer => true,
            },
        })
    }
}

impl Attention {
    /// Records `out = o_proj(attention(x))` for the rows `x` (`[L, H]`, input-normed) at
    /// absolute positions `pos0..`: one fused q/k/v projection, one dispatch for the norms, RoPE
    /// and the cache write, the attention itself, `o_proj`. `bounds` (u32 `[2L]`, image blocks
    /// of bidirectional-vision models): on the layers the overlay reaches, row `i` also sees
    /// the keys `bounds[2i] .. bounds[2i + 1]` ([`AttnMask::CausalBounded`]); other layers
    /// stay causal.
    pub(crate) fn record(
        &self,
        rec: &mut Recorder,
        env: &AttnEnv<'_>,
        x: &GpuTensor,
        pos0: usize,
        bounds: Option<&GpuTensor>,
        out: &GpuTensor,
    ) -> Result<()> {
        let (l, nh, hd) = (x.shape[0], self.n_heads, self.head_dim);
        let mats: Vec<&Matrix> = match &self.kv {
            KvSource::Own { k_proj, v_proj, .. } => vec![&self.q_proj, k_proj, v_proj],
            KvSource::OwnKEqV { k_proj, .. } => vec![&self.q_proj, k_proj],
            KvSource::Shared { .. } => vec![&self.q_proj],
        };
        let width = mats.iter().map(|m| m.rows).sum();
        let qkv = env.ws.qkv.view(0, &[l, width]);
        ops::linear_multi(rec, &mats, x, &qkv)?;
        match env.seqs {
            Seqs::Chunk(cache) => self.attend(rec, env, cache, &qkv, 0, pos0, bounds)?,
            // Each row of a batched step against its own sequence's cache, at its position.
            Seqs::Batch(caches) => {
                for (b, cache) in caches.iter().enumerate() {
                    let row = qkv.rows(b, 1);
                    self.attend(rec, env, cache, &row, b, cache.position(), None)?;
                }
            }
        }
        let attn = env.ws.attn.view(0, &[l, nh * hd]);
        ops::linear(rec, &self.o_proj, &attn, out)?;
        Ok(())
    }

    /// Records the attention of the `l` rows `qkv` (`[l, q + k + v]`) of one sequence at
    /// positions `pos0..` against `cache` (norms, RoPE and the cache write first) into rows
    /// `row0..row0 + l` of the workspace's attention output.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        rec: &mut Recorder,
        env: &AttnEnv<'_>,
        cache: &KvCache,
        qkv: &GpuTensor,
        row0: usize,
        pos0: usize,
        bounds: Option<&GpuTensor>,
    ) -> Result<()> {
        let (l, nh, hd) = (qkv.shape[0], self.n_heads, self.head_dim);
        let q = env.ws.q.view(row0 * nh * hd, &[l, nh, hd]);
        let src = self.cache_layer();
        let kv = match self.kv.k_norm() {
            Some(k_norm) => {
                let own = cache.layer(self.layer)?;
                Some(ops::KvTarget {
                    k_norm,
                    store: own.store(),
                    cap: own.cap,
                    v_from_k: matches!(self.kv, KvSource::OwnKEqV { .. }),
                })
            }
            None => None,
        };
        ops::attention_input(
            rec,
            &ops::AttnInput {
                qkv,
                q_out: &q,
                q_norm: &self.q_norm,
                inv_freq: env.rope.get(self.layer_type),
                n_heads: nh,
                n_kv_heads: self.n_kv_heads,
                head_dim: hd,
                pos0,
                eps: env.eps,
                kv,
            },
        )?;
        let lc = cache.layer(src)?;
        let mut shape = self.shape(lc.cap);
        let store = lc.store();
        let attn = env.ws.attn.view(row0 * nh * hd, &[l, nh, hd]);
        let bounds = bounds.filter(|_| self.image_blocks);
        if l == 1 {
            // One query: its block (if any) ends at itself or was cut; causal either way.
            let (scratch, state) = (&env.ws.attn_scratch, env.ws.prefill_scratch.as_ref());
            let p0 = pos0 as u32;
            ops::attention_decode_windows(rec, &q, &store, &attn, &shape, p0, scratch, state)?;
        } else {
            if bounds.is_some() {
                shape.mask = AttnMask::CausalBounded {
                    window: self.window.map(|w| w as u32),
                };
            }
            let scratch = env.ws.prefill_scratch.as_ref();
            let p0 = pos0 as u32;
            ops::attention_prefill_windows(rec, &q, &store, &attn, &shape, p0, bounds, scratch)?;
        }
        Ok(())
    }

    /// The attention kernels' shape over a cache ring of `cap` slots: scale 1 (spec §1.5),
    /// causal, windowed on sliding layers.
    fn shape(&self, cap: usize) -> AttnShape {
        AttnShape {
            n_heads: self.n_heads as u32,
            n_kv_heads: self.n_kv_heads as u32,
            head_dim: self.head_dim as u32,
            cap: cap as u32,
            scale: 1.0,
            layout: KvLayout::HeadMajor,
            mask: AttnMask::Causal {
                window: self.window.map(|w| w as u32),
            },
        }
    }

    /// The layer whose cache this layer's attention reads.
    pub fn cache_layer(&self) -> usize {
        match self.kv {
            KvSource::Shared { layer } => layer,
            _ => self.layer,
        }
    }
}

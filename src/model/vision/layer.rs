//! The vision encoder layer (spec §3.3): a pre/post-norm sandwich around bidirectional
//! attention with 2-D RoPE and a GeGLU MLP, every projection a [`ClippedLinear`].
//!
//! ```text
//! r = h;  a = Attn(RMSNorm_{input_layernorm}(h));          h = r + RMSNorm_{post_attention_layernorm}(a)
//! r = h;  m = MLP(RMSNorm_{pre_feedforward_layernorm}(h)); h = r + RMSNorm_{post_feedforward_layernorm}(m)
//! ```

use super::clipped::ClippedLinear;
use crate::config::VisionConfig;
use crate::error::Result;
use crate::gpu::ops::{self, AttnMask, AttnShape, BLayout, Elementwise, elementwise_inplace};
use crate::gpu::{DType, GpuContext, GpuTensor, Matrix, Recorder};
use crate::checkpoint::var_builder::VarBuilder;
use crate::checkpoint::{LoadError, Sink};

/// One vision encoder layer (`vision_tower.encoder.layers.{j}`).
#[derive(Debug)]
pub struct VisionLayer<M = Matrix, V = GpuTensor> {
    /// `[Hv]`.
    pub input_layernorm: V,
    /// `[Hv]`.
    pub post_attention_layernorm: V,
    /// `[Hv]`.
    pub pre_feedforward_layernorm: V,
    /// `[Hv]`.
    pub post_feedforward_layernorm: V,
    /// `self_attn`.
    pub self_attn: VisionAttention<M, V>,
    /// `mlp`.
    pub mlp: VisionMlp<M>,
}

/// The layer's attention (`self_attn`): clipped q/k/v/o projections, q/k norms, weightless
/// v norm, 2-D RoPE, scale 1.0, bidirectional (MHA on E2B/E4B).
#[derive(Debug)]
pub struct VisionAttention<M = Matrix, V = GpuTensor> {
    /// `q_norm` `[hd]`.
    pub q_norm: V,
    /// `k_norm` `[hd]`.
    pub k_norm: V,
    /// `[nH·hd, Hv]`.
    pub q_proj: ClippedLinear<M>,
    /// `[nkv·hd, Hv]` (always present: the text model's KV sharing does not apply here).
    pub k_proj: ClippedLinear<M>,
    /// `[nkv·hd, Hv]`.
    pub v_proj: ClippedLinear<M>,
    /// `[Hv, nH·hd]`.
    pub o_proj: ClippedLinear<M>,
}

/// The layer's GeGLU MLP (`mlp`): `down(gelu_tanh(gate(x)) · up(x))`, clipped linears.
#[derive(Debug)]
pub struct VisionMlp<M = Matrix> {
    /// `[Iv, Hv]`.
    pub gate_proj: ClippedLinear<M>,
    /// `[Iv, Hv]`.
    pub up_proj: ClippedLinear<M>,
    /// `[Hv, Iv]`.
    pub down_proj: ClippedLinear<M>,
}

impl<M, V> VisionLayer<M, V> {
    /// Loads the layer at `vb` (`vision_tower.encoder.layers.{j}`).
    pub(crate) fn load<S: Sink<M = M, V = V>>(
        vb: &mut VarBuilder<'_, '_, S>,
        cfg: &VisionConfig,
    ) -> Result<Self, LoadError> {
        let hv = cfg.hidden_size;
        Ok(VisionLayer {
            input_layernorm: vb.norm("input_layernorm", hv)?,
            post_attention_layernorm: vb.norm("post_attention_layernorm", hv)?,
            pre_feedforward_layernorm: vb.norm("pre_feedforward_layernorm", hv)?,
            post_feedforward_layernorm: vb.norm("post_feedforward_layernorm", hv)?,
            self_attn: VisionAttention::load(&mut vb.pp("self_attn"), cfg)?,
            mlp: VisionMlp::load(&mut vb.pp("mlp"), cfg)?,
        })
    }

    /// The layer's matrices with their module paths under `prefix`, in load order.
    pub(crate) fn matrices(&self, prefix: &str) -> Vec<(String, &M)> {
        let a = &self.self_attn;
        let m = &self.mlp;
        [
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
            ("mlp.gate_proj", &m.gate_proj),
            ("mlp.up_proj", &m.up_proj),
            ("mlp.down_proj", &m.down_proj),
        ]
        .into_iter()
        .map(|(n, l)| (format!("{prefix}.{n}.linear"), &l.w))
        .collect()
    }
}

impl<M, V> VisionAttention<M, V> {
    fn load<S: Sink<M = M, V = V>>(
        vb: &mut VarBuilder<'_, '_, S>,
        cfg: &VisionConfig,
    ) -> Result<Self, LoadError> {
        let (hv, hd, nh, kv) = (
            cfg.hidden_size,
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.kv_heads(),
        );
        let clip = cfg.use_clipped_linears;
        Ok(VisionAttention {
            q_norm: vb.norm("q_norm", hd)?,
            k_norm: vb.norm("k_norm", hd)?,
            q_proj: ClippedLinear::load(&mut vb.pp("q_proj"), nh * hd, hv, clip)?,
            k_proj: ClippedLinear::load(&mut vb.pp("k_proj"), kv * hd, hv, clip)?,
            v_proj: ClippedLinear::load(&mut vb.pp("v_proj"), kv * hd, hv, clip)?,
            o_proj: ClippedLinear::load(&mut vb.pp("o_proj"), hv, nh * hd, clip)?,
        })
    }
}

impl<M> VisionMlp<M> {
    fn load<S: Sink<M = M>>(
        vb: &mut VarBuilder<'_, '_, S>,
        cfg: &VisionConfig,
    ) -> Result<Self, LoadError> {
        let (hv, iv) = (cfg.hidden_size, cfg.intermediate_size);
        let clip = cfg.use_clipped_linears;
        Ok(VisionMlp {
            gate_proj: ClippedLinear::load(&mut vb.pp("gate_proj"), iv, hv, clip)?,
            up_proj: ClippedLinear::load(&mut vb.pp("up_proj"), iv, hv, clip)?,
            down_proj: ClippedLinear::load(&mut vb.pp("down_proj"), hv, iv, clip)?,
        })
    }
}

/// The activations of one image, shared by every layer (`[n, ·]` f32, `n` patches).
pub(crate) struct LayerScratch {
    /// The residual stream `[n, Hv]`.
    pub x: GpuTensor,
    /// A normed copy of `x` (a block's input) `[n, Hv]`.
    xn: GpuTensor,
    /// Clamped projection inputs (wide enough for every projection).
    clip_in: GpuTensor,
    q: GpuTensor,
    k: GpuTensor,
    v: GpuTensor,
    attn: GpuTensor,
    /// A block's output `[n, Hv]`.
    o: GpuTensor,
    gate: GpuTensor,
    up: GpuTensor,
}

impl LayerScratch {
    /// Zeroed buffers for `n` patches.
    pub fn new(ctx: &GpuContext, c: &VisionConfig, n: usize) -> Result<Self> {
        let (hv, nh, nkv, hd, iv) = (
            c.hidden_size,
            c.num_attention_heads,
            c.kv_heads(),
            c.head_dim(),
            c.intermediate_size,
        );
        let z = |shape: &[usize]| GpuTensor::zeros(ctx, shape, DType::F32);
        Ok(LayerScratch {
            x: z(&[n, hv])?,
            xn: z(&[n, hv])?,
            clip_in: z(&[n, iv.max(hv).max(nh * hd)])?,
            q: z(&[n, nh * hd])?,
            k: z(&[n, nkv * hd])?,
            v: z(&[n, nkv * hd])?,
            attn: z(&[n, nh * hd])?,
            o: z(&[n, hv])?,
            gate: z(&[n, iv])?,
            up: z(&[n, iv])?,
        })
    }
}

/// What every layer of one image uses besides its weights.
pub(crate) struct LayerInputs<'a> {
    /// Patches.
    pub n: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Attention shape (heads, scale 1.0); each image's call sets its own key count.
    pub attn: AttnShape,
    /// `(first patch, patches)` of each image: a patch attends to its own image's patches.
    pub images: &'a [(usize, usize)],
    /// `(x, y)` patch positions `[n, 2]` u32 (2-D RoPE).
    pub positions: &'a GpuTensor,
    /// 2-D RoPE inverse frequencies.
    pub inv_freq: &'a GpuTensor,
}

/// `x += y`.
fn add(rec: &mut Recorder, x: &GpuTensor, y: &GpuTensor) -> Result<()> {
    elementwise_inplace(rec, Elementwise::Add, x, Some((y, BLayout::Broadcast)))?;
    Ok(())
}

impl VisionLayer {
    /// Records the layer on the residual stream `s.x`.
    pub(crate) fn record(
        &self,
        rec: &mut Recorder,
        s: &LayerScratch,
        f: &LayerInputs<'_>,
    ) -> Result<()> {
        ops::rms_norm(rec, &s.x, Some(&self.input_layernorm), &s.xn, f.eps)?;
        self.self_attn.record(rec, s, f)?;
        ops::rms_norm(rec, &s.o, Some(&self.post_attention_layernorm), &s.o, f.eps)?;
        add(rec, &s.x, &s.o)?;

        ops::rms_norm(
            rec,
            &s.x,
            Some(&self.pre_feedforward_layernorm),
            &s.xn,
            f.eps,
        )?;
        self.mlp.record(rec, s)?;
        ops::rms_norm(
            rec,
            &s.o,
            Some(&self.post_feedforward_layernorm),
            &s.o,
            f.eps,
        )?;
        add(rec, &s.x, &s.o)
    }
}

impl VisionAttention {
    /// `s.o = o_proj(attention(rope(q_norm(q)), rope(k_norm(k)), rms(v)))` of `s.xn`.
    fn record(&self, rec: &mut Recorder, s: &LayerScratch, f: &LayerInputs<'_>) -> Result<()> {
        let (n, eps) = (f.n, f.eps);
        let (nh, nkv, hd) = (
            f.attn.n_heads as usize,
            f.attn.n_kv_heads as usize,
            f.attn.head_dim as usize,
        );
        self.q_proj.record(rec, &s.xn, &s.q, &s.clip_in)?;
        self.k_proj.record(rec, &s.xn, &s.k, &s.clip_in)?;
        self.v_proj.record(rec, &s.xn, &s.v, &s.clip_in)?;
        // Per-head norms over [rows · heads, hd] views.
        let qh = s.q.view(0, &[n * nh, hd]);
        let kh = s.k.view(0, &[n * nkv, hd]);
        let vh = s.v.view(0, &[n * nkv, hd]);
        ops::rms_norm(rec, &qh, Some(&self.q_norm), &qh, eps)?;
        ops::rms_norm(rec, &kh, Some(&self.k_norm), &kh, eps)?;
        ops::rms_norm(rec, &vh, None, &vh, eps)?;
        let q = s.q.view(0, &[n, nh, hd]);
        let k = s.k.view(0, &[n, nkv, hd]);
        ops::rope_2d(rec, &q, f.positions, f.inv_freq)?;
        ops::rope_2d(rec, &k, f.positions, f.inv_freq)?;
        for &(p0, np) in f.images {
            let shape = AttnShape {
                cap: np as u32,
                mask: AttnMask::Bidirectional { n_keys: np as u32 },
                ..f.attn
            };
            let q = s.q.view(p0 * nh * hd, &[np, nh, hd]);
            let k = s.k.view(p0 * nkv * hd, &[np, nkv, hd]);
            let v = s.v.view(p0 * nkv * hd, &[np, nkv, hd]);
            let out = s.attn.view(p0 * nh * hd, &[np, nh, hd]);
            if ops::rows_supported(&shape) {
                ops::attention_rows(rec, &q, &k, &v, &out, &shape, 0)?;
            } else {
                ops::attention_prefill(rec, &q, &k, &v, &out, &shape, 0)?;
            }
        }
        self.o_proj.record(rec, &s.attn, &s.o, &s.clip_in)
    }
}

impl VisionMlp {
    /// `s.o = down(gelu_tanh(gate(s.xn)) · up(s.xn))`.
    fn record(&self, rec: &mut Recorder, s: &LayerScratch) -> Result<()> {
        self.gate_proj.record(rec, &s.xn, &s.gate, &s.clip_in)?;
        self.up_proj.record(rec, &s.xn, &s.up, &s.clip_in)?;
        elementwise_inplace(
            rec,
            Elementwise::GeluMul,
            &s.gate,
            Some((&s.up, BLayout::Broadcast)),
        )?;
        self.down_proj.record(rec, &s.gate, &s.o, &s.clip_in)
    }
}

//! The mixture-of-experts feed-forward block of 26B-A4B (spec §1.8; transformers
//! `Gemma4TextRouter`, `Gemma4TextExperts` and the decoder layer's MoE branch). With `r` the
//! residual after attention:
//!
//! ```text
//! m1 = post_feedforward_layernorm_1(mlp(pre_feedforward_layernorm(r)))
//! p  = softmax(router.proj(rms(r) · router.scale · H^-½))   → top-k, renormalised, × per_expert_scale
//! m2 = post_feedforward_layernorm_2(Σ_k w_k · GeGLU_{e_k}(pre_feedforward_layernorm_2(r)))
//! r + post_feedforward_layernorm(m1 + m2)                    (the layer's residual add)
//! ```
//!
//! Routing runs on the GPU: the router writes expert ids and weights to buffers that the
//! expert kernels read (no readback). Decode gathers the k experts' rows in one gate/up and one
//! down dispatch; prefill sorts the (token, slot) pairs by expert and runs a grouped GEMM.

use crate::config::{MoeShape, TextConfig};
use crate::error::{Error, Result};
use crate::gpu::ops::{self, moe};
use crate::gpu::{GpuTensor, Matrix, Recorder};
use crate::checkpoint::var_builder::VarBuilder;
use crate::checkpoint::{LoadError, Sink};

use super::mlp::Mlp;
use super::workspace::Workspace;

/// The router (module `router`).
#[derive(Debug)]
pub struct Router<M = Matrix, V = GpuTensor> {
    /// `proj` `[E, H]`.
    pub proj: M,
    /// `scale` `[H]` times `H^-½` (folded on load): the weight of the router's RMSNorm.
    pub norm: V,
    /// `per_expert_scale` `[E]`.
    pub per_expert_scale: V,
}

/// The routed experts' weights (module `experts`), stacked per expert.
#[derive(Debug)]
pub enum ExpertWeights<M = Matrix> {
    /// HF: `gate_up_proj` `[E, 2I, H]` (per expert the gate rows, then the up rows) and
    /// `down_proj` `[E, H, I]`.
    GateUp {
        /// `gate_up_proj` as `[E·2I, H]`.
        gate_up: M,
        /// `down_proj` as `[E·H, I]`.
        down: M,
    },
    /// MLX: `switch_glu.{gate,up,down}_proj` (`[E, I, H]`, `[E, I, H]`, `[E, H, I]`).
    Split {
        /// `gate_proj` as `[E·I, H]`.
        gate: M,
        /// `up_proj` as `[E·I, H]`.
        up: M,
        /// `down_proj` as `[E·H, I]`.
        down: M,
    },
}

/// The MoE block: the dense MLP, the router, the experts and their norms.
#[derive(Debug)]
pub struct MoeBlock<M = Matrix, V = GpuTensor> {
    /// `mlp`: the dense branch.
    pub mlp: Mlp<M>,
    /// `router`.
    pub router: Router<M, V>,
    /// `experts`.
    pub experts: ExpertWeights<M>,
    /// `post_feedforward_layernorm_1` `[H]` (after the dense MLP).
    pub post_feedforward_layernorm_1: V,
    /// `pre_feedforward_layernorm_2` `[H]` (the experts' input norm).
    pub pre_feedforward_layernorm_2: V,
    /// `post_feedforward_layernorm_2` `[H]` (after the experts).
    pub post_feedforward_layernorm_2: V,
    /// Experts, top-k and expert width.
    pub shape: MoeShape,
}

impl<M, V> MoeBlock<M, V> {
    /// Loads layer `i`'s block from the layer's module (`language_model.layers.{i}`).
    pub(crate) fn load<S: Sink<M = M, V = V>>(
        cfg: &TextConfig,
        i: usize,
        shape: MoeShape,
        vb: &mut VarBuilder<'_, '_, S>,
    ) -> Result<Self, LoadError> {
        let (h, e, inter) = (cfg.hidden_size, shape.experts, shape.intermediate);
        let mlp = Mlp::load(&mut vb.pp("mlp"), h, cfg.intermediate(i))?;
        let router = {
            let mut r = vb.pp("router");
            Router {
                proj: r.linear("proj", e, h)?,
                norm: r.vector_scaled("scale", &[h], (h as f32).powf(-0.5))?,
                per_expert_scale: r.vector("per_expert_scale", &[e])?,
            }
        };
        let experts = {
            let mut x = vb.pp("experts");
            if x.has("gate_up_proj") {
                ExpertWeights::GateUp {
                    gate_up: x.stacked("gate_up_proj", e, 2 * inter, h)?,
                    down: x.stacked("down_proj", e, h, inter)?,
                }
            } else {
                let mut sw = x.pp("switch_glu");
                ExpertWeights::Split {
                    gate: sw.stacked("gate_proj", e, inter, h)?,
                    up: sw.stacked("up_proj", e, inter, h)?,
                    down: sw.stacked("down_proj", e, h, inter)?,
                }
            }
        };
        Ok(MoeBlock {
            mlp,
            router,
            experts,
            post_feedforward_layernorm_1: vb.norm("post_feedforward_layernorm_1", h)?,
            pre_feedforward_layernorm_2: vb.norm("pre_feedforward_layernorm_2", h)?,
            post_feedforward_layernorm_2: vb.norm("post_feedforward_layernorm_2", h)?,
            shape,
        })
    }
}

/// The per-session buffers of the MoE layers (shared by all of them), sized for a chunk.
#[derive(Debug)]
pub struct MoeWorkspace {
    /// Router logits `[chunk, E]`.
    pub logits: GpuTensor,
    /// Chosen experts `[chunk, k]` (u32).
    pub ids: GpuTensor,
    /// Their weights `[chunk, k]`.
    pub weights: GpuTensor,
    /// The experts' input `[chunk, H]`.
    pub x: GpuTensor,
    /// The experts' output `[chunk, H]`.
    pub y: GpuTensor,
    /// Decode: the GeGLU activations of the k experts `[k, I]`.
    pub h: GpuTensor,
    /// Prefill: routing table and grouped-GEMM scratch for `chunk` tokens.
    pub prefill: moe::PrefillScratch,
    /// Experts, top-k and width the buffers are for.
    pub shape: MoeShape,
    /// When set, every MoE layer copies its chosen ids and weights of the chunk here
    /// (`[layers, chunk, k]` u32 and f32): the router's decisions for inspection and tests.
    pub(crate) trace: Option<(GpuTensor, GpuTensor)>,
    /// Chunk the buffers are for.
    chunk: usize,
}

impl MoeWorkspace {
    /// Allocates the buffers for chunks of `chunk` tokens.
    pub(crate) fn new(
        ctx: &crate::gpu::GpuContext,
        c: &TextConfig,
        shape: MoeShape,
        chunk: usize,
    ) -> Result<Self> {
        use crate::gpu::DType;
        let (h, e, k, i) = (c.hidden_size, shape.experts, shape.top_k, shape.intermediate);
        let z = |s: &[usize]| GpuTensor::zeros(ctx, s, DType::F32);
        Ok(MoeWorkspace {
            logits: z(&[chunk, e])?,
            ids: GpuTensor::zeros(ctx, &[chunk, k], DType::U32)?,
            weights: z(&[chunk, k])?,
            x: z(&[chunk, h])?,
            y: z(&[chunk, h])?,
            h: z(&[k, i])?,
            prefill: moe::PrefillScratch::new(ctx, chunk, e, k, h, i)?,
            shape,
            trace: None,
            chunk,
        })
    }

    /// Makes the MoE layers record their routing decisions of the next chunk (see
    /// [`TextDecoder::router_trace`](super::TextDecoder::router_trace)).
    pub(crate) fn enable_trace(&mut self, ctx: &crate::gpu::GpuContext, layers: usize) -> Result<()> {
        use crate::gpu::DType;
        let n = layers * self.chunk * self.shape.top_k;
        self.trace = Some((
            GpuTensor::zeros(ctx, &[n], DType::U32)?,
            GpuTensor::zeros(ctx, &[n], DType::F32)?,
        ));
        Ok(())
    }

    /// Bytes of GPU memory held.
    pub fn bytes(&self) -> u64 {
        [
            &self.logits,
            &self.ids,
            &self.weights,
            &self.x,
            &self.y,
            &self.h,
            &self.prefill.route,
            &self.prefill.hs,
            &self.prefill.ds,
        ]
        .iter()
        .map(|t| t.buffer_size())
        .sum()
    }
}

impl MoeBlock {
    /// The experts' gate, up and down projections as the kernels take them.
    fn projections(&self) -> Result<[moe::ExpertProj<'_>; 3]> {
        let e = self.shape.experts;
        Ok(match &self.experts {
            ExpertWeights::GateUp { gate_up, down } => {
                let (g, u) = moe::ExpertProj::gate_up_halves(gate_up, e)?;
                [g, u, moe::ExpertProj::stacked(down, e)?]
            }
            ExpertWeights::Split { gate, up, down } => [
                moe::ExpertProj::stacked(gate, e)?,
                moe::ExpertProj::stacked(up, e)?,
                moe::ExpertProj::stacked(down, e)?,
            ],
        })
    }

    /// Dispatches of one decoded token through the routed branch (router norm, projection
    /// and top-k, the experts' input norm, the gathered experts, the two output norms).
    pub fn decode_dispatches(&self) -> Result<usize> {
        let [g, _, d] = self.projections()?;
        Ok(6 + moe::decode_dispatches(&g, &d))
    }

    /// Records the block's output `out` (`[L, H]`, before `post_feedforward_layernorm`):
    /// `x` is `pre_feedforward_layernorm(r)` (the dense MLP's input; reused as scratch),
    /// `r` the residual after attention.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        rec: &mut Recorder,
        ws: &Workspace,
        layer: usize,
        r: &GpuTensor,
        x: &GpuTensor,
        out: &GpuTensor,
        eps: f32,
    ) -> Result<()> {
        let mw = ws
            .moe
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("the workspace has no MoE buffers".into()))?;
        let (l, hid) = (r.shape[0], r.shape[1]);
        let MoeShape {
            experts: e,
            top_k: k,
            ..
        } = self.shape;
        // m1 = post_1(mlp(x)) into out
        self.mlp.record(rec, ws, x, out)?;
        ops::rms_norm(rec, out, Some(&self.post_feedforward_layernorm_1), out, eps)?;
        // routing: rms(r) · scale · H^-½ → proj → softmax / top-k / renormalise / scale
        let xr = mw.x.view(0, &[l, hid]);
        let logits = mw.logits.view(0, &[l, e]);
        let (ids, weights) = (mw.ids.view(0, &[l, k]), mw.weights.view(0, &[l, k]));
        ops::rms_norm(rec, r, Some(&self.router.norm), &xr, eps)?;
        ops::linear(rec, &self.router.proj, &xr, &logits)?;
        moe::route(rec, &logits, &self.router.per_expert_scale, &ids, &weights, l, e, k)?;
        if let Some((tid, tw)) = &mw.trace {
            let at = (layer * mw.chunk * k * 4) as u64;
            let n = (l * k * 4) as u64;
            rec.copy(&ids.buffer, ids.elem_offset() as u64 * 4, &tid.buffer, at, n);
            rec.copy(&weights.buffer, weights.elem_offset() as u64 * 4, &tw.buffer, at, n);
        }
        // m2 = experts(pre_2(r))
        ops::rms_norm(rec, r, Some(&self.pre_feedforward_layernorm_2), &xr, eps)?;
        let y = mw.y.view(0, &[l, hid]);
        let [g, u, d] = self.projections()?;
        if l == 1 {
            let h = mw.h.view(0, &[k, self.shape.intermediate]);
            let (ids, weights) = (ids.reshape(&[k]), weights.reshape(&[k]));
            moe::experts_decode(rec, &xr, &g, &u, &d, &ids, &weights, &h, &y)?;
        } else {
            let layout = moe::RouteLayout::new(l, e, k);
            let s = &mw.prefill;
            let scratch = moe::PrefillScratch {
                route: s.route.view(0, &[layout.len]),
                hs: s.hs.view(0, &[l * k, self.shape.intermediate]),
                ds: s.ds.view(0, &[l * k, hid]),
            };
            moe::experts_prefill(rec, &xr, &g, &u, &d, &ids, &weights, &scratch, &y)?;
        }
        // out = m1 + post_2(m2)
        ops::residual_norm(rec, out, &y, &self.post_feedforward_layernorm_2, 1.0, None, eps)?;
        Ok(())
    }
}

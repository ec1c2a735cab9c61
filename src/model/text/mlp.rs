//! The feed-forward block of a decoder layer (spec §1.7): `down(gelu_tanh(gate(x)) * up(x))`.
//! [`FeedForward`] is the layer's choice of block: dense, or the MoE block (§1.8, a dense MLP
//! plus routed experts; [`super::moe`]).

use crate::config::TextConfig;
use crate::error::Result;
use crate::gpu::ops;
use crate::gpu::{GpuTensor, Matrix, Recorder};
use crate::checkpoint::var_builder::VarBuilder;
use crate::checkpoint::{LoadError, Sink};

use super::moe::MoeBlock;
use super::workspace::Workspace;

/// The gelu_tanh-gated MLP (module `mlp`).
#[derive(Debug)]
pub struct Mlp<M = Matrix> {
    /// `gate_proj` `[I, H]`.
    pub gate_proj: M,
    /// `up_proj` `[I, H]`.
    pub up_proj: M,
    /// `down_proj` `[H, I]`.
    pub down_proj: M,
}

impl<M> Mlp<M> {
    /// Loads `gate_proj`, `up_proj`, `down_proj` (`[I, H]`, `[I, H]`, `[H, I]`) from `vb`.
    pub(crate) fn load<S: Sink<M = M>>(
        vb: &mut VarBuilder<'_, '_, S>,
        hidden: usize,
        inter: usize,
    ) -> Result<Self, LoadError> {
        Ok(Mlp {
            gate_proj: vb.linear("gate_proj", inter, hidden)?,
            up_proj: vb.linear("up_proj", inter, hidden)?,
            down_proj: vb.linear("down_proj", hidden, inter)?,
        })
    }
}

impl Mlp {
    /// Records `out = down(gelu_tanh(gate(x)) * up(x))` (`x`, `out`: `[L, H]`).
    pub(crate) fn record(
        &self,
        rec: &mut Recorder,
        ws: &Workspace,
        x: &GpuTensor,
        out: &GpuTensor,
    ) -> Result<()> {
        let shape = [x.shape[0], self.gate_proj.rows];
        let (gate, up) = (ws.gate.view(0, &shape), ws.up.view(0, &shape));
        ops::linear_gelu_gate(rec, &self.gate_proj, &self.up_proj, x, &gate, &up)?;
        ops::linear(rec, &self.down_proj, &gate, out)?;
        Ok(())
    }
}

/// The feed-forward block of a decoder layer.
#[derive(Debug)]
pub enum FeedForward<M = Matrix, V = GpuTensor> {
    /// One dense MLP (E2B / E4B / 12B / 31B).
    Dense(Mlp<M>),
    /// A dense MLP plus routed experts (26B-A4B).
    DenseAndExperts(Box<MoeBlock<M, V>>),
}

impl<M, V> FeedForward<M, V> {
    /// Loads layer `i`'s block from the layer's module (`language_model.layers.{i}`).
    pub(crate) fn load<S: Sink<M = M, V = V>>(
        cfg: &TextConfig,
        i: usize,
        vb: &mut VarBuilder<'_, '_, S>,
    ) -> Result<Self, LoadError> {
        if let Some(shape) = cfg.moe() {
            return Ok(FeedForward::DenseAndExperts(Box::new(MoeBlock::load(
                cfg, i, shape, vb,
            )?)));
        }
        let mlp = Mlp::load(&mut vb.pp("mlp"), cfg.hidden_size, cfg.intermediate(i))?;
        Ok(FeedForward::Dense(mlp))
    }

    /// The dense MLP (every variant has one; the MoE block adds experts beside it).
    pub fn dense(&self) -> &Mlp<M> {
        match self {
            FeedForward::Dense(m) => m,
            FeedForward::DenseAndExperts(b) => &b.mlp,
        }
    }

    /// The MoE block, if the layer has one.
    pub fn moe(&self) -> Option<&MoeBlock<M, V>> {
        match self {
            FeedForward::Dense(_) => None,
            FeedForward::DenseAndExperts(b) => Some(b),
        }
    }
}

impl FeedForward {
    /// Records the block's output `out` (`[L, H]`, before the post-feed-forward norm) for the
    /// pre-normed input `x` of the residual `r` (the router and experts read `r`; `x` may be
    /// overwritten).
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
        match self {
            FeedForward::Dense(mlp) => mlp.record(rec, ws, x, out),
            FeedForward::DenseAndExperts(b) => b.record(rec, ws, layer, r, x, out, eps),
        }
    }
}

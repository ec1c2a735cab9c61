//! A prefix view over the loader's [`Builder`](super::Builder), as candle's `VarBuilder`: each
//! model block loads its own tensors by their name relative to the block
//! (`vb.pp("self_attn").linear("q_proj", rows, cols)`), through the one construction path of the
//! loader (every sink, the role bookkeeping, the error messages).

use super::{Builder, HostLinear, LoadError, MatrixRole, Sink};

/// The loader seen from one module path (e.g. `language_model.layers.3`).
pub(crate) struct VarBuilder<'b, 'a, S: Sink> {
    b: &'b mut Builder<'a, S>,
    prefix: String,
    /// Whether the module belongs to a KV-shared text layer (named in missing-tensor errors).
    kv_shared: bool,
    /// Matrix role of the module's matrices (text side or vision tower).
    role: MatrixRole,
}

impl<'b, 'a, S: Sink> VarBuilder<'b, 'a, S> {
    /// The view of module `prefix`.
    pub(super) fn root(b: &'b mut Builder<'a, S>, prefix: &str, role: MatrixRole) -> Self {
        VarBuilder {
            b,
            prefix: prefix.to_string(),
            kv_shared: false,
            role,
        }
    }

    /// The sub-module `name` (`prefix.name`); it inherits the KV-shared flag and the role.
    pub(crate) fn pp(&mut self, name: impl std::fmt::Display) -> VarBuilder<'_, 'a, S> {
        VarBuilder {
            prefix: self.path(&name.to_string()),
            b: &mut *self.b,
            kv_shared: self.kv_shared,
            role: self.role,
        }
    }

    /// The same view with matrices of `role` (e.g. `embed_vision` under a vision root: it is
    /// eligible for quantize-on-load like the text matrices).
    pub(crate) fn with_role(self, role: MatrixRole) -> Self {
        VarBuilder { role, ..self }
    }

    /// Marks this module (and its sub-modules) as part of a KV-shared text layer.
    pub(crate) fn set_kv_shared(&mut self, kv_shared: bool) {
        self.kv_shared = kv_shared;
    }

    /// `prefix.name` (`name` at the checkpoint root).
    pub(crate) fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Validates sub-module `name` as a `[rows, cols]` Linear/Embedding and hands it to the sink.
    pub(crate) fn linear(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<S::M, LoadError> {
        let path = self.path(name);
        self.b.linear(&path, rows, cols, self.kv_shared, self.role)
    }

    /// Validates sub-module `name` as a stacked expert tensor `[experts, rows, cols]` (HF's bare
    /// parameter or `name.weight`, float or MLX-quantized) and hands it to the sink as one
    /// matrix of `experts · rows` rows whose row windows hold whole experts.
    pub(crate) fn stacked(
        &mut self,
        name: &str,
        experts: usize,
        rows: usize,
        cols: usize,
    ) -> Result<S::M, LoadError> {
        let path = self.path(name);
        self.b.stacked(&path, experts, rows, cols, self.role)
    }

    /// The tensor `prefix.name` of `shape` times `factor` (folded on the host).
    pub(crate) fn vector_scaled(
        &mut self,
        name: &str,
        shape: &[usize],
        factor: f32,
    ) -> Result<S::V, LoadError> {
        let key = self.path(name);
        self.b.vector_scaled(&key, shape, &self.prefix, factor)
    }

    /// Validates sub-module `name` as a `[rows, cols]` Linear/Embedding, kept on the host.
    pub(crate) fn host_linear(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<HostLinear, LoadError> {
        let path = self.path(name);
        self.b.host_linear(&path, rows, cols, self.kv_shared)
    }

    /// Whether the checkpoint has tensor `prefix.name` or `prefix.name.weight`.
    pub(crate) fn has(&self, name: &str) -> bool {
        let path = self.path(name);
        self.b.has(&path) || self.b.has(&format!("{path}.weight"))
    }

    /// The `[len]` weight of norm sub-module `name` (`prefix.name.weight`).
    pub(crate) fn norm(&mut self, name: &str, len: usize) -> Result<S::V, LoadError> {
        let module = self.path(name);
        self.b
            .vec1(&format!("{module}.weight"), len, &module, self.kv_shared)
    }

    /// The tensor `prefix.name` of `shape`, owned by this module.
    pub(crate) fn vector(&mut self, name: &str, shape: &[usize]) -> Result<S::V, LoadError> {
        let key = self.path(name);
        self.b.vector(&key, shape, &self.prefix, self.kv_shared)
    }

    /// The scalar tensor `prefix.name` (`[]` or `[1]`) owned by this module; `None` when absent
    /// and not required.
    pub(crate) fn scalar(&mut self, name: &str, required: bool) -> Result<Option<f32>, LoadError> {
        let key = self.path(name);
        self.b.scalar(&key, &self.prefix, required)
    }
}

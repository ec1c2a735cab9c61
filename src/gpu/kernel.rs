//! Compute kernels: WGSL sources (one file per family under `wgsl/`), a small preprocessor for
//! specialisations, bind layouts and a per-device pipeline cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::context::GpuContext;
use super::error::GpuError;

/// How a storage binding is accessed by a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `var<storage, read>`
    Read,
    /// `var<storage, read_write>`
    ReadWrite,
}

/// Everything needed to build one specialised pipeline.
///
/// Binding convention for every kernel: `@group(0) @binding(0)` is a uniform parameter struct
/// (bound with a dynamic offset into the recorder's parameter arena); storage buffers follow at
/// bindings 1, 2, ... in the order of `storage`.
#[derive(Debug, Clone)]
pub struct KernelSpec {
    /// The WGSL file name without extension (a key of [`WGSL_SOURCES`]).
    pub file: &'static str,
    /// The entry point.
    pub entry: &'static str,
    /// Preprocessor definitions (`//#if NAME` blocks and `{{NAME}}` substitutions).
    pub defines: Vec<(&'static str, String)>,
    /// The storage bindings, in binding order starting at 1.
    pub storage: Vec<Access>,
    /// Whether the kernel uses subgroup operations (needs `Features::SUBGROUP`).
    pub subgroups: bool,
}

impl KernelSpec {
    /// A new spec with no defines.
    pub fn new(file: &'static str, entry: &'static str, storage: &[Access]) -> Self {
        KernelSpec {
            file,
            entry,
            defines: Vec::new(),
            storage: storage.to_vec(),
            subgroups: false,
        }
    }

    /// Adds a definition.
    pub fn define(mut self, name: &'static str, value: impl ToString) -> Self {
        self.defines.push((name, value.to_string()));
        self
    }

    /// Marks the kernel as using subgroup operations; defines `SUBGROUP`.
    pub fn with_subgroups(mut self, on: bool) -> Self {
        self.subgroups = on;
        if on {
            self.defines.push(("SUBGROUP", "1".into()));
        }
        self
    }

    fn key(&self) -> String {
        let mut k = format!("{}:{}", self.file, self.entry);
        for (n, v) in &self.defines {
            k.push_str(&format!(";{n}={v}"));
        }
        for a in &self.storage {
            k.push(if *a == Access::Read { 'r' } else { 'w' });
        }
        k
    }

    /// The preprocessed WGSL source of this specialisation.
    pub fn source(&self) -> Result<String, GpuError> {
        let src = wgsl_source(self.file).ok_or_else(|| GpuError::Kernel {
            kernel: self.file.to_string(),
            message: "no such WGSL file".into(),
        })?;
        preprocess(src, &self.defines).map_err(|m| GpuError::Kernel {
            kernel: self.file.to_string(),
            message: m,
        })
    }
}

/// A built, cached pipeline with its bind layout.
#[derive(Debug)]
pub struct Kernel {
    pub(crate) name: String,
    pub(crate) id: u64,
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) storage: Vec<Access>,
}

impl Kernel {
    /// The cache key (file, entry, defines) of this kernel.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name without the access suffix: `file:entry;DEFINE=value...` (the label the
    /// profiler reports).
    pub fn label(&self) -> &str {
        self.name
            .get(..self.name.len().saturating_sub(self.storage.len()))
            .unwrap_or(&self.name)
    }
}

#[derive(Default)]
pub(crate) struct KernelCache {
    map: Mutex<HashMap<String, Arc<Kernel>>>,
}

impl GpuContext {
    /// Returns the pipeline for `spec`, building it on first use.
    pub fn kernel(&self, spec: &KernelSpec) -> Result<Arc<Kernel>, GpuError> {
        let key = spec.key();
        let mut map = self
            .inner
            .kernels
            .map
            .lock()
            .map_err(|_| GpuError::Kernel {
                kernel: key.clone(),
                message: "kernel cache poisoned".into(),
            })?;
        if let Some(k) = map.get(&key) {
            return Ok(k.clone());
        }
        if spec.subgroups && !self.caps().subgroups {
            return Err(GpuError::Kernel {
                kernel: key,
                message: "needs subgroups, which this device does not have".into(),
            });
        }
        let source = spec.source()?;
        let device = self.device();
        let kernel = self.scoped(&format!("building kernel {key}"), || {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&key),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: None,
                },
                count: None,
            }];
            for (i, a) in spec.storage.iter().enumerate() {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: i as u32 + 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: *a == Access::Read,
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&key),
                entries: &entries,
            });
            let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&key),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&key),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(spec.entry),
                compilation_options: Default::default(),
                cache: None,
            });
            (pipeline, layout)
        })?;
        let k = Arc::new(Kernel {
            name: key.clone(),
            id: map.len() as u64 + 1,
            pipeline: kernel.0,
            layout: kernel.1,
            storage: spec.storage.clone(),
        });
        map.insert(key, k.clone());
        Ok(k)
    }
}

/// Expands `//#if NAME`, `//#ifnot NAME`, `//#else`, `//#endif` blocks (nestable; NAME counts as
/// set when defined with a value other than "0") and replaces `{{NAME}}` by the defined value.
pub fn preprocess(src: &str, defines: &[(&str, String)]) -> Result<String, String> {
    let is_set = |name: &str| defines.iter().any(|(n, v)| *n == name && v != "0");
    let mut out = String::with_capacity(src.len());
    // stack of (this block active, any branch taken)
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &Vec<(bool, bool)>| stack.iter().all(|(a, _)| *a);
    for (lineno, line) in src.lines().enumerate() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("//#ifnot ") {
            let v = !is_set(rest.trim());
            stack.push((v, v));
        } else if let Some(rest) = t.strip_prefix("//#if ") {
            let v = is_set(rest.trim());
            stack.push((v, v));
        } else if t.starts_with("//#else") {
            let top = stack
                .last_mut()
                .ok_or(format!("line {}: #else without #if", lineno + 1))?;
            top.0 = !top.1;
            top.1 = true;
        } else if t.starts_with("//#endif") {
            stack
                .pop()
                .ok_or(format!("line {}: #endif without #if", lineno + 1))?;
        } else if active(&stack) {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err("unterminated #if".into());
    }
    for (n, v) in defines {
        out = out.replace(&format!("{{{{{n}}}}}"), v);
    }
    if let Some(pos) = out.find("{{") {
        let end = out[pos..]
            .find("}}")
            .map(|e| pos + e + 2)
            .unwrap_or(out.len());
        return Err(format!("undefined substitution {}", &out[pos..end]));
    }
    Ok(out)
}

/// Every WGSL file of the crate, by name (included at compile time).
pub const WGSL_SOURCES: &[(&str, &str)] = &[
    ("elementwise", include_str!("../../wgsl/elementwise.wgsl")),
    ("streaming", include_str!("../../wgsl/streaming.wgsl")),
    ("attn_in", include_str!("../../wgsl/attn_in.wgsl")),
    ("residual", include_str!("../../wgsl/residual.wgsl")),
    ("pool", include_str!("../../wgsl/pool.wgsl")),
    ("sample", include_str!("../../wgsl/sample.wgsl")),
    ("penalty", include_str!("../../wgsl/penalty.wgsl")),
    ("rmsnorm", include_str!("../../wgsl/rmsnorm.wgsl")),
    ("rope", include_str!("../../wgsl/rope.wgsl")),
    ("attention", include_str!("../../wgsl/attention.wgsl")),
    ("kvcache", include_str!("../../wgsl/kvcache.wgsl")),
    ("matvec", include_str!("../../wgsl/matvec.wgsl")),
    ("matmul", include_str!("../../wgsl/matmul.wgsl")),
    ("gather", include_str!("../../wgsl/gather.wgsl")),
];

/// The source of a WGSL file by name.
pub fn wgsl_source(name: &str) -> Option<&'static str> {
    WGSL_SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
}

//! Compute kernels: WGSL sources (one file per kernel under `wgsl/`, shared helpers under
//! `wgsl/common/`), a small preprocessor for specialisations and includes, bind layouts, the
//! uniform-parameter layouts and a per-device pipeline cache.

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
    /// Preprocessor definitions (`//#if NAME` blocks and `{{NAME}}` substitutions; see
    /// [`preprocess`]).
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

    /// The preprocessed WGSL source of this specialisation (includes resolved).
    pub fn source(&self) -> Result<String, GpuError> {
        Ok(self.expand()?.source)
    }

    /// The `wgsl/common/` files this specialisation includes (directly or not), in order.
    #[doc(hidden)]
    pub fn includes(&self) -> Result<Vec<&'static str>, GpuError> {
        Ok(self.expand()?.included)
    }

    fn expand(&self) -> Result<Expanded, GpuError> {
        let src = wgsl_source(self.file).ok_or_else(|| GpuError::Kernel {
            kernel: self.file.to_string(),
            message: "no such WGSL file".into(),
        })?;
        expand(self.file, src, &self.defines, &wgsl_include).map_err(|error| GpuError::Preprocess {
            kernel: self.file.to_string(),
            error,
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

/// A WGSL source that the preprocessor cannot expand (an engine bug, caught by the shader
/// tests).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PreprocessError {
    /// `//#else` or `//#endif` without an open `//#if`.
    #[error("{file} line {line}: {directive} without #if")]
    Unbalanced {
        /// The file (a kernel or an included helper).
        file: String,
        /// 1-based line number.
        line: usize,
        /// The directive.
        directive: &'static str,
    },
    /// An `//#if` block that is still open at the end of its file.
    #[error("{file}: unterminated #if")]
    Unterminated {
        /// The file (a kernel or an included helper).
        file: String,
    },
    /// An `//#include` line that does not name a file in quotes.
    #[error("{file} line {line}: malformed include (expected //#include \"common/NAME.wgsl\")")]
    BadInclude {
        /// The including file.
        file: String,
        /// 1-based line number.
        line: usize,
    },
    /// An `//#include` of a file that does not exist.
    #[error("{file} line {line}: no WGSL file {include:?} to include (see WGSL_COMMON)")]
    MissingInclude {
        /// The including file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// The path as written.
        include: String,
    },
    /// A file that includes itself, directly or through other files.
    #[error("include cycle: {}", chain.join(" -> "))]
    IncludeCycle {
        /// The include chain, from the kernel to the file included again.
        chain: Vec<String>,
    },
    /// A `{{NAME}}` left after substitution (the spec does not define NAME).
    #[error("undefined substitution {0}")]
    UndefinedSubstitution(String),
}

/// The result of expanding one source.
struct Expanded {
    source: String,
    included: Vec<&'static str>,
}

struct Expander<'a> {
    defines: &'a [(&'a str, String)],
    resolve: &'a dyn Fn(&str) -> Option<(&'static str, &'static str)>,
    /// Files being expanded, outermost first (cycle detection).
    stack: Vec<String>,
    included: Vec<&'static str>,
    out: String,
}

impl Expander<'_> {
    fn is_set(&self, name: &str) -> bool {
        self.defines.iter().any(|(n, v)| *n == name && v != "0")
    }

    fn expand(&mut self, file: &str, src: &str) -> Result<(), PreprocessError> {
        // stack of (this block active, any branch taken)
        let mut blocks: Vec<(bool, bool)> = Vec::new();
        for (i, line) in src.lines().enumerate() {
            let t = line.trim_start();
            let unbalanced = |directive| PreprocessError::Unbalanced {
                file: file.to_string(),
                line: i + 1,
                directive,
            };
            if let Some(rest) = t.strip_prefix("//#ifnot ") {
                let v = !self.is_set(rest.trim());
                blocks.push((v, v));
            } else if let Some(rest) = t.strip_prefix("//#if ") {
                let v = self.is_set(rest.trim());
                blocks.push((v, v));
            } else if t.starts_with("//#else") {
                let top = blocks.last_mut().ok_or_else(|| unbalanced("#else"))?;
                top.0 = !top.1;
                top.1 = true;
            } else if t.starts_with("//#endif") {
                blocks.pop().ok_or_else(|| unbalanced("#endif"))?;
            } else if !blocks.iter().all(|(a, _)| *a) {
                // inside an inactive block
            } else if let Some(rest) = t.strip_prefix("//#include") {
                let name = rest
                    .trim()
                    .strip_prefix('"')
                    .and_then(|r| r.strip_suffix('"'))
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| PreprocessError::BadInclude {
                        file: file.to_string(),
                        line: i + 1,
                    })?;
                self.include(file, i + 1, name)?;
            } else {
                self.out.push_str(line);
                self.out.push('\n');
            }
        }
        if !blocks.is_empty() {
            return Err(PreprocessError::Unterminated {
                file: file.to_string(),
            });
        }
        Ok(())
    }

    /// Expands `name` in place, once per source: a helper included again (e.g. by two other
    /// helpers) is skipped; one that is being expanded is a cycle.
    fn include(&mut self, file: &str, line: usize, name: &str) -> Result<(), PreprocessError> {
        if self.stack.iter().any(|f| f == name) {
            let mut chain = self.stack.clone();
            chain.push(name.to_string());
            return Err(PreprocessError::IncludeCycle { chain });
        }
        let (path, text) = (self.resolve)(name).ok_or_else(|| PreprocessError::MissingInclude {
            file: file.to_string(),
            line,
            include: name.to_string(),
        })?;
        if self.included.contains(&path) {
            return Ok(());
        }
        self.included.push(path);
        self.stack.push(name.to_string());
        self.expand(name, text)?;
        self.stack.pop();
        Ok(())
    }
}

fn expand(
    file: &str,
    src: &str,
    defines: &[(&str, String)],
    resolve: &dyn Fn(&str) -> Option<(&'static str, &'static str)>,
) -> Result<Expanded, PreprocessError> {
    let mut e = Expander {
        defines,
        resolve,
        stack: vec![file.to_string()],
        included: Vec::new(),
        out: String::with_capacity(src.len()),
    };
    e.expand(file, src)?;
    let mut out = e.out;
    for (n, v) in defines {
        out = out.replace(&format!("{{{{{n}}}}}"), v);
    }
    if let Some(pos) = out.find("{{") {
        let end = out[pos..]
            .find("}}")
            .map(|e| pos + e + 2)
            .unwrap_or(out.len());
        return Err(PreprocessError::UndefinedSubstitution(
            out[pos..end].to_string(),
        ));
    }
    Ok(Expanded {
        source: out,
        included: e.included,
    })
}

/// Expands a WGSL source:
/// - `//#if NAME`, `//#ifnot NAME`, `//#else`, `//#endif` blocks (nestable, balanced within each
///   file; NAME counts as set when defined with a value other than "0");
/// - `//#include "common/NAME.wgsl"` lines (in active blocks) by that file of [`WGSL_COMMON`],
///   itself expanded with the same definitions. A file is included once per source (later
///   includes of it are skipped); a file that includes itself, directly or not, is an error;
/// - `{{NAME}}` by the defined value (in the expanded text, included files too).
pub fn preprocess(src: &str, defines: &[(&str, String)]) -> Result<String, PreprocessError> {
    preprocess_with(src, defines, &wgsl_include)
}

/// [`preprocess`] with includes resolved by `resolve` (path as written → (path, source)).
pub fn preprocess_with(
    src: &str,
    defines: &[(&str, String)],
    resolve: &dyn Fn(&str) -> Option<(&'static str, &'static str)>,
) -> Result<String, PreprocessError> {
    Ok(expand("<source>", src, defines, resolve)?.source)
}

/// Every kernel of the crate (the top-level `wgsl/*.wgsl` files), by name (included at compile
/// time). Kernel `NAME` is recorded by the op in `src/gpu/ops/NAME.rs`.
pub const WGSL_SOURCES: &[(&str, &str)] = &[
    ("elementwise", include_str!("../../wgsl/elementwise.wgsl")),
    ("streaming", include_str!("../../wgsl/streaming.wgsl")),
    ("fma_probe", include_str!("../../wgsl/fma_probe.wgsl")),
    (
        "attention_input",
        include_str!("../../wgsl/attention_input.wgsl"),
    ),
    ("residual", include_str!("../../wgsl/residual.wgsl")),
    ("pool", include_str!("../../wgsl/pool.wgsl")),
    ("sample", include_str!("../../wgsl/sample.wgsl")),
    ("penalty", include_str!("../../wgsl/penalty.wgsl")),
    ("rmsnorm", include_str!("../../wgsl/rmsnorm.wgsl")),
    ("layernorm", include_str!("../../wgsl/layernorm.wgsl")),
    ("rope", include_str!("../../wgsl/rope.wgsl")),
    ("attention", include_str!("../../wgsl/attention.wgsl")),
    (
        "attention_rows",
        include_str!("../../wgsl/attention_rows.wgsl"),
    ),
    ("kvcache", include_str!("../../wgsl/kvcache.wgsl")),
    ("matvec", include_str!("../../wgsl/matvec.wgsl")),
    ("matmul", include_str!("../../wgsl/matmul.wgsl")),
    ("gather", include_str!("../../wgsl/gather.wgsl")),
    ("moe_router", include_str!("../../wgsl/moe_router.wgsl")),
    ("moe_matvec", include_str!("../../wgsl/moe_matvec.wgsl")),
    (
        "moe_route_sort",
        include_str!("../../wgsl/moe_route_sort.wgsl"),
    ),
    ("moe_matmul", include_str!("../../wgsl/moe_matmul.wgsl")),
    ("moe_combine", include_str!("../../wgsl/moe_combine.wgsl")),
];

/// The WGSL helpers shared by several kernels (`wgsl/common/*.wgsl`), by the path an
/// `//#include` names (included at compile time).
pub const WGSL_COMMON: &[(&str, &str)] = &[
    (
        "common/affine.wgsl",
        include_str!("../../wgsl/common/affine.wgsl"),
    ),
    (
        "common/bf16.wgsl",
        include_str!("../../wgsl/common/bf16.wgsl"),
    ),
    (
        "common/dense.wgsl",
        include_str!("../../wgsl/common/dense.wgsl"),
    ),
    (
        "common/gelu.wgsl",
        include_str!("../../wgsl/common/gelu.wgsl"),
    ),
    (
        "common/rope.wgsl",
        include_str!("../../wgsl/common/rope.wgsl"),
    ),
];

/// The source of a kernel by name.
pub fn wgsl_source(name: &str) -> Option<&'static str> {
    WGSL_SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
}

/// A shared helper by include path (`common/NAME.wgsl`): (path, source).
pub fn wgsl_include(path: &str) -> Option<(&'static str, &'static str)> {
    WGSL_COMMON.iter().find(|(n, _)| *n == path).copied()
}

/// One member of a kernel's uniform parameter struct as Rust lays it out.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamField {
    /// Field name (the WGSL member has the same name).
    pub name: &'static str,
    /// Byte offset (`std::mem::offset_of!`).
    pub offset: usize,
    /// The scalar type.
    pub kind: ParamKind,
}

/// The scalar type of a [`ParamField`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// `u32`
    U32,
    /// `i32`
    I32,
    /// `f32`
    F32,
}

/// The Rust layout of a kernel's uniform parameter struct (binding 0), which the kernel-layout
/// test compares with the struct naga reflects from every specialisation of the kernel.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamLayout {
    /// The Rust struct's name.
    pub name: &'static str,
    /// `size_of` the struct.
    pub size: usize,
    /// Its fields in declaration order.
    pub fields: Vec<ParamField>,
}

/// A scalar that may be a field of a uniform parameter struct.
#[doc(hidden)]
pub trait ParamScalar: bytemuck::Pod {
    /// Its [`ParamKind`].
    const KIND: ParamKind;
}

impl ParamScalar for u32 {
    const KIND: ParamKind = ParamKind::U32;
}
impl ParamScalar for i32 {
    const KIND: ParamKind = ParamKind::I32;
}
impl ParamScalar for f32 {
    const KIND: ParamKind = ParamKind::F32;
}

/// Declares a kernel's uniform parameter struct: a `#[repr(C)]` `Pod` struct of 32-bit scalars
/// (the same members, in the same order, as the WGSL `Params` struct of the kernel) with a
/// `layout()` function returning its [`ParamLayout`] for the kernel-layout test.
macro_rules! uniform_params {
    (
        $(#[$meta:meta])*
        struct $name:ident {
            $($(#[$fmeta:meta])* $field:ident: $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
        struct $name {
            $($(#[$fmeta])* $field: $ty),*
        }

        impl $name {
            /// The Rust layout of this struct (checked against the kernel's WGSL struct).
            #[allow(dead_code)]
            fn layout() -> $crate::gpu::ParamLayout {
                $crate::gpu::ParamLayout {
                    name: stringify!($name),
                    size: ::std::mem::size_of::<$name>(),
                    fields: vec![$($crate::gpu::ParamField {
                        name: stringify!($field),
                        offset: ::std::mem::offset_of!($name, $field),
                        kind: <$ty as $crate::gpu::ParamScalar>::KIND,
                    }),*],
                }
            }
        }
    };
}
pub(crate) use uniform_params;

#[cfg(test)]
mod tests {
    use super::*;

    fn defs(d: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        d.iter().map(|(n, v)| (*n, v.to_string())).collect()
    }

    fn files(path: &str) -> Option<(&'static str, &'static str)> {
        const F: &[(&str, &str)] = &[
            ("common/a.wgsl", "//#include \"common/b.wgsl\"\nfn a() {}\n"),
            ("common/b.wgsl", "const B: u32 = {{B}}u;\n"),
            ("common/self.wgsl", "//#include \"common/self.wgsl\"\n"),
            ("common/x.wgsl", "//#include \"common/y.wgsl\"\n"),
            ("common/y.wgsl", "//#include \"common/x.wgsl\"\n"),
            ("common/open.wgsl", "//#if A\n"),
        ];
        F.iter().find(|(n, _)| *n == path).copied()
    }

    #[test]
    fn includes_expand_once_with_the_same_defines() {
        let src = "//#include \"common/a.wgsl\"\n//#if A\n//#include \"common/b.wgsl\"\n//#endif\nfn main() {}\n";
        let out = preprocess_with(src, &defs(&[("A", "1"), ("B", "4")]), &files).unwrap();
        assert_eq!(out, "const B: u32 = 4u;\nfn a() {}\nfn main() {}\n");
        // an include in an inactive block is not read at all
        let out = preprocess_with(
            "//#if A\n//#include \"common/missing.wgsl\"\n//#endif\n",
            &[],
            &files,
        )
        .unwrap();
        assert_eq!(out, "");
    }

    #[test]
    fn include_errors_are_typed() {
        let e = preprocess_with("//#include \"common/missing.wgsl\"\n", &[], &files);
        assert!(matches!(
            e,
            Err(PreprocessError::MissingInclude { line: 1, ref include, .. }) if include == "common/missing.wgsl"
        ));
        let e = preprocess_with("//#include \"common/self.wgsl\"\n", &[], &files);
        assert!(matches!(e, Err(PreprocessError::IncludeCycle { ref chain }) if chain.len() == 3));
        let e = preprocess_with("//#include \"common/x.wgsl\"\n", &[], &files).unwrap_err();
        assert_eq!(
            e.to_string(),
            "include cycle: <source> -> common/x.wgsl -> common/y.wgsl -> common/x.wgsl"
        );
        let e = preprocess_with("//#include common/a.wgsl\n", &[], &files);
        assert!(matches!(
            e,
            Err(PreprocessError::BadInclude { line: 1, .. })
        ));
        // blocks balance within each file
        let e = preprocess_with("//#include \"common/open.wgsl\"\n//#endif\n", &[], &files);
        assert!(
            matches!(e, Err(PreprocessError::Unterminated { ref file }) if file == "common/open.wgsl")
        );
        let e = preprocess_with("//#include \"common/b.wgsl\"\n", &[], &files);
        assert_eq!(
            e,
            Err(PreprocessError::UndefinedSubstitution("{{B}}".into()))
        );
    }

    #[test]
    fn every_common_file_resolves() {
        for (path, _) in WGSL_COMMON {
            assert_eq!(wgsl_include(path).map(|(p, _)| p), Some(*path));
        }
    }
}

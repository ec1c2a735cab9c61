//! Every WGSL file and every specialisation the ops build is validated with naga and translated
//! to MSL (Metal), SPIR-V (Vulkan) and HLSL (DX12), so a shader that would fail on a Mac fails here
//! first; the uniform parameter struct of every specialisation, as naga reflects it, matches the
//! Rust struct the op uploads; kernels and ops pair up by name. Needs no adapter.

use std::collections::{BTreeMap, BTreeSet};

use gemma_wgpu::gpu::{ParamKind, ParamLayout, WGSL_COMMON, WGSL_SOURCES, ops};

fn translate(name: &str, src: &str) -> naga::Module {
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{name}: WGSL parse error:\n{}", e.emit_to_string(src)));
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    );
    let info = validator
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: validation error:\n{}", e.emit_to_string(src)));

    // Metal
    let msl_opts = naga::back::msl::Options {
        lang_version: (2, 4),
        ..Default::default()
    };
    for ep in &module.entry_points {
        let pipeline_opts = naga::back::msl::PipelineOptions {
            entry_point: Some((ep.stage, ep.name.clone())),
            ..Default::default()
        };
        naga::back::msl::write_string(&module, &info, &msl_opts, &pipeline_opts)
            .unwrap_or_else(|e| panic!("{name}: MSL ({}): {e:?}", ep.name));
    }
    // SPIR-V
    let spv_opts = naga::back::spv::Options {
        lang_version: (1, 3),
        ..Default::default()
    };
    naga::back::spv::write_vec(&module, &info, &spv_opts, None)
        .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e:?}"));
    // HLSL
    let hlsl_opts = naga::back::hlsl::Options {
        shader_model: naga::back::hlsl::ShaderModel::V6_2,
        ..Default::default()
    };
    let mut out = String::new();
    let hlsl_pipeline = naga::back::hlsl::PipelineOptions::default();
    let mut w = naga::back::hlsl::Writer::new(&mut out, &hlsl_opts, &hlsl_pipeline);
    w.write(&module, &info, None)
        .unwrap_or_else(|e| panic!("{name}: HLSL: {e:?}"));
    module
}

/// The uniform struct bound at `@group(0) @binding(0)`, as naga lays it out.
fn reflect_params(name: &str, module: &naga::Module) -> (u32, Vec<(String, u32, ParamKind)>) {
    let binding0 = naga::ResourceBinding {
        group: 0,
        binding: 0,
    };
    let (_, var) = module
        .global_variables
        .iter()
        .find(|(_, v)| v.binding == Some(binding0))
        .unwrap_or_else(|| panic!("{name}: nothing bound at group 0 binding 0"));
    assert_eq!(
        var.space,
        naga::AddressSpace::Uniform,
        "{name}: binding 0 is not a uniform"
    );
    let naga::TypeInner::Struct { members, span } = &module.types[var.ty].inner else {
        panic!("{name}: the uniform at binding 0 is not a struct");
    };
    let members = members
        .iter()
        .map(|m| {
            let kind = match module.types[m.ty].inner {
                naga::TypeInner::Scalar(naga::Scalar {
                    kind: naga::ScalarKind::Uint,
                    width: 4,
                }) => ParamKind::U32,
                naga::TypeInner::Scalar(naga::Scalar {
                    kind: naga::ScalarKind::Sint,
                    width: 4,
                }) => ParamKind::I32,
                naga::TypeInner::Scalar(naga::Scalar {
                    kind: naga::ScalarKind::Float,
                    width: 4,
                }) => ParamKind::F32,
                ref other => panic!(
                    "{name}: uniform member {:?} has type {other:?}; parameter structs hold \
                     32-bit scalars only",
                    m.name
                ),
            };
            (m.name.clone().unwrap_or_default(), m.offset, kind)
        })
        .collect();
    (*span, members)
}

/// Compares the reflected WGSL parameter struct with the Rust one: size, member count, and each
/// member's name, offset and scalar type.
fn check_params(name: &str, module: &naga::Module, rust: &ParamLayout) {
    let (span, members) = reflect_params(name, module);
    assert_eq!(
        span as usize, rust.size,
        "{name}: WGSL Params is {span} bytes, Rust {} is {} bytes",
        rust.name, rust.size
    );
    assert_eq!(
        members.len(),
        rust.fields.len(),
        "{name}: WGSL Params has {} members, Rust {} has {} fields",
        members.len(),
        rust.name,
        rust.fields.len()
    );
    for ((wname, woff, wkind), f) in members.iter().zip(&rust.fields) {
        assert!(
            wname == f.name && *woff as usize == f.offset && *wkind == f.kind,
            "{name}: WGSL member {wname}: {wkind:?} at byte {woff}, Rust {}.{}: {:?} at byte {}",
            rust.name,
            f.name,
            f.kind,
            f.offset
        );
    }
}

/// Every specialisation translates, and its uniform parameter struct (binding 0) has the
/// layout of the Rust struct its op uploads. Every kernel is used by an op and every shared
/// helper is included by some specialisation.
#[test]
fn every_specialisation_translates_to_msl_spirv_hlsl() {
    let specs = ops::all_specs();
    assert!(!specs.is_empty());
    let layouts: BTreeMap<&str, ParamLayout> = ops::param_layouts().into_iter().collect();
    let mut files_seen = BTreeSet::new();
    let mut included = BTreeSet::new();
    for spec in &specs {
        let src = spec
            .source()
            .unwrap_or_else(|e| panic!("{}: preprocess: {e}", spec.file));
        let name = format!("{} {:?}", spec.file, spec.defines);
        let module = translate(&name, &src);
        let rust = layouts.get(spec.file).unwrap_or_else(|| {
            panic!(
                "{}: no Rust parameter layout in ops::param_layouts",
                spec.file
            )
        });
        check_params(&name, &module, rust);
        files_seen.insert(spec.file);
        included.extend(spec.includes().unwrap());
    }
    for (name, _) in WGSL_SOURCES {
        assert!(
            files_seen.contains(name),
            "{name}.wgsl is not used by any op"
        );
    }
    for (path, _) in WGSL_COMMON {
        assert!(
            included.contains(path),
            "wgsl/{path} is not included by any kernel specialisation"
        );
    }
}

/// A drifted field fails the layout check.
#[test]
#[should_panic(expected = "WGSL member")]
fn a_drifted_parameter_field_fails_the_layout_check() {
    let src = "struct Params { a: u32, b: f32, c: u32, d: u32 }\n\
               @group(0) @binding(0) var<uniform> p: Params;\n\
               @compute @workgroup_size(1) fn main() { let x = p.a; }\n";
    let module = translate("drift", src);
    let field = |name, offset, kind| gemma_wgpu::gpu::ParamField { name, offset, kind };
    let rust = ParamLayout {
        name: "Drifted",
        size: 16,
        fields: vec![
            field("a", 0, ParamKind::U32),
            field("c", 4, ParamKind::U32),
            field("b", 8, ParamKind::F32),
            field("d", 12, ParamKind::U32),
        ],
    };
    check_params("drift", &module, &rust);
}

/// Top-level `wgsl/*.wgsl` files are the kernels (each in WGSL_SOURCES, each driven by the op
/// of the same name, `src/gpu/ops/NAME.rs`, and every op file has its kernel);
/// `wgsl/common/*.wgsl` are the shared helpers (each in WGSL_COMMON).
#[test]
fn every_wgsl_file_is_registered() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let stems = |dir: &std::path::Path, ext: &str| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == ext))
            .map(|p| p.file_stem().unwrap().to_string_lossy().to_string())
            .collect()
    };
    let kernels = stems(&root.join("wgsl"), "wgsl");
    let registered: BTreeSet<String> = WGSL_SOURCES.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(kernels, registered, "wgsl/*.wgsl vs WGSL_SOURCES");
    let mut ops_files = stems(&root.join("src/gpu/ops"), "rs");
    ops_files.remove("mod");
    assert_eq!(kernels, ops_files, "wgsl/NAME.wgsl vs src/gpu/ops/NAME.rs");
    let common: BTreeSet<String> = stems(&root.join("wgsl/common"), "wgsl")
        .into_iter()
        .map(|s| format!("common/{s}.wgsl"))
        .collect();
    let registered: BTreeSet<String> = WGSL_COMMON.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(common, registered, "wgsl/common/*.wgsl vs WGSL_COMMON");
    for entry in std::fs::read_dir(root.join("wgsl")).unwrap() {
        let path = entry.unwrap().path();
        assert!(
            path.is_file() || path.file_name().is_some_and(|n| n == "common"),
            "{}: wgsl/ holds kernels and common/ only",
            path.display()
        );
    }
}

//! Every WGSL file and every specialisation the ops build is validated with naga and translated
//! to MSL (Metal), SPIR-V (Vulkan) and HLSL (DX12), so a shader that would fail on a Mac fails here
//! first. Needs no adapter.

use gemma_wgpu::gpu::{WGSL_SOURCES, ops};

fn translate(name: &str, src: &str) {
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
}

#[test]
fn every_specialisation_translates_to_msl_spirv_hlsl() {
    let specs = ops::all_specs();
    assert!(!specs.is_empty());
    let mut files_seen = std::collections::HashSet::new();
    for spec in &specs {
        let src = spec
            .source()
            .unwrap_or_else(|e| panic!("{}: preprocess: {e}", spec.file));
        translate(&format!("{} {:?}", spec.file, spec.defines), &src);
        files_seen.insert(spec.file);
    }
    for (name, _) in WGSL_SOURCES {
        assert!(
            files_seen.contains(name),
            "{name}.wgsl is not used by any op"
        );
    }
}

#[test]
fn every_wgsl_file_is_registered() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("wgsl");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        assert!(
            WGSL_SOURCES.iter().any(|(n, _)| *n == stem),
            "{} is not in WGSL_SOURCES",
            path.display()
        );
    }
}

//! The benchmark's tools: synthetic checkpoints load and decode, the per-kernel profiler
//! produces entries, and the byte / readback counters count.

use crate::common;

use std::path::PathBuf;

use gemma_wgpu::checkpoint::{Checkpoint, PerLayerTable};
use gemma_wgpu::gpu::ops::streaming;
use gemma_wgpu::synthetic::SyntheticSpec;
use gemma_wgpu::text::{Logits, argmax_host};
use gemma_wgpu::{Model, ModelOptions};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gemma-wgpu-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn synthetic_checkpoint_is_accepted_and_decodes() {
    let spec = SyntheticSpec::tiny();
    let dir = tmpdir("tiny");
    assert!(spec.ensure(&dir).unwrap(), "first ensure writes");
    assert!(!spec.ensure(&dir).unwrap(), "second ensure reuses");
    // A different shape in the same folder is not mistaken for this one.
    assert!(!spec.clone().with_layers(3).is_written(&dir));
    // A folder holding someone else's checkpoint is never overwritten.
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mlx-mixed");
    assert!(spec.write(&fixture).is_err());

    // The loader's plan: MLX quantized text, 8-bit MLP overrides, no K/V on shared layers,
    // bf16 vision tower with a quantized embedder.
    let plan = Checkpoint::open(&dir).unwrap().plan().unwrap();
    let t = &plan.weights.text;
    assert_eq!(t.layers.len(), 4);
    assert_eq!(t.embed.embed_tokens.format_name(), "affine4");
    assert_eq!(t.layers[0].mlp.dense().gate_proj.format_name(), "affine8");
    assert_eq!(t.layers[0].mlp.dense().down_proj.format_name(), "affine8");
    assert_eq!(t.layers[0].self_attn.q_proj.format_name(), "affine4");
    assert!(
        t.layers[1].self_attn.kv.k_proj().is_some() && t.layers[2].self_attn.kv.k_proj().is_none()
    );
    assert_eq!(
        t.layers[3].mlp.dense().gate_proj.rows,
        2 * spec.intermediate_size
    );
    match t.per_layer_table() {
        Some(PerLayerTable::Host(h)) => assert_eq!(h.linear.format_name(), "affine4"),
        _ => panic!("the PLE table stays on the host by default"),
    }
    let v = plan.weights.vision.as_ref().unwrap();
    assert_eq!(v.layers.len(), 2);
    assert_eq!(v.layers[0].self_attn.q_proj.w.format_name(), "bf16");
    assert!(v.layers[0].self_attn.q_proj.input_min.is_some());
    assert_eq!(v.embed_vision.embedding_projection.format_name(), "affine4");

    let Some(ctx) = common::gpu() else { return };
    let opts = ModelOptions {
        max_context: 64,
        prefill_chunk: 16,
        ..Default::default()
    };
    let bytes0 = ctx.counters().bytes_allocated();
    let model = Model::load_with(&ctx, &dir, &opts).unwrap();
    assert!(
        ctx.counters().bytes_allocated() > bytes0,
        "uploads are counted"
    );
    let text = model.text();
    let (mut cache, mut ws) = text.new_session(64, 16).unwrap();
    let ids: Vec<u32> = (0..20).map(|i| 3 + (i * 37) % 1000).collect();
    let logits = text
        .forward(&mut cache, &mut ws, &ids, None, Logits::Last)
        .unwrap();
    assert_eq!(logits.len(), spec.vocab_size);
    assert!(logits.iter().all(|x| x.is_finite()), "finite logits");
    let spread = logits.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(spread > 1e-3, "logits are not all zero");
    let mut tok = argmax_host(&logits);
    for _ in 0..3 {
        tok = text.step_greedy(&mut cache, &mut ws, tok).unwrap();
        assert!((tok as usize) < spec.vocab_size);
        let s = ws.last_step_stats();
        assert_eq!(s.submits, 1);
        assert_eq!(s.readback_bytes, 4, "one token id read back per step");
        assert!(s.dispatches > 0);
    }
    // The vision tower encodes.
    let vc = model.config().vision_config.clone().unwrap();
    let grid = 6u32;
    let n = (grid * grid) as usize;
    let patches = gemma_wgpu::vision::ImagePatches {
        pixel_values: (0..n * 3 * vc.patch_size * vc.patch_size)
            .map(|i| (i % 7) as f32 / 7.0)
            .collect(),
        positions: (0..n as u32).map(|i| [i % grid, i / grid]).collect(),
        grid: (grid, grid),
    };
    let (feat, _) = model.vision().unwrap().encode(&patches, false).unwrap();
    assert_eq!(feat.shape, vec![4, spec.hidden_size]);
    let f = feat.to_f32(&ctx).unwrap();
    assert!(f.iter().all(|x| x.is_finite()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn profiler_times_kernels() {
    let Some(ctx) = common::gpu() else { return };
    // A context of its own so other tests' work is not profiled.
    let ctx = ctx.fallback();
    let src = ctx.create_storage("src", 1 << 20).unwrap();
    let sink = ctx.create_storage("sink", 256).unwrap();
    let run = |n: usize| {
        let mut rec = ctx.recorder();
        for _ in 0..n {
            streaming::stream_read(&mut rec, &src, &sink).unwrap();
        }
        rec.finish().unwrap();
    };
    // Off: nothing is collected.
    assert!(!ctx.profiling());
    run(2);
    assert!(ctx.take_profile().is_empty());
    if !ctx.set_profiling(true) {
        assert!(!ctx.caps().timestamps);
        eprintln!(
            "NOTICE: {} has no TIMESTAMP_QUERY; profiler assertions skipped",
            ctx.adapter_name()
        );
        return;
    }
    run(5);
    run(3);
    ctx.set_profiling(false);
    let p = ctx.take_profile();
    assert_eq!(p.submits, 2);
    assert_eq!(p.dispatches(), 8);
    let fam = p.by_family();
    assert_eq!(fam.len(), 1);
    assert_eq!(fam[0].kernel, "streaming:main");
    assert_eq!(fam[0].count, 8);
    assert!(p.total_ns() >= 0.0);
    eprintln!("{}", p.markdown_by_family(8));
    assert!(p.markdown_by_family(8).contains("streaming:main"));
    // Taken: cleared.
    assert!(ctx.take_profile().is_empty());
}

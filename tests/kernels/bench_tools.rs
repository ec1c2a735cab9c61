//! The benchmark's tools: synthetic checkpoints load and decode, the per-kernel profiler
//! produces entries, and the byte / readback counters count.

use crate::common;

use std::path::PathBuf;

use gemma_wgpu::checkpoint::{Checkpoint, PerLayerTable};
use gemma_wgpu::gpu::ops::{fma_probe, streaming};
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

/// The special token ids (boi, boa, image, audio, eoi, eoa, video) of the committed fixture
/// `name`, whose 512-id tokenizer the tiny dense-family checkpoints borrow.
fn fixture_token_ids(name: &str) -> [u32; 7] {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let id = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{name}: {k}")) as u32;
    [
        id("boi_token_id"),
        id("boa_token_id"),
        id("image_token_id"),
        id("audio_token_id"),
        id("eoi_token_id"),
        id("eoa_token_index"),
        id("video_token_id"),
    ]
}

/// Writes `spec` with the tokenizer files of fixture `fixture` next to it.
fn write_with_tokenizer(spec: &SyntheticSpec, fixture: &str, dir: &std::path::Path) {
    spec.write(dir).unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
}

/// Loads `dir`, captions a synthetic image greedily (4 tokens, no stop tokens) and checks the
/// prompt's image block and the decode step's counters.
fn caption_and_decode(dir: &std::path::Path, spec: &SyntheticSpec) {
    let Some(ctx) = common::gpu() else { return };
    let opts = ModelOptions {
        max_context: 256,
        prefill_chunk: 32,
        max_soft_tokens: Some(70),
        ..Default::default()
    };
    let model = Model::load_with(&ctx, dir, &opts).unwrap();
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(60, 45, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x * y) % 251) as u8])
    }));
    let greedy = gemma_wgpu::GenerationOptions::default()
        .greedy()
        .with_max_new_tokens(4)
        .with_stop_tokens(Vec::new());
    let reply = model
        .generate(gemma_wgpu::Request::caption(img).with_options(greedy))
        .unwrap();
    assert_eq!(reply.tokens.len(), 4, "{:?}", reply.finish);
    assert!(reply.tokens.iter().all(|&t| (t as usize) < spec.vocab_size));
    let cfg = model.config();
    let soft = reply
        .prompt_ids
        .iter()
        .filter(|&&t| t == cfg.image_token_id)
        .count();
    assert!(soft > 0 && soft <= 70, "{soft} soft tokens");
    assert!(
        reply.prompt_ids.contains(&cfg.boi_token_id)
            && reply.prompt_ids.contains(&cfg.eoi_token_id)
    );
    // The decode step: one submit, one token id read back.
    let text = model.text();
    let (mut cache, mut ws) = text.new_session(64, 16).unwrap();
    let ids: Vec<u32> = (0..20).map(|i| 10 + (i * 37) % 480).collect();
    let logits = text
        .forward(&mut cache, &mut ws, &ids, None, Logits::Last)
        .unwrap();
    assert_eq!(logits.len(), spec.vocab_size);
    assert!(logits.iter().all(|x| x.is_finite()));
    let tok = text
        .step_greedy(&mut cache, &mut ws, argmax_host(&logits))
        .unwrap();
    assert!((tok as usize) < spec.vocab_size);
    let s = ws.last_step_stats();
    assert_eq!((s.submits, s.readback_bytes), (1, 4));
}

#[test]
fn synthetic_dense31_loads_captions_and_decodes() {
    let spec = SyntheticSpec::tiny_dense31().with_token_ids(fixture_token_ids("dense31-like"));
    let dir = tmpdir("tiny-dense31");
    write_with_tokenizer(&spec, "dense31-like", &dir);
    assert!(spec.is_written(&dir));

    // The 31B layout: k_eq_v full layers without v_proj and with their own KV-head count,
    // bidirectional image attention, the standardized tower without clip scalars.
    let cfg = gemma_wgpu::config::Gemma4Config::from_dir(&dir).unwrap();
    let tc = &cfg.text_config;
    assert_eq!(cfg.model_type, "gemma4");
    assert!(tc.bidirectional_vision() && tc.attention_k_eq_v && !tc.has_ple());
    assert_eq!(
        tc.final_logit_softcapping,
        Some(spec.final_logit_softcapping)
    );
    let plan = Checkpoint::open(&dir).unwrap().plan().unwrap();
    let t = &plan.weights.text;
    assert_eq!(t.layers.len(), spec.num_layers());
    for (i, l) in t.layers.iter().enumerate() {
        let full = spec.layer_types[i] == "full_attention";
        let (kv, hd) = if full {
            (
                spec.num_global_key_value_heads.unwrap(),
                spec.global_head_dim,
            )
        } else {
            (spec.num_key_value_heads, spec.head_dim)
        };
        assert_eq!(tc.k_eq_v(i), full, "layer {i}");
        assert_eq!(tc.layer_kv_heads(i), kv, "layer {i}");
        let k = l.self_attn.kv.k_proj().expect("k_proj");
        assert_eq!(k.rows, kv * hd, "layer {i}");
        assert_eq!(l.self_attn.kv.v_proj().is_none(), full, "layer {i}");
        assert_eq!(l.mlp.dense().gate_proj.format_name(), "affine8");
    }
    assert!(t.per_layer_table().is_none());
    let v = plan.weights.vision.as_ref().expect("vision tower");
    let vs = spec.vision.as_ref().unwrap();
    assert_eq!(v.layers.len(), vs.num_hidden_layers);
    assert!(
        v.layers[0].self_attn.q_proj.input_min.is_none(),
        "no clip scalars"
    );
    assert!(v.pooler.std_bias.is_some() && v.pooler.std_scale.is_some());
    let vc = cfg.vision_config.as_ref().unwrap();
    assert_eq!((vc.head_dim(), vc.standardize), (72, true));

    caption_and_decode(&dir, &spec);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn synthetic_unified12_loads_captions_and_decodes() {
    let spec = SyntheticSpec::tiny_unified12().with_token_ids(fixture_token_ids("unified12-like"));
    let dir = tmpdir("tiny-unified12");
    write_with_tokenizer(&spec, "unified12-like", &dir);

    let cfg = gemma_wgpu::config::Gemma4Config::from_dir(&dir).unwrap();
    let tc = &cfg.text_config;
    assert_eq!(cfg.model_type, "gemma4_unified");
    assert!(cfg.vision_config.is_none());
    let ec = cfg.vision_embedder.as_ref().expect("embedder config");
    let es = spec.embedder.as_ref().unwrap();
    assert_eq!(ec.patch_values(), es.patch_values());
    assert_eq!(ec.mm_embed_dim, es.mm_embed_dim);
    assert!(tc.bidirectional_vision() && tc.attention_k_eq_v && !tc.has_ple());
    assert_eq!(
        tc.final_logit_softcapping,
        Some(spec.final_logit_softcapping)
    );
    let plan = Checkpoint::open(&dir).unwrap().plan().unwrap();
    let t = &plan.weights.text;
    assert_eq!(t.layers.len(), spec.num_layers());
    for (i, l) in t.layers.iter().enumerate() {
        let full = spec.layer_types[i] == "full_attention";
        assert_eq!(l.self_attn.kv.v_proj().is_none(), full, "layer {i}");
    }
    assert!(plan.weights.vision.is_none());
    let e = plan.weights.embedder.as_ref().expect("embedder");
    assert_eq!(e.patch_dense.format_name(), "bf16");
    assert_eq!(e.patch_dense.rows, es.mm_embed_dim);
    assert_eq!(e.embed_vision.embedding_projection.format_name(), "affine4");

    caption_and_decode(&dir, &spec);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn synthetic_real_dims_of_the_dense_family() {
    // The writer's real 31B / 12B specs parse as the crate's configs with the documented dims
    // (`gemma4-architecture.md` §0, `gemma4-variants.md` §1.1), without writing any weights.
    let parse = |spec: &SyntheticSpec| {
        gemma_wgpu::config::Gemma4Config::from_value(
            &spec.config_json(),
            std::path::Path::new("config.json"),
        )
        .unwrap()
    };
    let c31 = parse(&SyntheticSpec::dense31());
    let t = &c31.text_config;
    assert_eq!(
        (t.hidden_size, t.num_hidden_layers, t.intermediate_size),
        (5376, 60, 21504)
    );
    assert_eq!(
        (
            t.num_attention_heads,
            t.layer_kv_heads(0),
            t.layer_kv_heads(5)
        ),
        (32, 16, 4)
    );
    assert_eq!((t.layer_head_dim(0), t.layer_head_dim(5)), (256, 512));
    assert!((0..60).all(|i| t.k_eq_v(i) == (i % 6 == 5)));
    assert_eq!(
        (t.vocab_size, t.sliding_window, t.num_kv_shared_layers),
        (262_144, 1024, 0)
    );
    assert!(t.bidirectional_vision() && !t.has_ple());
    let v = c31.vision_config.as_ref().unwrap();
    assert_eq!(
        (v.hidden_size, v.num_hidden_layers, v.intermediate_size),
        (1152, 27, 4304)
    );
    assert_eq!((v.num_attention_heads, v.head_dim()), (16, 72));
    assert!(v.standardize && !v.use_clipped_linears);

    let c12 = parse(&SyntheticSpec::unified12());
    let t = &c12.text_config;
    assert_eq!(c12.model_type, "gemma4_unified");
    assert_eq!(
        (t.hidden_size, t.num_hidden_layers, t.intermediate_size),
        (3840, 48, 15360)
    );
    assert_eq!(
        (
            t.num_attention_heads,
            t.layer_kv_heads(0),
            t.layer_kv_heads(5)
        ),
        (16, 8, 1)
    );
    assert!((0..48).all(|i| t.k_eq_v(i) == (i % 6 == 5)));
    assert_eq!(t.final_logit_softcapping, Some(30.0));
    let e = c12.vision_embedder.as_ref().unwrap();
    assert_eq!(
        (e.patch_values(), e.mm_embed_dim, e.mm_posemb_size),
        (6912, 3840, 1120)
    );
}

#[test]
fn synthetic_moe26_loads_captions_and_decodes() {
    let spec = SyntheticSpec::tiny_moe26().with_token_ids(fixture_token_ids("moe26-like"));
    let m = spec.moe.clone().unwrap();
    let dir = tmpdir("tiny-moe26");
    write_with_tokenizer(&spec, "moe26-like", &dir);
    assert!(spec.is_written(&dir));

    // The 26B-A4B layout: the 31B attention (k_eq_v, global KV heads) and tower, and on every
    // layer the MoE block with the MLX stacks: experts at 4 bits, router and dense MLP at 8.
    let cfg = gemma_wgpu::config::Gemma4Config::from_dir(&dir).unwrap();
    let tc = &cfg.text_config;
    assert!(tc.enable_moe_block && tc.bidirectional_vision() && tc.attention_k_eq_v);
    let shape = tc.moe().expect("MoE geometry");
    assert_eq!(
        (shape.experts, shape.top_k, shape.intermediate),
        (m.num_experts, m.top_k, m.intermediate_size)
    );
    let plan = Checkpoint::open(&dir).unwrap().plan().unwrap();
    let t = &plan.weights.text;
    assert_eq!(t.layers.len(), spec.num_layers());
    for (i, l) in t.layers.iter().enumerate() {
        let full = spec.layer_types[i] == "full_attention";
        assert_eq!(l.self_attn.kv.v_proj().is_none(), full, "layer {i}");
        let d = l.mlp.dense();
        assert_eq!(d.gate_proj.rows, spec.intermediate_size, "layer {i}");
        assert_eq!(d.gate_proj.format_name(), "affine8", "layer {i}");
        let b = l
            .mlp
            .moe()
            .unwrap_or_else(|| panic!("layer {i} has no MoE block"));
        assert_eq!(b.router.proj.format_name(), "affine8", "layer {i}");
        assert_eq!(b.router.proj.rows, m.num_experts, "layer {i}");
        let gemma_wgpu::text::ExpertWeights::Split { gate, up, down } = &b.experts else {
            panic!("layer {i}: MLX switch_glu stacks expected");
        };
        let (e, mi, h) = (m.num_experts, m.intermediate_size, spec.hidden_size);
        for (name, p, rows, cols) in [
            ("gate", gate, e * mi, h),
            ("up", up, e * mi, h),
            ("down", down, e * h, mi),
        ] {
            assert_eq!((p.rows, p.cols), (rows, cols), "layer {i} {name}");
            assert_eq!(p.format_name(), "affine4", "layer {i} {name}");
        }
    }

    // The router spreads the tokens over the experts: on every layer distinct positions pick
    // distinct expert sets, and the weights (renormalised, times per_expert_scale ≈ 1) sum
    // to about 1.
    if let Some(ctx) = common::gpu() {
        let model = Model::load_with(&ctx, &dir, &ModelOptions::default()).unwrap();
        let ids: Vec<u32> = (0..24).map(|i| 10 + (i * 37) % 480).collect();
        let trace = model.router_trace(&ids, &[]).unwrap();
        assert_eq!(trace.len(), spec.num_layers());
        for (layer, (chosen, w)) in trace.iter().enumerate() {
            assert_eq!(chosen.len(), ids.len() * m.top_k);
            let mut sets: Vec<Vec<u32>> = chosen
                .chunks(m.top_k)
                .map(|c| {
                    let mut c = c.to_vec();
                    c.sort_unstable();
                    c
                })
                .collect();
            let used: std::collections::BTreeSet<u32> = chosen.iter().copied().collect();
            sets.sort();
            sets.dedup();
            eprintln!(
                "layer {layer}: {} distinct expert sets over {} positions, {} of {} experts used",
                sets.len(),
                ids.len(),
                used.len(),
                m.num_experts
            );
            assert!(
                sets.len() > ids.len() / 2,
                "layer {layer}: {} sets",
                sets.len()
            );
            assert!(used.len() == m.num_experts, "layer {layer}: {used:?}");
            for (p, ws) in w.chunks(m.top_k).enumerate() {
                let s: f32 = ws.iter().sum();
                assert!(
                    (0.9..1.1).contains(&s),
                    "layer {layer} position {p}: {ws:?}"
                );
            }
        }
    }

    caption_and_decode(&dir, &spec);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn synthetic_real_dims_of_26b_a4b() {
    // The writer's real 26B-A4B spec parses as the crate's config with the documented dims
    // (`gemma4-architecture.md` §0, `gemma4-variants.md` §1.1), without writing any weights;
    // its quantization block declares the router at 8 bits and the dense MLP at 8 bits.
    let spec = SyntheticSpec::preset("26b-a4b").unwrap();
    assert_eq!(spec, SyntheticSpec::moe26());
    let j = spec.config_json();
    let c = gemma_wgpu::config::Gemma4Config::from_value(&j, std::path::Path::new("config.json"))
        .unwrap();
    let t = &c.text_config;
    assert_eq!(
        (t.hidden_size, t.num_hidden_layers, t.intermediate_size),
        (2816, 30, 2112)
    );
    assert_eq!(
        (
            t.num_attention_heads,
            t.layer_kv_heads(0),
            t.layer_kv_heads(5)
        ),
        (16, 8, 2)
    );
    assert_eq!((t.layer_head_dim(0), t.layer_head_dim(5)), (256, 512));
    assert!((0..30).all(|i| t.k_eq_v(i) == (i % 6 == 5)));
    let moe = t.moe().expect("MoE geometry");
    assert_eq!((moe.experts, moe.top_k, moe.intermediate), (128, 8, 704));
    assert_eq!(
        (t.vocab_size, t.sliding_window, t.num_kv_shared_layers),
        (262_144, 1024, 0)
    );
    assert_eq!(t.final_logit_softcapping, Some(30.0));
    assert!(t.bidirectional_vision() && !t.has_ple());
    let v = c.vision_config.as_ref().unwrap();
    assert_eq!(
        (v.hidden_size, v.num_hidden_layers, v.intermediate_size),
        (1152, 27, 4304)
    );
    assert!(v.standardize && !v.use_clipped_linears);
    let q = &j["quantization"];
    for i in [0, 29] {
        let l = format!("language_model.model.layers.{i}");
        assert_eq!(q[format!("{l}.router.proj")]["bits"], 8);
        assert_eq!(q[format!("{l}.mlp.gate_proj")]["bits"], 8);
        assert!(q.get(format!("{l}.experts.switch_glu.gate_proj")).is_none());
    }
    assert_eq!(q["bits"], 4);
}

#[test]
fn fma_probe_computes_its_chains() {
    // The arithmetic yardstick must really run its loop: every invocation's value equals the
    // CPU reference of the same chains (awkward count: not a multiple of the workgroup).
    for (path, ctx) in common::paths() {
        let threads = 300u32;
        let out = ctx
            .create_storage("fma-out", 4 * u64::from(threads))
            .unwrap();
        for (iters, m, c) in [
            (1u32, 0.5f32, 0.25f32),
            (37, 0.999, 0.001),
            (200, -0.97, 0.5),
        ] {
            let mut rec = ctx.recorder();
            fma_probe::fma_probe(&mut rec, &out, threads, iters, m, c).unwrap();
            rec.finish().unwrap();
            let t = gemma_wgpu::gpu::GpuTensor::from_buffer(
                &ctx,
                out.clone(),
                &[threads as usize],
                gemma_wgpu::gpu::DType::F32,
            );
            let got = t.to_f32(&ctx).unwrap();
            for (i, &g) in got.iter().enumerate() {
                let want = fma_probe::fma_probe_ref(i as u32, iters, m, c);
                assert!(
                    (g - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{path} iters {iters} invocation {i}: {g} vs {want}"
                );
            }
        }
        let too_small = ctx.create_storage("fma-small", 16).unwrap();
        let mut rec = ctx.recorder();
        assert!(fma_probe::fma_probe(&mut rec, &too_small, 5, 1, 1.0, 0.0).is_err());
        assert_eq!(fma_probe::fma_probe_flops(256, 10), 64.0 * 2560.0);
    }
}

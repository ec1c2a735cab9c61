//! Parity with transformers (fp32) on the committed tiny fixtures: logits at every position
//! within 1e-3·max(1, max|reference|), identical top-1 everywhere, identical 16-token greedy
//! continuation through the KV cache; image features before the decoder.

use crate::common;

use common::golden::{Fixture, compare};
use gemma_wgpu::ImageInput;
use gemma_wgpu::model::{Model, ModelOptions};
use gemma_wgpu::vision::ImagePatches;

const TOL: f32 = 1e-3;

fn load(fx: &Fixture, chunk: usize) -> Option<Model> {
    let ctx = common::gpu()?;
    let opts = ModelOptions {
        prefill_chunk: chunk,
        max_context: 512,
        ..Default::default()
    };
    Some(
        Model::load_with(&ctx, &fx.model_dir, &opts)
            .unwrap_or_else(|e| panic!("{}: load failed: {e}", fx.case)),
    )
}

fn ids(v: &[i64]) -> Vec<u32> {
    v.iter().map(|&x| x as u32).collect()
}

/// Text-only prompt: logits at every position.
fn text_only(case: &str, chunk: usize) {
    let fx = Fixture::open(case);
    let Some(model) = load(&fx, chunk) else {
        return;
    };
    let g = fx.golden();
    let prompt = ids(&g.i64("text_input_ids").data);
    let out = model.logits_and_greedy(&prompt, &[], 0).unwrap();
    let r = compare(
        &format!("{case} text_logits (chunk {chunk})"),
        &out.logits,
        &g.f32("text_logits"),
        TOL,
    );
    assert!(
        r.max_abs <= TOL,
        "{case}: max |Δlogits| {} > {TOL}",
        r.max_abs
    );
}

/// The golden's images, split by `num_patches`.
fn golden_images(g: &common::golden::Golden) -> Vec<ImagePatches> {
    let pv = g.f32("pixel_values");
    let pos = g.i64("image_position_ids");
    let counts = g.i64("num_patches").data;
    let width = pv.shape[1];
    let mut out = Vec::new();
    let mut start = 0usize;
    for &n in &counts {
        let n = n as usize;
        let positions: Vec<[u32; 2]> = (start..start + n)
            .map(|i| [pos.data[2 * i] as u32, pos.data[2 * i + 1] as u32])
            .collect();
        let rows = positions.iter().map(|p| p[1] + 1).max().unwrap();
        let cols = positions.iter().map(|p| p[0] + 1).max().unwrap();
        out.push(ImagePatches {
            pixel_values: pv.data[start * width..(start + n) * width].to_vec(),
            positions,
            grid: (rows, cols),
        });
        start += n;
    }
    out
}

/// Full prompt (with images when the golden has them): image features, logits everywhere and
/// the greedy continuation.
fn full(case: &str, chunk: usize) {
    let fx = Fixture::open(case);
    let Some(model) = load(&fx, chunk) else {
        return;
    };
    let g = fx.golden();
    let prompt = ids(&g.i64("input_ids").data);
    let images = if g.has("pixel_values") {
        golden_images(&g)
    } else {
        Vec::new()
    };
    if let Some(vision) = model.vision()
        && !images.is_empty()
    {
        let ctx = common::gpu().unwrap();
        let mut pooled = Vec::new();
        let mut feats = Vec::new();
        for img in &images {
            let (f, p) = vision.encode(img, true).unwrap();
            feats.extend(f.to_f32(&ctx).unwrap());
            pooled.extend(p.unwrap().to_f32(&ctx).unwrap());
        }
        compare(
            &format!("{case} vision_last_hidden_state"),
            &pooled,
            &g.f32("vision_last_hidden_state"),
            TOL,
        );
        compare(
            &format!("{case} image_features"),
            &feats,
            &g.f32("image_features"),
            TOL,
        );
        // The images encoded together, the first once more at the end (so that a one-image
        // golden runs a joint pass too): every image gets the bits of its encode alone.
        if let Some(tower) = vision.tower() {
            let mut refs: Vec<&ImagePatches> = images.iter().collect();
            refs.push(&images[0]);
            let together = tower.encode_many(&refs, true).unwrap();
            assert_eq!(together.len(), refs.len(), "{case}: one result per image");
            let (mut tf, mut tp) = (Vec::new(), Vec::new());
            for (f, p) in &together[..images.len()] {
                tf.extend(f.to_f32(&ctx).unwrap());
                tp.extend(p.as_ref().unwrap().to_f32(&ctx).unwrap());
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&tf), bits(&feats), "{case}: features encoded together");
            assert_eq!(bits(&tp), bits(&pooled), "{case}: pooled encoded together");
            let (f0, _) = vision.encode(&images[0], false).unwrap();
            let last = &together[images.len()].0;
            assert_eq!(
                bits(&last.to_f32(&ctx).unwrap()),
                bits(&f0.to_f32(&ctx).unwrap()),
                "{case}: the repeated first image"
            );
        }
    }
    let out = model.logits_and_greedy(&prompt, &images, 16).unwrap();
    let r = compare(
        &format!("{case} logits (chunk {chunk})"),
        &out.logits,
        &g.f32("logits"),
        TOL,
    );
    assert!(
        r.max_abs <= TOL,
        "{case}: max |Δlogits| {} > {TOL}",
        r.max_abs
    );
    let want = ids(&g.i64("greedy").data);
    assert_eq!(out.greedy, want, "{case}: greedy continuation differs");
}

#[test]
fn e2b_like_text() {
    text_only("e2b-like", 512);
}

#[test]
fn e2b_like_ptq_text() {
    text_only("e2b-like-ptq", 512);
}

#[test]
fn e4b_like_text() {
    text_only("e4b-like", 512);
}

#[test]
fn mlx_mixed_text() {
    text_only("mlx-mixed", 512);
}

#[test]
fn long_text_single_chunk() {
    full("long-text", 512);
}

#[test]
fn long_text_small_chunks() {
    // chunks of 5 tokens with an 8-token window: the sliding ring wraps inside the prompt
    full("long-text", 5);
}

#[test]
fn e2b_like_multimodal() {
    full("e2b-like", 512);
}

#[test]
fn e2b_like_ptq_multimodal() {
    full("e2b-like-ptq", 32);
}

#[test]
fn e4b_like_multimodal() {
    full("e4b-like", 512);
}

#[test]
fn mlx_mixed_multimodal() {
    full("mlx-mixed", 512);
}

#[test]
fn two_images() {
    full("two-images", 64);
}

/// End to end from an image file: PNG → the crate's preprocessing → tower → decoder reproduces
/// transformers' greedy caption tokens for the chat golden's prompt ids.
#[test]
fn image_file_end_to_end() {
    let fx = Fixture::open("chat");
    let Some(model) = load(&fx, 512) else {
        return;
    };
    let g = fx.golden();
    let prompt = ids(&g.i64("caption_ids").data);
    let image = model.prepare_image_file(&fx.dir.join("image.png")).unwrap();
    let out = model.logits_and_greedy(&prompt, &[image], 16).unwrap();
    assert_eq!(out.greedy, ids(&g.i64("caption_greedy").data));
}

// ---- 31B-like (issue #14 §1): k_eq_v with 1 kv head on full layers (2 on sliding ones),
// bidirectional image block (70 soft tokens) longer than the sliding window (16) on sliding
// layers, standardized vision tower with head_dim 72 and MLP width 136, bf16 weights.

/// Text-only prompt of a case whose text golden is its own file (`text_golden`): logits at
/// every position and the greedy continuation.
fn text_golden(case: &str, chunk: usize) {
    let fx = Fixture::open(case);
    let Some(model) = load(&fx, chunk) else {
        return;
    };
    let file = fx.json["text_golden"].as_str().expect("text_golden");
    let g = common::golden::Golden::load(fx.dir.join(file));
    let prompt = ids(&g.i64("input_ids").data);
    let out = model.logits_and_greedy(&prompt, &[], 16).unwrap();
    let r = compare(
        &format!("{case} text logits (chunk {chunk})"),
        &out.logits,
        &g.f32("logits"),
        TOL,
    );
    assert!(
        r.max_abs <= TOL,
        "{case}: max |Δlogits| {} > {TOL}",
        r.max_abs
    );
    assert_eq!(out.greedy, ids(&g.i64("greedy").data), "{case}: greedy");
}

#[test]
fn dense31_like_text() {
    text_golden("dense31-like", 512);
}

#[test]
fn dense31_like_multimodal() {
    full("dense31-like", 512);
}

/// Chunks of 5 tokens: the session's chunk is raised to hold the 70-token image block (to the
/// image budget + 2 = 72), and the first chunk boundary moves back to the block's start so that
/// the block lies in one chunk; the sliding ring (16 + 72 slots) wraps during the greedy decode.
#[test]
fn dense31_like_multimodal_small_chunks() {
    full("dense31-like", 5);
}

#[test]
fn dense31_like_mlx_multimodal() {
    full("dense31-like-mlx", 512);
}

/// From the image file through the crate's preprocessing: the pixel values match the
/// reference processor's, and the logits and greedy tokens the golden.
#[test]
fn dense31_like_image_file() {
    image_file("dense31-like");
}

/// The MoE model from its image file.
#[test]
fn moe26_like_image_file() {
    image_file("moe26-like");
}

fn image_file(case: &str) {
    let fx = Fixture::open(case);
    let Some(model) = load(&fx, 512) else {
        return;
    };
    let g = fx.golden();
    let image = model
        .prepare_image_file(&fx.dir.join(fx.json["image"].as_str().expect("image")))
        .unwrap();
    let want = &golden_images(&g)[0];
    assert_eq!(image.grid, want.grid, "patch grid");
    assert_eq!(image.positions, want.positions, "patch positions");
    let pv = g.f32("pixel_values");
    let r = compare(
        &format!("{case} pixel_values from image.png"),
        &image.pixel_values,
        &pv,
        TOL,
    );
    assert!(r.max_abs <= 1e-6, "pixel values differ by {}", r.max_abs);
    let prompt = ids(&g.i64("input_ids").data);
    let out = model.logits_and_greedy(&prompt, &[image], 16).unwrap();
    let r = compare(
        &format!("{case} logits from image.png"),
        &out.logits,
        &g.f32("logits"),
        TOL,
    );
    assert!(r.max_abs <= TOL, "max |Δlogits| {} > {TOL}", r.max_abs);
    assert_eq!(
        out.greedy,
        ids(&g.i64("greedy").data),
        "greedy from image.png"
    );
}

/// The 12B unified model (encoder-free embedder, k_eq_v with one global kv head, bidirectional
/// image block longer than the sliding window): the embedder's last hidden state and the image
/// features from the reference pixel values, then logits at every position against `logits_key`
/// and the 16-token greedy continuation.
fn unified_full(case: &str, chunk: usize, logits_key: &str, greedy_key: &str) {
    let fx = Fixture::open(case);
    let Some(model) = load(&fx, chunk) else {
        return;
    };
    let g = fx.golden();
    let images = golden_images(&g);
    let ctx = common::gpu().unwrap();
    let vision = model.vision().expect("the unified model has an image path");
    assert!(vision.embedder().is_some() && vision.tower().is_none());
    let (mut feats, mut hidden) = (Vec::new(), Vec::new());
    for img in &images {
        let (f, h) = vision.encode(img, true).unwrap();
        feats.extend(f.to_f32(&ctx).unwrap());
        hidden.extend(h.unwrap().to_f32(&ctx).unwrap());
    }
    for (name, got) in [
        ("vision_last_hidden_state", &hidden),
        ("image_features", &feats),
    ] {
        let r = compare(&format!("{case} {name}"), got, &g.f32(name), TOL);
        assert!(r.max_abs <= TOL, "{case} {name}: max |Δ| {}", r.max_abs);
    }
    let prompt = ids(&g.i64("input_ids").data);
    let out = model.logits_and_greedy(&prompt, &images, 16).unwrap();
    let r = compare(
        &format!("{case} {logits_key} (chunk {chunk})"),
        &out.logits,
        &g.f32(logits_key),
        TOL,
    );
    assert!(
        r.max_abs <= TOL,
        "{case}: max |Δlogits| {} > {TOL}",
        r.max_abs
    );
    assert_eq!(
        out.greedy,
        ids(&g.i64(greedy_key).data),
        "{case}: {greedy_key} differs"
    );
}

/// tools/unified12_probe.py's fixture against transformers 5.24's forward / `generate()` of the
/// unified model: its image-block overlay reaches every layer, `(causal AND window) OR same
/// block` ([`gemma_wgpu::config::ImageBlockMask::EveryLayer`]). (The unified module also
/// defines the gemma4 rule — full layers causal — but its forward does not use it; the reference
/// implementation decides.)
#[test]
fn unified12_probe_multimodal() {
    unified_full("unified12-probe", 512, "logits", "greedy");
}

/// The same with prefill chunks smaller than the image block (chunks never cut the block).
#[test]
fn unified12_probe_small_chunks() {
    unified_full("unified12-probe", 16, "logits", "greedy");
}

/// The oracle's unified12-like fixtures (HF, and MLX 4/8-bit with patch_dense quantized): the
/// embedder's last hidden state and the image features from the reference pixel values (stored
/// as u8; the processor's values are `f32(u8) · f32(1/255)`), the text-only logits, and the
/// image prompt's logits and 16 greedy tokens under the unified model's mask rule.
#[test]
fn unified12_like_oracle() {
    for case in ["unified12-like", "unified12-like-mlx"] {
        let fx = Fixture::open(case);
        let Some(model) = load(&fx, 512) else {
            return;
        };
        let g = fx.golden();
        let u8s = g.raw("pixel_values_u8");
        let width = u8s.shape[1];
        let scale = (1.0f64 / 255.0) as f32;
        let values: Vec<f32> = u8s.data.iter().map(|&v| f32::from(v) * scale).collect();
        let pos = g.i64("image_position_ids");
        let mut images = Vec::new();
        let mut start = 0;
        for &n in &g.i64("num_patches").data {
            let n = n as usize;
            let positions: Vec<[u32; 2]> = (start..start + n)
                .map(|i| [pos.data[2 * i] as u32, pos.data[2 * i + 1] as u32])
                .collect();
            let rows = positions.iter().map(|p| p[1] + 1).max().unwrap();
            let cols = positions.iter().map(|p| p[0] + 1).max().unwrap();
            images.push(ImagePatches {
                pixel_values: values[start * width..(start + n) * width].to_vec(),
                positions,
                grid: (rows, cols),
            });
            start += n;
        }
        let ctx = common::gpu().unwrap();
        let vision = model.vision().expect("image path");
        let (mut feats, mut hidden) = (Vec::new(), Vec::new());
        for img in &images {
            let (f, h) = vision.encode(img, true).unwrap();
            feats.extend(f.to_f32(&ctx).unwrap());
            hidden.extend(h.unwrap().to_f32(&ctx).unwrap());
        }
        for (name, got) in [
            ("vision_last_hidden_state", &hidden),
            ("image_features", &feats),
        ] {
            let r = compare(&format!("{case} {name}"), got, &g.f32(name), TOL);
            assert!(r.max_abs <= TOL, "{case} {name}: max |Δ| {}", r.max_abs);
        }
        // From the image files through the crate's preprocessing: bit-identical pixel values
        // (where the case has its processor config: the MLX case has none, so its budget is
        // not the one its golden was made with).
        if let Some(files) = fx.json["images"].as_array()
            && fx.model_dir.join("processor_config.json").exists()
        {
            assert_eq!(files.len(), images.len(), "{case}: images");
            for (f, want) in files.iter().zip(&images) {
                let got = model
                    .prepare_image_file(&fx.dir.join(f.as_str().unwrap()))
                    .unwrap();
                assert_eq!(got.positions, want.positions, "{case} {f}: positions");
                let bad = got
                    .pixel_values
                    .iter()
                    .zip(&want.pixel_values)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(
                    got.pixel_values.len(),
                    want.pixel_values.len(),
                    "{case} {f}"
                );
                assert_eq!(bad, 0, "{case} {f}: {bad} pixel values differ");
            }
        }
        let text = ids(&g.i64("text_input_ids").data);
        let out = model.logits_and_greedy(&text, &[], 0).unwrap();
        let r = compare(
            &format!("{case} text_logits"),
            &out.logits,
            &g.f32("text_logits"),
            TOL,
        );
        assert!(
            r.max_abs <= TOL,
            "{case} text_logits: max |Δ| {}",
            r.max_abs
        );
        // The image prompt under the unified model's own mask rule (overlay on every layer):
        // logits at every position and the greedy continuation.
        let prompt = ids(&g.i64("input_ids").data);
        let out = model.logits_and_greedy(&prompt, &images, 16).unwrap();
        let r = compare(
            &format!("{case} logits"),
            &out.logits,
            &g.f32("logits"),
            TOL,
        );
        assert!(r.max_abs <= TOL, "{case} logits: max |Δ| {}", r.max_abs);
        assert_eq!(out.greedy, ids(&g.i64("greedy").data), "{case}: greedy");
    }
}

/// The unified model from the image file through the crate's own preprocessing (torchvision's
/// resampler, 12-px model patches here, 48 on 12B): bit-identical pixel values and positions,
/// the reference image features, and the greedy continuation.
#[test]
fn unified12_probe_image_file() {
    let fx = Fixture::open("unified12-probe");
    let Some(model) = load(&fx, 512) else {
        return;
    };
    let g = fx.golden();
    let image = model.prepare_image_file(&fx.dir.join("image.png")).unwrap();
    let want = golden_images(&g);
    assert_eq!(want.len(), 1);
    assert_eq!(image.grid, want[0].grid, "patch grid");
    assert_eq!(image.positions, want[0].positions, "patch positions");
    let bad = image
        .pixel_values
        .iter()
        .zip(&want[0].pixel_values)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(
        bad, 0,
        "{bad} pixel values differ from the reference processor's"
    );
    let ctx = common::gpu().unwrap();
    let (f, _) = model.vision().unwrap().encode(&image, false).unwrap();
    let r = compare(
        "unified12-probe image_features (from the file)",
        &f.to_f32(&ctx).unwrap(),
        &g.f32("image_features"),
        TOL,
    );
    assert!(r.max_abs <= TOL, "image features: max |Δ| {}", r.max_abs);
    let prompt = ids(&g.i64("input_ids").data);
    let out = model.logits_and_greedy(&prompt, &[image], 16).unwrap();
    assert_eq!(
        out.greedy,
        ids(&g.i64("greedy").data),
        "greedy from the file"
    );
}

/// Loads `case` on `ctx` with room for `max_context` tokens, KV-cache windows of at most
/// `window` positions, and checks that the split this test is about really happens.
fn load_windowed(
    ctx: &gemma_wgpu::gpu::GpuContext,
    fx: &Fixture,
    max_context: usize,
    window: Option<usize>,
) -> Model {
    let opts = ModelOptions {
        max_context,
        kv_window_positions: window,
        ..Default::default()
    };
    let model = Model::load_with(ctx, &fx.model_dir, &opts).unwrap_or_else(|e| {
        panic!(
            "{} (bindings of {} bytes): {e}",
            fx.case,
            ctx.caps().max_binding_size
        )
    });
    let (cache, _) = model.text().new_session(max_context, 512).unwrap();
    assert!(
        cache.max_windows() > 1,
        "{}: the KV cache should be split",
        fx.case
    );
    model
}

/// The text golden of the 31B-like model on a device whose storage bindings hold 32 KiB: every
/// weight matrix and the embedding table in row windows, the caches in windows of what one
/// binding holds (128 positions), of 5 positions (the prompt's keys straddle 8 windows, the
/// sliding rings too; decode: flash-decode chunks per window interval) or of 1 position (more
/// window intervals than the decode scratch has chunks: decode window by window), the
/// prefill chunk lowered to what one binding holds (21 tokens: the 24-token prompt takes two).
/// Same logits and greedy tokens as the reference each time.
#[test]
fn dense31_like_text_under_a_32k_binding_limit() {
    let Some(ctx) = common::gpu_with_binding_limit(32 << 10) else {
        return;
    };
    let fx = Fixture::open("dense31-like");
    let file = fx.json["text_golden"].as_str().expect("text_golden");
    let g = common::golden::Golden::load(fx.dir.join(file));
    let prompt = ids(&g.i64("input_ids").data);
    for (max_context, window) in [(512, None), (64, Some(5)), (512, Some(1))] {
        let model = load_windowed(&ctx, &fx, max_context, window);
        let embed = &model.text().weights().embed.embed_tokens;
        assert!(embed.windows.len() > 1, "embedding in one window");
        let out = model.logits_and_greedy(&prompt, &[], 16).unwrap();
        let what = format!(
            "dense31-like text, 32 KiB bindings, context {max_context}, KV windows of {window:?}"
        );
        let r = compare(&what, &out.logits, &g.f32("logits"), TOL);
        assert!(
            r.max_abs <= TOL,
            "{what}: max |Δlogits| {} > {TOL}",
            r.max_abs
        );
        assert_eq!(out.greedy, ids(&g.i64("greedy").data), "{what}: greedy");
    }
}

/// Image prompts over a KV cache in windows of 7 positions: the image block's bidirectional
/// prefill and the greedy decode cross window edges, on the 31B-like model (the block overlay
/// on sliding layers) and the 12B-like model (the overlay on every layer, so also on the
/// full layers' windows). Same logits and greedy tokens as the reference.
#[test]
fn image_prompts_over_a_windowed_kv_cache() {
    let Some(ctx) = common::gpu() else {
        return;
    };
    for case in ["dense31-like", "unified12-probe"] {
        let fx = Fixture::open(case);
        let model = load_windowed(&ctx, &fx, 512, Some(7));
        let g = fx.golden();
        let prompt = ids(&g.i64("input_ids").data);
        let images = golden_images(&g);
        let out = model.logits_and_greedy(&prompt, &images, 16).unwrap();
        let what = format!("{case} logits over KV windows of 7");
        let r = compare(&what, &out.logits, &g.f32("logits"), TOL);
        assert!(
            r.max_abs <= TOL,
            "{what}: max |Δlogits| {} > {TOL}",
            r.max_abs
        );
        assert_eq!(out.greedy, ids(&g.i64("greedy").data), "{case}: greedy");
    }
}

/// 26B-A4B-like MoE model (HF bf16: 6 experts, top-3, expert width 32, every layer dense MLP +
/// routed experts; k_eq_v full layers; bidirectional image block; standardized tower): image
/// features, logits at every prompt position and the 16-token greedy continuation (decode
/// through the gathered-expert matvecs, prefill through the grouped GEMM).
#[test]
fn moe26_like_multimodal() {
    full("moe26-like", 512);
}

/// The same model's text golden, and prefill chunks of 7 tokens (grouped GEMM over partial
/// chunks).
#[test]
fn moe26_like_text() {
    text_golden("moe26-like", 512);
    text_golden("moe26-like", 7);
}

/// The MLX conversion (mlx-vlm's quantization: experts 4-bit in `switch_glu`, the expert down
/// projection at group 32, router and dense MLP 8-bit) against the fp32 reference on its
/// dequantized weights.
#[test]
fn moe26_like_mlx_multimodal() {
    full("moe26-like-mlx", 512);
}

/// The router's decisions on the GPU equal the reference's at every prompt position of every
/// MoE layer: the same experts in the same (descending-probability) order, and the same
/// weights after renormalisation and `per_expert_scale` — for the image prompt (HF and MLX)
/// and the text golden. (The oracle keeps the router scores free of near-ties: every gap
/// around the k-th place is at least 1e-3.)
#[test]
fn moe26_like_router_chooses_the_reference_experts() {
    for (case, text) in [
        ("moe26-like", false),
        ("moe26-like", true),
        ("moe26-like-mlx", false),
    ] {
        let fx = Fixture::open(case);
        let Some(model) = load(&fx, 512) else {
            return;
        };
        let g = if text {
            let file = fx.json["text_golden"].as_str().expect("text_golden");
            common::golden::Golden::load(fx.dir.join(file))
        } else {
            fx.golden()
        };
        let prompt = ids(&g.i64("input_ids").data);
        let images = if text { Vec::new() } else { golden_images(&g) };
        let trace = model.router_trace(&prompt, &images).unwrap();
        let layers = model.config().text_config.num_hidden_layers;
        assert_eq!(trace.len(), layers);
        for (i, (got_ids, got_w)) in trace.iter().enumerate() {
            let want_ids: Vec<u32> = g
                .i64(&format!("router.L{i}.ids"))
                .data
                .iter()
                .map(|&v| v as u32)
                .collect();
            assert_eq!(
                got_ids, &want_ids,
                "{case} (text {text}) layer {i}: expert ids"
            );
            let r = compare(
                &format!("{case} (text {text}) layer {i} router weights"),
                got_w,
                &g.f32(&format!("router.L{i}.weights")),
                1e-4,
            );
            assert!(
                r.max_abs <= 1e-4,
                "{case} layer {i}: router weights off by {}",
                r.max_abs
            );
        }
    }
}

/// Two images with different soft-token budgets (140 and 70) in one prompt against transformers,
/// which processed each image at its own budget (tools/oracle/issue16.py): the per-image
/// preprocessing, the soft-token counts, the logits and the greedy tokens.
#[test]
fn per_image_budgets() {
    let fx = Fixture::open("budgets");
    let Some(model) = load(&fx, 64) else {
        return;
    };
    let g = fx.golden();
    let budgets = g.i64("budgets").data;
    let want_soft = g.i64("num_soft_tokens").data;
    let mut images = Vec::new();
    let mut patches = Vec::new();
    for (i, &b) in budgets.iter().enumerate() {
        let (data, shape) = g.u8(&format!("image_u8.{i}"));
        let img = image::RgbImage::from_raw(shape[1] as u32, shape[0] as u32, data).unwrap();
        let img = image::DynamicImage::ImageRgb8(img);
        let p = model.prepare_image_with(&img, Some(b as u32)).unwrap();
        let soft = gemma_wgpu::model::media::pooled_tokens(p.grid, 3);
        assert_eq!(soft as i64, want_soft[i], "image {i} at budget {b}");
        // the model's own budget (70) cuts this image differently
        let at_default = model.prepare_image(&img).unwrap();
        if b != 70 {
            assert_ne!(
                at_default.grid, p.grid,
                "image {i}: the budget changed nothing"
            );
        }
        images.push(img);
        patches.push(p);
    }
    let prompt = ids(&g.i64("input_ids").data);
    let out = model.logits_and_greedy(&prompt, &patches, 16).unwrap();
    let r = compare("budgets logits", &out.logits, &g.f32("logits"), TOL);
    assert!(r.max_abs <= TOL, "max |Δlogits| {} > {TOL}", r.max_abs);
    assert_eq!(
        out.greedy,
        ids(&g.i64("greedy").data),
        "greedy continuation"
    );

    // Through the request API: each image's block has the golden's length.
    let req = gemma_wgpu::Request::new("two images")
        .with_images(
            images
                .iter()
                .zip(&budgets)
                .map(|(im, &b)| ImageInput::image(im.clone()).with_max_soft_tokens(b as u32)),
        )
        .with_options(
            gemma_wgpu::GenerationOptions::default()
                .greedy()
                .with_max_new_tokens(1),
        );
    let reply = model.generate(req).unwrap();
    let runs =
        gemma_wgpu::model::media::image_runs(&reply.prompt_ids, model.config().image_token_id);
    let lens: Vec<i64> = runs.iter().map(|&(s, e)| (e - s) as i64).collect();
    assert_eq!(lens, want_soft);
    // A budget the model was not trained with is a typed error.
    let bad = gemma_wgpu::Request::new("x")
        .with_image(ImageInput::image(images[0].clone()).with_max_soft_tokens(100));
    match model.generate(bad) {
        Err(gemma_wgpu::Error::Image(gemma_wgpu::ImageError::InvalidBudget { given, .. })) => {
            assert_eq!(given, 100)
        }
        other => panic!("budget 100: {other:?}"),
    }
}

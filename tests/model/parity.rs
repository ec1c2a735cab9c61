//! Parity with transformers (fp32) on the committed tiny fixtures: logits at every position
//! within 1e-3·max(1, max|reference|), identical top-1 everywhere, identical 16-token greedy
//! continuation through the KV cache; image features before the decoder.

use crate::common;

use common::golden::{Fixture, compare};
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
    let fx = Fixture::open("dense31-like");
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
        "dense31-like pixel_values from image.png",
        &image.pixel_values,
        &pv,
        TOL,
    );
    assert!(r.max_abs <= 1e-6, "pixel values differ by {}", r.max_abs);
    let prompt = ids(&g.i64("input_ids").data);
    let out = model.logits_and_greedy(&prompt, &[image], 16).unwrap();
    let r = compare(
        "dense31-like logits from image.png",
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

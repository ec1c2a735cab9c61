//! The decode loop's budget: one submit per decoded token, nothing read back but the token id,
//! and no buffer or bind-group creation in steady state.

use crate::common;

use gemma_wgpu::gpu::GpuContext;
use gemma_wgpu::model::{Model, ModelOptions};

#[test]
fn one_submit_and_no_allocations_per_decoded_token() {
    decode_budget("e2b-like");
}

/// The MoE model: the router's expert ids and weights stay on the GPU (the expert kernels read
/// them), so a decoded token still takes one submit and one 4-byte copy.
#[test]
fn moe_decode_reads_back_no_routing() {
    decode_budget("moe26-like");
}

fn decode_budget(case: &str) {
    if common::gpu().is_none() {
        return;
    }
    // A private device, so that parallel tests do not touch its counters.
    let ctx = GpuContext::new().unwrap();
    let dir = common::golden::fixtures_dir().join(case);
    let model = Model::load_with(&ctx, &dir, &ModelOptions::default()).unwrap();
    let text = model.text();
    let (mut cache, mut ws) = text.new_session(256, 64).unwrap();
    let prompt: Vec<u32> = vec![2, 17, 23, 42, 99, 7, 150];
    let first = text
        .generate_greedy(&mut cache, &mut ws, &prompt, None, 2, &[])
        .unwrap();
    let mut tok = *first.last().unwrap();
    // warm-up step done inside generate_greedy; now measure steady state
    let (b0, g0) = ctx.counters().allocations();
    let (d0, s0) = ctx.counters().snapshot();
    let steps = 5;
    for _ in 0..steps {
        tok = text.step_greedy(&mut cache, &mut ws, tok).unwrap();
        let st = ws.last_step_stats();
        assert_eq!(st.submits, 1, "one submit per decoded token");
        assert_eq!(st.copies, 1, "only the 4-byte token id is copied out");
    }
    let (b1, g1) = ctx.counters().allocations();
    let (d1, s1) = ctx.counters().snapshot();
    assert_eq!(b1 - b0, 0, "buffers created in the decode loop");
    assert_eq!(g1 - g0, 0, "bind groups created in the decode loop");
    assert_eq!(s1 - s0, steps, "submits");
    let per_token = (d1 - d0) / steps;
    let layers = model.config().text_config.num_hidden_layers as u64;
    eprintln!(
        "decode: {per_token} dispatches per token ({:.1} per layer over {layers} layers), 1 submit, 4 bytes read back",
        per_token as f64 / layers as f64
    );
    // The budget: at most 12 dispatches per decoder layer (fused q/k/v matvec, attention input,
    // 2 attention, o_proj, residual, gated-GELU matvec, down, residual, PLE gate, PLE projection,
    // residual), plus at most 8 per token outside the layers: embedding gather, PLE table gather,
    // PLE projection, PLE combine, first input norm, LM head, softcap, argmax; plus each MoE
    // layer's routed branch (router norm, projection, top-k, experts' norm, gathered experts,
    // output norms).
    let moe: u64 = text
        .weights()
        .layers
        .iter()
        .filter_map(|l| l.mlp.moe())
        .map(|m| m.decode_dispatches().unwrap() as u64)
        .sum();
    eprintln!("{case}: {moe} dispatches per token in the MoE layers' routed branches");
    assert!(
        per_token <= 12 * layers + moe + 8,
        "{case}: {per_token} dispatches per token exceed 12 per layer x {layers} + {moe} + 8"
    );
}

#[test]
fn context_overflow_is_a_typed_error() {
    let Some(ctx) = common::gpu() else {
        return;
    };
    let dir = common::golden::fixtures_dir().join("e2b-like");
    let model = Model::load_with(&ctx, &dir, &ModelOptions::default()).unwrap();
    let text = model.text();
    let (mut cache, mut ws) = text.new_session(8, 4).unwrap();
    let ids: Vec<u32> = (10..20).collect();
    let err = text
        .forward(
            &mut cache,
            &mut ws,
            &ids,
            None,
            gemma_wgpu::text::Logits::Last,
        )
        .unwrap_err();
    assert!(
        matches!(err, gemma_wgpu::Error::InvalidArgument(ref m) if m.contains("maximum context of 8")),
        "{err}"
    );
    assert_eq!(
        cache.position(),
        0,
        "a rejected prompt leaves the cache untouched"
    );
    // an out-of-vocabulary id is an error too, not a panic
    let (mut cache, mut ws) = text.new_session(8, 4).unwrap();
    let err = text
        .forward(
            &mut cache,
            &mut ws,
            &[2, 100000],
            None,
            gemma_wgpu::text::Logits::Last,
        )
        .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
}

#[test]
fn last_position_logits_skip_dead_rows_but_match_all_positions() {
    let Some(ctx) = common::gpu() else {
        return;
    };
    let dir = common::golden::fixtures_dir().join("e2b-like");
    let model = Model::load_with(&ctx, &dir, &ModelOptions::default()).unwrap();
    let text = model.text();
    let c = &model.config().text_config;
    assert!(
        c.num_kv_shared_layers > 0,
        "the fixture must have KV-shared layers for this test to mean anything"
    );
    let vocab = c.vocab_size;
    let prompt: Vec<u32> = (0..21).map(|i| 2 + (i * 37 % 400) as u32).collect();
    for chunk in [64, 8] {
        let (mut cache, mut ws) = text.new_session(128, chunk).unwrap();
        let all = text
            .forward(
                &mut cache,
                &mut ws,
                &prompt,
                None,
                gemma_wgpu::text::Logits::All,
            )
            .unwrap();
        let (mut cache2, mut ws2) = text.new_session(128, chunk).unwrap();
        let last = text
            .forward(
                &mut cache2,
                &mut ws2,
                &prompt,
                None,
                gemma_wgpu::text::Logits::Last,
            )
            .unwrap();
        let want = &all[(prompt.len() - 1) * vocab..];
        common::assert_close(&format!("chunk {chunk}"), &last, want, 1e-4, 1e-4);
        // and the caches agree, so decoding continues identically
        let a = text.step_greedy(&mut cache, &mut ws, 5).unwrap();
        let b = text.step_greedy(&mut cache2, &mut ws2, 5).unwrap();
        assert_eq!(a, b, "chunk {chunk}: next greedy token");
    }
}

/// On a bidirectional-vision model an image block must be prefilled in one chunk: a session
/// whose chunk is shorter than the prompt's block refuses the prompt with a typed error before
/// running any of it; the model's own sessions size their chunk to hold the block.
#[test]
fn an_image_block_longer_than_the_chunk_is_refused() {
    let Some(ctx) = common::gpu() else { return };
    let fx = common::golden::Fixture::open("dense31-like");
    let model = Model::load_with(&ctx, &fx.model_dir, &ModelOptions::default()).unwrap();
    let g = fx.golden();
    let ids: Vec<u32> = g.i64("input_ids").data.iter().map(|&x| x as u32).collect();
    let text = model.text();
    let longest = text.min_chunk(&ids);
    assert_eq!(longest, g.i64("num_soft_tokens").data[0] as usize);
    let (mut cache, mut ws) = text.new_session(256, longest - 1).unwrap();
    match text.forward(
        &mut cache,
        &mut ws,
        &ids,
        None,
        gemma_wgpu::text::Logits::Last,
    ) {
        Err(gemma_wgpu::Error::InvalidArgument(m)) => assert!(m.contains("image block"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(cache.position(), 0, "nothing ran");
    // The E-series (use_bidirectional_attention null) have no blocks: any chunk runs.
    let e2b = Model::load_with(
        &ctx,
        &common::golden::fixtures_dir().join("e2b-like"),
        &ModelOptions::default(),
    )
    .unwrap();
    let eg = common::golden::Fixture::open("e2b-like").golden();
    let eids: Vec<u32> = eg.i64("input_ids").data.iter().map(|&x| x as u32).collect();
    assert_eq!(e2b.text().min_chunk(&eids), 1);
}

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

/// Fixture `case` on a private device, so that parallel tests do not touch its counters.
fn private_model(case: &str) -> Option<(GpuContext, Model)> {
    common::gpu()?;
    let ctx = GpuContext::new().unwrap();
    let dir = common::golden::fixtures_dir().join(case);
    let model = Model::load_with(&ctx, &dir, &ModelOptions::default()).unwrap();
    Some((ctx, model))
}

fn decode_budget(case: &str) {
    let Some((ctx, model)) = private_model(case) else {
        return;
    };
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

/// Decodes `steps[i]` tokens of each prompt, each sequence alone (`step_with`), then all
/// together (`step_batch`, a sequence leaving the batch when its count is reached): every
/// sequence's tokens must be the same. Sequence `i` samples with uniform numbers drawn from
/// `(i, step)` (so it is not only greedy that is compared).
fn batched_equals_alone(case: &str) {
    use gemma_wgpu::gpu::ops::{self, SampleParams};
    use gemma_wgpu::model::text::{BatchSeq, argmax_host};
    let Some((ctx, model)) = private_model(case) else {
        return;
    };
    let text = model.text();
    let prompts: [&[u32]; 4] = [
        &[2, 17, 23, 42, 99, 7, 150],
        &[2, 5],
        &[2, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51],
        &[2, 9, 9, 9],
    ];
    let steps = [6usize, 2, 9, 4];
    let params = |i: usize, t: usize| SampleParams {
        temperature: if i.is_multiple_of(2) { 0.0 } else { 0.9 },
        top_k: 20,
        top_p: 0.95,
        min_p: 0.0,
        uniform: ((i * 7919 + t * 104_729) % 1000) as f32 / 1000.0,
    };
    let select = |rec: &mut gemma_wgpu::gpu::Recorder,
                  sel: &gemma_wgpu::model::text::Selection<'_>,
                  p: SampleParams| {
        if p.temperature == 0.0 {
            ops::argmax(rec, sel.logits, sel.out, sel.scratch)?;
        } else {
            ops::sample(rec, sel.logits, sel.out, &p, sel.scratch)?;
        }
        Ok(())
    };
    // Alone.
    let mut alone = Vec::new();
    // A fresh session with `p` prefilled, and its first (greedy) token.
    let prefilled = |p: &[u32]| {
        let (mut cache, mut ws) = text.new_session(64, 16).unwrap();
        let last = gemma_wgpu::model::text::Logits::Last;
        let logits = text.forward(&mut cache, &mut ws, p, None, last).unwrap();
        (cache, ws, argmax_host(&logits))
    };
    for (i, p) in prompts.iter().enumerate() {
        let (mut cache, mut ws, first) = prefilled(p);
        let mut toks = vec![first];
        for t in 1..steps[i] {
            let prev = *toks.last().unwrap();
            let id = text
                .step_with(&mut cache, &mut ws, prev, |rec, sel| {
                    select(rec, sel, params(i, t))
                })
                .unwrap();
            toks.push(id);
        }
        alone.push(toks);
    }
    // Together.
    let mut sessions: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (cache, _, first) = prefilled(p);
            (cache, vec![first])
        })
        .collect();
    let mut bws = text.batch_workspace(4, 64).unwrap();
    assert!(text.max_batch(&bws) >= 4);
    let (b0, g0) = ctx.counters().allocations();
    for t in 1..*steps.iter().max().unwrap() {
        let live: Vec<usize> = (0..prompts.len()).filter(|&i| t < steps[i]).collect();
        let mut seqs: Vec<BatchSeq<'_>> = sessions
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| live.contains(i))
            .map(|(_, (cache, toks))| BatchSeq {
                cache,
                token: *toks.last().unwrap(),
            })
            .collect();
        let ids = text
            .step_batch(&mut seqs, &mut bws, |b, rec, sel| {
                select(rec, sel, params(live[b], t))
            })
            .unwrap();
        drop(seqs);
        let st = bws.last_step_stats();
        assert_eq!(
            (st.submits, st.copies),
            (1, 1),
            "one submit and one copy per batched step"
        );
        for (&i, id) in live.iter().zip(ids) {
            sessions[i].1.push(id);
        }
    }
    if case == "e2b-like" {
        // Steady state after the first steps: the caches' bind groups exist by now.
        let (b1, _) = ctx.counters().allocations();
        assert_eq!(b1 - b0, 0, "buffers created in the batched decode loop");
        let _ = g0;
    }
    for (i, (_, toks)) in sessions.iter().enumerate() {
        assert_eq!(toks, &alone[i], "{case}: sequence {i} batched vs alone");
    }
}

#[test]
fn batched_decode_equals_each_sequence_alone() {
    batched_equals_alone("e2b-like");
}

#[test]
fn batched_decode_equals_each_sequence_alone_on_moe_and_dense() {
    batched_equals_alone("moe26-like");
    batched_equals_alone("dense31-like");
}

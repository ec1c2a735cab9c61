//! End-to-end benchmark: load time, time to first token, prefill and decode throughput, vision
//! encode time, memory, per-token dispatch/submit/readback counts and decode's effective weight
//! bandwidth against a plain streaming-read kernel measured in the same run; optionally a
//! per-kernel GPU timing report (TIMESTAMP_QUERY).
//!
//! ```text
//! cargo run --release --example bench -- --synthetic e2b            # real E2B shapes, random weights
//! cargo run --release --example bench -- --synthetic e2b --layers 2 --vocab 32768 \
//!     --prefill 128 --decode-tokens 16 --vision-budgets 70 --vision-layers 2   # quick (lavapipe)
//! cargo run --release --example bench -- --synthetic 31b --layers 6   # 31B widths, 6 of 60 layers
//! cargo run --release --example bench -- --synthetic 12b --layers 6   # 12B unified widths
//! cargo run --release --example bench -- --synthetic 26b-a4b --layers 6   # 26B-A4B MoE widths
//! cargo run --release --example bench -- --model path/to/checkpoint --profile
//! ```
//!
//! Measurements, in order: load (`Model::load_with`); a warm-up (short prefill, two decode
//! steps, one tiny image) so pipeline builds are not timed; time to first token (prefill of
//! `--ttft-prompt` random ids + the first greedy token); `--decode-tokens` greedy steps
//! (`step_greedy`, tok/s and median latency, per-step dispatches/submits/readback from
//! `Workspace::last_step_stats`); the streaming-read kernel (GB/s, ~256 MiB or the adapter's max
//! binding); with `--profile` extra decode steps (and `--profile-prefill N` prompt tokens) under
//! the per-kernel profiler; prefill tok/s per `--prefill` length, each in a fresh session; vision
//! encode per `--vision-budgets` budget. Weight bytes per token come from the checkpoint's
//! tensors (every multiplied matrix incl. scales/biases, the tied LM head, and the gathered
//! embedding and PLE rows); on a mixture-of-experts layer they count the dense MLP, the router
//! and only the top-k of the E experts a token reads (k/E of each expert stack), not every
//! expert held. GPU memory is the engine's own buffers (weights + one session) and,
//! where the backend reports it, the driver allocator's live total.
//!
//! Prints a markdown table and one line `BENCH_JSON {...}`.

#[path = "common/failure.rs"]
mod failure;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use gemma_wgpu::checkpoint::{Checkpoint, PerLayerTable};
use gemma_wgpu::gpu::ops::{fma_probe, streaming};
use gemma_wgpu::gpu::{GpuContext, GpuTensor, Profile};
use gemma_wgpu::prompt::preprocess;
use gemma_wgpu::synthetic::SyntheticSpec;
use gemma_wgpu::text::{BatchSeq, ExpertWeights, Logits, argmax_host};
use gemma_wgpu::vision::ImagePatches;
use gemma_wgpu::{Model, ModelOptions};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(about = "gemma-wgpu end-to-end benchmark")]
struct Args {
    /// Benchmark a synthetic checkpoint with real dimensions: e2b, e4b, 31b, 12b, 26b-a4b (or
    /// tiny, tiny-31b, tiny-12b, tiny-26b-a4b).
    #[arg(long, conflicts_with = "model")]
    synthetic: Option<String>,
    /// Benchmark a real checkpoint directory instead.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Synthetic: keep the real widths with only this many text layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Synthetic: vocabulary size (embeddings and PLE table).
    #[arg(long)]
    vocab: Option<usize>,
    /// Synthetic: vision encoder layers (default: the real tower's, 16 on E2B/E4B, 27 on
    /// 31B; the 12B embedder has none).
    #[arg(long)]
    vision_layers: Option<usize>,
    /// Synthetic: MLX bits of the (dense) MLP projections (default 8, the QAT uploads' mixed
    /// precision and the 26B-A4B 4-bit upload's; 4: a uniform 4-bit file like the non-QAT
    /// E-series / 31B mlx-community uploads). 26B-A4B experts stay at 4 bits, the router at 8.
    #[arg(long)]
    mlp_bits: Option<u32>,
    /// Synthetic: no vision tower.
    #[arg(long)]
    no_vision: bool,
    /// Where synthetic checkpoints are cached (default target/bench-cache/<name>-L<layers>-V<vocab>).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Prompt lengths of the prefill measurements.
    #[arg(long, value_delimiter = ',', default_value = "128,512,2048")]
    prefill: Vec<usize>,
    /// Prompt length of the time-to-first-token measurement (also the decode context).
    #[arg(long, default_value_t = 128)]
    ttft_prompt: usize,
    /// Greedy decode steps measured.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Also measure decode after a prompt of each of these lengths (e.g. `512,8192`: the
    /// flash-decode split keeps long contexts cheap); up to 16 steps each.
    #[arg(long, value_delimiter = ',')]
    decode_at: Vec<usize>,
    /// Soft-token budgets of the vision measurements.
    #[arg(long, value_delimiter = ',', default_value = "70,280,1120")]
    vision_budgets: Vec<u32>,
    /// Skip the vision measurements (the tower is still loaded).
    #[arg(long)]
    skip_vision: bool,
    /// Per-kernel GPU timing report over extra decode steps (needs TIMESTAMP_QUERY).
    #[arg(long)]
    profile: bool,
    /// Decode steps timed by the profiler.
    #[arg(long, default_value_t = 16)]
    profile_tokens: usize,
    /// With --profile, also print one row per kernel specialisation (defines included).
    #[arg(long)]
    profile_detail: bool,
    /// With --profile, also profile a prefill of this many tokens (0: skip).
    #[arg(long, default_value_t = 0)]
    profile_prefill: usize,
    /// Size of the streaming-read buffer in MiB (capped at the adapter's max binding size).
    #[arg(long, default_value_t = 256)]
    stream_mib: u64,
    /// Prefill chunk (tokens per prefill submit).
    #[arg(long, default_value_t = 512)]
    prefill_chunk: usize,
    /// Seed of the random prompt token ids.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Batched decode: sequences decoded together (`TextDecoder::step_batch`), each after its
    /// own `--batch-prompt`-token prompt; empty to skip.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
    batch: Vec<usize>,
    /// Prompt length of each sequence of the batched decode measurements.
    #[arg(long, default_value_t = 16)]
    batch_prompt: usize,
    /// Rows (tokens) of the GEMM measurement: the first layer's gate projection over this many
    /// rows, in GFLOP/s next to a plain FMA loop.
    #[arg(long, default_value_t = 256)]
    gemm_rows: usize,
    /// Batched decode steps measured per batch size.
    #[arg(long, default_value_t = 16)]
    batch_steps: usize,
}

type BoxErr = Box<dyn std::error::Error>;

/// xorshift64* for prompt ids and image pixels.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn ids(&mut self, n: usize, lo: u32, hi: u32) -> Vec<u32> {
        (0..n)
            .map(|_| lo + (self.next() % u64::from(hi - lo)) as u32)
            .collect()
    }
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A rate with one decimal, or three below 1 (slow CPU adapters).
fn rate(x: f64) -> String {
    if x >= 1.0 || x == 0.0 || !x.is_finite() {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// Weight bytes multiplied per decoded token, from the checkpoint's tensors (stored format,
/// scales and biases included): every layer's projections (KV-shared layers have no k/v), the
/// PLE model projection, the tied LM head (embed_tokens), plus the gathered rows of the token
/// embedding and the PLE table. A mixture-of-experts layer adds its router projection and the
/// bytes of the `top_k` experts one token reads (`top_k / num_experts` of each stacked expert
/// tensor: every expert of a stack has the same shape and format); all experts' bytes are
/// reported apart (`experts_held`).
fn weight_bytes_per_token(dir: &Path) -> Result<(u64, Value), BoxErr> {
    let plan = Checkpoint::open(dir)?.plan()?;
    let t = &plan.weights.text;
    let mut layers = 0u64;
    let (mut attn, mut mlp, mut ple) = (0u64, 0u64, 0u64);
    let (mut moe_layers, mut router, mut experts_read, mut experts_held) = (0u64, 0u64, 0u64, 0u64);
    for l in &t.layers {
        let a = &l.self_attn;
        attn += a.q_proj.stored_bytes() + a.o_proj.stored_bytes();
        attn += a.kv.k_proj().map_or(0, |m| m.stored_bytes());
        attn += a.kv.v_proj().map_or(0, |m| m.stored_bytes());
        let m = l.mlp.dense();
        mlp += m.gate_proj.stored_bytes() + m.up_proj.stored_bytes() + m.down_proj.stored_bytes();
        if let Some(b) = l.mlp.moe() {
            moe_layers += 1;
            router += b.router.proj.stored_bytes();
            let held: u64 = match &b.experts {
                ExpertWeights::GateUp { gate_up, down } => {
                    gate_up.stored_bytes() + down.stored_bytes()
                }
                ExpertWeights::Split { gate, up, down } => {
                    gate.stored_bytes() + up.stored_bytes() + down.stored_bytes()
                }
            };
            let (e, k) = (b.shape.experts as u64, b.shape.top_k as u64);
            experts_held += held;
            experts_read += held * k / e.max(1);
        }
        if let Some(p) = &l.per_layer_input {
            ple += p.gate.stored_bytes() + p.projection.stored_bytes();
        }
        layers += 1;
    }
    ple += t
        .per_layer
        .as_ref()
        .map_or(0, |p| p.model_projection.stored_bytes());
    let head = t.embed.embed_tokens.stored_bytes();
    let embed_row = head / t.embed.embed_tokens.rows.max(1) as u64;
    let ple_row = match t.per_layer_table() {
        Some(PerLayerTable::Host(h)) => h.linear.stored_bytes() / h.rows().max(1) as u64,
        Some(PerLayerTable::Gpu(m)) => m.stored_bytes() / m.rows.max(1) as u64,
        None => 0,
    };
    let total = attn + mlp + router + experts_read + ple + head + embed_row + ple_row;
    let mut parts = json!({"layers": layers, "attention": attn, "mlp": mlp, "ple": ple,
                           "lm_head": head, "gathered_rows": embed_row + ple_row});
    if moe_layers > 0 {
        parts["moe_layers"] = json!(moe_layers);
        parts["router"] = json!(router);
        parts["experts_read"] = json!(experts_read);
        parts["experts_held"] = json!(experts_held);
    }
    Ok((total, parts))
}

/// GB/s of the plain streaming-read kernel over a buffer of about `mib` MiB: 10 passes per
/// submit, best of 3 after a warm-up.
fn stream_gbs(ctx: &GpuContext, mib_wanted: u64) -> Result<(f64, u64), BoxErr> {
    let caps = ctx.caps();
    let size = (mib_wanted << 20)
        .min(caps.max_binding_size)
        .min(caps.max_buffer_size)
        / 16
        * 16;
    let src = ctx.create_storage("stream-src", size)?;
    let sink = ctx.create_storage("stream-sink", 256)?;
    const N: usize = 10;
    let run = || -> Result<f64, BoxErr> {
        let t = Instant::now();
        let mut rec = ctx.recorder();
        for _ in 0..N {
            streaming::stream_read(&mut rec, &src, &sink)?;
        }
        rec.finish()?;
        Ok(t.elapsed().as_secs_f64() / N as f64)
    };
    run()?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        best = best.min(run()?);
    }
    Ok((size as f64 / best / 1e9, size))
}

/// A deterministic noise image (content does not matter for timing).
/// GFLOP/s of a plain FMA loop (best of 3 after a warm-up).
fn fma_gflops(ctx: &GpuContext) -> Result<f64, BoxErr> {
    let threads = 1u32 << 16;
    let out = ctx.create_storage("fma-out", 4 * u64::from(threads))?;
    let mut iters = 64u32;
    let run = |iters: u32| -> Result<f64, BoxErr> {
        let t = Instant::now();
        let mut rec = ctx.recorder();
        fma_probe::fma_probe(&mut rec, &out, threads, iters, 0.999, 0.001)?;
        rec.finish()?;
        Ok(t.elapsed().as_secs_f64())
    };
    // Grow the loop until one dispatch takes >= 50 ms (overheads negligible).
    while run(iters)? < 0.05 && iters < (1 << 20) {
        iters *= 2;
    }
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        best = best.min(run(iters)?);
    }
    Ok(fma_probe::fma_probe_flops(threads, iters) / best / 1e9)
}

/// GFLOP/s of the register-blocked matmul on the first layer's MLP gate projection over `rows` rows
/// (best of 3 after a warm-up); `None` without layers.
fn gemm_gflops(
    ctx: &GpuContext,
    model: &Model,
    rows: usize,
) -> Result<Option<(String, f64)>, BoxErr> {
    let Some(layer) = model.text().weights().layers.first() else {
        return Ok(None);
    };
    let w = &layer.mlp.dense().gate_proj;
    let rows = rows.max(gemma_wgpu::gpu::ops::MATVEC_MAX_ROWS + 1);
    let x = GpuTensor::from_f32(ctx, &[rows, w.cols], &vec![0.01; rows * w.cols])?;
    let y = GpuTensor::zeros(ctx, &[rows, w.rows], gemma_wgpu::gpu::DType::F32)?;
    let run = || -> Result<f64, BoxErr> {
        let t = Instant::now();
        let mut rec = ctx.recorder();
        gemma_wgpu::gpu::ops::linear(&mut rec, w, &x, &y)?;
        rec.finish()?;
        Ok(t.elapsed().as_secs_f64())
    };
    run()?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        best = best.min(run()?);
    }
    let flops = 2.0 * (rows * w.rows * w.cols) as f64;
    let what = format!("{rows} x {} x {} {:?}", w.cols, w.rows, w.format);
    Ok(Some((what, flops / best / 1e9)))
}

fn test_image(w: u32, h: u32) -> image::DynamicImage {
    let mut r = Rng(0x1234_5678);
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        let v = r.next();
        image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    });
    image::DynamicImage::ImageRgb8(img)
}

fn main() -> Result<(), failure::Failure> {
    let args = Args::parse();
    let ctx = GpuContext::new()?;
    let info = ctx.adapter_info().cloned();
    let backend = info
        .as_ref()
        .map(|i| format!("{:?}", i.backend))
        .unwrap_or_default();
    let adapter = ctx.adapter_name();
    eprintln!(
        "adapter: {adapter} ({backend}), subgroups {}, timestamps {}",
        ctx.uses_subgroups(),
        ctx.caps().timestamps
    );

    // The checkpoint.
    let mut write_s = None;
    let (dir, model_desc) = match (&args.synthetic, &args.model) {
        (Some(name), _) => {
            let mut spec = SyntheticSpec::preset(name).ok_or_else(|| {
                format!(
                    "unknown --synthetic {name} ({})",
                    SyntheticSpec::PRESETS.join(", ")
                )
            })?;
            if let Some(n) = args.layers {
                spec = spec.with_layers(n);
            }
            if let Some(v) = args.vocab {
                spec = spec.with_vocab(v);
            }
            if let Some(n) = args.vision_layers {
                if spec.vision.is_none() {
                    eprintln!("--vision-layers ignored: {name} has no vision tower");
                }
                spec = spec.with_vision_layers(n);
            }
            if let Some(b) = args.mlp_bits {
                let bits = spec.bits;
                spec = spec.with_bits(bits, b);
            }
            if args.no_vision {
                spec = spec.without_vision();
            }
            let dir = args
                .cache_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("target/bench-cache").join(spec.dir_name()));
            let t = Instant::now();
            if spec.ensure(&dir)? {
                write_s = Some(t.elapsed().as_secs_f64());
                eprintln!(
                    "wrote synthetic checkpoint {} ({:.2} GB) in {:.1} s",
                    dir.display(),
                    spec.total_bytes() as f64 / 1e9,
                    t.elapsed().as_secs_f64()
                );
            } else {
                eprintln!("reusing synthetic checkpoint {}", dir.display());
            }
            (dir, format!("synthetic {}", spec.dir_name()))
        }
        (None, Some(dir)) => (dir.clone(), format!("{}", dir.display())),
        (None, None) => {
            return Err("pass --synthetic e2b|e4b|31b|12b|26b-a4b or --model DIR".into());
        }
    };

    // Load.
    let decode_ctx = args.ttft_prompt + args.decode_tokens + args.profile_tokens + 8;
    let max_prefill = args
        .prefill
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(args.profile_prefill);
    let max_context = decode_ctx.max(max_prefill + 8).next_multiple_of(256);
    let chunk = args.prefill_chunk;
    let opts = ModelOptions {
        max_context,
        prefill_chunk: chunk,
        ..Default::default()
    };
    let bytes0 = ctx.counters().bytes_allocated();
    let t = Instant::now();
    let model = Model::load_with(&ctx, &dir, &opts)?;
    let load_s = t.elapsed().as_secs_f64();
    let gpu_weights = ctx.counters().bytes_allocated() - bytes0;
    let cfg = model.config().clone();
    let tc = &cfg.text_config;
    eprintln!(
        "loaded in {load_s:.2} s: {} layers, H {}, vocab {}, GPU {:.1} MiB",
        tc.num_hidden_layers,
        tc.hidden_size,
        tc.vocab_size,
        mib(gpu_weights)
    );
    let (weight_bytes, weight_parts) = weight_bytes_per_token(&dir)?;
    // The MoE layers' routed branch per decoded token (router norm, projection and top-k, the
    // experts' input norm, the gathered experts, the output norms; the dense MLP and the
    // attention are as on a dense layer).
    let moe_info: Option<(usize, usize, usize, usize)> = {
        let layers = &model.text().weights().layers;
        let routed: Vec<usize> = layers
            .iter()
            .filter_map(|l| l.mlp.moe())
            .map(|b| b.decode_dispatches())
            .collect::<Result<_, _>>()?;
        let shape = layers.iter().find_map(|l| l.mlp.moe()).map(|b| b.shape);
        shape.map(|s| {
            (
                routed.len(),
                routed.iter().sum::<usize>(),
                s.top_k,
                s.experts,
            )
        })
    };

    // Prompt ids below every special id.
    let hi = [
        tc.vocab_size as u32,
        cfg.image_token_id,
        cfg.boi_token_id,
        cfg.eoi_token_id,
    ]
    .into_iter()
    .min()
    .unwrap_or(4)
    .max(5);
    let mut rng = Rng(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let text = model.text();

    // Warm-up: pipelines for prefill (a short prompt takes the same kernels) and decode.
    {
        let (mut cache, mut ws) = text.new_session(max_context, chunk)?;
        let ids = rng.ids(args.ttft_prompt.clamp(1, 16), 3, hi);
        let logits = text.forward(&mut cache, &mut ws, &ids, None, Logits::Last)?;
        let mut tok = argmax_host(&logits);
        for _ in 0..2 {
            tok = text.step_greedy(&mut cache, &mut ws, tok)?;
        }
    }

    // Time to first token, then decode in the same session.
    let before_session = ctx.counters().bytes_allocated();
    let (mut cache, mut ws) = text.new_session(max_context, chunk)?;
    let session_bytes = ctx.counters().bytes_allocated() - before_session;
    let ids = rng.ids(args.ttft_prompt.max(1), 3, hi);
    let t = Instant::now();
    let logits = text.forward(&mut cache, &mut ws, &ids, None, Logits::Last)?;
    let mut tok = argmax_host(&logits);
    let ttft_ms = ms(t.elapsed());
    eprintln!("TTFT ({} tokens): {ttft_ms:.1} ms", args.ttft_prompt);

    let mut lat = Vec::with_capacity(args.decode_tokens);
    let mut step_stats = None;
    let mut generated = Vec::new();
    let t_dec = Instant::now();
    for _ in 0..args.decode_tokens {
        let t = Instant::now();
        tok = text.step_greedy(&mut cache, &mut ws, tok)?;
        lat.push(ms(t.elapsed()));
        step_stats = Some(ws.last_step_stats());
        generated.push(tok);
    }
    let dec_s = t_dec.elapsed().as_secs_f64();
    let decode_tok_s = args.decode_tokens as f64 / dec_s;
    let decode_median_ms = median(&lat);
    let stats = step_stats.unwrap_or_default();
    if args.decode_tokens > 0 {
        eprintln!(
            "decode: {decode_tok_s:.2} tok/s, median {decode_median_ms:.1} ms; {} dispatches, \
             {} submits, {} B readback per token",
            stats.dispatches, stats.submits, stats.readback_bytes
        );
    }

    // Batched decode: B sequences (own caches, own prompts) one step at a time together.
    let mut batched = Vec::new();
    for &b in &args.batch {
        let b = b.clamp(1, gemma_wgpu::gpu::ops::MATVEC_MAX_ROWS);
        let ctx_len = args.batch_prompt.max(1) + args.batch_steps + 4;
        let mut seqs = Vec::with_capacity(b);
        for _ in 0..b {
            let (mut cache, mut ws) = text.new_session(ctx_len, chunk)?;
            let ids = rng.ids(args.batch_prompt.max(1), 3, hi);
            let logits = text.forward(&mut cache, &mut ws, &ids, None, Logits::Last)?;
            seqs.push((cache, argmax_host(&logits)));
        }
        let mut bws = text.batch_workspace(b, ctx_len)?;
        let mut step = |seqs: &mut Vec<(gemma_wgpu::text::KvCache, u32)>| -> Result<(), BoxErr> {
            let mut rows: Vec<BatchSeq<'_>> = seqs
                .iter_mut()
                .map(|(cache, token)| BatchSeq {
                    cache,
                    token: *token,
                })
                .collect();
            let ids = text.step_batch(&mut rows, &mut bws, |_, rec, sel| {
                gemma_wgpu::gpu::ops::argmax(rec, sel.logits, sel.out, sel.scratch)?;
                Ok(())
            })?;
            drop(rows);
            for ((_, t), id) in seqs.iter_mut().zip(ids) {
                *t = id;
            }
            Ok(())
        };
        step(&mut seqs)?; // first step off the clock
        let t = Instant::now();
        let mut lat = Vec::with_capacity(args.batch_steps);
        for _ in 0..args.batch_steps {
            let t1 = Instant::now();
            step(&mut seqs)?;
            lat.push(ms(t1.elapsed()));
        }
        let s = t.elapsed().as_secs_f64();
        let agg = (b * args.batch_steps) as f64 / s.max(1e-9);
        let per_ms = median(&lat);
        eprintln!(
            "batched decode B={b}: {agg:.2} tok/s aggregate, median {per_ms:.1} ms per step \
             (per-sequence latency)"
        );
        batched.push((b, agg, per_ms));
    }

    // Bandwidth yardstick in the same run, right after the decode it is compared with (on a
    // shared CPU adapter the load of the machine changes over minutes).
    let (stream, stream_bytes) = stream_gbs(&ctx, args.stream_mib)?;
    eprintln!("streaming read: {stream:.2} GB/s");
    // Arithmetic yardstick and the prefill/vision GEMM (register-blocked matmul) in the same run.
    let fma = fma_gflops(&ctx)?;
    let gemm = gemm_gflops(&ctx, &model, args.gemm_rows)?;
    if let Some((what, g)) = &gemm {
        eprintln!(
            "FMA loop: {fma:.2} GFLOP/s; GEMM ({what}): {g:.2} GFLOP/s = {:.1}% of it",
            100.0 * g / fma.max(1e-9)
        );
    }

    // Per-kernel profile over extra decode steps (measured decode above is unperturbed).
    let mut profile: Option<Profile> = None;
    let mut prefill_profile: Option<Profile> = None;
    let mut profile_note = String::new();
    if args.profile {
        if ctx.set_profiling(true) {
            let _ = ctx.take_profile();
            for _ in 0..args.profile_tokens {
                tok = text.step_greedy(&mut cache, &mut ws, tok)?;
            }
            ctx.set_profiling(false);
            profile = Some(ctx.take_profile());
            if args.profile_prefill > 0 {
                let (mut c2, mut w2) = text.new_session(max_context, chunk)?;
                let ids = rng.ids(args.profile_prefill, 3, hi);
                ctx.set_profiling(true);
                text.forward(&mut c2, &mut w2, &ids, None, Logits::Last)?;
                ctx.set_profiling(false);
                prefill_profile = Some(ctx.take_profile());
            }
        } else {
            profile_note = "the adapter lacks TIMESTAMP_QUERY: no profile".into();
            eprintln!("{profile_note}");
        }
    }
    drop((cache, ws));
    let gpu_engine_bytes = gpu_weights + session_bytes;
    let gpu_driver_bytes = ctx.gpu_allocated_bytes();

    // Prefill throughput, a fresh session per prompt length.
    let mut prefill = Vec::new();
    for &p in &args.prefill {
        let (mut cache, mut ws) = text.new_session(max_context, chunk)?;
        let ids = rng.ids(p.max(1), 3, hi);
        let t = Instant::now();
        text.forward(&mut cache, &mut ws, &ids, None, Logits::Last)?;
        let s = t.elapsed().as_secs_f64();
        eprintln!("prefill {p}: {} tok/s ({:.2} s)", rate(p as f64 / s), s);
        prefill.push((p, p as f64 / s, s));
    }

    // Decode at long contexts: prefill N ids (no logits), then time up to 16 steps.
    let mut decode_at = Vec::new();
    for &n in &args.decode_at {
        let steps = args.decode_tokens.clamp(1, 16);
        let (mut cache, mut ws) = text.new_session(n + steps + 8, chunk)?;
        let ids = rng.ids(n.max(1), 3, hi);
        text.forward(&mut cache, &mut ws, &ids, None, Logits::Last)?;
        let mut tok = 3;
        tok = text.step_greedy(&mut cache, &mut ws, tok)?; // first step off the clock
        let t = Instant::now();
        for _ in 0..steps {
            tok = text.step_greedy(&mut cache, &mut ws, tok)?;
        }
        let tps = steps as f64 / t.elapsed().as_secs_f64();
        eprintln!("decode at context {n}: {tps:.2} tok/s");
        decode_at.push((n, tps));
    }

    // Vision encode at each soft-token budget, after a warm-up.
    let mut vision = Vec::new();
    let mut vision_profile: Option<(u32, Profile)> = None;
    // The warm-up grid: the smallest poolable grid of the tower (k x k patches), one model
    // patch of the unified model's embedder (no pooling).
    let warm_grid = match (&cfg.vision_config, &cfg.vision_embedder) {
        (Some(vc), _) => Some((vc.pooling_kernel_size as u32, vc.patch_values())),
        (None, Some(ec)) => Some((1, ec.patch_values())),
        (None, None) => None,
    };
    if let (Some(enc), Some((k, patch_values)), false) =
        (model.vision(), warm_grid, args.skip_vision)
    {
        let img = test_image(1024, 768);
        // The model's own preprocessing (the E-series PIL path or the unified model's
        // torchvision path and 48-px model patches) at each budget.
        let base = model.image_options()?;
        let patches = |budget: u32| -> Result<ImagePatches, BoxErr> {
            let o = base.with_max_soft_tokens(budget)?;
            let p = preprocess::preprocess(&img, &o)?;
            Ok(ImagePatches {
                pixel_values: p.pixel_values,
                positions: p.positions,
                grid: p.grid,
            })
        };
        if !args.vision_budgets.is_empty() {
            // Warm-up on the smallest grid: the same pipelines.
            let n = (k * k) as usize;
            let warm = ImagePatches {
                pixel_values: vec![0.5; n * patch_values],
                positions: (0..k * k).map(|i| [i % k, i / k]).collect(),
                grid: (k, k),
            };
            enc.encode(&warm, false)?;
            ctx.wait_idle()?;
        }
        for &b in &args.vision_budgets {
            let p = patches(b)?;
            let t = Instant::now();
            let (feat, _) = enc.encode(&p, false)?;
            ctx.wait_idle()?;
            let e = ms(t.elapsed());
            eprintln!(
                "vision {b}: {e:.1} ms ({} patches, {} soft tokens)",
                p.positions.len(),
                feat.shape[0]
            );
            vision.push((b, e, p.positions.len(), feat.shape[0]));
        }
        // With --profile: where one image's time goes, at the smallest budget.
        if let Some(&b) = args.vision_budgets.iter().min()
            && args.profile
            && ctx.set_profiling(true)
        {
            let _ = ctx.take_profile();
            let p = patches(b)?;
            enc.encode(&p, false)?;
            ctx.wait_idle()?;
            ctx.set_profiling(false);
            vision_profile = Some((b, ctx.take_profile()));
        }
    }

    let eff_gbs = weight_bytes as f64 * decode_tok_s / 1e9;
    let frac = eff_gbs / stream;

    let rss = proc_status_kib("VmRSS:");
    let hwm = proc_status_kib("VmHWM:");

    // Report.
    let na = || "n/a".to_string();
    let mut rows: Vec<(String, String)> = vec![
        ("adapter".into(), format!("{adapter} ({backend})")),
        (
            "kernel path".into(),
            if ctx.uses_subgroups() {
                "subgroup".into()
            } else {
                "fallback".into()
            },
        ),
        ("model".into(), model_desc.clone()),
        ("prefill chunk".into(), format!("{chunk} tokens")),
        ("load".into(), format!("{load_s:.2} s")),
        (
            format!("time to first token ({} tokens)", args.ttft_prompt),
            format!("{ttft_ms:.1} ms"),
        ),
    ];
    for (p, tps, s) in &prefill {
        rows.push((
            format!("prefill {p} tokens"),
            format!("{} tok/s ({s:.2} s)", rate(*tps)),
        ));
    }
    rows.push((
        format!("decode ({} tokens)", args.decode_tokens),
        format!("{decode_tok_s:.2} tok/s, median {decode_median_ms:.2} ms/token"),
    ));
    for (n, tps) in &decode_at {
        rows.push((format!("decode at context {n}"), format!("{tps:.2} tok/s")));
    }
    let b1 = batched.iter().find(|(b, ..)| *b == 1).map(|(_, a, _)| *a);
    for (b, agg, per_ms) in &batched {
        let ratio = b1.map_or_else(String::new, |a1| format!(", {:.2}x B=1", agg / a1));
        rows.push((
            format!("batched decode, B = {b}"),
            format!("{agg:.2} tok/s aggregate{ratio}; {per_ms:.1} ms per step (each sequence)"),
        ));
    }
    for (b, e, n, soft) in &vision {
        rows.push((
            format!("vision encode, budget {b}"),
            format!("{e:.1} ms ({n} patches → {soft} soft tokens)"),
        ));
    }
    rows.extend([
        (
            "GPU memory (engine: weights + 1 session)".into(),
            format!(
                "{:.1} MiB (weights {:.1}, session {:.1})",
                mib(gpu_engine_bytes),
                mib(gpu_weights),
                mib(session_bytes)
            ),
        ),
        (
            "GPU memory (driver allocator, live)".into(),
            gpu_driver_bytes.map_or_else(na, |b| format!("{:.1} MiB", mib(b))),
        ),
        (
            "host memory RSS / peak".into(),
            match (rss, hwm) {
                (Some(r), Some(h)) => {
                    format!("{:.1} / {:.1} MiB", r as f64 / 1024.0, h as f64 / 1024.0)
                }
                _ => na(),
            },
        ),
        (
            "per decoded token: dispatches / submits / readback".into(),
            format!(
                "{} / {} / {} B",
                stats.dispatches, stats.submits, stats.readback_bytes
            ),
        ),
        (
            "per decoded token: dispatches / layer (average)".into(),
            format!(
                "{:.1}",
                stats.dispatches as f64 / tc.num_hidden_layers.max(1) as f64
            ),
        ),
        (
            "weight bytes per token".into(),
            match (&moe_info, weight_parts["experts_read"].as_u64()) {
                (Some((_, _, k, e)), Some(read)) => format!(
                    "{:.1} MiB (experts: {:.1} MiB read = {k} of {e}, of {:.1} MiB held)",
                    mib(weight_bytes),
                    mib(read),
                    mib(weight_parts["experts_held"].as_u64().unwrap_or(0))
                ),
                _ => format!("{:.1} MiB", mib(weight_bytes)),
            },
        ),
        (
            "decode effective weight bandwidth".into(),
            format!("{eff_gbs:.2} GB/s"),
        ),
        (
            "streaming-read kernel".into(),
            format!("{stream:.2} GB/s ({:.0} MiB buffer)", mib(stream_bytes)),
        ),
        (
            "decode bandwidth / streaming".into(),
            format!("{:.1}%", 100.0 * frac),
        ),
        ("FMA-loop kernel".into(), format!("{fma:.2} GFLOP/s")),
        (
            "GEMM (register-blocked matmul) / FMA loop".into(),
            gemm.as_ref().map_or_else(na, |(what, g)| {
                format!(
                    "{g:.2} GFLOP/s ({what}) = {:.1}%",
                    100.0 * g / fma.max(1e-9)
                )
            }),
        ),
    ]);
    if let Some((n, routed, k, e)) = moe_info {
        rows.push((
            "per MoE layer: routed-branch dispatches per token".into(),
            format!(
                "{} (router norm, proj, top-{k} of {e}, experts' norm, gathered experts, \
                 output norms; {n} MoE layers, {routed} per token)",
                routed / n.max(1)
            ),
        ));
    }
    if let Some(s) = write_s {
        rows.push(("(synthetic checkpoint written)".into(), format!("{s:.1} s")));
    }
    println!("| metric | value |\n|---|---|");
    for (k, v) in &rows {
        println!("| {k} | {v} |");
    }
    let mut profile_json = Value::Null;
    if let Some(p) = &profile {
        let n = args.profile_tokens as u64;
        println!(
            "\nPer-kernel GPU time per decoded token ({} profiled steps, one pass per dispatch):\n",
            n
        );
        print!("{}", p.markdown_by_family(n));
        if args.profile_detail {
            println!("\nBy specialisation:\n");
            print!("{}", p.markdown_by_kernel(n));
        }
        let per = n.max(1) as f64;
        profile_json = json!({
            "tokens": n,
            "gpu_us_per_token": p.total_ns() / per / 1e3,
            "families": p.by_family().iter().map(|e| json!({
                "kernel": e.kernel, "us_per_token": e.total_ns / per / 1e3,
                "dispatches_per_token": e.count as f64 / per,
            })).collect::<Vec<_>>(),
        });
        if let Some(pp) = &prefill_profile {
            let n = args.profile_prefill as u64;
            println!("\nPer-kernel GPU time per prompt token (prefill of {n} tokens):\n");
            print!("{}", pp.markdown_by_family(n));
            profile_json["prefill"] = json!({
                "tokens": n,
                "gpu_us_per_token": pp.total_ns() / n as f64 / 1e3,
                "families": pp.by_family().iter().map(|e| json!({
                    "kernel": e.kernel, "us_per_token": e.total_ns / n as f64 / 1e3,
                    "dispatches": e.count,
                })).collect::<Vec<_>>(),
            });
        }
        if let Some((b, vp)) = &vision_profile {
            println!("\nPer-kernel GPU time of one image encode (budget {b}), in µs:\n");
            print!("{}", vp.markdown_by_family(1));
            profile_json["vision"] = json!({
                "budget": b,
                "gpu_us": vp.total_ns() / 1e3,
                "families": vp.by_family().iter().map(|e| json!({
                    "kernel": e.kernel, "us": e.total_ns / 1e3, "dispatches": e.count,
                })).collect::<Vec<_>>(),
            });
        }
    } else if !profile_note.is_empty() {
        profile_json = json!({"note": profile_note});
    }
    let prefill_map: serde_json::Map<String, Value> = prefill
        .iter()
        .map(|(p, t, _)| (p.to_string(), json!(t)))
        .collect();
    let vision_map: serde_json::Map<String, Value> = vision
        .iter()
        .map(|(b, e, _, _)| (b.to_string(), json!(e)))
        .collect();
    let j = json!({
        "adapter": adapter,
        "backend": backend,
        "device_type": info.as_ref().map(|i| format!("{:?}", i.device_type)),
        "subgroups": ctx.uses_subgroups(),
        "timestamps": ctx.caps().timestamps,
        "model": model_desc,
        "layers": tc.num_hidden_layers,
        "hidden_size": tc.hidden_size,
        "vocab": tc.vocab_size,
        "vision_layers": cfg.vision_config.as_ref().map(|v| v.num_hidden_layers),
        "vision_kind": match (&cfg.vision_config, &cfg.vision_embedder) {
            (Some(_), _) => json!("tower"),
            (None, Some(_)) => json!("embedder"),
            (None, None) => Value::Null,
        },
        "model_type": cfg.model_type,
        "load_s": load_s,
        "ttft_ms": ttft_ms,
        "ttft_prompt_tokens": args.ttft_prompt,
        "prefill_chunk": chunk,
        "prefill_tok_s": prefill_map,
        "decode_tokens": args.decode_tokens,
        "decode_tok_s": decode_tok_s,
        "decode_median_ms": decode_median_ms,
        "batched_decode": batched
            .iter()
            .map(|(b, agg, per)| json!({"batch": b, "tok_s": agg, "step_ms": per}))
            .collect::<Vec<_>>(),
        "decode_at_tok_s": decode_at
            .iter()
            .map(|(n, t)| (n.to_string(), json!(t)))
            .collect::<serde_json::Map<String, Value>>(),
        "vision_encode_ms": vision_map,
        "gpu_engine_bytes": gpu_engine_bytes,
        "gpu_weight_bytes": gpu_weights,
        "gpu_session_bytes": session_bytes,
        "gpu_driver_bytes": gpu_driver_bytes,
        "rss_bytes": rss.map(|k| k * 1024),
        "rss_peak_bytes": hwm.map(|k| k * 1024),
        "dispatches_per_token": stats.dispatches,
        "moe": moe_info.map(|(n, routed, k, e)| json!({
            "layers": n, "experts": e, "top_k": k,
            "routed_dispatches_per_token": routed,
            "routed_dispatches_per_layer": routed / n.max(1),
        })),
        "submits_per_token": stats.submits,
        "readback_bytes_per_token": stats.readback_bytes,
        "weight_bytes_per_token": weight_bytes,
        "weight_bytes_parts": weight_parts,
        "decode_effective_gbs": eff_gbs,
        "stream_gbs": stream,
        "decode_bandwidth_fraction": frac,
        "synthetic_write_s": write_s,
        "profile": profile_json,
    });
    let mut j = j;
    j["fma_gflops"] = json!(fma);
    j["gemm"] = gemm.as_ref().map_or(
        Value::Null,
        |(what, g)| json!({"shape": what, "gflops": g, "fraction": g / fma.max(1e-9)}),
    );
    println!("\nBENCH_JSON {}", serde_json::to_string(&j)?);
    Ok(())
}

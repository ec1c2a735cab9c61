//! Faults in the middle of work (issue #17, part 2): a model that does not fit (refused before
//! anything is uploaded), running out of memory while uploading (everything released), a lost
//! device (every later call fails promptly with `DeviceLost`; a new device works), and panics
//! or dropped handles mid-generation (the session stays usable).

use crate::common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::golden::fixtures_dir;
use gemma_wgpu::gpu::{GpuContext, GpuError};
use gemma_wgpu::{ChatSession, Error, GenerationOptions, Model, ModelOptions, Reply, Request};

fn dir() -> PathBuf {
    fixtures_dir().join("e2b-like")
}

fn image() -> PathBuf {
    fixtures_dir().join("chat/image.png")
}

fn options() -> ModelOptions {
    ModelOptions {
        max_context: 512,
        ..Default::default()
    }
}

/// Greedy, `n` tokens, no stop tokens.
fn greedy(n: usize) -> GenerationOptions {
    GenerationOptions::default()
        .greedy()
        .with_max_new_tokens(n)
        .with_stop_tokens(Vec::new())
}

fn say(t: &str, n: usize) -> Request {
    Request::new(t).with_options(greedy(n))
}

/// The fixture model on the shared device (loaded once per test binary).
fn model() -> Option<Model> {
    static M: OnceLock<Option<Model>> = OnceLock::new();
    M.get_or_init(|| {
        let ctx = common::gpu()?;
        Some(Model::load_with(&ctx, &dir(), &options()).expect("load e2b-like"))
    })
    .clone()
}

/// A device of the test's own (the engine creates it, so its device-lost callback is
/// installed), or `None` when GPU tests are skipped.
fn own_gpu() -> Option<GpuContext> {
    common::gpu()?;
    Some(GpuContext::new().expect("a second device on the adapter"))
}

fn gpu_error(r: Result<impl std::fmt::Debug, Error>) -> GpuError {
    match r {
        Err(Error::Gpu(e)) => e,
        other => panic!("expected a GPU error, got {other:?}"),
    }
}

/// The estimate is what loading and one session then allocate, byte for byte, in every
/// upload format (as stored, f32, the per-layer table on the GPU, quantize-on-load).
#[test]
fn the_memory_estimate_is_what_loading_allocates() {
    let Some(ctx) = common::gpu() else { return };
    let mut variants = vec![("native", options())];
    let mut f32 = options();
    f32.load.float_format = gemma_wgpu::FloatFormat::F32;
    f32.load.per_layer_table_on_gpu = true;
    variants.push(("f32 + per-layer table on the GPU", f32));
    let mut q = options();
    q.load.quantize_on_load = Some((4, 32));
    q.max_context = 100;
    variants.push(("quantize-on-load 4/32, context 100", q));
    for (what, opts) in variants {
        let est = Model::estimate_memory(&ctx, &dir(), &opts).unwrap();
        assert!(
            est.weights > 0 && est.kv_cache > 0 && est.scratch > 0,
            "{what}: {est:?}"
        );
        let m = Model::load_with(&ctx, &dir(), &opts).unwrap();
        assert_eq!(
            est.weights,
            m.memory_report().weights_gpu,
            "{what}: weights"
        );
        assert_eq!(
            est.weights,
            m.load_report().bytes_uploaded,
            "{what}: weights"
        );
        let chat = m.chat().unwrap();
        let mem = chat.memory();
        assert_eq!(est.kv_cache, mem.kv_cache, "{what}: KV cache");
        assert_eq!(est.scratch, mem.scratch, "{what}: workspace");
        assert_eq!(est.total(), m.memory_report().gpu_total(), "{what}: total");
    }
}

/// Over the memory budget: a typed error with needed vs available bytes and what to try,
/// before a single buffer is created; at the budget it loads.
#[test]
fn a_model_over_the_memory_budget_is_refused_before_uploading() {
    let Some(ctx) = own_gpu() else { return };
    let est = Model::estimate_memory(&ctx, &dir(), &options()).unwrap();
    let mut opts = options();
    opts.memory_budget = Some(est.total() - 1);
    let err = gpu_error(Model::load_with(&ctx, &dir(), &opts));
    let text = err.to_string();
    match err {
        GpuError::DoesNotFit {
            needed,
            available,
            advice,
            ..
        } => {
            assert_eq!(needed, est.total());
            assert_eq!(available, est.total() - 1);
            assert!(advice.contains("quantize_on_load"), "{advice}");
            assert!(advice.contains("with_max_context"), "{advice}");
            assert!(
                !advice.contains("per_layer_table_on_gpu"),
                "the table is on the host: {advice}"
            );
        }
        other => panic!("expected DoesNotFit, got {other:?}"),
    }
    assert!(text.contains(&est.total().to_string()), "{text}");
    assert_eq!(ctx.counters().allocations().0, 0, "a buffer was created");
    assert_eq!(ctx.counters().bytes_allocated(), 0);

    // The per-layer table on the GPU is counted, and the advice names it.
    let mut on_gpu = opts.clone();
    on_gpu.load.per_layer_table_on_gpu = true;
    match gpu_error(Model::load_with(&ctx, &dir(), &on_gpu)) {
        GpuError::DoesNotFit { advice, needed, .. } => {
            assert!(needed > est.total());
            assert!(advice.contains("per_layer_table_on_gpu(false)"), "{advice}");
        }
        other => panic!("expected DoesNotFit, got {other:?}"),
    }

    opts.memory_budget = Some(est.total());
    let m = Model::load_with(&ctx, &dir(), &opts).unwrap();
    let _chat = m.chat().unwrap();
    assert_eq!(m.memory_report().gpu_total(), est.total());
}

/// A matrix row wider than one storage binding of the device is refused before a single
/// buffer is created (the upload would have failed part way, at that matrix).
#[test]
fn a_weight_row_over_the_binding_limit_is_refused_before_uploading() {
    // One bf16 row of `hidden_size` columns fits; o_proj / down_proj rows are wider.
    let Some(limit) = model().map(|m| m.config().text_config.hidden_size as u64 * 2) else {
        return;
    };
    let ctx = common::gpu_with_binding_limit(limit).unwrap();
    match Model::load_with(&ctx, &dir(), &options()) {
        Err(Error::Load(gemma_wgpu::LoadError::Gpu(GpuError::LimitExceeded {
            what,
            needed,
            limit: l,
            limit_name,
        }))) => {
            assert!(what.starts_with("one row of language_model."), "{what}");
            assert!(needed > limit, "{needed}");
            assert_eq!(l, limit);
            assert_eq!(limit_name, "max_storage_buffer_binding_size");
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    assert_eq!(ctx.counters().allocations().0, 0, "a buffer was created");
}

/// The device runs out of memory half way through the weights: a typed error with what was
/// needed, and every buffer of the failed load is released (the allocator's figure returns to
/// its baseline); with the memory back the same context loads the model.
#[test]
fn running_out_of_memory_while_uploading_releases_everything() {
    let Some(ctx) = own_gpu() else { return };
    let est = Model::estimate_memory(&ctx, &dir(), &options()).unwrap();
    ctx.wait_idle().unwrap();
    let baseline = ctx.gpu_allocated_bytes();
    if ctx.adapter_info().map(|i| i.backend) == Some(wgpu::Backend::Vulkan) {
        assert!(baseline.is_some(), "Vulkan reports the allocator's figure");
    }
    ctx.limit_allocations(Some(est.weights / 2));
    let err = gpu_error(Model::load_with(&ctx, &dir(), &options()));
    match &err {
        GpuError::DoesNotFit {
            needed,
            available,
            limit,
            ..
        } => {
            assert_eq!(*needed, est.total());
            assert!(
                *available > 0 && *available <= est.weights / 2,
                "{available}"
            );
            assert!(limit.contains("ran out"), "{limit}");
        }
        other => panic!("expected DoesNotFit, got {other:?}"),
    }
    assert!(
        ctx.counters().bytes_allocated() > 0,
        "the load failed before uploading anything"
    );
    ctx.wait_idle().unwrap();
    assert_eq!(
        ctx.gpu_allocated_bytes(),
        baseline,
        "buffers of the failed load stayed"
    );
    ctx.check_health().unwrap();

    ctx.limit_allocations(None);
    let m = Model::load_with(&ctx, &dir(), &options()).unwrap();
    if let (Some(now), Some(base)) = (ctx.gpu_allocated_bytes(), baseline) {
        // The figure does see the weights (so the comparison above means something).
        assert!(
            now >= base + est.weights,
            "{now} vs {base} + {}",
            est.weights
        );
    }
    let a = m.generate(say("Hello there.", 4)).unwrap();
    let b = model().unwrap().generate(say("Hello there.", 4)).unwrap();
    assert_eq!(a.tokens, b.tokens);

    // A session that does not fit: OutOfMemory naming the buffer and its size, and the
    // model's memory report and the allocator's figure as before.
    ctx.wait_idle().unwrap();
    let (report, allocated) = (m.memory_report(), ctx.gpu_allocated_bytes());
    ctx.limit_allocations(Some(est.kv_cache / 2));
    match m.chat() {
        Err(Error::Gpu(GpuError::OutOfMemory { context, .. })) => {
            assert!(context.contains("bytes)"), "{context}")
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert_eq!(m.memory_report(), report);
    ctx.wait_idle().unwrap();
    assert_eq!(ctx.gpu_allocated_bytes(), allocated);
    ctx.limit_allocations(None);
    let mut chat = m.chat().unwrap();
    assert_eq!(chat.send(say("Hello there.", 4)).unwrap().tokens, b.tokens);
}

/// wgpu calls the engine's device-lost callback when its device is destroyed (on lavapipe
/// too); a host's device (no callback) is marked lost by `GpuContext::destroy`.
#[test]
fn a_destroyed_device_is_reported_lost() {
    let Some(ctx) = own_gpu() else { return };
    ctx.check_health().unwrap();
    ctx.device().destroy();
    let _ = ctx.device().poll(wgpu::PollType::Poll);
    assert!(
        matches!(ctx.check_health(), Err(GpuError::DeviceLost(_))),
        "{:?}",
        ctx.check_health()
    );

    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    let (device, queue) =
        pollster::block_on(adapter.request_device(&GpuContext::device_descriptor(&adapter)))
            .unwrap();
    let host = GpuContext::from_host(&adapter, device, queue);
    host.check_health().unwrap();
    host.destroy();
    assert!(matches!(host.check_health(), Err(GpuError::DeviceLost(_))));
    assert!(matches!(
        host.create_storage("after", 16),
        Err(GpuError::DeviceLost(_))
    ));
}

/// After the device is lost every call on the model and its sessions returns `DeviceLost`
/// at once (no hang, no panic); the model loaded again on a new device generates the same
/// greedy tokens as before.
#[test]
fn after_device_loss_every_call_fails_promptly_and_a_new_device_works() {
    let Some(ctx) = own_gpu() else { return };
    let m = Model::load_with(&ctx, &dir(), &options()).unwrap();
    let mut chat = m.chat().unwrap();
    let before = m.generate(say("Hello there.", 6)).unwrap();
    chat.send(say("Hello there.", 2)).unwrap();
    let patches = m.prepare_image_file(&image()).unwrap();

    ctx.destroy();
    let t0 = Instant::now();
    let lost = |what: &str, e: GpuError| {
        assert!(matches!(e, GpuError::DeviceLost(_)), "{what}: {e:?}");
    };
    lost("generate", gpu_error(m.generate(say("Hello there.", 6))));
    lost("caption", gpu_error(m.caption(image())));
    lost("send", gpu_error(chat.send(say("More.", 4))));
    match chat.stream(say("More.", 4)).next() {
        Some(Err(Error::Gpu(e))) => lost("stream", e),
        other => panic!("stream: {other:?}"),
    }
    lost("spawn", gpu_error(chat.spawn(say("More.", 4)).wait()));
    lost("model spawn", gpu_error(m.spawn(say("More.", 4)).wait()));
    lost("encode_images", gpu_error(m.encode_images(&[patches])));
    lost(
        "logits",
        gpu_error(m.logits_and_greedy(&before.prompt_ids, &[], 2)),
    );
    lost("chat", gpu_error(m.chat()));
    lost(
        "load",
        gpu_error(Model::load_with(&ctx, &dir(), &options())),
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the calls took {:?}",
        t0.elapsed()
    );
    drop(chat);
    drop(m);

    let ctx2 = own_gpu().unwrap();
    let m2 = Model::load_with(&ctx2, &dir(), &options()).unwrap();
    assert_eq!(
        m2.generate(say("Hello there.", 6)).unwrap().tokens,
        before.tokens
    );
}

/// A wait for the GPU that never ends (a callback that never comes, as from a hung device)
/// times out as `DeviceLost` instead of blocking forever, and marks the device lost.
#[test]
fn a_gpu_wait_that_never_ends_times_out_as_device_lost() {
    let Some(ctx) = own_gpu() else { return };
    ctx.set_wait_timeout(Duration::from_millis(300));
    let (_tx, rx) = std::sync::mpsc::channel::<()>();
    let t0 = Instant::now();
    let r = ctx.wait_for("a callback that never comes", &rx);
    assert!(matches!(r, Err(GpuError::DeviceLost(_))), "{r:?}");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(ctx.is_lost());
    assert!(matches!(
        ctx.create_storage("after", 16),
        Err(GpuError::DeviceLost(_))
    ));
}

/// The conversation a fresh session reaches by sending `first` cut at the same number of
/// tokens as the interrupted one, then `second`: the reply an interrupted session must give.
fn fresh_equivalent(m: &Model, interrupted: &ChatSession, first: &str, second: &Request) -> Reply {
    let mut probe = m.chat().unwrap();
    let prompt = probe.send(say(first, 0)).unwrap().prompt_ids.len();
    let n = interrupted.history().len() - prompt;
    let mut fresh = m.chat().unwrap();
    fresh.send(say(first, n)).unwrap();
    assert_eq!(fresh.messages(), interrupted.messages());
    fresh.send(second.clone()).unwrap()
}

/// A panic in the code consuming a stream (at its third delta) and a stream dropped after two
/// deltas both end the turn where it was (its text joins the conversation); the next turn
/// gives what a fresh session with the same conversation gives.
#[test]
fn a_panicking_or_dropped_stream_leaves_the_session_usable() {
    let Some(m) = model() else { return };
    let second = say("And then?", 6);
    for panics in [true, false] {
        let mut chat = m.chat().unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut stream = chat.stream(say("Hello there.", 24));
            for i in 0..3 {
                stream.next().unwrap().unwrap();
                if panics && i == 2 {
                    panic!("the consumer panics at delta 3");
                }
                if !panics && i == 1 {
                    return;
                }
            }
        }));
        assert_eq!(r.is_err(), panics);
        assert_eq!(
            chat.messages().len(),
            2,
            "the cut reply joined the conversation"
        );
        let want = fresh_equivalent(&m, &chat, "Hello there.", &second);
        let got = chat.send(second.clone()).unwrap();
        assert_eq!(got.tokens, want.tokens, "panics: {panics}");
        assert_eq!(got.text, want.text);
    }
}

/// A background generation whose handle is dropped after two tokens stops; the next turn
/// gives what a fresh session with the same conversation gives.
#[test]
fn a_dropped_generation_handle_leaves_the_session_usable() {
    let Some(m) = model() else { return };
    let second = say("And then?", 6);
    let mut chat = m.chat().unwrap();
    let handle = chat.spawn(say("Hello there.", 200));
    let t0 = Instant::now();
    while handle.tokens_generated() < 2 && !handle.is_finished() {
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(handle);
    // `history` waits for the stopped generation (it holds the session until it ends).
    let prompt = m
        .chat()
        .unwrap()
        .send(say("Hello there.", 0))
        .unwrap()
        .prompt_ids
        .len();
    assert!(
        chat.history().len() - prompt < 200,
        "the generation was not stopped"
    );
    let want = fresh_equivalent(&m, &chat, "Hello there.", &second);
    let got = chat.send(second).unwrap();
    assert_eq!(got.tokens, want.tokens);
    assert_eq!(got.text, want.text);
}

/// A notify callback that panics (on the generating thread, at its third event) ends that
/// generation with `Error::Panicked`; the turn is undone and the next turn, from an empty
/// cache, gives what a fresh session gives.
#[test]
fn a_panicking_notify_callback_undoes_the_turn() {
    let Some(m) = model() else { return };
    let mut chat = m.chat().unwrap();
    chat.send(say("Hello there.", 3)).unwrap();
    let kept = chat.messages();
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let handle = chat.spawn(say("And then?", 64)).with_notify(move || {
        let on_worker = std::thread::current().name() == Some("gemma-wgpu generation");
        if on_worker && c2.fetch_add(1, Ordering::SeqCst) == 2 {
            panic!("the notify callback panics at its third event");
        }
    });
    match handle.wait() {
        Err(Error::Panicked(msg)) => assert!(msg.contains("third event"), "{msg}"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert_eq!(chat.messages(), kept, "the interrupted turn was not undone");
    assert_eq!(
        chat.cached_tokens(),
        0,
        "the next turn must start from an empty cache"
    );
    let got = chat.send(say("Something else.", 6)).unwrap();
    let mut fresh = m.chat().unwrap();
    fresh.send(say("Hello there.", 3)).unwrap();
    let want = fresh.send(say("Something else.", 6)).unwrap();
    assert_eq!(got.prompt_ids, want.prompt_ids);
    assert_eq!(got.tokens, want.tokens);
}

/// A progress callback that panics part way through an async load ends it with
/// `Error::Panicked` (not a silently closed handle), and what it had uploaded is released.
#[test]
fn a_panicking_progress_callback_ends_the_load_and_releases_it() {
    let Some(ctx) = own_gpu() else { return };
    ctx.wait_idle().unwrap();
    let baseline = ctx.gpu_allocated_bytes();
    let events = Arc::new(AtomicUsize::new(0));
    let e2 = events.clone();
    let r = gemma_wgpu::ModelBuilder::new(dir().to_str().unwrap())
        .with_context(ctx.clone())
        .with_max_context(512)
        .with_progress(move |p| {
            if p.tensors_done > 10 {
                e2.fetch_add(1, Ordering::SeqCst);
                panic!("the progress callback panics part way");
            }
        })
        .build_async()
        .wait();
    match r {
        Err(Error::Panicked(msg)) => assert!(msg.contains("part way"), "{msg}"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert_eq!(events.load(Ordering::SeqCst), 1);
    assert!(ctx.counters().bytes_allocated() > 0, "nothing was uploaded");
    ctx.wait_idle().unwrap();
    assert_eq!(ctx.gpu_allocated_bytes(), baseline);
}

//! The embedding API for desktop apps (issue #9) on the tiny fixture model: loading with
//! progress and cancellation (also on a worker thread), background generation with a channel
//! and cancellation within one token, several sessions on one model, the memory report and
//! releasing an idle session's cache, and sharing a host application's device and queue while
//! the host keeps rendering on it.

use crate::common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::golden::{Golden, fixtures_dir};
use gemma_wgpu::gpu::GpuContext;
use gemma_wgpu::{
    CAPTION_PROMPT, CancelToken, ChatSession, Error, FinishReason, GenerationEvent,
    GenerationHandle, GenerationOptions, LoadHandle, LoadProgress, LoadStage, MemoryReport, Model,
    ModelBuilder, Request,
};

fn dir() -> String {
    fixtures_dir()
        .join("e2b-like")
        .to_str()
        .unwrap()
        .to_string()
}

fn model() -> Option<Model> {
    static M: OnceLock<Option<Model>> = OnceLock::new();
    M.get_or_init(|| {
        let ctx = common::gpu()?;
        Some(
            ModelBuilder::new(dir())
                .with_context(ctx)
                .with_max_context(512)
                .build()
                .expect("load e2b-like"),
        )
    })
    .clone()
}

fn image() -> PathBuf {
    fixtures_dir().join("chat/image.png")
}

/// Greedy, `n` tokens, no stop tokens.
fn greedy(n: usize) -> GenerationOptions {
    GenerationOptions::default()
        .greedy()
        .with_max_new_tokens(n)
        .with_stop_tokens(Vec::new())
}

/// A text-only request, greedy, `n` tokens.
fn say(t: &str, n: usize) -> Request {
    Request::new(t).with_options(greedy(n))
}

fn ids(g: &Golden, name: &str) -> Vec<u32> {
    g.i64(name).data.iter().map(|&x| x as u32).collect()
}

#[test]
fn embedding_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Model>();
    send_sync::<ChatSession>();
    send_sync::<GenerationHandle>();
    send_sync::<LoadHandle>();
    send_sync::<LoadProgress>();
    send_sync::<MemoryReport>();
    send::<GenerationEvent>();
}

#[test]
fn loading_reports_progress_and_can_be_cancelled() {
    let Some(ctx) = common::gpu() else { return };
    let events: Arc<Mutex<Vec<LoadProgress>>> = Arc::default();
    let ev = events.clone();
    let model = ModelBuilder::new(dir())
        .with_context(ctx.clone())
        .with_max_context(64)
        .with_progress(move |p| ev.lock().unwrap().push(*p))
        .build()
        .unwrap();
    let ev = events.lock().unwrap().clone();
    let stages: Vec<LoadStage> = ev.iter().map(|p| p.stage).collect();
    assert_eq!(stages.first(), Some(&LoadStage::Locating));
    assert_eq!(stages.last(), Some(&LoadStage::Done));
    assert!(stages.contains(&LoadStage::Preparing));
    let up: Vec<&LoadProgress> = ev
        .iter()
        .filter(|p| p.stage == LoadStage::Uploading)
        .collect();
    let last = ev.last().unwrap();
    assert!(
        last.tensors_total > 10 && last.bytes_total > 100_000,
        "{last:?}"
    );
    assert_eq!(last.tensors_done, last.tensors_total);
    assert_eq!(last.bytes_done, last.bytes_total);
    assert_eq!(last.fraction(), 1.0);
    // One event before the first tensor and one after each.
    assert_eq!(up.len(), last.tensors_total + 1);
    assert_eq!(up[0].tensors_done, 0);
    for w in up.windows(2) {
        assert_eq!(w[1].tensors_done, w[0].tensors_done + 1);
        assert!(w[1].bytes_done > w[0].bytes_done);
        assert_eq!(w[1].bytes_total, w[0].bytes_total);
    }
    // The counted bytes are the checkpoint's bytes the model uses.
    assert!(last.bytes_total <= model.load_report().bytes_mapped);

    // Cancelled in the middle of the upload: Error::Cancelled, no model.
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    let r = ModelBuilder::new(dir())
        .with_context(ctx.clone())
        .with_cancel(cancel.clone())
        .with_progress(move |p| {
            s2.store(p.tensors_done, Ordering::SeqCst);
            if p.tensors_done == 5 {
                c2.cancel();
            }
        })
        .build();
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        5,
        "stopped right after the request"
    );
    assert!(!cancel.is_cancelled(), "the load consumed the request");

    // On a worker thread: polled like a UI frame loop, then as a future.
    let mut h = ModelBuilder::new(dir())
        .with_context(ctx.clone())
        .with_max_context(64)
        .build_async();
    let mut polls = 0;
    let m = loop {
        if let Some(r) = h.try_take() {
            break r.unwrap();
        }
        polls += 1;
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(polls > 0, "build_async returned before loading");
    assert_eq!(h.progress().stage, LoadStage::Done);
    assert_eq!(
        m.load_report().bytes_uploaded,
        model.load_report().bytes_uploaded
    );
    let m = pollster::block_on(
        ModelBuilder::new(dir())
            .with_context(ctx.clone())
            .build_async(),
    )
    .unwrap();
    assert!(m.tokenizer().is_some());
    // Cancelled through the handle (before the upload starts: the request is seen at once).
    let h = ModelBuilder::new(dir()).with_context(ctx).build_async();
    h.cancel();
    assert!(matches!(h.wait(), Err(Error::Cancelled)));
}

/// The golden greedy caption (16 tokens, transformers) and the text-only turn.
fn golden() -> Golden {
    Golden::load(fixtures_dir().join("chat/golden.safetensors"))
}

// Image prompts prefill slowly on lavapipe (~80 tokens): each test captions at most once and
// checks against the golden; the other checks use the short text-only prompt.
#[test]
fn background_generation_streams_and_cancels_within_one_token() {
    let Some(m) = model() else { return };
    let g = golden();

    // The caption on a worker thread: deltas, then Done with the reply; the same tokens as the
    // golden (and so as `Model::generate`, which tests/api.rs checks against it).
    let notified = Arc::new(AtomicUsize::new(0));
    let n2 = notified.clone();
    let h = m
        .spawn(Request::caption(image()).with_options(greedy(16)))
        .with_notify(move || {
            n2.fetch_add(1, Ordering::SeqCst);
        });
    let mut text = String::new();
    let reply = loop {
        match h.recv().expect("an event") {
            GenerationEvent::Delta(d) => text.push_str(&d),
            GenerationEvent::Done(r) => break r.unwrap(),
        }
    };
    assert!(h.recv().is_none(), "Done is the last event");
    assert!(h.try_recv().is_none());
    assert_eq!(reply.tokens, ids(&g, "caption_greedy"));
    assert_eq!(reply.prompt_ids, ids(&g, "caption_ids"));
    assert_eq!(text, reply.text);
    assert_eq!(h.tokens_generated(), 16);
    assert!(h.is_finished());
    assert!(notified.load(Ordering::SeqCst) >= 2);

    // Cancel after the first delta: at most one more token is generated.
    let want = ids(&g, "chat_turn1_greedy");
    let mut chat = m.chat().unwrap();
    let h = chat.spawn(say("Hello there.", 64));
    let at_cancel = match h.recv().unwrap() {
        GenerationEvent::Delta(_) => {
            let n = h.tokens_generated();
            h.cancel();
            n
        }
        GenerationEvent::Done(r) => panic!("ended before any text: {r:?}"),
    };
    let r = h.wait().unwrap();
    assert_eq!(r.finish, FinishReason::Cancelled);
    assert!(
        r.tokens.len() <= at_cancel + 1,
        "{} tokens after a cancel at {at_cancel}",
        r.tokens.len()
    );
    let n = r.tokens.len().min(want.len());
    assert_eq!(r.tokens[..n], want[..n]);

    // A chat session in the background; its reply joins the conversation. Polled with
    // try_recv like a UI frame loop; a cancel after the end is a no-op.
    let mut chat = m.chat().unwrap();
    let h = chat.spawn(say("Hello there.", 8));
    let reply = loop {
        match h.try_recv() {
            Some(GenerationEvent::Done(r)) => break r.unwrap(),
            Some(GenerationEvent::Delta(_)) => {}
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    h.cancel();
    assert_eq!(reply.tokens, want);
    assert_eq!(chat.messages().len(), 2);
    let r = chat.send(say("More.", 3)).unwrap();
    assert_eq!(
        r.tokens.len(),
        3,
        "a stale cancel request stopped the next turn"
    );
    // The session's own cancel token stops a background generation too.
    let h = chat.spawn(say("Again.", 64));
    assert!(matches!(h.recv(), Some(GenerationEvent::Delta(_))));
    chat.cancel_token().cancel();
    assert_eq!(h.wait().unwrap().finish, FinishReason::Cancelled);
    // Dropping the handle cancels the generation (dropped mid-generation: the worker holds the
    // session, so the next turn waits for it).
    let h = chat.spawn(say("Again.", 64));
    assert!(matches!(h.recv(), Some(GenerationEvent::Delta(_))));
    drop(h);
    let r = chat.send(say("More.", 2)).unwrap();
    assert_eq!(r.tokens.len(), 2);
    let msgs = chat.messages();
    assert_eq!(
        msgs.len(),
        10,
        "the stopped turns joined the conversation (cut short)"
    );
}

#[test]
fn several_sessions_share_one_model_and_report_memory() {
    let Some(ctx) = common::gpu() else { return };
    // A model of its own: the other tests' sessions would show in the shared model's report.
    let m = ModelBuilder::new(dir())
        .with_context(ctx)
        .with_max_context(512)
        .build()
        .unwrap();
    let g = golden();
    let base = m.memory_report();
    assert_eq!(base.sessions, 0);
    assert_eq!(base.gpu_total(), base.weights_gpu);
    assert_eq!(base.weights_gpu, m.load_report().bytes_uploaded);
    assert!(base.weights_gpu > 100_000);
    assert!(
        base.per_layer_table_host > 0,
        "the fixture keeps the PLE table on the host"
    );

    // Two sessions generating at the same time on two threads.
    let run = |m: Model| {
        std::thread::spawn(move || {
            let mut chat = m.chat().unwrap();
            let r = chat.send(say("Hello there.", 8)).unwrap();
            (chat, r)
        })
    };
    let (a, b) = (run(m.clone()), run(m.clone()));
    let (mut chat_a, ra) = a.join().unwrap();
    let (chat_b, rb) = b.join().unwrap();
    assert_eq!(ra.tokens, ids(&g, "chat_turn1_greedy"));
    assert_eq!(rb.tokens, ra.tokens);

    let rep = m.memory_report();
    assert_eq!(rep.sessions, base.sessions + 2);
    let (ma, mb) = (chat_a.memory(), chat_b.memory());
    assert_eq!(ma, mb);
    assert!(ma.kv_cache > 0 && ma.scratch > 0);
    assert_eq!(ma.image_features, 0);
    assert_eq!(rep.kv_cache_gpu, base.kv_cache_gpu + 2 * ma.kv_cache);
    assert_eq!(rep.scratch_gpu, base.scratch_gpu + 2 * ma.scratch);
    assert_eq!(
        rep.gpu_total(),
        rep.weights_gpu + rep.kv_cache_gpu + rep.scratch_gpu + rep.image_features_gpu
    );
    assert!(rep.to_string().contains("KV cache"));

    // Release the idle session's cache: the report drops, the conversation stays, and the next
    // turn prefills the whole conversation and matches the golden.
    let released = chat_a.release_cache();
    assert_eq!(released, ma.kv_cache + ma.scratch);
    assert!(!chat_a.has_cache());
    assert_eq!(chat_a.memory_bytes(), 0);
    assert_eq!(chat_a.cached_tokens(), 0);
    let rep2 = m.memory_report();
    assert_eq!(rep2.kv_cache_gpu, rep.kv_cache_gpu - ma.kv_cache);
    assert!(chat_a.set_last_reply(g.meta("chat_turn1_reply_text").unwrap().to_string()));
    let r2 = chat_a.send(say("And then?", 16)).unwrap();
    assert_eq!(r2.prompt_ids, ids(&g, "chat_turn2_ids"));
    assert_eq!(r2.prompt_tokens, r2.prompt_ids.len(), "all prefilled again");
    assert_eq!(r2.tokens, ids(&g, "chat_turn2_greedy"));
    assert!(chat_a.has_cache());
    assert_eq!(chat_a.memory(), ma);

    // Images are counted while a session holds them; dropped sessions leave the report.
    let mut chat_c = m.chat().unwrap();
    chat_c
        .send(
            Request::new(CAPTION_PROMPT)
                .with_image(image())
                .with_options(greedy(1)),
        )
        .unwrap();
    assert!(chat_c.memory().image_features > 0);
    assert_eq!(
        m.memory_report().image_features_gpu,
        base.image_features_gpu + chat_c.memory().image_features
    );
    drop((chat_a, chat_b, chat_c));
    assert_eq!(m.memory_report(), base);
}

/// A host application's device, created the way an eframe app of the README creates it.
fn host_device() -> Option<(wgpu::Adapter, wgpu::Device, wgpu::Queue)> {
    common::gpu()?;
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .ok()?;
    let (device, queue) =
        pollster::block_on(adapter.request_device(&GpuContext::device_descriptor(&adapter)))
            .ok()?;
    Some((adapter, device, queue))
}

/// The host's frame: clear a texture in a render pass, copy it to a buffer, read it back.
struct HostFrame {
    texture: wgpu::Texture,
    readback: wgpu::Buffer,
}

const HOST_SIZE: u32 = 64;

impl HostFrame {
    fn new(device: &wgpu::Device) -> Self {
        let texture = device.create_texture(&wgpu::TextureDescriptor {
            label: Some("host target"),
            size: wgpu::Extent3d {
                width: HOST_SIZE,
                height: HOST_SIZE,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba8Unorm,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("host readback"),
            size: (HOST_SIZE * HOST_SIZE * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        HostFrame { texture, readback }
    }

    /// Renders one frame cleared to a colour depending on `i`; returns whether the read-back
    /// pixels all have that colour.
    fn render(&self, device: &wgpu::Device, queue: &wgpu::Queue, i: u32) -> bool {
        let shade = (i % 200) as u8 + 20;
        let view = self.texture.create_view(&Default::default());
        let mut enc = device.create_command_encoder(&Default::default());
        {
            let _pass = enc.begin_render_pass(&wgpu::RenderPassDescriptor {
                label: Some("host clear"),
                color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                    view: &view,
                    depth_slice: None,
                    resolve_target: None,
                    ops: wgpu::Operations {
                        load: wgpu::LoadOp::Clear(wgpu::Color {
                            r: shade as f64 / 255.0,
                            g: 0.5,
                            b: 1.0,
                            a: 1.0,
                        }),
                        store: wgpu::StoreOp::Store,
                    },
                })],
                ..Default::default()
            });
        }
        enc.copy_texture_to_buffer(
            self.texture.as_image_copy(),
            wgpu::TexelCopyBufferInfo {
                buffer: &self.readback,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(HOST_SIZE * 4),
                    rows_per_image: None,
                },
            },
            wgpu::Extent3d {
                width: HOST_SIZE,
                height: HOST_SIZE,
                depth_or_array_layers: 1,
            },
        );
        queue.submit([enc.finish()]);
        let slice = self.readback.slice(..);
        // The callback may run inside another thread's poll (the engine polls the same device
        // from its worker), possibly after this thread's poll returned: wait for the callback
        // itself, not for the poll.
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r.is_ok());
        });
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("poll");
        assert!(rx.recv().expect("map callback dropped"), "map failed");
        let ok = {
            let data = slice.get_mapped_range().unwrap();
            data.chunks(4)
                .all(|px| px[0].abs_diff(shade) <= 1 && px[1].abs_diff(128) <= 1 && px[2] == 255)
        };
        self.readback.unmap();
        ok
    }
}

#[test]
fn host_keeps_rendering_on_the_shared_queue() {
    let Some((adapter, device, queue)) = host_device() else {
        return;
    };
    let g = golden();
    let ctx = GpuContext::from_host(&adapter, device.clone(), queue.clone());
    assert!(ctx.adapter_info().is_some());
    if let Some(own) = common::gpu() {
        assert_eq!(ctx.caps().subgroups, own.caps().subgroups);
        assert_eq!(ctx.caps().max_binding_size, own.caps().max_binding_size);
    }
    let m = ModelBuilder::new(dir())
        .with_context(ctx)
        .with_max_context(512)
        .build()
        .unwrap();
    // The host renders frames on the same queue while the engine generates on a worker.
    let frame = HostFrame::new(&device);
    let h = m.spawn(Request::caption(image()).with_options(greedy(16)));
    let mut frames = 0;
    let mut text = String::new();
    let reply = loop {
        assert!(
            frame.render(&device, &queue, frames),
            "host frame {frames} corrupted"
        );
        frames += 1;
        match h.try_recv() {
            Some(GenerationEvent::Delta(d)) => text.push_str(&d),
            Some(GenerationEvent::Done(r)) => break r.unwrap(),
            None => {}
        }
    };
    assert!(
        frames >= 2,
        "only {frames} host frames during the generation"
    );
    assert_eq!(
        reply.tokens,
        ids(&g, "caption_greedy"),
        "caption on the host device"
    );
    assert_eq!(text, reply.text);
    // And with the ModelBuilder::with_device form (no adapter info), text only.
    let m2 = ModelBuilder::new(dir())
        .with_device(device.clone(), queue.clone())
        .with_max_context(64)
        .build()
        .unwrap();
    assert_eq!(m2.context().adapter_name(), "host device");
    let r = m2.generate(say("Hello there.", 8)).unwrap();
    assert_eq!(r.tokens, ids(&g, "chat_turn1_greedy"));
    assert!(frame.render(&device, &queue, 7));
}

#[test]
fn a_batch_on_a_worker_thread_takes_requests_from_any_thread() {
    // The batch API from a UI's point of view: submit from two threads while the worker
    // decodes, a notify per reply, polling with try_recv, a cancel, and replies equal to
    // generate() alone.
    let Some(model) = model() else { return };
    let opts = |n: usize| {
        GenerationOptions::default()
            .greedy()
            .with_max_new_tokens(n)
            .with_stop_tokens(Vec::new())
    };
    let notified = Arc::new(AtomicUsize::new(0));
    let n2 = notified.clone();
    let batch = Arc::new(model.batch(2).unwrap().spawn().with_notify(move || {
        n2.fetch_add(1, Ordering::SeqCst);
    }));
    let texts = ["cat", "river blue", "seven", "garden light stone"];
    // Submitted first, so it runs in one slot while the short ones pass through the other.
    let long = batch.submit(Request::new("why").with_options(opts(400)));
    let mut ids = vec![batch.submit(Request::new(texts[0]).with_options(opts(5)))];
    let other = {
        let b = batch.clone();
        std::thread::spawn(move || {
            (1..4)
                .map(|i| b.submit(Request::new(texts[i]).with_options(opts(5))))
                .collect::<Vec<_>>()
        })
    };
    ids.extend(other.join().unwrap());
    let mut got = std::collections::BTreeMap::new();
    let t0 = std::time::Instant::now();
    while got.len() < 5 {
        match batch.try_recv() {
            Some((id, r)) => {
                if got.len() == 4 {
                    panic!("the cancelled request should be last");
                }
                got.insert(id, r);
                if got.len() == 4 {
                    batch.cancel(long);
                }
            }
            None => {
                assert!(t0.elapsed() < Duration::from_secs(600), "no reply");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if got.len() == 4 && !got.contains_key(&long) {
            let (id, r) = batch.recv().expect("the cancelled request's reply");
            got.insert(id, r);
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let want = model
            .generate(Request::new(texts[i]).with_options(opts(5)))
            .unwrap();
        let r = got[id].as_ref().unwrap();
        assert_eq!(
            (&r.tokens, &r.text),
            (&want.tokens, &want.text),
            "{}",
            texts[i]
        );
    }
    let r = got[&long].as_ref().unwrap();
    assert_eq!(r.finish, FinishReason::Cancelled);
    assert!(r.tokens.len() < 400);
    drop(batch); // joins the worker: every notify has run
    assert_eq!(notified.load(Ordering::SeqCst), 5, "one notify per reply");
}

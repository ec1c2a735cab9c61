//! The user-facing API on the tiny fixture model `tests/fixtures/e2b-like`, against the chat
//! golden `tests/fixtures/chat/golden.safetensors` (transformers greedy runs).

use crate::common;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};

use common::golden::{Golden, fixtures_dir};
use gemma_wgpu::gpu::reference;
use gemma_wgpu::{
    CAPTION_PROMPT, CancelToken, ChatSession, FinishReason, GenerationOptions, ImageInput, Model,
    ModelBuilder, Reply, ReplyStream, Request, Sampling,
};

fn model() -> Option<Model> {
    static M: OnceLock<Option<Model>> = OnceLock::new();
    M.get_or_init(|| {
        let ctx = common::gpu()?;
        Some(
            ModelBuilder::new(fixtures_dir().join("e2b-like").to_str().unwrap())
                .with_context(ctx)
                .with_max_context(1024)
                .build()
                .expect("load e2b-like"),
        )
    })
    .clone()
}

fn golden() -> Golden {
    Golden::load(fixtures_dir().join("chat/golden.safetensors"))
}

fn ids(g: &Golden, name: &str) -> Vec<u32> {
    g.i64(name).data.iter().map(|&x| x as u32).collect()
}

fn image() -> PathBuf {
    fixtures_dir().join("chat/image.png")
}

/// The greedy 16-token caption (computed once per test binary).
fn full_caption() -> Reply {
    static R: OnceLock<Reply> = OnceLock::new();
    R.get_or_init(|| {
        model()
            .unwrap()
            .generate(Request::caption(image()).with_options(greedy(16)))
            .unwrap()
    })
    .clone()
}

/// A short text-only one-shot prompt (no image: cheap).
fn hello(m: &Model, opts: &GenerationOptions) -> Reply {
    m.generate(Request::new("Hello there.").with_options(opts.clone()))
        .unwrap()
}

/// A text-only request, greedy, `n` tokens.
fn say(t: &str, n: usize) -> Request {
    Request::new(t).with_options(greedy(n))
}

/// The caption request of the golden, greedy, `n` tokens.
fn caption(n: usize) -> Request {
    Request::new(CAPTION_PROMPT)
        .with_image(image())
        .with_options(greedy(n))
}

/// Greedy, `n` tokens, no stop tokens (as the golden was generated).
fn greedy(n: usize) -> GenerationOptions {
    GenerationOptions::default()
        .greedy()
        .with_max_new_tokens(n)
        .with_stop_tokens(Vec::new())
}

#[test]
fn caption_and_ask_match_the_golden() {
    let Some(m) = model() else { return };
    let g = golden();
    let tok = m.tokenizer().unwrap();

    let r = full_caption();
    assert_eq!(r.prompt_ids, ids(&g, "caption_ids"), "caption prompt");
    assert_eq!(r.tokens, ids(&g, "caption_greedy"), "caption tokens");
    assert_eq!(r.finish, FinishReason::MaxTokens);
    assert_eq!(r.prompt_tokens, r.prompt_ids.len());
    assert_eq!(r.text, tok.decode(&r.tokens, true).unwrap());
    assert!(r.stats.submits > 0 && r.stats.dispatches > r.stats.submits);
    // The text form and a decoded-image input give the same.
    let img = image::open(image()).unwrap();
    let text = m
        .generate(Request::caption(ImageInput::image(img)).with_options(greedy(16)))
        .unwrap()
        .text;
    assert_eq!(text, r.text);

    let ask = || {
        Request::new("What is in the picture?")
            .with_image(image())
            .with_options(greedy(16))
    };
    let r = m.generate(ask()).unwrap();
    assert_eq!(r.prompt_ids, ids(&g, "ask_ids"), "ask prompt");
    assert_eq!(r.tokens, ids(&g, "ask_greedy"), "ask tokens");
    assert_eq!(m.generate(ask()).unwrap().text, r.text);
}

#[test]
fn second_chat_turn_reuses_the_cache() {
    let Some(m) = model() else { return };
    let g = golden();
    let mut chat = m.chat().unwrap();
    let r1 = chat.send(say("Hello there.", 8)).unwrap();
    assert_eq!(r1.prompt_ids, ids(&g, "chat_turn1_ids"));
    assert_eq!(r1.tokens, ids(&g, "chat_turn1_greedy"));

    // The golden's turn 2 renders transformers' decode of the reply (its byte-fallback garbage
    // decodes differently in the Rust tokenizer): use the same reply text.
    let reply_text = g.meta("chat_turn1_reply_text").unwrap().to_string();
    assert!(chat.set_last_reply(reply_text));
    let r2 = chat.send(say("And then?", 16)).unwrap();
    let want_ids = ids(&g, "chat_turn2_ids");
    assert_eq!(r2.prompt_ids, want_ids, "turn 2 prompt");
    // Turn 1's prompt came from the cache (the reply re-tokenizes differently, so the cache was
    // rewound to the common prefix).
    assert!(
        r2.prompt_tokens <= want_ids.len() - r1.prompt_ids.len(),
        "prefilled {} of {} tokens",
        r2.prompt_tokens,
        want_ids.len()
    );
    let logits = chat.last_prompt_logits().unwrap();
    let want = g.f32("chat_turn2_logits");
    let max = logits
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max <= 1e-3, "turn-2 last logits differ by {max}");
    assert_eq!(r2.tokens, ids(&g, "chat_turn2_greedy"), "turn 2 tokens");
    assert_eq!(chat.cached_tokens() + 1, chat.history().len());

    // Without the text edit: the reply tokens stay cached, the next turn extends them.
    let mut chat = m.chat().unwrap();
    chat.send(say("Hello there.", 8)).unwrap();
    let r = chat.send(say("Hi.", 2)).unwrap();
    assert!(r.prompt_tokens + r1.prompt_ids.len() <= r.prompt_ids.len());

    // A system prompt change is not a prefix extension: the cache is rewound to the common
    // prefix (`<bos><|turn>`) and the rest prefilled.
    chat.reset();
    assert_eq!(chat.cached_tokens(), 0);
    let r = chat.send(say("Hello there.", 8)).unwrap();
    assert_eq!(r.tokens, r1.tokens);
    chat.set_system(Some("Be brief.".into()));
    let r = chat.send(say("And then?", 4)).unwrap();
    assert_eq!(r.prompt_tokens, r.prompt_ids.len() - 2);
    assert_eq!(r.tokens.len(), 4);
}

#[test]
fn several_images_in_one_turn() {
    let Some(m) = model() else { return };
    let mut chat = m.chat().unwrap();
    let r = chat
        .send(
            Request::new("Compare.")
                .with_images([image(), image()])
                .with_options(greedy(2)),
        )
        .unwrap();
    let cfg = m.config();
    let boi = r
        .prompt_ids
        .iter()
        .filter(|&&t| t == cfg.boi_token_id)
        .count();
    assert_eq!(boi, 2);
    assert_eq!(r.tokens.len(), 2);
    // The images stay in the conversation: a text-only follow-up reuses the cache.
    let r2 = chat.send(say("And now?", 1)).unwrap();
    assert!(r2.prompt_tokens < r2.prompt_ids.len() - r.prompt_ids.len() + 2);
}

#[test]
fn stop_tokens_and_stop_strings_end_generation() {
    let Some(m) = model() else { return };
    let g = golden();
    let full = ids(&g, "caption_greedy");
    // Stop token: the 4th greedy token; generation ends there, the token included.
    let stop = full[3];
    let first = full.iter().position(|&t| t == stop).unwrap();
    let r = m
        .generate(Request::caption(image()).with_options(greedy(16).with_stop_tokens(vec![stop])))
        .unwrap();
    assert_eq!(r.tokens, full[..=first].to_vec());
    assert_eq!(r.finish, FinishReason::StopToken(stop));

    // Stop string: a piece from the middle of the full text; the text ends before it.
    let text = full_caption().text;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    assert!(chars.len() >= 4, "caption text too short: {text:?}");
    let at = chars[chars.len() / 2].0;
    let end = chars.get(chars.len() / 2 + 2).map_or(text.len(), |c| c.0);
    let needle = &text[at..end];
    let cut = text.find(needle).unwrap();
    let r = m
        .generate(Request::caption(image()).with_options(greedy(16).with_stop_string(needle)))
        .unwrap();
    assert_eq!(r.text, text[..cut]);
    assert_eq!(r.finish, FinishReason::StopString);
    assert!(r.tokens.len() <= 16);
}

/// A minimal executor for the async stream: polls, parking the thread between wake-ups.
fn block_on_stream(mut s: ReplyStream<'_>) -> Vec<String> {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut out = Vec::new();
    loop {
        match futures_core::Stream::poll_next(Pin::new(&mut s), &mut cx) {
            Poll::Ready(Some(item)) => out.push(item.unwrap()),
            Poll::Ready(None) => return out,
            Poll::Pending => std::thread::park_timeout(std::time::Duration::from_millis(50)),
        }
    }
}

#[test]
fn streamed_deltas_concatenate_to_the_text() {
    let Some(m) = model() else { return };
    let want = full_caption().text;

    let mut chat = m.chat().unwrap();
    let deltas: Vec<String> = chat.stream(caption(16)).map(|d| d.unwrap()).collect();
    assert!(deltas.iter().all(|d| !d.is_empty()));
    assert_eq!(deltas.concat(), want);

    let mut chat = m.chat().unwrap();
    let mut got = String::new();
    let mut stream = chat.stream(caption(16));
    for d in &mut stream {
        got.push_str(&d.unwrap());
    }
    let r = stream.into_reply().unwrap();
    assert_eq!(got, r.text);
    assert_eq!(r.text, want);

    let mut chat = m.chat().unwrap();
    let s = chat.stream(caption(16));
    assert_eq!(block_on_stream(s).concat(), want);
    // The async turn joined the conversation.
    assert_eq!(chat.messages().len(), 2);

    // The iterator's reply.
    let mut chat = m.chat().unwrap();
    let r = chat.stream(caption(16)).into_reply().unwrap();
    assert_eq!(r.text, want);
}

fn sampled(seed: u64) -> GenerationOptions {
    greedy(12)
        .with_sampling(Sampling::Sample {
            temperature: 1.5,
            top_k: 64,
            top_p: 1.0,
            min_p: 0.0,
        })
        .with_seed(seed)
}

#[test]
fn seeds_make_sampling_reproducible() {
    let Some(m) = model() else { return };
    let a = hello(&m, &sampled(1)).tokens;
    let b = hello(&m, &sampled(1)).tokens;
    let c = hello(&m, &sampled(2)).tokens;
    assert_eq!(a, b, "same seed, same tokens");
    assert_ne!(a, c, "different seeds gave the same 12 tokens");
}

#[test]
fn repetition_penalty_runs_on_the_gpu_like_the_reference() {
    let Some(m) = model() else { return };
    let penalty = 3.0;
    let mut chat = m.chat().unwrap();
    let r = chat
        .send(Request::new("Hello there.").with_options(greedy(4).with_repetition_penalty(penalty)))
        .unwrap();
    // The first token: the CPU reference penalty over the prompt ids, then argmax.
    let mut logits = chat.last_prompt_logits().unwrap();
    reference::repetition_penalty_ref(&mut logits, &r.prompt_ids, penalty);
    assert_eq!(r.tokens[0], reference::argmax_ref(&logits));
    // Later tokens: the generated ids join the penalised set.
    let plain = hello(&m, &greedy(4));
    assert_eq!(r.tokens.len(), plain.tokens.len());
}

#[test]
fn cancellation_stops_within_one_token() {
    let Some(m) = model() else { return };
    let full = full_caption();
    let mut chat = m.chat().unwrap();
    let token = chat.cancel_token();
    let mut deltas = 0;
    let mut stream = chat.stream(caption(16));
    for d in &mut stream {
        d.unwrap();
        deltas += 1;
        token.cancel();
    }
    let r = stream.into_reply().unwrap();
    assert_eq!(deltas, 1);
    assert_eq!(r.finish, FinishReason::Cancelled);
    assert!(r.tokens.len() < full.tokens.len());
    assert_eq!(r.tokens[..], full.tokens[..r.tokens.len()]);
    // The callback saw exactly the reply's text.
    assert!(!r.text.is_empty());
    assert!(!token.is_cancelled(), "the generation consumed the request");

    // Cancelled before the call: no token at all; the next call runs normally.
    let cancel = CancelToken::new();
    chat.set_cancel_token(cancel.clone());
    cancel.cancel();
    let r = chat.send(say("More.", 4)).unwrap();
    assert_eq!(r.tokens.len(), 0);
    assert_eq!(r.finish, FinishReason::Cancelled);
    let r = chat.send(say("More.", 4)).unwrap();
    assert_eq!(r.tokens.len(), 4);

    // Cancelling the stream after its first delta also stops.
    let mut chat = m.chat().unwrap();
    let mut stream = chat.stream(say("Hello there.", 16));
    stream.next().unwrap().unwrap();
    stream.cancel();
    let r = stream.into_reply().unwrap();
    assert_eq!(r.finish, FinishReason::Cancelled);
    assert!(r.tokens.len() < 16);
}

#[test]
fn errors_are_typed_and_clear() {
    let Some(m) = model() else { return };
    // A model directory without tokenizer files still loads (logits) but cannot caption.
    let ctx = common::gpu().unwrap();
    let bare = ModelBuilder::new(fixtures_dir().join("e4b-like").to_str().unwrap())
        .with_context(ctx)
        .build()
        .unwrap();
    assert!(bare.tokenizer().is_none());
    let e = bare.caption(image()).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    // A missing image file names the file.
    let e = m
        .generate(Request::caption("/no/such/image.png").with_options(greedy(1)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("image.png"), "{e}");
    // Unknown model names suggest known ones.
    let e = Model::from_pretrained("gemma-4-E2B-qat")
        .unwrap_err()
        .to_string();
    assert!(e.contains("did you mean"), "{e}");
}

#[test]
fn api_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Model>();
    send_sync::<ChatSession>();
    send_sync::<CancelToken>();
    send_sync::<Reply>();
    send_sync::<GenerationOptions>();
    send::<ReplyStream<'static>>();
    send_sync::<Request>();
}

/// A chat on the 31B-like model (bidirectional image blocks): the session's prefill chunk (8)
/// is raised to hold the image block, the second turn reuses the cached image turn, and its
/// last prompt logits and tokens equal a single prefill of the whole conversation.
#[test]
fn dense31_like_chat_reuses_the_cache_after_an_image_block() {
    let Some(ctx) = common::gpu() else { return };
    let dir = fixtures_dir().join("dense31-like");
    let m = ModelBuilder::new(dir.to_str().unwrap())
        .with_context(ctx)
        .with_max_context(512)
        .with_prefill_chunk(8)
        .build()
        .expect("load dense31-like");
    let image = dir.join("image.png");
    let mut chat = m.chat().unwrap();
    let r1 = chat
        .send(say("Describe.", 4).with_image(image.clone()))
        .unwrap();
    assert_eq!(r1.tokens.len(), 4);
    let r2 = chat.send(say("More.", 4)).unwrap();
    assert!(
        r2.prompt_tokens <= r2.prompt_ids.len() - r1.prompt_ids.len(),
        "turn 2 prefilled {} of {} tokens: the image turn was not reused",
        r2.prompt_tokens,
        r2.prompt_ids.len()
    );
    let patches = m.prepare_image_file(&image).unwrap();
    let whole = m.logits_and_greedy(&r2.prompt_ids, &[patches], 4).unwrap();
    let last = &whole.logits[(r2.prompt_ids.len() - 1) * whole.vocab..];
    let got = chat.last_prompt_logits().unwrap();
    let max = got
        .iter()
        .zip(last)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        max <= 1e-4,
        "reused-cache logits differ from one prefill by {max}"
    );
    assert_eq!(r2.tokens, whole.greedy, "turn 2 tokens");
}

#[test]
fn calls_after_spawn_wait_for_the_spawned_turns_even_with_dropped_handles() {
    // Found by examples/stress: a handle dropped before its worker thread had started let the
    // caller's next `truncate` run first, and the turn joined the conversation after it.
    let Some(model) = model() else { return };
    let mut chat = model.chat().unwrap();
    let first = chat.spawn(Request::new("cat").with_options(greedy(6)));
    drop(chat.spawn(Request::new("river blue").with_options(greedy(6))));
    // Both spawned turns come before this call, whatever their threads are doing now.
    let seen = chat.messages().len();
    assert_eq!(seen, 4, "messages() ran before the spawned turns ended");
    first.wait().unwrap();
    drop(chat.spawn(Request::new("seven").with_options(greedy(6))));
    assert_eq!(chat.truncate(0), 6);
    assert!(chat.messages().is_empty());
    // The rewound session answers as a fresh one.
    let a = chat
        .send(Request::new("garden").with_options(greedy(4)))
        .unwrap();
    let b = model
        .chat()
        .unwrap()
        .send(Request::new("garden").with_options(greedy(4)))
        .unwrap();
    assert_eq!((a.tokens, a.text), (b.tokens, b.text));
}

#[test]
fn truncate_rewinds_the_conversation_and_reuses_the_cache() {
    let Some(model) = model() else { return };
    let mut chat = model.chat().unwrap();
    let a = chat
        .send(Request::new("cat").with_options(greedy(4)))
        .unwrap();
    chat.send(Request::new("river blue").with_options(greedy(4)))
        .unwrap();
    assert_eq!(chat.messages().len(), 4);
    assert_eq!(chat.truncate(2), 2);
    assert_eq!(chat.truncate(9), 0);
    let c = chat
        .send(Request::new("seven garden").with_options(greedy(4)))
        .unwrap();
    // the same turns on a fresh session
    let mut fresh = model.chat().unwrap();
    let fa = fresh
        .send(Request::new("cat").with_options(greedy(4)))
        .unwrap();
    assert_eq!((fa.tokens, fa.prompt_ids), (a.tokens, a.prompt_ids));
    let want = fresh
        .send(Request::new("seven garden").with_options(greedy(4)))
        .unwrap();
    assert_eq!(c.tokens, want.tokens);
    assert_eq!(c.text, want.text);
    assert_eq!(c.prompt_ids, want.prompt_ids);
    // the rewound session prefilled only what follows the kept first turn
    assert!(
        c.prompt_tokens < want.prompt_ids.len() && c.prompt_tokens <= want.prompt_tokens,
        "prefilled {} of {} (fresh: {})",
        c.prompt_tokens,
        want.prompt_ids.len(),
        want.prompt_tokens
    );
    // truncating away an image's message drops its features
    let mut img = model.chat().unwrap();
    img.send(
        Request::new("what?")
            .with_image(fixtures_dir().join("chat/image.png"))
            .with_options(greedy(2)),
    )
    .unwrap();
    assert!(img.memory().image_features > 0);
    img.truncate(0);
    assert_eq!(img.memory().image_features, 0);
}

#[test]
fn dropped_sessions_and_models_give_their_gpu_memory_back() {
    // A device of its own: the allocator report counts everything on the device.
    if common::gpu().is_none() {
        return;
    }
    let ctx = gemma_wgpu::gpu::GpuContext::new().unwrap();
    let live = |ctx: &gemma_wgpu::gpu::GpuContext| {
        ctx.wait_idle().unwrap();
        ctx.gpu_allocated_bytes()
            .map(|b| b - ctx.pooled_arena_bytes())
    };
    let empty = live(&ctx);
    let model = ModelBuilder::new(fixtures_dir().join("e2b-like").to_str().unwrap())
        .with_context(ctx.clone())
        .with_max_context(256)
        .build()
        .unwrap();
    let turn = |image: bool| {
        let mut chat = model.chat().unwrap();
        let mut req = Request::new("cat").with_options(greedy(3));
        if image {
            req = req.with_image(fixtures_dir().join("chat/image.png"));
        }
        chat.send(req).unwrap();
        chat
    };
    drop(turn(true));
    let Some(base) = live(&ctx) else {
        eprintln!("the adapter reports no allocator figures: skipped");
        return;
    };
    for i in 0..3 {
        drop(turn(i == 1));
        let now = live(&ctx).unwrap();
        assert!(
            now <= base,
            "after session {i}: {now} bytes live, {base} before"
        );
        let _ = model
            .generate(Request::new("river").with_options(greedy(2)))
            .unwrap();
        let now = live(&ctx).unwrap();
        assert!(
            now <= base,
            "after one-shot {i}: {now} bytes live, {base} before"
        );
    }
    // release_cache gives the cache back while the session lives
    let mut chat = turn(false);
    let held = live(&ctx).unwrap();
    let released = chat.release_cache();
    let after = live(&ctx).unwrap();
    assert!(
        held - after >= released,
        "released {released} bytes but the device holds {held} -> {after}"
    );
    drop(chat);
    drop(model);
    assert_eq!(ctx.cached_bind_groups(), 0);
    let gone = live(&ctx).unwrap();
    assert!(
        gone <= empty.unwrap() + (1 << 20),
        "{gone} bytes live after the model was dropped, {empty:?} before it was loaded"
    );
}

#[test]
fn batched_requests_reply_exactly_as_each_alone() {
    // Continuous batching: 6 requests through 3 slots (so finished requests hand their slot to
    // queued ones mid-batch), of different prompt lengths, one with an image, greedy and
    // sampled, one that stops early and one submitted while the batch runs. Each reply must
    // be the reply `generate` gives the request alone.
    let Some(model) = model() else { return };
    let image = fixtures_dir().join("chat/image.png");
    let sampled = GenerationOptions::default()
        .with_max_new_tokens(7)
        .with_seed(99)
        .with_stop_tokens(Vec::new());
    let reqs = [
        Request::new("cat").with_options(greedy(6)),
        Request::new("river blue seven garden light stone").with_options(greedy(9)),
        Request::caption(image.clone()).with_options(greedy(5)),
        Request::new("why").with_options(greedy(2)),
        Request::new("quiet music").with_options(sampled.clone()),
        Request::new("salt window").with_options(greedy(4).with_stop_tokens(vec![6])),
    ];
    let alone: Vec<Reply> = reqs
        .iter()
        .map(|r| model.generate(r.clone()).unwrap())
        .collect();
    let mut batch = model.batch(3).unwrap();
    assert_eq!(batch.max_batch(), 3);
    let mut ids = Vec::new();
    for r in &reqs[..5] {
        ids.push(batch.submit(r.clone()));
    }
    let mut got = std::collections::BTreeMap::new();
    let (id, reply) = batch.next_reply().unwrap();
    got.insert(id, reply.unwrap());
    ids.push(batch.submit(reqs[5].clone())); // joins a running batch
    for (id, reply) in batch.by_ref() {
        assert!(got.insert(id, reply.unwrap()).is_none(), "reply {id} twice");
    }
    assert_eq!(batch.pending(), 0);
    assert_eq!(got.len(), reqs.len());
    for (i, id) in ids.iter().enumerate() {
        let (b, a) = (&got[id], &alone[i]);
        assert_eq!(
            (&b.tokens, &b.text, b.finish),
            (&a.tokens, &a.text, a.finish),
            "request {i}"
        );
        assert_eq!(b.prompt_ids, a.prompt_ids, "request {i}");
    }
    // Batched: fewer decode steps than decoded tokens.
    let decoded: usize = got.values().map(|r| r.tokens.len().saturating_sub(1)).sum();
    assert!(
        (batch.steps() as usize) < decoded,
        "{} steps for {decoded} decoded tokens",
        batch.steps()
    );
}

#[test]
fn batch_cancels_queued_and_running_requests_and_refuses_bad_sizes() {
    let Some(model) = model() else { return };
    assert!(model.batch(0).is_err());
    assert!(model.batch(17).is_err());
    let mut batch = model.batch(1).unwrap();
    let running = batch.submit(Request::new("cat").with_options(greedy(50)));
    let queued = batch.submit(Request::new("river").with_options(greedy(3)));
    let later = batch.submit(Request::new("blue").with_options(greedy(3)));
    batch.step();
    batch.step();
    assert_eq!(batch.running(), 1);
    assert!(batch.cancel(running));
    assert!(batch.cancel(queued));
    assert!(!batch.cancel(1234));
    let replies = batch.run_all();
    let ids: Vec<_> = replies.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![running, queued, later]);
    let r = replies[0].1.as_ref().unwrap();
    assert_eq!(r.finish, FinishReason::Cancelled);
    assert!(r.tokens.len() < 50 && !r.tokens.is_empty());
    assert!(
        replies[1].1.is_err(),
        "a cancelled queued request never runs"
    );
    let want = model
        .generate(Request::new("blue").with_options(greedy(3)))
        .unwrap();
    assert_eq!(replies[2].1.as_ref().unwrap().tokens, want.tokens);
}

//! Load and concurrency stress: many threads, each with its own chat session on ONE model, run a
//! scripted mix of turns — whole replies (`send`, `stream`, `spawn`), cancellations after a few
//! tokens, streams and background handles dropped mid-generation, `release_cache` while the
//! other threads generate, `reset`, and KV rewinds (`ChatSession::truncate` back a few turns, so
//! the next turn reuses the cache up to the common prefix). Some turns carry an image.
//!
//! Every thread's script comes from a seeded generator, so it can be replayed: the same scripts
//! are first run one thread after another with every turn run to completion (the reference),
//! then all at once with the interruptions. Checks, for every turn:
//! - a whole reply equals the reference's (tokens and text);
//! - an interrupted reply's tokens (or streamed text) are a prefix of the reference's, and the
//!   conversation is rewound to before that turn in both runs, so later turns stay comparable;
//! - no panic, no deadlock (a watchdog aborts after `--timeout` seconds without progress);
//! - `Model::memory_report` returns to its baseline once every session is gone.
//!
//! ```sh
//! cargo run --release --example stress -- --threads 8 --turns 1000
//! # replay one thread's script alone, printing every step
//! STRESS_TRACE=1 cargo run --release --example stress -- --threads 8 --turns 1000 --only 2
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use gemma_wgpu::{
    ChatSession, FinishReason, GenerationEvent, GenerationOptions, Model, ModelBuilder, Request,
};

#[derive(Parser, Debug)]
#[command(about = "Concurrency stress test over one model (see the file header)")]
struct Cli {
    /// Checkpoint directory (default: the tiny e2b-like test fixture).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Threads, each with its own session.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Turns in all (split over the threads).
    #[arg(long, default_value_t = 1000)]
    turns: usize,
    /// Maximum new tokens per reply.
    #[arg(long, default_value_t = 8)]
    max_tokens: usize,
    /// Seed of the scripts.
    #[arg(long, default_value_t = 17)]
    seed: u64,
    /// Image shown in some turns (default: the chat fixture's image).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Seconds without any finished turn after which the run counts as deadlocked.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Run only this thread's script (to replay a failure alone; `STRESS_TRACE=1` in the
    /// environment prints every step and its outcome).
    #[arg(long)]
    only: Option<usize>,
}

/// splitmix64: a tiny deterministic generator for the scripts.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// How a turn is run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Send,
    Stream,
    Spawn,
    /// Spawned, cancelled after this many text deltas.
    Cancel(usize),
    /// Streamed, the stream dropped after this many deltas.
    DropStream(usize),
    /// Spawned, the handle dropped after this many events.
    DropHandle(usize),
}

impl Mode {
    fn interrupted(self) -> bool {
        matches!(
            self,
            Mode::Cancel(_) | Mode::DropStream(_) | Mode::DropHandle(_)
        )
    }
}

/// One step of a thread's script.
#[derive(Debug, Clone)]
struct Step {
    /// Session housekeeping before the turn.
    release: bool,
    reset: bool,
    /// Rewind to this many messages first.
    rewind: Option<usize>,
    text: String,
    image: bool,
    seed: u64,
    greedy: bool,
    mode: Mode,
}

const WORDS: &[&str] = &[
    "cat", "river", "blue", "why", "seven", "garden", "light", "über", "東京", "stone", "fast",
    "quiet", "🙂", "window", "music", "salt",
];

fn script(seed: u64, thread: usize, turns: usize) -> Vec<Step> {
    let mut r = Rng(seed ^ (thread as u64).wrapping_mul(0x1000_0000_01b3));
    let mut messages = 0usize;
    (0..turns)
        .map(|_| {
            let reset = r.below(40) == 0;
            if reset {
                messages = 0;
            }
            let rewind = if messages >= 8 || (messages >= 2 && r.below(8) == 0) {
                let keep = 2 * r.below(messages as u64 / 2) as usize;
                messages = keep;
                Some(keep)
            } else {
                None
            };
            let words = 1 + r.below(6) as usize;
            let text = (0..words)
                .map(|_| WORDS[r.below(WORDS.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(" ");
            let k = 1 + r.below(3) as usize;
            let mode = match r.below(100) {
                0..10 => Mode::Cancel(k),
                10..18 => Mode::DropStream(k),
                18..22 => Mode::DropHandle(k - 1),
                22..50 => Mode::Stream,
                50..65 => Mode::Spawn,
                _ => Mode::Send,
            };
            if !mode.interrupted() {
                messages += 2;
            }
            Step {
                release: r.below(20) == 0,
                reset,
                rewind,
                text,
                image: r.below(10) == 0,
                seed: r.next(),
                greedy: r.below(4) == 0,
                mode,
            }
        })
        .collect()
}

/// What one turn produced: the tokens (when the API returns them) and the text.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    tokens: Option<Vec<u32>>,
    text: String,
}

#[derive(Default)]
struct Tally {
    whole: usize,
    cancels: usize,
    /// Cancellations that stopped a reply before its end.
    cancelled_early: usize,
    dropped_streams: usize,
    dropped_handles: usize,
    releases: usize,
    rewinds: usize,
    resets: usize,
    images: usize,
    /// Seconds of the whole replies: image encoding, prefill, decode; tokens generated.
    encode_s: f64,
    prefill_s: f64,
    decode_s: f64,
    tokens: usize,
}

impl Tally {
    fn note(&mut self, r: &gemma_wgpu::Reply) {
        self.encode_s += r.stats.image_encode_s;
        self.prefill_s += r.stats.prefill_s;
        self.decode_s += r.stats.decode_s;
        self.tokens += r.tokens.len();
    }
}

struct Ctx {
    model: Model,
    image: PathBuf,
    max_tokens: usize,
    /// Turns finished (all threads), for the watchdog.
    done: Arc<AtomicUsize>,
}

impl Ctx {
    fn request(&self, s: &Step) -> Request {
        let mut o: GenerationOptions = self
            .model
            .generation_defaults()
            .clone()
            .with_max_new_tokens(self.max_tokens)
            .with_seed(s.seed);
        if s.greedy {
            o = o.greedy();
        }
        let mut req = Request::new(s.text.clone()).with_options(o);
        if s.image {
            req = req.with_image(self.image.clone());
        }
        req
    }

    /// Runs one step; `full` runs every turn to completion (the reference).
    fn run(
        &self,
        chat: &mut ChatSession,
        s: &Step,
        full: bool,
        tally: &mut Tally,
    ) -> Result<Outcome, String> {
        if s.reset {
            chat.reset();
            tally.resets += 1;
        }
        if let Some(keep) = s.rewind {
            chat.truncate(keep);
            tally.rewinds += 1;
        }
        if s.release {
            chat.release_cache();
            tally.releases += 1;
            if chat.has_cache() {
                return Err("release_cache left the cache allocated".into());
            }
        }
        tally.images += usize::from(s.image);
        let before = chat.messages().len();
        let req = self.request(s);
        let mode = if full && s.mode.interrupted() {
            Mode::Send
        } else {
            s.mode
        };
        let err = |e: gemma_wgpu::Error| e.to_string();
        let out = match mode {
            Mode::Send => {
                let r = chat.send(req).map_err(err)?;
                tally.note(&r);
                Outcome {
                    tokens: Some(r.tokens),
                    text: r.text,
                }
            }
            Mode::Stream => {
                let mut st = chat.stream(req);
                let mut text = String::new();
                for d in st.by_ref() {
                    text.push_str(&d.map_err(err)?);
                }
                let r = st.into_reply().map_err(err)?;
                tally.note(&r);
                if r.text != text {
                    return Err(format!("streamed {text:?} but the reply is {:?}", r.text));
                }
                Outcome {
                    tokens: Some(r.tokens),
                    text,
                }
            }
            Mode::Spawn => {
                let r = chat.spawn(req).wait().map_err(err)?;
                tally.note(&r);
                Outcome {
                    tokens: Some(r.tokens),
                    text: r.text,
                }
            }
            Mode::Cancel(k) => {
                let h = chat.spawn(req);
                let mut deltas = 0;
                let mut done = None;
                while deltas < k {
                    match h.recv() {
                        Some(GenerationEvent::Delta(_)) => deltas += 1,
                        Some(GenerationEvent::Done(r)) => {
                            done = Some(r);
                            break;
                        }
                        None => break,
                    }
                }
                h.cancel();
                // A reply that ended before the cancel arrived is whole: still a prefix.
                let r = match done {
                    Some(r) => r,
                    None => h.wait(),
                }
                .map_err(err)?;
                tally.cancels += 1;
                tally.cancelled_early += usize::from(r.finish == FinishReason::Cancelled);
                Outcome {
                    tokens: Some(r.tokens),
                    text: r.text,
                }
            }
            Mode::DropStream(k) => {
                let mut st = chat.stream(req);
                let mut text = String::new();
                for d in st.by_ref().take(k) {
                    text.push_str(&d.map_err(err)?);
                }
                drop(st);
                tally.dropped_streams += 1;
                Outcome { tokens: None, text }
            }
            Mode::DropHandle(k) => {
                let h = chat.spawn(req);
                for _ in 0..k {
                    if h.recv().is_none() {
                        break;
                    }
                }
                drop(h);
                tally.dropped_handles += 1;
                Outcome {
                    tokens: None,
                    text: String::new(),
                }
            }
        };
        if s.mode.interrupted() {
            // Both runs go back to before this turn, so the scripts stay comparable.
            chat.truncate(before);
        } else {
            tally.whole += 1;
        }
        self.done.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    /// Runs a thread's script on a fresh session.
    fn thread(&self, steps: &[Step], full: bool) -> Result<(Vec<Outcome>, Tally), String> {
        let mut chat = self.model.chat().map_err(|e| e.to_string())?;
        let trace = std::env::var_os("STRESS_TRACE").is_some();
        let mut tally = Tally::default();
        let outs = steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let o = self
                    .run(&mut chat, s, full, &mut tally)
                    .map_err(|e| format!("turn {i} ({:?}): {e}", s.mode));
                if trace {
                    eprintln!(
                        "[{}] turn {i}: {s:?} -> {o:?}; messages {}",
                        if full { "ref" } else { "stress" },
                        chat.messages().len()
                    );
                }
                o
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((outs, tally))
    }
}

/// Checks a stress outcome against the reference's. An interrupted reply's tokens must be a
/// prefix of the reference's and its text the decode of those tokens (not always a prefix of
/// the reference's text: a byte-fallback run cut short decodes differently, e.g. `<0x76>`
/// alone is "v" but `<0x76><0xA6>` is two U+FFFD); a dropped stream's text, which never holds
/// an open byte run, must be a prefix of the reference's text.
fn compare(model: &Model, step: &Step, got: &Outcome, want: &Outcome) -> Result<(), String> {
    let Some(wt) = &want.tokens else {
        return Err("the reference has no tokens".into());
    };
    if step.mode.interrupted() {
        if let Some(gt) = &got.tokens {
            if !wt.starts_with(gt) {
                return Err(format!(
                    "interrupted tokens {gt:?} are not a prefix of {wt:?}"
                ));
            }
            let tok = model.tokenizer().ok_or("the model has no tokenizer")?;
            let text = tok.decode(gt, true).map_err(|e| e.to_string())?;
            if got.text != text {
                return Err(format!(
                    "interrupted reply text {:?} is not the decode of its tokens {text:?}",
                    got.text
                ));
            }
            return Ok(());
        }
        if !want.text.starts_with(&got.text) {
            return Err(format!(
                "interrupted text {:?} is not a prefix of {:?}",
                got.text, want.text
            ));
        }
        Ok(())
    } else if got != want {
        Err(format!("reply {got:?} differs from the reference {want:?}"))
    } else {
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = cli
        .model
        .clone()
        .unwrap_or_else(|| root.join("tests/fixtures/e2b-like"));
    let image = cli
        .image
        .clone()
        .unwrap_or_else(|| root.join("tests/fixtures/chat/image.png"));
    let model = ModelBuilder::new(dir.to_string_lossy())
        .with_max_context(1024)
        .build()?;
    eprintln!(
        "model {} on {}",
        dir.display(),
        model.context().adapter_name()
    );
    let per = cli.turns.div_ceil(cli.threads.max(1));
    let threads: Vec<usize> = match cli.only {
        Some(t) => vec![t],
        None => (0..cli.threads).collect(),
    };
    let scripts: Vec<Vec<Step>> = threads.iter().map(|&t| script(cli.seed, t, per)).collect();
    let ctx = Arc::new(Ctx {
        model: model.clone(),
        image,
        max_tokens: cli.max_tokens,
        done: Arc::new(AtomicUsize::new(0)),
    });

    // Watchdog: no finished turn for `timeout` seconds = a deadlock.
    {
        let done = ctx.done.clone();
        let timeout = cli.timeout;
        std::thread::spawn(move || {
            let mut last = (done.load(Ordering::Relaxed), Instant::now());
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let n = done.load(Ordering::Relaxed);
                if n != last.0 {
                    last = (n, Instant::now());
                } else if last.1.elapsed().as_secs() >= timeout {
                    eprintln!("DEADLOCK: no turn finished for {timeout} s (after {n} turns)");
                    std::process::exit(3);
                }
            }
        });
    }

    // Reference: one thread after another, every turn whole.
    let t0 = Instant::now();
    let mut reference = Vec::new();
    let mut rt = Tally::default();
    for s in &scripts {
        let (outs, t) = ctx.thread(s, true)?;
        reference.push(outs);
        rt.encode_s += t.encode_s;
        rt.prefill_s += t.prefill_s;
        rt.decode_s += t.decode_s;
        rt.tokens += t.tokens;
    }
    let ref_s = t0.elapsed().as_secs_f64();
    model.context().queue().submit([]);
    model.context().wait_idle()?;
    let base = model.memory_report();
    let base_alloc = model.context().gpu_allocated_bytes();
    let base_groups = model.context().cached_bind_groups();
    let base_arenas = model.context().pooled_arena_bytes();
    eprintln!(
        "reference: image encode {:.1} s, prefill {:.1} s, decode {:.1} s for {} tokens",
        rt.encode_s, rt.prefill_s, rt.decode_s, rt.tokens
    );
    eprintln!(
        "reference: {} turns in {ref_s:.1} s; memory after it: {} GPU bytes in {} sessions",
        per * scripts.len(),
        base.gpu_total(),
        base.sessions
    );

    // Stress: all threads at once, with the interruptions.
    let t1 = Instant::now();
    let handles: Vec<_> = scripts
        .iter()
        .cloned()
        .map(|s| {
            let ctx = ctx.clone();
            std::thread::spawn(move || ctx.thread(&s, false))
        })
        .collect();
    let mut total = Tally::default();
    let mut failures = Vec::new();
    for (t, h) in handles.into_iter().enumerate() {
        match h.join() {
            Err(_) => failures.push(format!("thread {} panicked", threads[t])),
            Ok(Err(e)) => failures.push(format!("thread {}: {e}", threads[t])),
            Ok(Ok((outs, tally))) => {
                for (i, (got, want)) in outs.iter().zip(&reference[t]).enumerate() {
                    if let Err(e) = compare(&model, &scripts[t][i], got, want) {
                        failures.push(format!("thread {} turn {i}: {e}", threads[t]));
                    }
                }
                total.whole += tally.whole;
                total.cancels += tally.cancels;
                total.cancelled_early += tally.cancelled_early;
                total.dropped_streams += tally.dropped_streams;
                total.dropped_handles += tally.dropped_handles;
                total.releases += tally.releases;
                total.rewinds += tally.rewinds;
                total.resets += tally.resets;
                total.images += tally.images;
            }
        }
    }
    let stress_s = t1.elapsed().as_secs_f64();
    // Flush queued buffer writes of turns cancelled before their first submit, then wait.
    model.context().queue().submit([]);
    model.context().wait_idle()?;
    let end = model.memory_report();
    let end_alloc = model.context().gpu_allocated_bytes();
    let end_groups = model.context().cached_bind_groups();
    let end_arenas = model.context().pooled_arena_bytes();
    println!(
        "stress: {} threads, {} turns in {stress_s:.1} s (reference {ref_s:.1} s single-threaded)",
        scripts.len(),
        per * scripts.len()
    );
    println!(
        "  whole replies {}, cancellations {} ({} before the reply's end), dropped streams {}, dropped handles {}, \
         release_cache {}, rewinds {}, resets {}, turns with an image {}",
        total.whole,
        total.cancels,
        total.cancelled_early,
        total.dropped_streams,
        total.dropped_handles,
        total.releases,
        total.rewinds,
        total.resets,
        total.images
    );
    println!(
        "  memory_report GPU bytes: baseline {} -> end {} (sessions {} -> {}); allocator bytes \
         {:?} -> {:?}; cached bind groups {base_groups} -> {end_groups}; pooled parameter arenas {base_arenas} -> \
         {end_arenas} bytes",
        base.gpu_total(),
        end.gpu_total(),
        base.sessions,
        end.sessions,
        base_alloc,
        end_alloc
    );
    if end.gpu_total() != base.gpu_total() || end.sessions != base.sessions {
        failures.push("GPU memory did not return to its baseline".into());
    }
    if let (Some(b), Some(e)) = (base_alloc, end_alloc) {
        // Concurrent recorders leave more parameter arenas in the pool: those are reused. A
        // residue of a few hundred bytes that does not grow with the turns (seen: 32 to 236 B
        // after 40 to 80 turns) is below what any leaked tensor of a turn would hold.
        let (e, b) = (e.saturating_sub(end_arenas), b.saturating_sub(base_arenas));
        if e > b + 4096 {
            failures.push(format!(
                "the allocator holds {} bytes more than at baseline (pooled arenas aside)",
                e - b
            ));
        }
    }
    if failures.is_empty() {
        println!("  every reply equals the single-threaded reference: OK");
        Ok(())
    } else {
        for f in failures.iter().take(20) {
            eprintln!("FAIL {f}");
        }
        Err(format!("{} failures", failures.len()).into())
    }
}

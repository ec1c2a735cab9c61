//! Captions images. Without `--out`: one caption per image, streamed to stdout. With
//! `--out captions.jsonl`: a folder captioner for large datasets (library:
//! `gemma_wgpu::captioner`) — one JSON line per image (key, path, caption, tokens, timings, or
//! the error), `--resume` skips what the file holds (a torn last line is repaired, so a killed
//! run loses at most the images in flight), `--batch B` captions B images at once (continuous
//! batching: one decode submit per step for all of them), `--shard I/N` takes a deterministic part of the list
//! (N processes, GPUs or machines split a dataset with no coordination; concatenate their
//! files), `--sidecar` writes `<image>.txt` next to each image, and a progress bar shows
//! images/s and the ETA. An image that fails is recorded (or reported on stderr) and the others
//! are still captioned; the exit status is then 1.
//!
//! ```sh
//! cargo run --release --example caption -- photo.jpg more/*.png
//! cargo run --release --example caption -- --model tests/fixtures/e2b-like tests/fixtures/chat/image.png
//! cargo run --release --example caption -- --greedy --max-tokens 64 --out captions.jsonl \
//!     --resume --shard 0/4 --sidecar --batch 8 ./dataset/
//! ```

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Parser;
use gemma_wgpu::captioner::{Captioner, ImageFile, Shard, list_images};
use gemma_wgpu::{CAPTION_PROMPT, ImageInput, Model, Request};

#[derive(Parser, Debug)]
#[command(about = "Caption images with Gemma 4 (streamed, or a resumable, shardable JSONL run)")]
struct Cli {
    #[command(flatten)]
    model: common::ModelArgs,
    /// The prompt.
    #[arg(long, default_value = CAPTION_PROMPT)]
    prompt: String,
    /// Write one JSON line per image here instead of streaming captions to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the lines already in `--out` and skip their images.
    #[arg(long, requires = "out")]
    resume: bool,
    /// Caption only part I of N of the file list (0-based), e.g. `--shard $SLURM_ARRAY_TASK_ID/8`.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<Shard>,
    /// Also write each caption to `<image>.txt` next to the image.
    #[arg(long)]
    sidecar: bool,
    /// Caption up to this many images at once (continuous batching, 1 to 16; with --out).
    #[arg(long, default_value_t = 1, requires = "out")]
    batch: usize,
    /// Image files or folders (walked recursively).
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    Shard::parse(s).map_err(|e| e.to_string())
}

fn main() -> Result<(), common::Failure> {
    let cli = Cli::parse();
    let files = list_images(&cli.images)?;
    let model = cli.model.load()?;
    match &cli.out {
        Some(out) => to_file(&cli, &model, out, &files),
        None => to_stdout(&cli, &model, &files),
    }
}

fn to_file(
    cli: &Cli,
    model: &Model,
    out: &Path,
    files: &[ImageFile],
) -> Result<(), common::Failure> {
    let captioner = Captioner::new(out)
        .prompt(cli.prompt.clone())
        .options(cli.model.options(model))
        .max_soft_tokens(cli.model.max_soft_tokens)
        .sidecar(cli.sidecar)
        .resume(cli.resume)
        .batch(cli.batch)
        .shard(cli.shard.unwrap_or_default());
    let shard = cli.shard.unwrap_or_default();
    let total = files.iter().filter(|f| shard.contains(&f.key)).count();
    let bar = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} images  {per_sec}  eta {eta}  {msg}",
        )
        .map_err(|e| e.to_string())?,
    );
    let mut failed = 0usize;
    let s = captioner.run(model, files, |r| {
        bar.inc(1);
        if let Some(e) = &r.error {
            failed += 1;
            bar.println(format!("{}: {e}", r.path));
            bar.set_message(format!("{failed} failed"));
        }
    })?;
    bar.finish();
    eprintln!(
        "{} images in the shard: {} captioned, {} already done, {} failed, {:.1} s ({:.2} images/s)",
        s.in_shard,
        s.captioned,
        s.skipped,
        s.failed,
        s.seconds,
        (s.captioned + s.failed) as f64 / s.seconds.max(1e-9)
    );
    if s.failed > 0 {
        return Err(format!(
            "{} image(s) failed (error lines in {})",
            s.failed,
            out.display()
        )
        .into());
    }
    Ok(())
}

fn to_stdout(cli: &Cli, model: &Model, files: &[ImageFile]) -> Result<(), common::Failure> {
    let opts = cli.model.options(model);
    let shard = cli.shard.unwrap_or_default();
    let files: Vec<&ImageFile> = files.iter().filter(|f| shard.contains(&f.key)).collect();
    let mut out = std::io::stdout();
    let n = files.len();
    let mut failed = Vec::new();
    for f in files {
        if n > 1 {
            writeln!(out, "== {}", f.path.display())?;
        }
        let mut img = ImageInput::path(&f.path);
        if let Some(b) = cli.model.max_soft_tokens {
            img = img.with_max_soft_tokens(b);
        }
        // A fresh session per image: captions are independent.
        let mut chat = model.chat()?;
        let req = Request::new(&cli.prompt)
            .with_image(img)
            .with_options(opts.clone());
        let mut stream = chat.stream(req);
        for delta in &mut stream {
            match delta {
                Ok(d) => {
                    out.write_all(d.as_bytes())?;
                    out.flush()?;
                }
                Err(e) => report(&mut failed, &f.path, e),
            }
        }
        match stream.into_reply() {
            Ok(r) => {
                writeln!(out)?;
                eprintln!(
                    "[{} prompt tokens, {} tokens, prefill {:.0} tok/s, decode {:.1} tok/s]",
                    r.prompt_tokens,
                    r.tokens.len(),
                    r.stats.prefill_tok_per_s,
                    r.stats.decode_tok_per_s
                );
            }
            // Already reported by the stream.
            Err(_) if failed.last() == Some(&f.path) => {}
            Err(e) => report(&mut failed, &f.path, e),
        }
    }
    if !failed.is_empty() {
        return Err(format!("{} of {n} image(s) failed", failed.len()).into());
    }
    Ok(())
}

/// Reports a failed image on stderr and remembers it.
fn report(failed: &mut Vec<PathBuf>, f: &Path, e: gemma_wgpu::Error) {
    eprintln!("{}: {e}", f.display());
    failed.push(f.to_path_buf());
}

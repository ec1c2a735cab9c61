//! Captions images: one caption per image, streamed to stdout. An image that fails is reported
//! on stderr and the others are still captioned; the exit status is then 1.
//!
//! ```sh
//! cargo run --release --example caption -- photo.jpg more/*.png
//! cargo run --release --example caption -- --model tests/fixtures/e2b-like tests/fixtures/chat/image.png
//! cargo run --release --example caption -- --greedy --max-tokens 64 ./holiday-photos/
//! ```

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Parser;
use gemma_wgpu::{CAPTION_PROMPT, Request};

#[derive(Parser, Debug)]
#[command(about = "Caption images with Gemma 4 (one caption per image, streamed)")]
struct Cli {
    #[command(flatten)]
    model: common::ModelArgs,
    /// The prompt.
    #[arg(long, default_value = CAPTION_PROMPT)]
    prompt: String,
    /// Image files or folders (every image file directly inside).
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"];

fn main() -> Result<(), common::Failure> {
    let cli = Cli::parse();
    let mut files = Vec::new();
    for p in &cli.images {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| EXTENSIONS.contains(&e.to_lowercase().as_str()))
                })
                .collect();
            v.sort();
            files.extend(v);
        } else {
            files.push(p.clone());
        }
    }
    let model = cli.model.load()?;
    let opts = cli.model.options(&model);
    let mut out = std::io::stdout();
    let n = files.len();
    let mut failed = Vec::new();
    for f in files {
        if files_len_gt_one(&cli.images) {
            writeln!(out, "== {}", f.display())?;
        }
        // A fresh session per image: captions are independent.
        let mut chat = model.chat()?;
        let req = Request::new(&cli.prompt)
            .with_image(f.clone())
            .with_options(opts.clone());
        let mut stream = chat.stream(req);
        for delta in &mut stream {
            match delta {
                Ok(d) => {
                    out.write_all(d.as_bytes())?;
                    out.flush()?;
                }
                Err(e) => report(&mut failed, &f, e),
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
            Err(_) if failed.last() == Some(&f) => {}
            Err(e) => report(&mut failed, &f, e),
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

fn files_len_gt_one(args: &[PathBuf]) -> bool {
    args.len() > 1 || args.iter().any(|p| p.is_dir())
}

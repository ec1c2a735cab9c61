//! Captions images: one caption per image, streamed to stdout.
//!
//! ```sh
//! cargo run --release --example caption -- photo.jpg more/*.png
//! cargo run --release --example caption -- --model tests/fixtures/e2b-like tests/fixtures/chat/image.png
//! cargo run --release --example caption -- --greedy --max-tokens 64 ./holiday-photos/
//! ```

mod common;

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use clap::Parser;
use gemma_wgpu::CAPTION_PROMPT;

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    for f in files {
        if files_len_gt_one(&cli.images) {
            writeln!(out, "== {}", f.display())?;
        }
        // A fresh session per image: captions are independent.
        let mut chat = model.chat()?;
        let r = chat.send_with(&cli.prompt, vec![f.clone().into()], &opts, |d| {
            let _ = out.write_all(d.as_bytes());
            let _ = out.flush();
            ControlFlow::Continue(())
        });
        match r {
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
            Err(e) => eprintln!("{}: {e}", f.display()),
        }
    }
    Ok(())
}

fn files_len_gt_one(args: &[PathBuf]) -> bool {
    args.len() > 1 || args.iter().any(|p| p.is_dir())
}

//! Interactive terminal chat. Commands: `/image PATH` adds an image to the next turn,
//! `/system TEXT` sets the system prompt, `/reset` starts over, `/quit` exits.
//! Ctrl-D also exits.
//!
//! ```sh
//! cargo run --release --example chat -- --model gemma-4-E2B-it-qat-4bit
//! ```

mod common;

use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::Parser;
use gemma_wgpu::{ImageInput, Request};

#[derive(Parser, Debug)]
#[command(about = "Chat with Gemma 4 in the terminal (/image PATH, /system TEXT, /reset, /quit)")]
struct Cli {
    #[command(flatten)]
    model: common::ModelArgs,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
}

fn main() -> Result<(), common::Failure> {
    let cli = Cli::parse();
    let model = cli.model.load()?;
    let opts = cli.model.options(&model);
    let mut chat = model.chat()?;
    chat.set_system(cli.system.clone());
    let mut images: Vec<ImageInput> = Vec::new();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    eprintln!("commands: /image PATH, /system TEXT, /reset, /quit");
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/quit" || line == "/exit" {
            break;
        }
        if line == "/reset" {
            chat.reset();
            images.clear();
            eprintln!("(conversation cleared)");
            continue;
        }
        if let Some(text) = line.strip_prefix("/system") {
            let text = text.trim();
            chat.set_system((!text.is_empty()).then(|| text.to_string()));
            continue;
        }
        if let Some(path) = line.strip_prefix("/image") {
            let p = PathBuf::from(path.trim());
            if p.is_file() {
                images.push(p.into());
                eprintln!("({} image(s) attached to the next turn)", images.len());
            } else {
                eprintln!("no such file: {}", p.display());
            }
            continue;
        }
        let req = Request::new(line)
            .with_images(std::mem::take(&mut images))
            .with_options(opts.clone());
        let mut stream = chat.stream(req);
        let mut failed = None;
        for delta in &mut stream {
            match delta {
                Ok(d) => {
                    out.write_all(d.as_bytes())?;
                    out.flush()?;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(stream);
        writeln!(out)?;
        if let Some(e) = failed {
            eprintln!("error: {e}");
        }
    }
    Ok(())
}

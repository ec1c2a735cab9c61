//! Visual question answering: an image and a question, the answer streamed to stdout.
//!
//! ```sh
//! cargo run --release --example vqa -- photo.jpg "How many people are there?"
//! ```

mod common;

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use gemma_wgpu::Request;

#[derive(Parser, Debug)]
#[command(about = "Ask Gemma 4 a question about an image (streamed answer)")]
struct Cli {
    #[command(flatten)]
    model: common::ModelArgs,
    /// The image file.
    image: PathBuf,
    /// The question.
    question: String,
}

fn main() -> Result<(), common::Failure> {
    let cli = Cli::parse();
    let model = cli.model.load()?;
    let opts = cli.model.options(&model);
    let mut chat = model.chat()?;
    let mut out = std::io::stdout();
    let req = Request::new(&cli.question)
        .with_image(cli.image.clone())
        .with_options(opts);
    for delta in chat.stream(req) {
        out.write_all(delta?.as_bytes())?;
        out.flush()?;
    }
    writeln!(out)?;
    Ok(())
}

//! Conformance dump: runs a prompt of token ids (fully expanded: each image as boi, n soft
//! tokens, eoi) through the model and writes the logits at every prompt position and, with
//! `--greedy N`, the greedy continuation through the KV cache, to a safetensors file.
//!
//! ```sh
//! cargo run --release --example logits -- --model DIR --token-ids 2,105,... --out out.safetensors
//! ```

#[path = "common/failure.rs"]
mod failure;

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Parser;
use gemma_wgpu::gpu::GpuContext;
use gemma_wgpu::model::{Model, ModelOptions};

#[derive(Parser, Debug)]
#[command(about = "Dump Gemma 4 logits (and a greedy continuation) for given token ids")]
struct Args {
    /// Model directory (config.json + safetensors; tokenizer files not needed).
    #[arg(long)]
    model: PathBuf,
    /// Comma-separated token ids, fully expanded.
    #[arg(long, value_delimiter = ',')]
    token_ids: Vec<u32>,
    /// Image files, in prompt order (preprocessed by the crate).
    #[arg(long)]
    image: Vec<PathBuf>,
    /// Pre-patchified images: safetensors with `pixel_values` [n, 3·p·p] f32 and
    /// `image_position_ids` [n, 2] i64 (x, y); repeat in prompt order.
    #[arg(long)]
    pixel_values: Vec<PathBuf>,
    /// Soft-token budget per image (70, 140, 280, 560, 1120).
    #[arg(long)]
    max_soft_tokens: Option<u32>,
    /// Greedy continuation length.
    #[arg(long, default_value_t = 0)]
    greedy: usize,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> Result<(), failure::Failure> {
    let args = Args::parse();
    if args.token_ids.is_empty() {
        return Err("--token-ids is empty".into());
    }
    let ctx = GpuContext::new()?;
    let model = Model::load_with(
        &ctx,
        &args.model,
        &ModelOptions {
            max_soft_tokens: args.max_soft_tokens,
            ..Default::default()
        },
    )?;
    let mut images = Vec::new();
    for p in &args.image {
        images.push(model.prepare_image_file(p)?);
    }
    for p in &args.pixel_values {
        images.push(model.prepare_pixel_values_file(p)?);
    }
    let out = model.logits_and_greedy(&args.token_ids, &images, args.greedy)?;
    let vocab = out.vocab;
    let rows = args.token_ids.len();
    let logits_bytes: Vec<u8> = bytemuck::cast_slice(&out.logits).to_vec();
    let greedy: Vec<i64> = out.greedy.iter().map(|&t| t as i64).collect();
    let greedy_bytes: Vec<u8> = bytemuck::cast_slice(&greedy).to_vec();
    let mut tensors = vec![(
        "logits".to_string(),
        safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            vec![rows, vocab],
            &logits_bytes,
        )?,
    )];
    if args.greedy > 0 {
        tensors.push((
            "greedy".to_string(),
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::I64,
                vec![greedy.len()],
                &greedy_bytes,
            )?,
        ));
    }
    let meta: HashMap<String, String> =
        HashMap::from([("adapter".to_string(), ctx.adapter_name())]);
    safetensors::serialize_to_file(tensors, Some(meta), &args.out)?;
    eprintln!(
        "wrote {} ({rows} positions x {vocab} logits, {} greedy tokens)",
        args.out.display(),
        greedy.len()
    );
    Ok(())
}

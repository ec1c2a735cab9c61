//! Command-line options shared by the caption, vqa, chat and desktop examples, and their error
//! type ([`Failure`]).

pub mod failure;

pub use failure::Failure;

use std::time::Instant;

use clap::Args;
use gemma_wgpu::{GenerationOptions, Model, ModelBuilder, Sampling};

/// Model and sampling options.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Registry name (models.toml), Hugging Face repo id, or checkpoint directory.
    #[arg(long, default_value = gemma_wgpu::checkpoint::registry::DEFAULT_MODEL)]
    pub model: String,
    /// Hugging Face revision (commit hash or tag) of a registry model, for a reproducible
    /// download (default: the models.toml entry's, else `main`).
    #[arg(long)]
    pub revision: Option<String>,
    /// Maximum new tokens per reply (default: the checkpoint's generation config).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Sampling temperature (default: the checkpoint's generation config).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Top-k (1..=64).
    #[arg(long)]
    pub top_k: Option<u32>,
    /// Top-p (nucleus).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Seed of the sampler.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Greedy decoding (overrides the sampling options).
    #[arg(long)]
    pub greedy: bool,
    /// Soft-token budget per image (70, 140, 280, 560, 1120).
    #[arg(long)]
    pub max_soft_tokens: Option<u32>,
}

impl ModelArgs {
    /// Loads the model (downloading a registry model if needed), reporting the time on stderr.
    pub fn load(&self) -> Result<Model, gemma_wgpu::Error> {
        let t = Instant::now();
        eprintln!("loading {} ...", self.model);
        let model = self.builder().build()?;
        eprintln!(
            "loaded in {:.1} s on {}",
            t.elapsed().as_secs_f64(),
            model.context().adapter_name()
        );
        Ok(model)
    }

    /// A [`ModelBuilder`] for the model with the revision and image budget options.
    pub fn builder(&self) -> ModelBuilder {
        let mut b = ModelBuilder::new(self.model.as_str());
        if let Some(r) = &self.revision {
            b = b.with_revision(r.as_str());
        }
        if let Some(n) = self.max_soft_tokens {
            b = b.with_max_soft_tokens(n);
        }
        b
    }

    /// The model's generation defaults with the command-line overrides.
    pub fn options(&self, model: &Model) -> GenerationOptions {
        let mut o = model.generation_defaults().clone();
        if let Some(n) = self.max_tokens {
            o = o.with_max_new_tokens(n);
        }
        if self.greedy {
            return o.greedy();
        }
        let any = self.temperature.is_some() || self.top_k.is_some() || self.top_p.is_some();
        if any {
            let (mut t, mut k, mut p, mut mp) = match o.sampling {
                Sampling::Sample {
                    temperature,
                    top_k,
                    top_p,
                    min_p,
                } => (temperature, top_k, top_p, min_p),
                Sampling::Greedy => (1.0, 64, 1.0, 0.0),
            };
            t = self.temperature.unwrap_or(t);
            k = self.top_k.unwrap_or(k).min(64);
            p = self.top_p.unwrap_or(p);
            mp = mp.max(0.0);
            o = o.with_sampling(Sampling::Sample {
                temperature: t,
                top_k: k,
                top_p: p,
                min_p: mp,
            });
        }
        if let Sampling::Sample { top_k, .. } = &mut o.sampling {
            *top_k = (*top_k).min(64);
        }
        if let Some(s) = self.seed {
            o = o.with_seed(s);
        }
        o
    }
}

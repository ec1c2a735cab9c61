//! Generation options: [`GenerationOptions`] (from `generation_config.json`, spec §7) and
//! [`Sampling`].

use std::path::Path;

use crate::error::{Error, Result};
use crate::gpu::ops::sample::SampleParams;

/// Default `max_new_tokens` when the checkpoint does not say.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 256;

/// Gemma 4 stop tokens used when neither generation_config.json nor config.json name any
/// (`<eos>` 1, `<turn|>` 106).
pub const DEFAULT_GEMMA4_STOP_TOKENS: [u32; 2] = [1, 106];

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Argmax.
    Greedy,
    /// Temperature sampling with the usual filters.
    Sample {
        /// Softmax temperature (`> 0`).
        temperature: f32,
        /// Keep the k most likely tokens; `0` = no top-k limit (the sampler's maximum).
        top_k: u32,
        /// Nucleus threshold; `1.0` disables it.
        top_p: f32,
        /// Drop tokens with probability `< min_p * p_max`; `0.0` disables it.
        min_p: f32,
    },
}

impl Sampling {
    /// Whether this is greedy decoding (also true for a non-positive temperature or top_k 1).
    pub fn is_greedy(&self) -> bool {
        match *self {
            Sampling::Greedy => true,
            Sampling::Sample {
                temperature, top_k, ..
            } => !(temperature.is_finite() && temperature > 0.0) || top_k == 1,
        }
    }

    /// The GPU sampler's parameters, with a host-drawn uniform number in `[0, 1)`.
    pub fn to_sample_params(&self, uniform: f32) -> SampleParams {
        match *self {
            Sampling::Greedy => SampleParams::default(),
            Sampling::Sample {
                temperature,
                top_k,
                top_p,
                min_p,
            } => SampleParams {
                temperature,
                top_k,
                top_p,
                min_p,
                uniform,
            },
        }
    }
}

/// Options of one generation call.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOptions {
    /// Upper bound on generated tokens.
    pub max_new_tokens: usize,
    /// Greedy or sampling.
    pub sampling: Sampling,
    /// Token ids that end generation (not emitted as text).
    pub stop_tokens: Vec<u32>,
    /// Strings that end generation; the text is cut before the first one (see `StopMatcher`).
    pub stop_strings: Vec<String>,
    /// Seed of the host random numbers fed to the sampler.
    pub seed: u64,
    /// Repetition penalty (CTRL style, as transformers); `1.0` = off.
    pub repetition_penalty: f32,
}

impl Default for GenerationOptions {
    /// Greedy, `DEFAULT_MAX_NEW_TOKENS`, Gemma 4 stop tokens, seed 0, no penalty.
    fn default() -> Self {
        GenerationOptions {
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            sampling: Sampling::Greedy,
            stop_tokens: DEFAULT_GEMMA4_STOP_TOKENS.to_vec(),
            stop_strings: Vec::new(),
            seed: 0,
            repetition_penalty: 1.0,
        }
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match crate::checkpoint::files::read_optional(path) {
        Ok(Some(text)) => parse_json(&text, path).map(Some),
        Ok(None) => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn parse_json(text: &str, path: &Path) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| {
        crate::checkpoint::LoadError::MalformedConfig {
            path: path.to_path_buf(),
            field: String::new(),
            reason: format!("not valid JSON: {e}"),
        }
        .into()
    })
}

/// `eos_token_id` as one id or a list.
fn ids_of(v: Option<&serde_json::Value>) -> Option<Vec<u32>> {
    match v? {
        serde_json::Value::Number(n) => n.as_u64().map(|i| vec![i as u32]),
        serde_json::Value::Array(a) => Some(
            a.iter()
                .filter_map(|x| x.as_u64().map(|i| i as u32))
                .collect(),
        ),
        _ => None,
    }
}

fn malformed(path: &Path, field: &str, reason: &str) -> Error {
    crate::checkpoint::LoadError::MalformedConfig {
        path: path.to_path_buf(),
        field: field.into(),
        reason: reason.into(),
    }
    .into()
}

impl GenerationOptions {
    /// Defaults from `dir/generation_config.json` (`do_sample`, `temperature`, `top_k`, `top_p`,
    /// `min_p`, `repetition_penalty`, `max_new_tokens`, `eos_token_id` → `stop_tokens`).
    ///
    /// Without the file: greedy, `DEFAULT_MAX_NEW_TOKENS`, stop tokens from config.json's
    /// `eos_token_id` (top level, else `text_config`), else `DEFAULT_GEMMA4_STOP_TOKENS`.
    /// Missing fields take transformers' defaults (temperature 1, top_k 50, top_p 1, min_p 0).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg = read_json(&cfg_path)?;
        let path = dir.join("generation_config.json");
        let read = crate::checkpoint::files::read_optional(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_sources(cfg.as_ref(), read.as_deref(), &path)
    }

    /// [`from_dir`](Self::from_dir) on the parsed `config.json` (`None`: no such file) and the
    /// text of `generation_config.json` (`None`: no such file), as read by
    /// `Checkpoint::open`; `path` names the latter in errors.
    pub fn from_sources(
        config: Option<&serde_json::Value>,
        generation_config: Option<&str>,
        path: &Path,
    ) -> Result<Self> {
        let mut opts = GenerationOptions::default();
        let cfg_eos = config.and_then(|c| {
            ids_of(c.get("eos_token_id"))
                .or_else(|| ids_of(c.get("text_config").and_then(|t| t.get("eos_token_id"))))
        });
        if let Some(eos) = cfg_eos {
            opts.stop_tokens = eos;
        }
        let Some(text) = generation_config else {
            return Ok(opts);
        };
        let g = parse_json(text, path)?;
        let f32_of = |key: &str, default: f32| -> Result<f32> {
            match g.get(key) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(v) => v
                    .as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| malformed(path, key, "expected a number")),
            }
        };
        let u64_of = |key: &str| -> Result<Option<u64>> {
            match g.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| malformed(path, key, "expected a non-negative integer")),
            }
        };
        let do_sample = match g.get("do_sample") {
            None | Some(serde_json::Value::Null) => false,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| malformed(path, "do_sample", "expected true or false"))?,
        };
        if do_sample {
            opts.sampling = Sampling::Sample {
                temperature: f32_of("temperature", 1.0)?,
                top_k: u64_of("top_k")?.map_or(50, |k| k.min(u32::MAX as u64) as u32),
                top_p: f32_of("top_p", 1.0)?,
                min_p: f32_of("min_p", 0.0)?,
            };
        }
        opts.repetition_penalty = f32_of("repetition_penalty", 1.0)?;
        if let Some(n) = u64_of("max_new_tokens")? {
            opts.max_new_tokens = n as usize;
        }
        if let Some(eos) = ids_of(g.get("eos_token_id")) {
            opts.stop_tokens = eos;
        }
        Ok(opts)
    }

    /// Sets `max_new_tokens`.
    pub fn with_max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = n;
        self
    }

    /// Greedy decoding.
    pub fn greedy(mut self) -> Self {
        self.sampling = Sampling::Greedy;
        self
    }

    /// Sets the sampling mode.
    pub fn with_sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }

    fn sample_fields(&mut self) -> (&mut f32, &mut u32, &mut f32, &mut f32) {
        if let Sampling::Greedy = self.sampling {
            self.sampling = Sampling::Sample {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
            };
        }
        match &mut self.sampling {
            Sampling::Sample {
                temperature,
                top_k,
                top_p,
                min_p,
            } => (temperature, top_k, top_p, min_p),
            Sampling::Greedy => unreachable!("set to Sample above"),
        }
    }

    /// Sampling with this temperature (switches greedy to sampling with no other filter).
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        *self.sample_fields().0 = temperature;
        self
    }

    /// Sampling with this top-k (switches greedy to sampling at temperature 1).
    pub fn with_top_k(mut self, top_k: u32) -> Self {
        *self.sample_fields().1 = top_k;
        self
    }

    /// Sampling with this top-p (switches greedy to sampling at temperature 1).
    pub fn with_top_p(mut self, top_p: f32) -> Self {
        *self.sample_fields().2 = top_p;
        self
    }

    /// Sampling with this min-p (switches greedy to sampling at temperature 1).
    pub fn with_min_p(mut self, min_p: f32) -> Self {
        *self.sample_fields().3 = min_p;
        self
    }

    /// Sets the repetition penalty (`1.0` = off).
    pub fn with_repetition_penalty(mut self, penalty: f32) -> Self {
        self.repetition_penalty = penalty;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Replaces the stop tokens.
    pub fn with_stop_tokens(mut self, ids: Vec<u32>) -> Self {
        self.stop_tokens = ids;
        self
    }

    /// Adds a stop string.
    pub fn with_stop_string(mut self, s: impl Into<String>) -> Self {
        self.stop_strings.push(s.into());
        self
    }

    /// Replaces the stop strings.
    pub fn with_stop_strings(mut self, s: Vec<String>) -> Self {
        self.stop_strings = s;
        self
    }

    /// Whether `id` is a stop token.
    pub fn is_stop_token(&self, id: u32) -> bool {
        self.stop_tokens.contains(&id)
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        if let Sampling::Sample {
            temperature,
            top_p,
            min_p,
            ..
        } = self.sampling
        {
            if !(temperature.is_finite() && temperature >= 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "temperature must be finite and >= 0, got {temperature}"
                )));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(Error::InvalidArgument(format!(
                    "top_p must be in (0, 1], got {top_p}"
                )));
            }
            if !(0.0..=1.0).contains(&min_p) {
                return Err(Error::InvalidArgument(format!(
                    "min_p must be in [0, 1], got {min_p}"
                )));
            }
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "repetition_penalty must be finite and > 0, got {}",
                self.repetition_penalty
            )));
        }
        Ok(())
    }
}

//! Token selection on the GPU: the repetition penalty (in place on the logits, over a
//! preallocated buffer of the distinct ids seen so far) and `argmax` or `sample` with a
//! host-drawn uniform number from a seeded RNG, recorded into the decode step's submit.

use crate::error::Result;
use crate::gpu::{GpuTensor, Recorder, ops};
use crate::model::Model;
use crate::model::text::Selection;

use super::{GenerationOptions, Sampling};

/// splitmix64: the host RNG of the sampler's uniform numbers (seeded per generation).
#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 24 bits.
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The selection state of one generation.
pub(crate) struct Sampler {
    sampling: Sampling,
    penalty: f32,
    rng: SplitMix,
    /// `seen[id]`: id already in the penalty buffer (only with a penalty).
    seen: Vec<bool>,
    n_seen: usize,
}

impl Sampler {
    /// A sampler for `opts`; with a repetition penalty, the distinct ids of `prompt` are
    /// written to `penalty_ids` (HF applies the penalty to every id of the sequence, prompt
    /// included).
    pub(crate) fn new(
        model: &Model,
        opts: &GenerationOptions,
        prompt: &[u32],
        penalty_ids: &GpuTensor,
    ) -> Self {
        let mut s = Sampler {
            sampling: opts.sampling,
            penalty: opts.repetition_penalty,
            rng: SplitMix(opts.seed),
            seen: Vec::new(),
            n_seen: 0,
        };
        if s.penalty != 1.0 {
            let vocab = model.config().text_config.vocab_size;
            s.seen = vec![false; vocab];
            let mut distinct = Vec::new();
            for &t in prompt {
                if let Some(seen) = s.seen.get_mut(t as usize)
                    && !*seen
                {
                    *seen = true;
                    distinct.push(t);
                }
            }
            model
                .context()
                .write(&penalty_ids.buffer, 0, bytemuck::cast_slice(&distinct));
            s.n_seen = distinct.len();
        }
        s
    }

    /// Records the penalty and the token selection for the logits row of `sel`.
    pub(crate) fn record(
        &mut self,
        rec: &mut Recorder,
        sel: &Selection<'_>,
        penalty_ids: &GpuTensor,
    ) -> Result<()> {
        if self.n_seen > 0 {
            ops::repetition_penalty(rec, sel.logits, penalty_ids, self.n_seen, self.penalty)?;
        }
        if self.sampling.is_greedy() {
            ops::argmax(rec, sel.logits, sel.out, sel.scratch)?;
        } else {
            let params = self.sampling.to_sample_params(self.rng.uniform());
            ops::sample(rec, sel.logits, sel.out, &params, sel.scratch)?;
        }
        Ok(())
    }

    /// Adds a generated id to the penalised set.
    pub(crate) fn observe(&mut self, model: &Model, id: u32, penalty_ids: &GpuTensor) {
        if self.n_seen > 0
            && let Some(s) = self.seen.get_mut(id as usize)
            && !*s
            && self.n_seen < penalty_ids.numel()
        {
            *s = true;
            model.context().write(
                &penalty_ids.buffer,
                (self.n_seen * 4) as u64,
                bytemuck::bytes_of(&id),
            );
            self.n_seen += 1;
        }
    }
}

//! What a generation returns: [`Reply`], [`FinishReason`], [`GenerationStats`].

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced this stop token (e.g. `<turn|>`); it is in [`Reply::tokens`] but
    /// not in the text.
    StopToken(u32),
    /// A stop string appeared; the text ends before it.
    StopString,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The [`CancelToken`](super::CancelToken) was cancelled, or the consumer stopped the stream.
    Cancelled,
    /// The KV cache is full (raise [`ModelBuilder::with_max_context`](crate::ModelBuilder::with_max_context)).
    ContextFull,
}

/// Throughput and GPU work of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationStats {
    /// Prompt tokens prefilled per second (image encoding excluded).
    pub prefill_tok_per_s: f64,
    /// Generated tokens per second after the first token.
    pub decode_tok_per_s: f64,
    /// Seconds spent encoding images (preparing them and the tower's GPU work; in a
    /// [`Batch`](crate::Batch), the encode this request's images took part in).
    pub image_encode_s: f64,
    /// Seconds spent prefilling.
    pub prefill_s: f64,
    /// Seconds spent decoding.
    pub decode_s: f64,
    /// Compute dispatches recorded on the model's GPU context during the call (all threads).
    pub dispatches: u64,
    /// Queue submits on the model's GPU context during the call (all threads).
    pub submits: u64,
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The reply text (special tokens skipped, cut before a stop string).
    pub text: String,
    /// Every generated token id, including a final stop token.
    pub tokens: Vec<u32>,
    /// The full prompt of this turn (the whole conversation, images expanded).
    pub prompt_ids: Vec<u32>,
    /// Prompt tokens actually prefilled: the suffix the KV cache did not hold yet.
    pub prompt_tokens: usize,
    /// Why generation ended.
    pub finish: FinishReason,
    /// Timings and counters.
    pub stats: GenerationStats,
}

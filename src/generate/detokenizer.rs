//! Incremental, UTF-8-safe detokenization of generated token ids ([`Detokenizer`]).

use std::sync::Arc;

use crate::error::Result;
use crate::prompt::tokenizer::Tokenizer;

/// Incremental detokenizer: turns a stream of token ids into text deltas that are always
/// complete UTF-8 (a character split over byte-fallback tokens such as `<0xE2>` is held back
/// until it is complete).
///
/// It decodes a window of recent tokens twice — without and with the pending ones — and emits
/// the difference once it no longer ends in U+FFFD (the decoder's mark for an incomplete byte
/// sequence) nor in a byte-fallback token (`<0xNN>`): the decoder turns a whole run of byte
/// tokens into U+FFFDs when the run is not valid UTF-8, so a character the run completed (`é`
/// from `<0xC3><0xA9>`) is taken back when a stray continuation byte (`<0xA9>`) follows; the
/// run is emitted when a token of another kind ends it, or by `finish`. A token that decodes
/// to nothing (a skipped special token) does not end a run: the decoder never sees it, so the
/// bytes on either side of it form one run. The concatenated deltas
/// plus [`finish`](Self::finish) equal the decode of all ids.
#[derive(Debug, Clone)]
pub struct Detokenizer {
    tokenizer: Arc<Tokenizer>,
    skip_special: bool,
    ids: Vec<u32>,
    /// Start of the decode window.
    prefix_offset: usize,
    /// Tokens before this index have been emitted.
    read_offset: usize,
    text: String,
    /// The last token that decodes to something is a byte-fallback token (a run is open).
    in_byte_run: bool,
}

impl Detokenizer {
    /// A detokenizer that skips special tokens.
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        Detokenizer {
            tokenizer,
            skip_special: true,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            text: String::new(),
            in_byte_run: false,
        }
    }

    /// Whether special tokens (`<turn|>`, `<|channel>`, ...) are dropped (default true).
    pub fn with_skip_special(mut self, skip: bool) -> Self {
        self.skip_special = skip;
        self
    }

    /// Appends a token; returns the new text when the pending tokens form complete UTF-8.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        if self.is_byte_token(id) {
            self.in_byte_run = true;
        } else if !self.tokenizer.decode(&[id], self.skip_special)?.is_empty() {
            self.in_byte_run = false;
        }
        if self.in_byte_run {
            return Ok(None);
        }
        let prefix = self.tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        if full.len() <= prefix.len() || full.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let delta = match full.strip_prefix(prefix.as_str()) {
            Some(d) => d.to_string(),
            // The decoder rewrote the window's start (should not happen with Gemma's decoder):
            // emit the part past the common prefix length if that is a character boundary.
            None => match full.get(prefix.len()..) {
                Some(d) => d.to_string(),
                None => return Ok(None),
            },
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        self.text.push_str(&delta);
        Ok(Some(delta))
    }

    /// Whether `id` is a byte-fallback token (`<0x00>` … `<0xFF>`).
    fn is_byte_token(&self, id: u32) -> bool {
        self.tokenizer.id_to_token(id).is_some_and(|t| {
            t.len() == 6
                && t.starts_with("<0x")
                && t.ends_with('>')
                && t.as_bytes()[3..5].iter().all(u8::is_ascii_hexdigit)
        })
    }

    /// Flushes what is pending (an incomplete sequence decodes to U+FFFD here) and returns it.
    pub fn finish(&mut self) -> Result<String> {
        if self.read_offset == self.ids.len() {
            return Ok(String::new());
        }
        let prefix = self.tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        let delta = full
            .strip_prefix(prefix.as_str())
            .or_else(|| full.get(prefix.len()..))
            .unwrap_or_default()
            .to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        self.in_byte_run = false;
        self.text.push_str(&delta);
        Ok(delta)
    }

    /// All text emitted so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Forgets everything (for a new reply).
    pub fn reset(&mut self) {
        self.ids.clear();
        self.prefix_offset = 0;
        self.read_offset = 0;
        self.text.clear();
        self.in_byte_run = false;
    }
}

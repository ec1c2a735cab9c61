//! The text tokenizer: a thin wrapper around Hugging Face `tokenizers` reading the checkpoint's
//! `tokenizer.json` (spec §6).
//!
//! Gemma 4 ships a byte-fallback BPE with `add_bos_token = false`: the chat template writes
//! `<bos>` itself, so [`Tokenizer::encode`] never adds special tokens. Special-token strings that
//! appear in the text (`<|turn>`, `<|image|>`, ...) are matched as whole tokens.

use std::path::Path;

use crate::error::{Error, Result};
use crate::checkpoint::LoadError;

fn load_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!(
        "cannot load {}: {e}; the file is corrupt or was written by an incompatible tokenizers \
         version: re-download it",
        path.display()
    ))
}

/// A tokenizer loaded from a checkpoint directory. Cheap to share behind an `Arc` (`Send + Sync`).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`.
    ///
    /// A missing file is a [`LoadError::MissingFile`] naming the file; a file that does not
    /// parse is an [`Error::Tokenizer`] naming it.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(LoadError::MissingFile {
                path,
                hint: "the checkpoint directory needs tokenizer.json (the Hugging Face fast \
                       tokenizer) next to config.json; download the whole model repository \
                       (see models.toml), or convert the SentencePiece model with transformers"
                    .into(),
            }
            .into());
        }
        Self::from_file(&path)
    }

    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| load_err(path, e))?;
        Ok(Tokenizer { inner })
    }

    /// Parses the contents of a `tokenizer.json` file (as read by
    /// `Checkpoint::open`); `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| load_err(path, e))?;
        Ok(Tokenizer { inner })
    }

    /// Wraps an already built `tokenizers::Tokenizer`.
    pub fn from_tokenizer(inner: tokenizers::Tokenizer) -> Self {
        Tokenizer { inner }
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Encodes `text` without adding special tokens (no `<bos>`); special-token strings inside
    /// the text map to their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes `ids` to text; `skip_special` drops special tokens (`<bos>`, `<turn|>`, ...).
    ///
    /// Byte-fallback tokens that do not form complete UTF-8 decode to U+FFFD; for streaming use
    /// the streaming detokenizer.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let vocab = self.vocab_size();
        if let Some(&bad) = ids.iter().find(|&&id| (id as usize) >= vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(format!("decoding failed: {e}")))
    }

    /// The id of a token string (`"<|turn>"`, `"<eos>"`, ...), including added tokens.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens (one more than the largest id).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

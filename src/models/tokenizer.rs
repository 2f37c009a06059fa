//! Tokenizers from `tokenizer.json` (the HF fast-tokenizer format) through the `tokenizers`
//! crate, with the special tokens named in `tokenizer_config.json`.

use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// A tokenizer and its special tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id.
    pub eos_token_id: Option<u32>,
    /// Padding token id.
    pub pad_token_id: Option<u32>,
}

impl Tokenizer {
    /// Loads `tokenizer.json` (required) and `tokenizer_config.json` (optional) from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        if !file.is_file() {
            return Err(Error::file(
                &file,
                "missing: the model directory needs a tokenizer.json",
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(&file).map_err(|e| Error::file(&file, e))?;
        let config_file = dir.join("tokenizer_config.json");
        let config: Value = if config_file.is_file() {
            let text =
                std::fs::read_to_string(&config_file).map_err(|e| Error::file(&config_file, e))?;
            serde_json::from_str(&text).map_err(|e| Error::file(&config_file, e))?
        } else {
            Value::Null
        };
        // Special tokens are strings or `{"content": ...}` objects in tokenizer_config.json.
        let special = |key: &str| -> Option<u32> {
            let v = config.get(key)?;
            let text = v
                .as_str()
                .or_else(|| v.get("content").and_then(Value::as_str))?;
            inner.token_to_id(text)
        };
        Ok(Self {
            bos_token_id: special("bos_token"),
            eos_token_id: special("eos_token"),
            pad_token_id: special("pad_token"),
            inner,
        })
    }

    /// Token ids of `text`; with `add_special_tokens` the tokenizer's post-processor adds its
    /// template (BOS for Llama-style tokenizers), as HF's `encode` does by default.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Config(format!("tokenizing: {e}")))
    }

    /// Text of `ids`, optionally without special tokens.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Config(format!("decoding: {e}")))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

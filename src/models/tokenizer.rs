//! Tokenizers from `tokenizer.json` (the HF fast-tokenizer format) through the `tokenizers`
//! crate, with the special tokens named in `tokenizer_config.json`, or from a GGUF file's
//! tokenizer metadata.

use std::path::Path;

use serde_json::Value;

use super::gguf::{tokenizer_from_gguf, GgufFile};
use super::source::ModelSource;
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
    /// The model's chat template (Jinja), if it has one.
    pub chat_template: Option<String>,
}

impl Tokenizer {
    /// The tokenizer of a model folder ([`Tokenizer::from_dir`]) or of a GGUF file
    /// ([`Tokenizer::from_gguf`]).
    pub fn load(model: &Path) -> Result<Self> {
        match ModelSource::of(model)? {
            ModelSource::Folder(dir) => Self::from_dir(&dir),
            ModelSource::Gguf(file) => Self::from_gguf(&file),
        }
    }

    /// The tokenizer of a GGUF file: `tokenizer.json` next to the file when there is one,
    /// otherwise the one its metadata describes. Special tokens and the chat template come
    /// from the metadata (from `tokenizer_config.json` next to the file when the metadata has
    /// none).
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let dir = ModelSource::Gguf(path.to_path_buf()).folder();
        if dir.join("tokenizer.json").is_file() {
            let mut side = Self::from_dir(&dir)?;
            let meta = |key: &str| -> Result<Option<u32>> {
                Ok(file
                    .opt_u64(&format!("tokenizer.ggml.{key}"))?
                    .map(|v| v as u32))
            };
            side.bos_token_id = meta("bos_token_id")?.or(side.bos_token_id);
            side.eos_token_id = meta("eos_token_id")?.or(side.eos_token_id);
            side.pad_token_id = meta("padding_token_id")?.or(side.pad_token_id);
            if let Some(t) = file.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
                side.chat_template = Some(t.to_string());
            }
            return Ok(side);
        }
        let built = tokenizer_from_gguf(&file)?;
        Ok(Self {
            inner: built.tokenizer,
            bos_token_id: built.bos_token_id,
            eos_token_id: built.eos_token_id,
            pad_token_id: built.pad_token_id,
            chat_template: built.chat_template,
        })
    }

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
        // The chat template sits in tokenizer_config.json or, since transformers 4.43, in
        // chat_template.jinja.
        let jinja = dir.join("chat_template.jinja");
        let chat_template = match config.get("chat_template").and_then(Value::as_str) {
            Some(t) => Some(t.to_string()),
            None if jinja.is_file() => {
                Some(std::fs::read_to_string(&jinja).map_err(|e| Error::file(&jinja, e))?)
            }
            None => None,
        };
        Ok(Self {
            bos_token_id: special("bos_token"),
            eos_token_id: special("eos_token"),
            pad_token_id: special("pad_token"),
            chat_template,
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

    /// The `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The text of token `id` as the vocabulary spells it.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

//! A word-level tokenizer for the generated world, written as an HF `tokenizer.json` so the
//! bundled model loads like any other (and HF `tokenizers` reads it too).

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Value};

use crate::adapter::write_atomic;
use crate::Result;

/// Special tokens and their ids.
pub const UNK: (&str, u32) = ("<unk>", 0);
/// Beginning of sequence.
pub const BOS: (&str, u32) = ("<s>", 1);
/// End of sequence.
pub const EOS: (&str, u32) = ("</s>", 2);
/// Padding.
pub const PAD: (&str, u32) = ("<pad>", 3);

/// Splits lowercased text as the `Whitespace` pre-tokenizer does: runs of word characters
/// and runs of other non-space characters.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut current_is_word = false;
    for c in text.to_lowercase().chars() {
        if c.is_whitespace() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue;
        }
        let is_word = c.is_alphanumeric() || c == '_';
        if !current.is_empty() && is_word != current_is_word {
            out.push(std::mem::take(&mut current));
        }
        current_is_word = is_word;
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The tokenizer files (`tokenizer.json`, `tokenizer_config.json`) for the words of `texts`;
/// returns the vocabulary size.
pub fn write_tokenizer<'a>(dir: &Path, texts: impl IntoIterator<Item = &'a str>) -> Result<usize> {
    let mut vocab_words = BTreeSet::new();
    for text in texts {
        vocab_words.extend(words(text));
    }
    let mut vocab = serde_json::Map::new();
    for (token, id) in [UNK, BOS, EOS, PAD] {
        vocab.insert(token.into(), json!(id));
    }
    for (i, w) in vocab_words.iter().enumerate() {
        vocab.insert(w.clone(), json!(4 + i));
    }
    let size = vocab.len();
    let added: Vec<Value> = [UNK, BOS, EOS, PAD]
        .iter()
        .map(|(content, id)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS.0, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": BOS.0, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {BOS.0: {"id": BOS.0, "ids": [BOS.1], "tokens": [BOS.0]}}
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK.0}
    });
    let config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS.0,
        "eos_token": EOS.0,
        "pad_token": PAD.0,
        "unk_token": UNK.0,
        "model_max_length": 256
    });
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::file(dir, e))?;
    write_atomic(
        &dir.join("tokenizer.json"),
        &serde_json::to_vec_pretty(&tokenizer).expect("json"),
    )?;
    write_atomic(
        &dir.join("tokenizer_config.json"),
        &serde_json::to_vec_pretty(&config).expect("json"),
    )?;
    Ok(size)
}

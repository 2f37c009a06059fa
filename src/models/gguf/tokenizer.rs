//! The tokenizer a GGUF file describes in its `tokenizer.*` metadata, rebuilt as a
//! `tokenizers` tokenizer equal to the one HF transformers builds from the same file:
//!
//! * `tokenizer.ggml.model = gpt2`: byte-level BPE with the file's merges; the text is split
//!   before BPE as `tokenizer.ggml.pre` says (GPT-2's regex; digits one by one first for the
//!   StarCoder family, SmolLM's `smollm` among them; Llama-3's or Qwen-2's regex).
//! * `llama` (SentencePiece) for Gemma-3: BPE over `▁`-spelled pieces with byte fallback. The
//!   file has no merges; they are recovered from the vocabulary, a token's rank (its position
//!   in the file) being its merge priority.
//!
//! Tokens typed "control" become special tokens, "user-defined" ones added tokens; BOS is added
//! when `tokenizer.ggml.add_bos_token` says so.

use std::collections::{HashMap, HashSet};

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::file::{GgufFile, MetaValue};
use crate::{Error, Result};

/// A tokenizer rebuilt from GGUF metadata, with its special tokens and chat template.
pub struct GgufTokenizer {
    /// The tokenizer.
    pub tokenizer: tokenizers::Tokenizer,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_token_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_token_id: Option<u32>,
    /// Whether encoding with special tokens adds BOS.
    pub add_bos_token: bool,
    /// `tokenizer.chat_template` (Jinja).
    pub chat_template: Option<String>,
}

// llama.cpp's token types.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// GPT-2's pre-tokenizer regex (what `ByteLevel` applies with `use_regex`), Llama-3's, Qwen-2's.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Builds the tokenizer of `file`. Errors name the missing or unsupported key.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<GgufTokenizer> {
    let model = file.str("tokenizer.ggml.model")?;
    let arch = file.str("general.architecture")?;
    let tokens: Vec<String> = file
        .array("tokenizer.ggml.tokens")?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().map(str::to_string).ok_or_else(|| {
                file.key_error(
                    "tokenizer.ggml.tokens",
                    format!("entry {i} is not a string"),
                )
            })
        })
        .collect::<Result<_>>()?;
    let types: Vec<i64> = match file.get("tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .ok_or_else(|| file.key_error("tokenizer.ggml.token_type", "not an array"))?
            .iter()
            .map(|t| t.as_f64().map(|x| x as i64).unwrap_or(0))
            .collect(),
    };
    let id = |key: &str| -> Result<Option<u32>> {
        let full = format!("tokenizer.ggml.{key}");
        match file.opt_u64(&full)? {
            Some(v) if (v as usize) < tokens.len() => Ok(Some(v as u32)),
            Some(v) => Err(file.key_error(
                &full,
                format!("{v} is beyond the vocabulary ({} tokens)", tokens.len()),
            )),
            None => Ok(None),
        }
    };
    let (bos, eos, pad, unk) = (
        id("bos_token_id")?,
        id("eos_token_id")?,
        id("padding_token_id")?,
        id("unknown_token_id")?,
    );
    let add_bos_default = model == "llama";
    let add_bos = file
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(add_bos_default);
    let add_eos = file
        .opt_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);

    let (mut tokenizer, byte_level) = match model {
        "gpt2" => (byte_level_bpe(file, &tokens)?, true),
        "llama" if arch.starts_with("gemma") => (gemma_bpe(&tokens, unk)?, false),
        "llama" => {
            return Err(file.key_error(
                "tokenizer.ggml.model",
                format!(
                    "a SentencePiece vocabulary is only supported for Gemma (architecture \
                     `{arch}`); put the model's tokenizer.json next to the file"
                ),
            ))
        }
        other => {
            return Err(file.key_error(
                "tokenizer.ggml.model",
                format!(
                    "`{other}` is not supported (gpt2, or llama for Gemma); put the model's \
                     tokenizer.json next to the file"
                ),
            ))
        }
    };

    // Control tokens are special; in a byte-level vocabulary one spelled outside the byte
    // alphabet is a mislabel and is left out, as HF does.
    let alphabet: HashSet<char> = byte_alphabet().into_iter().collect();
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(t, ty)| {
            **ty == CONTROL && (!byte_level || t.chars().all(|c| alphabet.contains(&c)))
        })
        .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    tokenizer.add_special_tokens(&control);
    let user: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(t, ty)| **ty == USER_DEFINED && tokenizer.token_to_id(t).is_some())
        .map(|(t, _)| AddedToken::from(t.clone(), false).normalized(false))
        .collect();
    tokenizer.add_tokens(&user);

    if add_bos || add_eos {
        // `<bos> $A` (and/or `$A <eos>`) when encoding with special tokens.
        let special = |wanted: bool, id: Option<u32>, key: &str| -> Result<Option<(String, u32)>> {
            match (wanted, id) {
                (false, _) => Ok(None),
                (true, Some(t)) => Ok(Some((tokens[t as usize].clone(), t))),
                (true, None) => Err(file.key_error(key, "missing, but the tokenizer is to add it")),
            }
        };
        let bos = special(add_bos, bos, "tokenizer.ggml.bos_token_id")?;
        let eos = special(add_eos, eos, "tokenizer.ggml.eos_token_id")?;
        let mut single: Vec<String> = bos.iter().map(|(t, _)| t.clone()).collect();
        single.push("$A".into());
        single.extend(eos.iter().map(|(t, _)| t.clone()));
        let err = |e: String| Error::Config(format!("tokenizer template: {e}"));
        let template = TemplateProcessing::builder()
            .try_single(single)
            .map_err(err)?
            .special_tokens(bos.into_iter().chain(eos).collect::<Vec<_>>())
            .build()
            .map_err(|e| err(e.to_string()))?;
        tokenizer.with_post_processor(Some(template));
    }
    let chat_template = match file.get("tokenizer.chat_template") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| file.key_error("tokenizer.chat_template", "not a string"))?
                .to_string(),
        ),
    };
    Ok(GgufTokenizer {
        tokenizer,
        bos_token_id: bos,
        eos_token_id: eos,
        pad_token_id: pad,
        unk_token_id: unk,
        add_bos_token: add_bos,
        chat_template,
    })
}

/// GPT-2's map from bytes to printable characters: printable Latin-1 bytes stand for
/// themselves, the others for U+0100 onwards in byte order.
fn byte_alphabet() -> [char; 256] {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut out = ['\0'; 256];
    let mut next = 256;
    for b in 0..256u32 {
        out[b as usize] = if printable(b) {
            char::from_u32(b).expect("latin-1")
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below U+0200")
        };
    }
    out
}

fn byte_level_bpe(file: &GgufFile, tokens: &[String]) -> Result<tokenizers::Tokenizer> {
    let alphabet = byte_alphabet();
    let spelled_in: HashSet<char> = alphabet.into_iter().collect();
    // A token written in plain text (an added token, say) is respelled in the byte alphabet.
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let spelled = if t.chars().all(|c| spelled_in.contains(&c)) {
                t.clone()
            } else {
                t.bytes().map(|b| alphabet[b as usize]).collect()
            };
            (spelled, i as u32)
        })
        .collect();
    let merges: Vec<(String, String)> = file
        .array("tokenizer.ggml.merges")?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.as_str()
                .and_then(|m| m.split_once(' '))
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    file.key_error(
                        "tokenizer.ggml.merges",
                        format!("entry {i} is not two tokens separated by a space"),
                    )
                })
        })
        .collect::<Result<_>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| file.key_error("tokenizer.ggml.merges", e))?;
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(MetaValue::as_str)
        .unwrap_or("default");
    let byte_level = |use_regex| PreTokenizerWrapper::from(ByteLevel::new(false, true, use_regex));
    let split = |regex: &str| -> Result<PreTokenizerWrapper> {
        let s = Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Config(format!("pre-tokenizer regex: {e}")))?;
        Ok(PreTokenizerWrapper::Sequence(PreSequence::new(vec![
            s.into(),
            byte_level(false),
        ])))
    };
    let pre_tokenizer = match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        // llama.cpp's StarCoder-style splits: every digit apart, then GPT-2's regex.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            PreTokenizerWrapper::Sequence(PreSequence::new(vec![
                Digits::new(true).into(),
                byte_level(true),
            ]))
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" => {
            split(LLAMA3_SPLIT)?
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => split(QWEN2_SPLIT)?,
        other => {
            return Err(file.key_error(
                "tokenizer.ggml.pre",
                format!(
                    "pre-tokenizer `{other}` is not known (default, smollm, starcoder, llama3, \
                     qwen2, ...); put the model's tokenizer.json next to the file"
                ),
            ))
        }
    };
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// Python's `str.isspace` for one character (Unicode White_Space plus the four ASCII
/// separators U+001C..U+001F).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn gemma_bpe(tokens: &[String], unk: Option<u32>) -> Result<tokenizers::Tokenizer> {
    // Tokens of two or more blanks are stored with real spaces, while the normalizer turns
    // spaces into `▁`: spell those in `▁` so that they can match.
    let tokens: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.chars().all(py_space) {
                "\u{2581}".repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    // As a map, a repeated token keeps its last id.
    let mut rank: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        rank.insert(t.as_str(), i);
    }
    // Every split of a token into two tokens is a merge; merges rank by the merged token's
    // id, then longer left piece first.
    let mut seen = HashSet::with_capacity(tokens.len());
    let mut merges: Vec<(usize, usize, &str, &str)> = Vec::new();
    for t in &tokens {
        if !seen.insert(t.as_str()) {
            continue;
        }
        let r = rank[t.as_str()];
        for (cut, _) in t.char_indices().skip(1) {
            let (l, rr) = t.split_at(cut);
            if rank.contains_key(l) && rank.contains_key(rr) {
                merges.push((r, l.chars().count(), l, rr));
            }
        }
    }
    merges.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let merges: Vec<(String, String)> = merges
        .into_iter()
        .map(|(_, _, l, r)| (l.to_string(), r.to_string()))
        .collect();
    let vocab: Vocab = rank
        .iter()
        .map(|(t, &i)| (t.to_string(), i as u32))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(u) = unk {
        builder = builder.unk_token(tokens[u as usize].clone());
    }
    let bpe = builder
        .build()
        .map_err(|e| Error::Config(format!("building the Gemma tokenizer: {e}")))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(
        Replace::new(" ", "\u{2581}").map_err(|e| Error::Config(format!("normalizer: {e}")))?,
    ));
    tokenizer.with_pre_tokenizer(Some(
        Split::new(" ", SplitDelimiterBehavior::MergedWithPrevious, false)
            .map_err(|e| Error::Config(format!("pre-tokenizer: {e}")))?,
    ));
    tokenizer.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(vec![
        Replace::new("\u{2581}", " ")
            .map_err(|e| Error::Config(format!("decoder: {e}")))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ]))));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let a = byte_alphabet();
        assert_eq!(a[b'!' as usize], '!');
        assert_eq!(a[b' ' as usize], 'Ġ');
        assert_eq!(a[b'\n' as usize], 'Ċ');
        assert_eq!(a[0], 'Ā');
        assert_eq!(a[0xad], 'Ń');
        let distinct: std::collections::HashSet<char> = a.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }
}

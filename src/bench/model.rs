//! The model a benchmark runs: a checkpoint (HF folder or GGUF file) or a random-weight
//! Llama of a named shape.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::Serialize;

use crate::models::config::{DecoderConfig, DecoderFamily, LayerKind, RopeConfig};
use crate::models::Decoder;
use crate::{Error, Result};

/// The shapes of the random benchmark decoders.
pub const RANDOM_SIZES: [&str; 4] = ["tiny", "100m", "smollm2-135m", "tinyllama-1.1b"];

/// Where a benchmark's decoder comes from.
#[derive(Clone, Debug, Serialize)]
pub enum BenchModel {
    /// A checkpoint: an HF model folder or a GGUF file.
    Checkpoint(PathBuf),
    /// Random weights of a named shape (see [`RANDOM_SIZES`]).
    Random(String),
}

impl BenchModel {
    /// Parses `random:<size>` or a path (which must exist).
    pub fn parse(text: &str) -> Result<Self> {
        if let Some(size) = text.strip_prefix("random:") {
            bench_decoder_config(size)?;
            return Ok(BenchModel::Random(size.to_string()));
        }
        let path = Path::new(text);
        if !path.exists() {
            return Err(Error::Config(format!(
                "--model {text}: no such file or folder (give an HF model folder, a .gguf \
                 file or random:<size> with size one of {RANDOM_SIZES:?})"
            )));
        }
        Ok(BenchModel::Checkpoint(path.to_path_buf()))
    }

    /// A short label for tables.
    pub fn label(&self) -> String {
        match self {
            BenchModel::Checkpoint(path) => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
            BenchModel::Random(size) => format!("random:{size}"),
        }
    }

    /// Loads (or initialises) the decoder in the device's default float type.
    pub fn load<B: Backend>(&self, device: &B::Device) -> Result<Decoder<B>> {
        match self {
            BenchModel::Checkpoint(path) => crate::models::loading::load_decoder(path, device),
            BenchModel::Random(size) => Ok(Decoder::init(&bench_decoder_config(size)?, device)),
        }
    }
}

/// The benchmark decoders' shapes, Llama architecture: `tiny` (hidden 64, 2 layers), `100m`
/// (hidden 768, 12 layers, 32k vocabulary), `smollm2-135m` (SmolLM2-135M's shape) and
/// `tinyllama-1.1b` (TinyLlama-1.1B's shape: hidden 2048, 22 layers, 4 KV heads).
pub fn bench_decoder_config(size: &str) -> Result<DecoderConfig> {
    // (hidden, layers, heads, kv heads, intermediate, vocab, tied embeddings)
    let (hidden, layers, heads, kv_heads, inter, vocab, tied) = match size {
        "tiny" => (64, 2, 4, 4, 128, 256, true),
        "100m" => (768, 12, 12, 12, 2048, 32000, true),
        "smollm2-135m" => (576, 30, 9, 3, 1536, 49152, true),
        "tinyllama-1.1b" => (2048, 22, 32, 4, 5632, 32000, false),
        other => {
            return Err(Error::Config(format!(
                "unknown bench model size `{other}` (one of {RANDOM_SIZES:?})"
            )))
        }
    };
    Ok(DecoderConfig {
        family: DecoderFamily::Llama,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim: hidden / heads,
        rms_norm_eps: 1e-5,
        rope: RopeConfig {
            theta: 10_000.0,
            scaling: None,
        },
        local_rope: None,
        max_position_embeddings: 4096,
        tie_word_embeddings: tied,
        attention_bias: false,
        layer_types: vec![LayerKind::Full; layers],
        sliding_window: None,
        query_pre_attn_scalar: None,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: None,
    })
}

/// Deterministic token ids `[batch * seq]` spread over the vocabulary (no tokenizer needed;
/// speed does not depend on which ids).
pub fn bench_ids(batch: usize, seq: usize, vocab: usize) -> Vec<i64> {
    (0..batch * seq)
        .map(|i| ((i as u64 * 7919 + 13) % vocab as u64) as i64)
        .collect()
}

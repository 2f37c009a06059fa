//! The bundled tiny base model: a Llama-architecture decoder pretrained from scratch, by this
//! crate's own training loop, on the generated world's corpus.

use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor};
use burn_store::{BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, SafetensorsStore};
use serde_json::{json, Value};

use super::vocab::{self, BOS, EOS, PAD};
use super::world;
use crate::adapter::write_atomic;
use crate::data::instruction::{PromptStyle, TokenizedExample};
use crate::models::config::DecoderConfig;
use crate::models::llama::Decoder;
use crate::models::tokenizer::Tokenizer;
use crate::train::{lm_batch, train, CausalLm, RunOptions, StepRecord, TrainConfig};
use crate::{Error, Result};

/// HF `config.json` of the tiny base for a vocabulary of `vocab_size` words.
pub fn base_config_json(vocab_size: usize) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": false,
        "mlp_bias": false,
        "tie_word_embeddings": false,
        "vocab_size": vocab_size,
        "bos_token_id": BOS.1,
        "eos_token_id": EOS.1,
        "pad_token_id": PAD.1,
        "torch_dtype": "float32"
    })
}

/// Settings of the base model's pretraining.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PretrainSettings {
    /// Passes over the corpus.
    pub epochs: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Sentences per step.
    pub batch_size: usize,
    /// Seeds the corpus, the initialisation and the data order.
    pub seed: u64,
}

impl Default for PretrainSettings {
    fn default() -> Self {
        Self {
            epochs: 60,
            learning_rate: 3e-3,
            batch_size: 32,
            seed: 0,
        }
    }
}

/// Re-initialises a decoder for training from scratch as HF does (matrices N(0, 0.02), norm
/// weights 1) and makes every parameter trainable.
struct FromScratch;

impl<B: Backend> ModuleMapper<B> for FromScratch {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, _) = param.consume();
        let tensor = if D >= 2 {
            Tensor::random(
                tensor.shape(),
                Distribution::Normal(0.0, 0.02),
                &tensor.device(),
            )
        } else {
            tensor
        };
        Param::initialized(id, tensor.detach().require_grad())
    }
}

/// Writes the decoder's weights as an HF checkpoint file (PyTorch layout and names).
pub fn save_decoder_weights<B: Backend>(model: &Decoder<B>, path: &Path) -> Result<()> {
    let remap = KeyRemapper::from_patterns(vec![(r"^(.*)\.base\.(weight|bias)$", "$1.$2")])
        .expect("static pattern");
    let tmp = path.with_extension("safetensors.tmp");
    let mut store = SafetensorsStore::from_file(&tmp)
        .with_to_adapter(BurnToPyTorchAdapter)
        .remap(remap);
    model
        .save_into(&mut store)
        .map_err(|e| Error::file(&tmp, format!("cannot write the weights: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}

/// Every text the generated world produces, for the vocabulary.
fn all_texts(seed: u64) -> Vec<String> {
    let mut texts = world::pretraining_corpus(seed);
    let (train, test) = world::task_set(10_000, 10_000, seed);
    for style in [PromptStyle::LlmAdapters, PromptStyle::Clean] {
        texts.extend(train.iter().map(|e| style.training_text(e)));
        for (_, set) in &test {
            texts.extend(set.iter().map(|e| style.training_text(e)));
        }
    }
    texts
}

/// Generates the corpus and tokenizer, pretrains the tiny base on `B` and writes
/// `config.json`, `model.safetensors` and the tokenizer files to `out_dir`. Returns the loss
/// of every step.
pub fn pretrain_base<B: AutodiffBackend>(
    out_dir: &Path,
    settings: &PretrainSettings,
    device: &B::Device,
) -> Result<Vec<StepRecord>> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::file(out_dir, e))?;
    let texts = all_texts(settings.seed);
    let vocab_size = vocab::write_tokenizer(out_dir, texts.iter().map(String::as_str))?;
    let config_json = base_config_json(vocab_size);
    let config_path = out_dir.join("config.json");
    write_atomic(
        &config_path,
        &serde_json::to_vec_pretty(&config_json).expect("json"),
    )?;
    let config = DecoderConfig::from_json(&config_json, &config_path)?;
    let tokenizer = Tokenizer::from_dir(out_dir)?;

    let corpus: Vec<TokenizedExample> = world::pretraining_corpus(settings.seed)
        .iter()
        .map(|s| {
            let mut ids = tokenizer.encode(s, true)?;
            ids.push(EOS.1);
            let labels = ids.iter().map(|&t| t as i64).collect();
            Ok(TokenizedExample {
                input_ids: ids,
                labels,
            })
        })
        .collect::<Result<_>>()?;

    B::seed(device, settings.seed);
    let decoder = Decoder::<B>::init(&config, device).map(&mut FromScratch);
    let train_config = TrainConfig {
        learning_rate: settings.learning_rate,
        weight_decay: 0.0,
        epochs: settings.epochs,
        batch_size: settings.batch_size,
        micro_batch_size: settings.batch_size,
        warmup_steps: 20,
        max_steps: None,
        checkpoint_every: 0,
        valid_every: 0,
        seed: settings.seed,
        // As the committed base was pretrained: burn's AdamW ε, no clipping.
        max_grad_norm: 0.0,
        adam_epsilon: 1e-5,
    };
    let options = RunOptions {
        monitor: crate::train::Monitor::bars(),
        ..RunOptions::default()
    };
    let outcome = train(
        CausalLm { decoder },
        &corpus,
        &train_config,
        &options,
        device,
        |batch: &[&TokenizedExample]| {
            let owned: Vec<TokenizedExample> = batch.iter().map(|e| (*e).clone()).collect();
            lm_batch::<B>(&owned, PAD.1, device)
        },
        None,
    )?;
    save_decoder_weights(&outcome.model.decoder, &out_dir.join("model.safetensors"))?;
    Ok(outcome.history)
}

//! The instruction-tuning pipeline of the paper's commonsense experiment, as library calls:
//! tokenize → fit pass (IPA projectors from the frozen model's inputs) → fine-tune with the
//! training loop → generate and score the answers.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ElementConversion;
use serde::{Deserialize, Serialize};

use crate::adapter::write_atomic;
use crate::data::instruction::{
    tokenize_example, InstructionExample, PromptStyle, TokenizedExample,
};
use crate::eval::commonsense::{Accuracy, Task};
use crate::fit::DecoderFit;
use crate::models::generate::{generate, GenerationConfig};
use crate::models::llama::Decoder;
use crate::models::tokenizer::Tokenizer;
use crate::projector::FitAlgorithm;
use crate::train::{epoch_order, lm_batch, train, CausalLm, RunOptions, TrainConfig, TrainOutcome};
use crate::{Error, Result};

/// Tokenizes every example; an example that yields no tokens is an error naming its index.
pub fn tokenize_all(
    tokenizer: &Tokenizer,
    examples: &[InstructionExample],
    style: PromptStyle,
    cutoff: usize,
    mask_prompt: bool,
) -> Result<Vec<TokenizedExample>> {
    examples
        .iter()
        .enumerate()
        .map(|(i, ex)| {
            let t = tokenize_example(tokenizer, style, ex, cutoff, mask_prompt)?;
            if t.input_ids.is_empty() {
                return Err(Error::Config(format!("example {i} has no tokens")));
            }
            Ok(t)
        })
        .collect()
}

/// Checks that every token id fits the model's vocabulary (a tokenizer from another model
/// would otherwise fail deep inside the embedding).
pub fn check_vocabulary(examples: &[TokenizedExample], vocab_size: usize) -> Result<()> {
    for (i, ex) in examples.iter().enumerate() {
        if let Some(&id) = ex.input_ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(Error::Config(format!(
                "example {i}: token id {id} is outside the model's vocabulary of {vocab_size} \
                 (is the tokenizer the model's own?)"
            )));
        }
    }
    Ok(())
}

/// Settings of the fit pass.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FitPassConfig {
    /// Fit algorithm: `ipca`, `rsvd`, `gha` or `covariance`.
    pub algorithm: String,
    /// Projector rank.
    pub rank: usize,
    /// Fraction of the training set, taken from the start of the seeded shuffle.
    pub fraction: f64,
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Seeds the shuffle and the randomized fits.
    pub seed: u64,
}

/// Runs the frozen model (no adapters, no autodiff) over the first `fraction` of the seeded
/// shuffle of `examples` and fits one projector per distinct input site of `targets`.
/// Padding is excluded from the statistics.
pub fn fit_pass<B: Backend>(
    model: &Decoder<B>,
    examples: &[TokenizedExample],
    targets: &[String],
    config: &FitPassConfig,
    pad_id: u32,
    progress: bool,
) -> Result<DecoderFit<B>> {
    if !(config.fraction > 0.0 && config.fraction <= 1.0) {
        return Err(Error::Config(format!(
            "fit fraction must be in (0, 1], got {}",
            config.fraction
        )));
    }
    if config.batch_size == 0 {
        return Err(Error::Config("fit batch size must be at least 1".into()));
    }
    let algorithm = FitAlgorithm::from_name(&config.algorithm)?;
    let mut fit = DecoderFit::new(model, targets, None, &algorithm, config.rank, config.seed)?;
    let order = epoch_order(examples.len(), config.seed, 0);
    let take = ((examples.len() as f64 * config.fraction).ceil() as usize).clamp(1, examples.len());
    let device = model.model.embed_tokens.weight.device();
    let bar = progress_bar(progress, take.div_ceil(config.batch_size), "fit");
    for chunk in order[..take].chunks(config.batch_size) {
        let items: Vec<TokenizedExample> = chunk.iter().map(|&i| examples[i].clone()).collect();
        let batch = lm_batch::<B>(&items, pad_id, &device);
        fit.observe(model, batch.input_ids, batch.options.attention_mask)?;
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish();
    }
    Ok(fit)
}

/// Attaches the adapters described by a saved adapter folder (see
/// [`crate::adapter::save_adapter`]) to `model` and loads their weights. Returns the targets.
pub fn attach_saved_adapter<B: Backend>(model: &mut Decoder<B>, dir: &Path) -> Result<Vec<String>> {
    let saved = crate::adapter::read_adapter_config(dir)?;
    let mut targets: Vec<String> = saved
        .layers
        .keys()
        .filter_map(|path| path.rsplit('.').next().map(str::to_string))
        .collect();
    targets.sort();
    targets.dedup();
    let layers: Vec<usize> = {
        let mut l: Vec<usize> = saved
            .layers
            .keys()
            .filter_map(|p| p.split('.').nth(2).and_then(|s| s.parse().ok()))
            .collect();
        l.sort();
        l.dedup();
        l
    };
    model.attach_adapters(&targets, Some(&layers), &saved.adapter, |_| {
        crate::adapter::ProjectorInit::Zeros
    })?;
    crate::adapter::load_adapter(model, dir)?;
    Ok(targets)
}

/// Mean loss of `model` over `examples` in batches (no autodiff).
pub fn validation_loss<B: Backend>(
    model: &Decoder<B>,
    examples: &[TokenizedExample],
    batch_size: usize,
    pad_id: u32,
) -> Result<f64> {
    let device = model.model.embed_tokens.weight.device();
    let (mut sum, mut tokens) = (0.0, 0usize);
    for chunk in examples.chunks(batch_size.max(1)) {
        let batch = lm_batch::<B>(chunk, pad_id, &device);
        let logits = model.forward(batch.input_ids, &batch.options)?;
        let (loss, count) = crate::train::causal_lm_loss(logits, batch.labels);
        sum += loss.into_scalar().elem::<f64>() * count as f64;
        tokens += count;
    }
    Ok(sum / tokens.max(1) as f64)
}

/// Fine-tunes the adapters of `model` (built on the inner backend, moved to autodiff here)
/// on `examples`, with the validation loss on `valid` when it is not empty. With several
/// `devices`, each step's micro-batches are spread over them (see
/// [`crate::train::train_on_devices`]); the model and optimizer live on the first.
pub fn finetune<B: AutodiffBackend>(
    model: Decoder<B::InnerBackend>,
    examples: &[TokenizedExample],
    valid: &[TokenizedExample],
    config: &TrainConfig,
    options: &RunOptions,
    pad_id: u32,
    devices: &[B::Device],
) -> Result<TrainOutcome<CausalLm<B>>> {
    let device = devices
        .first()
        .ok_or_else(|| Error::Config("no device to train on".into()))?;
    let mut decoder = Decoder::<B>::from_inner(model);
    for (_, linear) in decoder.linears_mut() {
        linear.mark_trainable();
    }
    let model = CausalLm::<B> { decoder };
    let mut valid_loss = |m: &CausalLm<B>| {
        validation_loss(&m.decoder.valid(), valid, config.micro_batch_size, pad_id)
    };
    let batch = |batch: &[&TokenizedExample], device: &B::Device| {
        let owned: Vec<TokenizedExample> = batch.iter().map(|e| (*e).clone()).collect();
        lm_batch::<B>(&owned, pad_id, device)
    };
    let valid_fn: Option<&mut crate::train::trainer::Validation<'_, CausalLm<B>>> =
        if valid.is_empty() {
            None
        } else {
            Some(&mut valid_loss)
        };
    if devices.len() > 1 {
        crate::train::train_on_devices(
            model, examples, config, options, devices, &batch, valid_fn, None,
        )
    } else {
        train(
            model,
            examples,
            config,
            options,
            device,
            |items: &[&TokenizedExample]| batch(items, device),
            valid_fn,
        )
    }
}

/// One evaluated example.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    /// The task's dataset name.
    pub task: String,
    /// Index in the task's test set.
    pub index: usize,
    /// The generated text.
    pub output: String,
    /// The extracted answer word, if any.
    pub predicted: Option<String>,
    /// The reference answer.
    pub answer: String,
    /// Whether they agree.
    pub correct: bool,
}

/// Generates an answer for every test example (after the evaluation prompt) and scores the
/// first answer word of each task's format.
pub fn evaluate<B: Backend>(
    model: &Decoder<B>,
    tokenizer: &Tokenizer,
    style: PromptStyle,
    tests: &[(Task, Vec<InstructionExample>)],
    generation: &GenerationConfig,
    batch_size: usize,
    progress: bool,
) -> Result<(Accuracy, Vec<Prediction>)> {
    let mut accuracy = Accuracy::default();
    let mut predictions = Vec::new();
    let total: usize = tests
        .iter()
        .map(|(_, t)| t.len().div_ceil(batch_size.max(1)))
        .sum();
    let bar = progress_bar(progress, total, "eval");
    for (task, examples) in tests {
        for (c, chunk) in examples.chunks(batch_size.max(1)).enumerate() {
            let prompts = chunk
                .iter()
                .map(|ex| tokenizer.encode(&style.prompt(ex), true))
                .collect::<Result<Vec<_>>>()?;
            let outputs = generate(model, &prompts, generation)?;
            for (j, (ex, out)) in chunk.iter().zip(outputs).enumerate() {
                let text = tokenizer.decode(&out, true)?;
                let predicted = task.extract_answer(&text);
                accuracy.record(*task, predicted, &ex.answer);
                predictions.push(Prediction {
                    task: task.dataset_name().to_string(),
                    index: c * batch_size.max(1) + j,
                    correct: predicted == Some(ex.answer.as_str()),
                    predicted: predicted.map(str::to_string),
                    answer: ex.answer.clone(),
                    output: text,
                });
            }
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
    }
    if let Some(b) = bar {
        b.finish();
    }
    Ok((accuracy, predictions))
}

/// Writes predictions as JSON lines.
pub fn write_predictions(path: &Path, predictions: &[Prediction]) -> Result<()> {
    let mut text = String::new();
    for p in predictions {
        text.push_str(&serde_json::to_string(p).expect("json"));
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

/// Accuracy per task and the average, as a JSON-friendly map.
pub fn accuracy_summary(accuracy: &Accuracy) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for task in Task::ALL {
        if let Some(a) = accuracy.of(task) {
            out.insert(task.dataset_name().to_string(), a);
        }
    }
    if let Some(avg) = accuracy.average() {
        out.insert("average".into(), avg);
    }
    out
}

pub(crate) fn progress_bar(show: bool, len: usize, prefix: &str) -> Option<indicatif::ProgressBar> {
    show.then(|| {
        crate::train::monitor::styled_bar(
            len,
            prefix,
            "{prefix:>5} [{bar:30}] {pos}/{len} ({elapsed} < {eta})",
        )
    })
}

//! The quickstart: the whole method on a laptop CPU with no download. A tiny Llama-style base
//! model, pretrained by this crate on a generated corpus ([`base`]), is embedded in the
//! binary; the quickstart fits IPA projectors on a generated task set in the commonsense-170k
//! format ([`world`]), fine-tunes IPA and LoRA with the projector frozen and trainable,
//! evaluates each by generation and prints a table of trainable parameters and accuracy.

pub mod base;
pub mod vocab;
pub mod world;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::adapter::{save_adapter, write_atomic, AdapterConfig, ProjectorInit, Scaling};
use crate::data::instruction::PromptStyle;
use crate::instruct::{
    accuracy_summary, evaluate, finetune, fit_pass, tokenize_all, write_predictions, FitPassConfig,
};
use crate::models::generate::GenerationConfig;
use crate::models::llama::Decoder;
use crate::models::loading::load_decoder;
use crate::models::tokenizer::Tokenizer;
use crate::train::{Monitor, RunOptions, TrainConfig};
use crate::{Error, Result};

/// The embedded base model's files (regenerate with `cargo run --release --example
/// make_tiny_base`).
const BASE_FILES: [(&str, &[u8]); 4] = [
    (
        "config.json",
        include_bytes!("../../models/tiny-base/config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../../models/tiny-base/model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../../models/tiny-base/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../../models/tiny-base/tokenizer_config.json"),
    ),
];

/// Writes the embedded base model into `dir`.
pub fn write_embedded_base(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    for (name, bytes) in BASE_FILES {
        write_atomic(&dir.join(name), bytes)?;
    }
    Ok(())
}

/// Everything the quickstart does, resolved (written next to its results).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuickstartConfig {
    /// Base model folder; `None`: the embedded tiny base.
    pub base: Option<PathBuf>,
    /// Generated training examples per task.
    pub train_per_task: usize,
    /// Generated test examples per task.
    pub test_per_task: usize,
    /// Modules that get adapters (HF names).
    pub targets: Vec<String>,
    /// Adapter rank.
    pub rank: usize,
    /// LoRA alpha (scaling alpha / rank).
    pub alpha: f64,
    /// The fit pass.
    pub fit: FitPassConfig,
    /// Optimisation.
    pub train: TrainConfig,
    /// Loss on the response only (the prompt's labels masked). The tiny model learns the
    /// answers far faster this way: with the loss on the whole sequence, the one answer token
    /// weighs little against a hundred predictable prompt tokens.
    pub mask_prompt: bool,
    /// Tokens generated at most per answer.
    pub max_new_tokens: usize,
    /// Prompts per generation batch.
    pub eval_batch_size: usize,
    /// Seeds the generated data.
    pub data_seed: u64,
}

impl QuickstartConfig {
    /// The full quickstart (about a minute on two CPU cores in a release build).
    pub fn full() -> Self {
        Self {
            base: None,
            train_per_task: 250,
            test_per_task: 50,
            targets: ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
                .map(String::from)
                .to_vec(),
            rank: 8,
            alpha: 16.0,
            fit: FitPassConfig {
                algorithm: "ipca".into(),
                rank: 8,
                fraction: 0.1,
                batch_size: 16,
                seed: 0,
            },
            train: TrainConfig {
                learning_rate: 5e-3,
                weight_decay: 0.0,
                epochs: 3,
                batch_size: 16,
                micro_batch_size: 16,
                warmup_steps: 5,
                max_steps: None,
                checkpoint_every: 0,
                valid_every: 0,
                seed: 0,
            },
            mask_prompt: true,
            max_new_tokens: 16,
            eval_batch_size: 25,
            data_seed: 1,
        }
    }

    /// A few seconds' version for the test suite: same steps, tiny sizes.
    pub fn reduced() -> Self {
        let mut c = Self::full();
        c.train_per_task = 12;
        c.test_per_task = 3;
        c.rank = 4;
        c.fit.rank = 4;
        c.fit.fraction = 0.5;
        c.train.epochs = 1;
        c.train.batch_size = 8;
        c.train.micro_batch_size = 4;
        c.train.warmup_steps = 1;
        c.max_new_tokens = 8;
        c
    }
}

/// One row of the results table.
#[derive(Clone, Debug, Serialize)]
pub struct VariantResult {
    /// Short name (also the output subfolder).
    pub name: String,
    /// `lora` or `ipa`; `base` for the model without adapters.
    pub method: String,
    /// How the projector was set and whether it trained.
    pub projector: String,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// Accuracy per task and `average`.
    pub accuracy: BTreeMap<String, f64>,
    /// Final training loss (mean of the last steps), when trained.
    pub final_loss: Option<f64>,
    /// Training throughput in tokens per second, when trained.
    pub train_tokens_per_s: Option<f64>,
}

struct Variant {
    name: &'static str,
    method: &'static str,
    projector: &'static str,
    adapter: AdapterConfig,
    fitted: bool,
}

fn variants(config: &QuickstartConfig) -> Vec<Variant> {
    let scaling = Scaling::Alpha {
        alpha: config.alpha,
        rslora: false,
    };
    let lora = AdapterConfig::lora(config.rank).with_scaling(scaling);
    let ipa = AdapterConfig::ipa(config.rank).with_scaling(scaling);
    vec![
        Variant {
            name: "lora",
            method: "lora",
            projector: "random, trained",
            adapter: lora.clone(),
            fitted: false,
        },
        Variant {
            name: "lora-frozen",
            method: "lora",
            projector: "random, frozen",
            adapter: lora.with_train_projector(false),
            fitted: false,
        },
        Variant {
            name: "ipa",
            method: "ipa",
            projector: "fitted, frozen",
            adapter: ipa.clone(),
            fitted: true,
        },
        Variant {
            name: "ipa-ft",
            method: "ipa",
            projector: "fitted, trained",
            adapter: ipa.with_train_projector(true),
            fitted: true,
        },
    ]
}

/// Runs the quickstart on backend `B`, writing everything under `out_dir`; returns the rows
/// of the table (the base model first).
pub fn run_quickstart<B: Backend>(
    config: &QuickstartConfig,
    out_dir: &Path,
    device: &B::Device,
    progress: bool,
) -> Result<Vec<VariantResult>> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::file(out_dir, e))?;
    write_atomic(
        &out_dir.join("quickstart_config.json"),
        &serde_json::to_vec_pretty(config).expect("json"),
    )?;
    let base_dir = match &config.base {
        Some(dir) => dir.clone(),
        None => {
            let dir = out_dir.join("base");
            write_embedded_base(&dir)?;
            dir
        }
    };
    let tokenizer = Tokenizer::from_dir(&base_dir)?;
    let base: Decoder<B> = load_decoder(&base_dir, device)?;
    let pad = tokenizer
        .pad_token_id
        .or(tokenizer.eos_token_id)
        .unwrap_or(0);

    let (train_set, test_sets) = world::task_set(
        config.train_per_task,
        config.test_per_task,
        config.data_seed,
    );
    write_task_set(&out_dir.join("data"), &train_set, &test_sets)?;
    let style = PromptStyle::LlmAdapters;
    let tokenized = tokenize_all(&tokenizer, &train_set, style, 256, config.mask_prompt)?;
    crate::instruct::check_vocabulary(&tokenized, base.config.vocab_size)?;
    let tokens: usize = tokenized.iter().map(|t| t.input_ids.len()).sum();
    let mut generation = GenerationConfig::greedy(&base, config.max_new_tokens);
    generation.pad_token_id = pad;

    let mut results = Vec::new();
    let (acc, predictions) = evaluate(
        &base,
        &tokenizer,
        style,
        &test_sets,
        &generation,
        config.eval_batch_size,
        progress,
    )?;
    std::fs::create_dir_all(out_dir.join("base-model")).map_err(|e| Error::file(out_dir, e))?;
    write_predictions(&out_dir.join("base-model/predictions.jsonl"), &predictions)?;
    results.push(VariantResult {
        name: "base-model".into(),
        method: "none".into(),
        projector: "-".into(),
        trainable_params: 0,
        accuracy: accuracy_summary(&acc),
        final_loss: None,
        train_tokens_per_s: None,
    });

    let mut fit_config = config.fit.clone();
    fit_config.rank = config.rank;
    let fit = fit_pass(
        &base,
        &tokenized,
        &config.targets,
        &fit_config,
        pad,
        progress,
    )?;

    for variant in variants(config) {
        // LoRA's random projectors come from the backend's generator: seed it so a rerun
        // reproduces the table.
        B::seed(device, config.train.seed);
        let mut model = base.clone();
        if variant.fitted {
            fit.install(&mut model, &variant.adapter)?;
        } else {
            model.attach_adapters(&config.targets, None, &variant.adapter, |_| {
                ProjectorInit::KaimingUniform
            })?;
        }
        let trainable: usize = model
            .linears_mut()
            .into_iter()
            .map(|(_, l)| l.trainable_params())
            .sum();
        let dir = out_dir.join(variant.name);
        let options = RunOptions {
            out_dir: Some(dir.clone()),
            resume: false,
            fingerprint: serde_json::json!({"variant": variant.name}),
            stop_after: None,
            monitor: Monitor::bars_if(progress),
        };
        if progress {
            eprintln!(
                "{}: {} ({})",
                variant.name, variant.method, variant.projector
            );
        }
        let start = Instant::now();
        let outcome = finetune::<Autodiff<B>>(
            model,
            &tokenized,
            &[],
            &config.train,
            &options,
            pad,
            std::slice::from_ref(device),
        )?;
        let seconds = start.elapsed().as_secs_f64();
        let steps = outcome.history.len();
        // Each epoch covers every example once.
        let epochs_done = steps as f64 / config.train.steps_per_epoch(tokenized.len()) as f64;
        let seen_tokens = tokens as f64 * epochs_done;
        let tail: Vec<f64> = outcome
            .history
            .iter()
            .rev()
            .take(5)
            .map(|r| r.loss)
            .collect();
        let trained = outcome.model.decoder.valid();
        save_adapter(
            &trained,
            &variant.adapter,
            BTreeMap::from([("base_model".to_string(), "burn-ipa tiny-base".to_string())]),
            &dir.join("adapter"),
        )?;
        let (acc, predictions) = evaluate(
            &trained,
            &tokenizer,
            style,
            &test_sets,
            &generation,
            config.eval_batch_size,
            progress,
        )?;
        write_predictions(&dir.join("predictions.jsonl"), &predictions)?;
        results.push(VariantResult {
            name: variant.name.into(),
            method: variant.method.into(),
            projector: variant.projector.into(),
            trainable_params: trainable,
            accuracy: accuracy_summary(&acc),
            final_loss: Some(tail.iter().sum::<f64>() / tail.len().max(1) as f64),
            train_tokens_per_s: Some(seen_tokens / seconds.max(1e-9)),
        });
    }
    write_atomic(
        &out_dir.join("results.json"),
        &serde_json::to_vec_pretty(&results).expect("json"),
    )?;
    write_atomic(
        &out_dir.join("results.md"),
        format_table(&results).as_bytes(),
    )?;
    Ok(results)
}

/// Writes a generated task set in the LLM-Adapters layout: `train.json` and
/// `dataset/<name>/test.json`, so `ipa fit/train/eval` can be tried on it.
pub fn write_task_set(
    dir: &Path,
    train: &[crate::data::instruction::InstructionExample],
    tests: &[(
        crate::eval::commonsense::Task,
        Vec<crate::data::instruction::InstructionExample>,
    )],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    write_atomic(
        &dir.join("train.json"),
        &serde_json::to_vec_pretty(train).expect("json"),
    )?;
    for (task, set) in tests {
        let task_dir = dir.join("dataset").join(task.dataset_name());
        std::fs::create_dir_all(&task_dir).map_err(|e| Error::file(&task_dir, e))?;
        write_atomic(
            &task_dir.join("test.json"),
            &serde_json::to_vec_pretty(set).expect("json"),
        )?;
    }
    Ok(())
}

/// The results as a Markdown table.
pub fn format_table(results: &[VariantResult]) -> String {
    let tasks: Vec<String> = results
        .first()
        .map(|r| {
            r.accuracy
                .keys()
                .filter(|k| *k != "average")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut s = format!(
        "| variant | projector | trainable params | {} | average |\n|---|---|---:|{}---:|\n",
        tasks.join(" | "),
        "---:|".repeat(tasks.len())
    );
    for r in results {
        let cells: Vec<String> = tasks
            .iter()
            .map(|t| format!("{:.1}", 100.0 * r.accuracy.get(t).copied().unwrap_or(0.0)))
            .collect();
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} |\n",
            r.name,
            r.projector,
            r.trainable_params,
            cells.join(" | "),
            100.0 * r.accuracy.get("average").copied().unwrap_or(0.0)
        ));
    }
    s
}

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

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::adapter::write_atomic;
use crate::data::instruction::PromptStyle;
use crate::fit::FitPassConfig;
use crate::pipelines::instruct::{
    self, AdapterSpec, DataSpec, EvalRun, FitRun, Keep, ProjectorSource, RandomInit, RunControl,
    TrainRun, Tuning,
};
use crate::pipelines::out_dir::{Existing, OutDir};
use crate::train::{Monitor, TrainConfig};
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
    /// LoRA's alpha (scaling alpha / rank; the default 2r).
    pub lora_alpha: f64,
    /// IPA's scaling factor (the paper's 0.25 for LLMs).
    pub ipa_scaling: f64,
    /// The fit pass (its rank is the adapter rank).
    pub fit: FitPassConfig,
    /// Optimisation.
    pub train: TrainConfig,
    /// Loss on the response only (the prompt's labels masked). The tiny model learns the
    /// answers far faster this way: with the loss on the whole sequence, the one answer token
    /// weighs little against a hundred predictable prompt tokens.
    pub mask_prompt: bool,
    /// Tokens generated at most per answer.
    pub max_new_tokens: usize,
    /// Beams (greedy: 1; the official evaluation's 4 takes four times as long).
    pub num_beams: usize,
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
            lora_alpha: 16.0,
            ipa_scaling: 0.25,
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
                ..TrainConfig::default()
            },
            mask_prompt: true,
            max_new_tokens: 16,
            num_beams: 1,
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
        c.lora_alpha = 8.0;
        c.fit.rank = 4;
        c.fit.fraction = 0.5;
        c.train.epochs = 1;
        c.train.batch_size = 8;
        c.train.micro_batch_size = 4;
        c.train.warmup_steps = 1;
        c.max_new_tokens = 8;
        c
    }

    /// Sets the rank of the adapters and the fit, with LoRA's alpha at 2r.
    pub fn with_rank(mut self, rank: usize) -> Self {
        self.rank = rank;
        self.fit.rank = rank;
        self.lora_alpha = 2.0 * rank as f64;
        self
    }
}

/// One row of the results table.
#[derive(Clone, Debug, Serialize)]
pub struct VariantResult {
    /// Short name (also the output subfolder).
    pub name: String,
    /// `lora` or `ipa`; `none` for the model without adapters.
    pub method: String,
    /// How the projector was set and whether it trained.
    pub projector: String,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// Accuracy per task and `average`.
    pub accuracy: BTreeMap<String, f64>,
    /// Training loss of the last step, when trained.
    pub final_loss: Option<f64>,
    /// Training throughput in tokens per second, when trained.
    pub train_tokens_per_s: Option<f64>,
}

struct Variant {
    name: &'static str,
    projector: &'static str,
    adapter: AdapterSpec,
    source: ProjectorSource,
}

fn variants(config: &QuickstartConfig, fit_dir: &Path) -> Vec<Variant> {
    let lora = AdapterSpec {
        alpha: Some(config.lora_alpha),
        ..AdapterSpec::lora(config.rank)
    };
    let ipa = AdapterSpec {
        scaling: Some(config.ipa_scaling),
        ..AdapterSpec::ipa(config.rank)
    };
    let fitted = ProjectorSource::Saved {
        path: fit_dir.to_path_buf(),
    };
    vec![
        Variant {
            name: "lora",
            projector: "random, trained",
            adapter: lora.clone(),
            source: ProjectorSource::Random {
                init: RandomInit::Kaiming,
            },
        },
        Variant {
            name: "lora-frozen",
            projector: "random orthogonal, frozen",
            adapter: AdapterSpec {
                train_projector: Some(false),
                ..lora
            },
            source: ProjectorSource::Random {
                init: RandomInit::Orthogonal,
            },
        },
        Variant {
            name: "ipa",
            projector: "fitted, frozen",
            adapter: ipa.clone(),
            source: fitted.clone(),
        },
        Variant {
            name: "ipa-ft",
            projector: "fitted, trained",
            adapter: AdapterSpec {
                train_projector: Some(true),
                ..ipa
            },
            source: fitted,
        },
    ]
}

/// The quickstart's own settings file in its output folder.
pub const QUICKSTART_CONFIG_FILE: &str = "quickstart_config.json";

/// Runs the quickstart on backend `B`, writing everything under `out_dir`; returns the rows
/// of the table (the base model first).
///
/// It is the instruction pipeline ([`crate::pipelines::instruct`]) run as a user would:
/// the generated data is written to `data/`, the projectors fitted by [`instruct::fit`] into
/// `fit/`, each variant trained by [`instruct::train`] into `<variant>/` and evaluated by
/// [`instruct::evaluate`] into `<variant>/eval/` (the base model into `base-model/`).
///
/// A folder that holds a quickstart with the same settings is replaced (the run reproduces
/// it); one holding anything else is refused unless `existing` is [`Existing::Overwrite`].
pub fn run_quickstart<B: Backend>(
    config: &QuickstartConfig,
    out_dir: &Path,
    device: &B::Device,
    progress: bool,
    existing: Existing,
) -> Result<Vec<VariantResult>> {
    let dir = OutDir::lock(out_dir, "ipa quickstart")?;
    let same = std::fs::read(out_dir.join(QUICKSTART_CONFIG_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<QuickstartConfig>(&b).ok())
        .is_some_and(|saved| &saved == config);
    dir.prepare(
        if same { Existing::Overwrite } else { existing },
        "a quickstart",
        false,
    )?;
    write_atomic(
        &out_dir.join(QUICKSTART_CONFIG_FILE),
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
    let (train_set, test_sets) = world::task_set(
        config.train_per_task,
        config.test_per_task,
        config.data_seed,
    );
    let data_dir = out_dir.join("data");
    write_task_set(&data_dir, &train_set, &test_sets)?;
    let control = RunControl {
        existing: Some(Existing::Overwrite),
        monitor: Monitor::bars_if(progress),
        ..RunControl::default()
    };
    let data = DataSpec {
        model: base_dir.clone(),
        data: data_dir.join("train.json"),
        cutoff: 256,
        prompt_style: PromptStyle::LlmAdapters,
        mask_prompt: config.mask_prompt,
        val_set_size: 0,
    };
    let eval_run = |adapter: Option<PathBuf>| EvalRun {
        model: base_dir.clone(),
        adapter,
        data_dir: data_dir.join("dataset"),
        tasks: test_sets
            .iter()
            .map(|(t, _)| t.dataset_name().to_string())
            .collect(),
        prompt_style: PromptStyle::LlmAdapters,
        num_beams: config.num_beams,
        max_new_tokens: config.max_new_tokens,
        batch_size: config.eval_batch_size,
        limit: None,
        answer_pattern: None,
    };

    let mut results = Vec::new();
    let base_eval = instruct::evaluate::<B>(
        &eval_run(None),
        &out_dir.join("base-model"),
        &control,
        device,
    )?;
    results.push(VariantResult {
        name: "base-model".into(),
        method: "none".into(),
        projector: "-".into(),
        trainable_params: 0,
        accuracy: base_eval.accuracy,
        final_loss: None,
        train_tokens_per_s: None,
    });

    let fit_dir = out_dir.join("fit");
    let mut fit = config.fit.clone();
    fit.rank = config.rank;
    instruct::fit::<B>(
        &FitRun {
            data: data.clone(),
            targets: config.targets.clone(),
            fit,
        },
        &fit_dir,
        &control,
        device,
    )?;

    for variant in variants(config, &fit_dir) {
        if progress {
            eprintln!("{}: {}", variant.name, variant.projector);
        }
        let dir = out_dir.join(variant.name);
        let run = TrainRun {
            data: data.clone(),
            targets: config.targets.clone(),
            tuning: Tuning::Adapters {
                adapter: variant.adapter,
                projectors: variant.source,
            },
            train: config.train.clone(),
            keep: Keep::Last,
            trainer: Default::default(),
        };
        let report = instruct::train::<B>(&run, &dir, &control, std::slice::from_ref(device))?;
        let eval = instruct::evaluate::<B>(
            &eval_run(Some(report.result_dir.clone())),
            &dir.join("eval"),
            &control,
            device,
        )?;
        results.push(VariantResult {
            name: variant.name.into(),
            method: report
                .adapter
                .as_ref()
                .map_or("none".to_string(), |a| a.method.to_string()),
            projector: variant.projector.into(),
            trainable_params: report.trainable_params,
            accuracy: eval.accuracy,
            final_loss: report.last_loss,
            train_tokens_per_s: Some(report.tokens_per_second),
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
    let named: Vec<(String, Vec<crate::data::instruction::InstructionExample>)> = tests
        .iter()
        .map(|(task, set)| (task.dataset_name().to_string(), set.clone()))
        .collect();
    crate::data::instruction::write_dataset(dir, train, &named)
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

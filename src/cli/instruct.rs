//! `ipa fit`, `ipa train`, `ipa eval`: the commonsense instruction-tuning pipeline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn_ipa::adapter::{save_adapter, write_atomic, AdapterConfig, ProjectorInit, Scaling};
use burn_ipa::backend::BackendJob;
use burn_ipa::data::instruction::{load_examples, InstructionExample, PromptStyle};
use burn_ipa::eval::commonsense::Task;
use burn_ipa::fit::{install_projectors, load_projectors, save_projectors};
use burn_ipa::instruct::{
    accuracy_summary, attach_saved_adapter, check_vocabulary, evaluate, finetune, fit_pass,
    tokenize_all, write_predictions, FitPassConfig,
};
use burn_ipa::models::generate::GenerationConfig;
use burn_ipa::models::llama::Decoder;
use burn_ipa::models::loading::load_decoder;
use burn_ipa::models::tokenizer::Tokenizer;
use burn_ipa::train::{epoch_order, Monitor, RunOptions, TrainConfig};
use burn_ipa::{Error, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;

/// The model and data every instruction-tuning command reads.
#[derive(Args, Debug, Clone, Serialize)]
pub struct DataArgs {
    /// HF model folder: config.json, model.safetensors (or shards), tokenizer.json.
    #[arg(long)]
    pub model: PathBuf,
    /// Training data: a JSON array of {instruction, input, output} (commonsense-170k format).
    #[arg(long)]
    pub data: PathBuf,
    /// Tokens per example at most (LLM-Adapters: 256).
    #[arg(long, default_value_t = 256)]
    pub cutoff: usize,
    /// Prompt layout: `llm-adapters` (byte for byte as the official scripts) or `clean`.
    #[arg(long, value_enum, default_value = "llm-adapters")]
    pub prompt_style: PromptStyleArg,
    /// Exclude the prompt from the loss (LLM-Adapters' train_on_inputs = False).
    #[arg(long)]
    pub mask_prompt: bool,
}

/// Prompt layouts.
#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
pub enum PromptStyleArg {
    /// As LLM-Adapters' scripts, whitespace included.
    LlmAdapters,
    /// The same sections without the stray indentation.
    Clean,
}

impl From<PromptStyleArg> for PromptStyle {
    fn from(a: PromptStyleArg) -> Self {
        match a {
            PromptStyleArg::LlmAdapters => PromptStyle::LlmAdapters,
            PromptStyleArg::Clean => PromptStyle::Clean,
        }
    }
}

/// Projector-fit settings.
#[derive(Args, Debug, Clone, Serialize)]
pub struct FitArgs {
    /// Fit algorithm: ipca (scikit-learn's IncrementalPCA), rsvd (the authors' randomized
    /// IPCA), gha (generalized Hebbian), covariance (exact streaming PCA).
    #[arg(long, default_value = "ipca")]
    pub algorithm: String,
    /// Fraction of the training set the fit reads (first part of the seeded shuffle).
    #[arg(long, default_value_t = 0.1)]
    pub fit_fraction: f64,
    /// Sequences per fit forward pass.
    #[arg(long, default_value_t = 8)]
    pub fit_batch_size: usize,
}

/// When IPA's projectors are fitted (`ipa train`).
#[derive(Args, Debug, Clone, Serialize)]
pub struct FitModeArgs {
    /// `pre`: fit once before training, adapters disabled (the official pre_ipca/pre_gha);
    /// `online`: update the projectors from the inputs of the training forward passes
    /// (online_ipca/online_gha).
    #[arg(long, value_enum, default_value = "pre")]
    pub fit_mode: FitMode,
    /// Online: replace the projectors every N micro-batches.
    #[arg(long, default_value_t = 1)]
    pub online_update_every: usize,
    /// Online: stop fitting after N optimizer steps (projectors fixed afterwards; needed for
    /// --resume to be exact).
    #[arg(long)]
    pub online_stop_after: Option<usize>,
}

/// Projector fit schedules.
#[derive(Clone, Copy, Debug, ValueEnum, Serialize, PartialEq)]
pub enum FitMode {
    /// Before training.
    Pre,
    /// During training.
    Online,
}

/// Adapter settings.
#[derive(Args, Debug, Clone, Serialize)]
pub struct AdapterArgs {
    /// Adapter method: ipa (fitted projector) or lora (random projector).
    #[arg(long, value_enum, default_value = "ipa")]
    pub method: MethodArg,
    /// Rank r.
    #[arg(long, default_value_t = 32)]
    pub rank: usize,
    /// LoRA alpha; the update is scaled by alpha / r (default 2·r).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Train the projector too (the paper's "Proj FT ✓"); by default it stays frozen.
    #[arg(long)]
    pub train_projector: bool,
    /// DoRA: learn a magnitude per output as well.
    #[arg(long)]
    pub dora: bool,
    /// Dropout on the adapter input.
    #[arg(long, default_value_t = 0.05)]
    pub dropout: f64,
    /// Target modules (HF names, comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,up_proj,down_proj"
    )]
    pub targets: Vec<String>,
}

/// Adapter methods.
#[derive(Clone, Copy, Debug, ValueEnum, Serialize, PartialEq)]
pub enum MethodArg {
    /// Fitted projector.
    Ipa,
    /// Random (Kaiming-uniform) projector.
    Lora,
}

impl AdapterArgs {
    pub fn config(&self) -> AdapterConfig {
        let base = match self.method {
            MethodArg::Ipa => AdapterConfig::ipa(self.rank),
            MethodArg::Lora => AdapterConfig::lora(self.rank),
        };
        base.with_scaling(Scaling::Alpha {
            alpha: self.alpha.unwrap_or(2.0 * self.rank as f64),
            rslora: false,
        })
        .with_train_projector(self.train_projector || self.method == MethodArg::Lora)
        .with_dora(self.dora)
        .with_dropout(self.dropout)
    }
}

fn pad_of(tokenizer: &Tokenizer) -> u32 {
    tokenizer
        .pad_token_id
        .or(tokenizer.eos_token_id)
        .unwrap_or(0)
}

fn write_config<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let bytes = serde_json::to_vec_pretty(value).expect("serialisable config");
    write_atomic(&dir.join(name), &bytes)
}

/// `ipa fit`.
#[derive(Serialize)]
pub struct FitJob {
    pub data: DataArgs,
    pub fit: FitArgs,
    pub rank: usize,
    pub targets: Vec<String>,
    pub seed: u64,
    pub out: PathBuf,
    #[serde(skip)]
    pub progress: bool,
}

impl BackendJob for FitJob {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device, _: &str) -> Result<()> {
        write_config(&self.out, "fit_config.json", &self)?;
        let tokenizer = Tokenizer::from_dir(&self.data.model)?;
        let model: Decoder<B> = load_decoder(&self.data.model, &device)?;
        let examples = load_examples(&self.data.data, false)?;
        let tokenized = tokenize_all(
            &tokenizer,
            &examples,
            self.data.prompt_style.into(),
            self.data.cutoff,
            self.data.mask_prompt,
        )?;
        check_vocabulary(&tokenized, model.config.vocab_size)?;
        let config = FitPassConfig {
            algorithm: self.fit.algorithm.clone(),
            rank: self.rank,
            fraction: self.fit.fit_fraction,
            batch_size: self.fit.fit_batch_size,
            seed: self.seed,
        };
        let start = std::time::Instant::now();
        let fit = fit_pass(
            &model,
            &tokenized,
            &self.targets,
            &config,
            pad_of(&tokenizer),
            self.progress,
        )?;
        let fitted = fit.finish()?;
        save_projectors(&fitted, &self.out)?;
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "fitted {} projectors of rank {} from {} tokens in {seconds:.1}s ({:.0} tokens/s); saved to {}",
            fitted.len(),
            self.rank,
            fit.rows_seen(),
            fit.rows_seen() as f64 / seconds.max(1e-9),
            self.out.join(burn_ipa::fit::PROJECTORS_FILE).display()
        );
        Ok(())
    }
}

/// `ipa train`.
#[derive(Serialize)]
pub struct TrainJob {
    pub data: DataArgs,
    pub adapter: AdapterArgs,
    pub fit: FitArgs,
    pub fit_mode: FitModeArgs,
    /// Fitted projectors from `ipa fit` (IPA); fitted now when absent.
    pub projectors: Option<PathBuf>,
    pub train: TrainConfig,
    /// Examples held out for the validation loss (LLM-Adapters: 120).
    pub val_set_size: usize,
    pub out: PathBuf,
    /// GPU ordinals to spread each step's micro-batches over (data parallelism); empty: the
    /// `--device` alone.
    #[serde(skip)]
    pub devices: Vec<usize>,
    #[serde(skip)]
    pub resume: bool,
    #[serde(skip)]
    pub progress: bool,
    /// burn-train's dashboard instead of progress bars.
    #[serde(skip)]
    pub tui: bool,
}

impl BackendJob for TrainJob {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device, _: &str) -> Result<()> {
        self.train.validate()?;
        let adapter = self.adapter.config();
        let monitor = if self.tui {
            Monitor::dashboard()?
        } else {
            Monitor::bars_if(self.progress)
        };
        write_config(&self.out, "train_config.json", &self)?;
        let tokenizer = Tokenizer::from_dir(&self.data.model)?;
        let mut model: Decoder<B> = load_decoder(&self.data.model, &device)?;
        let examples = load_examples(&self.data.data, false)?;
        let (train_set, valid_set) =
            split_validation(&examples, self.val_set_size, self.train.seed)?;
        let style: PromptStyle = self.data.prompt_style.into();
        let tokenize = |set: &[InstructionExample]| {
            tokenize_all(
                &tokenizer,
                set,
                style,
                self.data.cutoff,
                self.data.mask_prompt,
            )
        };
        let train_tok = tokenize(&train_set)?;
        let valid_tok = tokenize(&valid_set)?;
        check_vocabulary(&train_tok, model.config.vocab_size)?;
        check_vocabulary(&valid_tok, model.config.vocab_size)?;
        let pad = pad_of(&tokenizer);

        let online = self.fit_mode.fit_mode == FitMode::Online;
        if online && (self.adapter.method != MethodArg::Ipa || self.projectors.is_some()) {
            return Err(Error::Config(
                "--fit-mode online fits IPA projectors during training: use it with --method ipa \
                 and without --projectors"
                    .into(),
            ));
        }
        // LoRA's random down-projections (and any other random init) follow --seed: a
        // re-run gives the same adapters.
        B::seed(&device, self.train.seed);
        match self.adapter.method {
            MethodArg::Ipa if online => {
                // Placeholder projectors; the online fit writes the real ones.
                model.attach_adapters(&self.adapter.targets, None, &adapter, |_| {
                    ProjectorInit::Zeros
                })?;
            }
            MethodArg::Lora => {
                model.attach_adapters(&self.adapter.targets, None, &adapter, |_| {
                    ProjectorInit::KaimingUniform
                })?;
            }
            MethodArg::Ipa => {
                let projectors = match &self.projectors {
                    Some(path) => load_projectors::<B>(path, &device)?,
                    None => {
                        let config = FitPassConfig {
                            algorithm: self.fit.algorithm.clone(),
                            rank: self.adapter.rank,
                            fraction: self.fit.fit_fraction,
                            batch_size: self.fit.fit_batch_size,
                            seed: self.train.seed,
                        };
                        let fit = fit_pass(
                            &model,
                            &train_tok,
                            &self.adapter.targets,
                            &config,
                            pad,
                            monitor.shows_bars(),
                        )?;
                        let fitted = fit.finish()?;
                        save_projectors(&fitted, &self.out)?;
                        fitted
                            .into_iter()
                            .map(|(site, f)| (site, f.components))
                            .collect()
                    }
                };
                install_projectors(
                    &mut model,
                    &self.adapter.targets,
                    None,
                    &adapter,
                    &projectors,
                )?;
            }
        }
        let trainable: usize = model
            .linears_mut()
            .into_iter()
            .map(|(_, l)| l.trainable_params())
            .sum();
        println!(
            "training {} adapters ({trainable} trainable parameters) on {} examples, {} held out",
            self.adapter.targets.join(","),
            train_tok.len(),
            valid_tok.len()
        );
        let mut fingerprint = serde_json::to_value(&self).expect("json");
        if let Some(obj) = fingerprint.as_object_mut() {
            // Where the run writes does not make it a different run.
            obj.remove("out");
        }
        let options = RunOptions {
            out_dir: Some(self.out.clone()),
            resume: self.resume,
            fingerprint,
            stop_after: None,
            monitor: monitor.clone(),
        };
        let devices = data_parallel_devices::<B>(&device, &self.devices)?;
        if online && devices.len() > 1 {
            return Err(Error::Config(
                "--fit-mode online trains on one device; drop --devices".into(),
            ));
        }
        // From here Ctrl-C checkpoints and stops (before, it ends the process: nothing to keep).
        monitor.stop_on_ctrl_c()?;
        let start = std::time::Instant::now();
        let outcome = finetune::<Autodiff<B>>(
            model,
            &train_tok,
            &valid_tok,
            &self.train,
            &options,
            pad,
            &devices,
        );
        monitor.finish();
        // The last handles on a dashboard give the terminal back before anything prints.
        drop(options);
        drop(monitor);
        let outcome = outcome?;
        if outcome.stopped_early {
            println!(
                "stopped on request after step {} of {}; the checkpoint is in {}: the same \
                 command with --resume continues",
                outcome.history.last().map_or(0, |r| r.step),
                self.train.run_steps(train_tok.len()),
                self.out.join("checkpoints").display()
            );
            return Ok(());
        }
        let seconds = start.elapsed().as_secs_f64();
        let steps = outcome.history.len() - outcome.resumed_from;
        let tokens: usize = train_tok.iter().map(|t| t.input_ids.len()).sum();
        let per_step = tokens as f64 / self.train.steps_per_epoch(train_tok.len()) as f64;
        let trained = outcome.model.decoder.valid();
        let adapter_dir = self.out.join("adapter");
        save_adapter(
            &trained,
            &adapter,
            BTreeMap::from([(
                "base_model".to_string(),
                self.data.model.display().to_string(),
            )]),
            &adapter_dir,
        )?;
        if let Some(last) = outcome.history.last() {
            println!(
                "{} steps ({} this run) in {seconds:.1}s, {:.0} tokens/s; last loss {:.4}{}; adapter in {}",
                outcome.history.len(),
                steps,
                per_step * steps as f64 / seconds.max(1e-9),
                last.loss,
                last.valid_loss
                    .map(|v| format!(", validation loss {v:.4}"))
                    .unwrap_or_default(),
                adapter_dir.display()
            );
        }
        Ok(())
    }
}

/// The devices of `--devices`: the same kind as `device`, by ordinal (`device` alone when the
/// list is empty). The first one holds the model and the optimizer.
fn data_parallel_devices<B: Backend>(
    device: &B::Device,
    ordinals: &[usize],
) -> Result<Vec<B::Device>> {
    use burn::prelude::DeviceOps;
    if ordinals.is_empty() {
        return Ok(vec![device.clone()]);
    }
    let type_id = device.to_id().type_id;
    ordinals
        .iter()
        .map(|&i| {
            let index = u16::try_from(i)
                .map_err(|_| Error::Config(format!("--devices: ordinal {i} is out of range")))?;
            Ok(B::Device::from_id(burn::tensor::backend::DeviceId::new(
                type_id, index,
            )))
        })
        .collect()
}

/// Holds out `n` examples for validation from a seeded shuffle (as LLM-Adapters'
/// `train_test_split(test_size=val_set_size, seed=42)` does, though not the same draw).
fn split_validation(
    examples: &[InstructionExample],
    n: usize,
    seed: u64,
) -> Result<(Vec<InstructionExample>, Vec<InstructionExample>)> {
    if n >= examples.len() {
        return Err(Error::Config(format!(
            "--val-set-size {n} leaves no training examples (the data has {})",
            examples.len()
        )));
    }
    let order = epoch_order(examples.len(), seed ^ 0x5EED, 0);
    let valid = order[..n].iter().map(|&i| examples[i].clone()).collect();
    let train = order[n..].iter().map(|&i| examples[i].clone()).collect();
    Ok((train, valid))
}

/// `ipa eval`.
#[derive(Serialize)]
pub struct EvalJob {
    pub model: PathBuf,
    pub adapter: Option<PathBuf>,
    /// Folder with `<dataset>/test.json` per task (LLM-Adapters' `dataset/`).
    pub data_dir: PathBuf,
    pub tasks: Vec<String>,
    pub prompt_style: PromptStyleArg,
    pub num_beams: usize,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    pub limit: Option<usize>,
    pub out: PathBuf,
    #[serde(skip)]
    pub progress: bool,
}

impl BackendJob for EvalJob {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device, _: &str) -> Result<()> {
        write_config(&self.out, "eval_config.json", &self)?;
        let tokenizer = Tokenizer::from_dir(&self.model)?;
        let mut model: Decoder<B> = load_decoder(&self.model, &device)?;
        if let Some(dir) = &self.adapter {
            attach_saved_adapter(&mut model, dir)?;
        }
        let mut tests = Vec::new();
        for name in &self.tasks {
            let task = Task::from_name(name)?;
            let path = self.data_dir.join(task.dataset_name()).join("test.json");
            let mut set = load_examples(&path, true)?;
            if let Some(limit) = self.limit {
                set.truncate(limit);
            }
            tests.push((task, set));
        }
        let mut generation = GenerationConfig::greedy(&model, self.max_new_tokens);
        generation.pad_token_id = pad_of(&tokenizer);
        generation = generation.with_beams(self.num_beams);
        let (accuracy, predictions) = evaluate(
            &model,
            &tokenizer,
            self.prompt_style.into(),
            &tests,
            &generation,
            self.batch_size,
            self.progress,
        )?;
        write_predictions(&self.out.join("predictions.jsonl"), &predictions)?;
        let summary = accuracy_summary(&accuracy);
        write_config(&self.out, "accuracy.json", &summary)?;
        println!("| task | accuracy |\n|---|---:|");
        for (task, acc) in &summary {
            println!("| {task} | {:.1} |", 100.0 * acc);
        }
        Ok(())
    }
}

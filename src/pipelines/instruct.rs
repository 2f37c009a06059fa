//! The instruction-tuning experiment of the paper (commonsense-170k, the LLM-Adapters
//! protocol) as one library pipeline: [`fit`], [`train`] and [`evaluate`], each taking one
//! resolved settings struct. `ipa fit`, `ipa train`, `ipa eval` and the quickstart all call
//! these, so a setting exists for every front-end or for none.
//!
//! * [`fit`] ([`FitRun`]): the frozen model over the first fraction of the seeded shuffle of
//!   the training split → `projectors.safetensors`;
//! * [`train`] ([`TrainRun`]): adapters whose projectors are drawn at random (LoRA), fitted
//!   first (IPA, `pre_ipca`/`pre_gha`), read from [`fit`]'s output, or fitted online during
//!   training (`online_ipca`/`online_gha`); AdamW with warm-up and linear decay, step
//!   checkpoints, exact resume; the adapter with the best validation loss kept (or the last);
//!   the step loop trains, or burn-train's Learner ([`TrainRun::trainer`],
//!   [`crate::train::learner`]) with the same steps;
//! * [`evaluate`] ([`EvalRun`]): generate after the evaluation prompt and score the first
//!   answer word of each task.
//!
//! Every run locks its output folder, refuses a folder holding something else unless told to
//! resume or overwrite ([`Existing`]), writes its resolved settings next to its results and
//! fingerprints the content of what it read (model, data, projectors), so `--resume` after a
//! file changed is refused naming what changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::online::{finetune_online, OnlineFit};
use super::out_dir::{Existing, OutDir};
use super::trainer::{resumable, Trainer};
use crate::adapter::{
    load_adapter, read_adapter_config, save_adapter, write_atomic, AdapterConfig, AdapterMethod,
    ProjectorInit, Scaling,
};
use crate::data::instruction::{
    check_vocabulary, load_examples, tokenize_all, PromptStyle, TokenizedExample,
};
use crate::eval::{accuracy_summary, write_predictions, TestSet};
use crate::fit::{
    fit_pass, install_projectors, load_projectors, save_projectors, FitPassConfig, PROJECTORS_FILE,
};
use crate::models::config::DecoderFamily;
use crate::models::generate::GenerationConfig;
use crate::models::llama::Decoder;
use crate::models::loading::load_decoder;
use crate::models::tokenizer::Tokenizer;
use crate::train::fingerprint::{data_identity, model_identity};
use crate::train::learner::{learn, KeepBest, LearnerSettings, ValidSet};
use crate::train::{
    count_trainable, epoch_order, finetune, lm_batch, trainable_lm, validation_loss, CausalLm,
    LmBatcher, Monitor, RunOptions, StepRecord, TrainConfig, Trainable, Validation,
};
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// The model, the training data and how examples become token sequences.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DataSpec {
    /// HF model folder (config.json, safetensors, tokenizer.json).
    pub model: PathBuf,
    /// Training data: a JSON array of `{instruction, input, output}`.
    pub data: PathBuf,
    /// Tokens per example at most (LLM-Adapters: 256).
    pub cutoff: usize,
    /// Prompt layout.
    pub prompt_style: PromptStyle,
    /// Loss on the response only (LLM-Adapters' `train_on_inputs = False`).
    pub mask_prompt: bool,
    /// Examples held out (from a seeded shuffle) for the validation loss (LLM-Adapters: 120).
    /// The fit pass never reads them either.
    pub val_set_size: usize,
}

impl DataSpec {
    fn validate(&self) -> Result<()> {
        if self.cutoff < 2 {
            return Err(Error::Config(format!(
                "cutoff {}: a training sequence needs at least 2 tokens (one to read, one to \
                 predict)",
                self.cutoff
            )));
        }
        Ok(())
    }
}

/// A random projector's draw.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RandomInit {
    /// Kaiming-uniform (`a = √5`) as HF peft's LoRA.
    Kaiming,
    /// Orthonormal rows spanning a uniformly random subspace, as the official code's frozen
    /// random projector (`nn.init.orthogonal_`).
    Orthogonal,
}

/// Where the adapters' projectors come from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum ProjectorSource {
    /// Drawn at random from the run's seed (LoRA).
    Random {
        /// The draw.
        init: RandomInit,
    },
    /// Fitted forward-only before training with the adapters off (IPA's `pre_*` modes);
    /// written to `projectors.safetensors` in the output folder.
    PreFit {
        /// The fit pass.
        fit: FitPassConfig,
    },
    /// Read from an `ipa fit` output (a folder or the file).
    Saved {
        /// The folder or `projectors.safetensors`.
        path: PathBuf,
    },
    /// Fitted online from the training forward passes (IPA's `online_*` modes).
    Online {
        /// The online fit.
        fit: OnlineFit,
    },
}

/// Which adapter a run leaves in `adapter/`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// The one with the lowest validation loss (HF's `load_best_model_at_end`, as every
    /// official run); the last one when there is no validation.
    Best,
    /// The one after the last step.
    Last,
}

/// The adapter's settings before the model is known (defaults depend on the method and the
/// model family); [`AdapterSpec::resolve`] gives the [`AdapterConfig`] every target gets.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdapterSpec {
    /// LoRA (random projector) or IPA (fitted projector).
    pub method: AdapterMethod,
    /// Rank `r`.
    pub rank: usize,
    /// IPA's plain scaling factor; `None`: 0.25, or 0.4 for Gemma-3 (the official scripts).
    pub scaling: Option<f64>,
    /// LoRA/DoRA's `alpha` (the update is scaled by `alpha / r`); `None`: `2 r`.
    pub alpha: Option<f64>,
    /// Dropout on the adapter input; `None`: 0 for IPA, 0.05 for LoRA/DoRA (official scripts).
    pub dropout: Option<f64>,
    /// Whether the projector trains; `None`: LoRA's does, IPA's does not.
    pub train_projector: Option<bool>,
    /// DoRA's magnitude vector on top.
    pub dora: bool,
}

impl AdapterSpec {
    /// IPA of rank `rank` with every default.
    pub fn ipa(rank: usize) -> Self {
        Self {
            method: AdapterMethod::Ipa,
            rank,
            scaling: None,
            alpha: None,
            dropout: None,
            train_projector: None,
            dora: false,
        }
    }

    /// LoRA of rank `rank` with every default.
    pub fn lora(rank: usize) -> Self {
        Self {
            method: AdapterMethod::Lora,
            ..Self::ipa(rank)
        }
    }

    /// The adapter for a model of `family`.
    pub fn resolve(&self, family: DecoderFamily) -> Result<AdapterConfig> {
        let scaling = match self.method {
            AdapterMethod::Ipa => {
                if self.alpha.is_some() {
                    return Err(Error::Config(
                        "IPA's update is scaled by a plain factor: give --scaling, not --alpha"
                            .into(),
                    ));
                }
                let default = if family == DecoderFamily::Gemma3 {
                    0.4
                } else {
                    0.25
                };
                Scaling::Factor(self.scaling.unwrap_or(default))
            }
            AdapterMethod::Lora => {
                if self.scaling.is_some() {
                    return Err(Error::Config(
                        "LoRA's update is scaled by alpha / r: give --alpha, not --scaling".into(),
                    ));
                }
                Scaling::Alpha {
                    alpha: self.alpha.unwrap_or(2.0 * self.rank as f64),
                    rslora: false,
                }
            }
        };
        let dropout = self.dropout.unwrap_or(match self.method {
            AdapterMethod::Ipa if !self.dora => 0.0,
            _ => 0.05,
        });
        let base = match self.method {
            AdapterMethod::Ipa => AdapterConfig::ipa(self.rank),
            AdapterMethod::Lora => AdapterConfig::lora(self.rank),
        };
        let config = base
            .with_scaling(scaling)
            .with_dropout(dropout)
            .with_dora(self.dora)
            .with_train_projector(
                self.train_projector
                    .unwrap_or(self.method == AdapterMethod::Lora),
            );
        if config.rank == 0 {
            return Err(Error::Config("--rank must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(Error::Config(format!(
                "--dropout {} is not in [0, 1)",
                config.dropout
            )));
        }
        if !config.scale().is_finite() {
            return Err(Error::Config("the adapter's scaling is not finite".into()));
        }
        Ok(config)
    }
}

/// Settings of an `ipa fit` run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FitRun {
    /// Model and data (the validation examples are held out as [`train`] holds them out).
    pub data: DataSpec,
    /// Target modules (HF names).
    pub targets: Vec<String>,
    /// The fit pass (rank, algorithm, fraction, batch, seed).
    pub fit: FitPassConfig,
}

/// What a training run fine-tunes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Tuning {
    /// Low-rank adapters (LoRA, IPA, with DoRA or not) on the targets, the base frozen; the
    /// result is an adapter folder.
    Adapters {
        /// The adapter.
        adapter: AdapterSpec,
        /// Where the projectors come from.
        projectors: ProjectorSource,
    },
    /// The targets' own weights (in every layer), no adapter: the paper's "fine-tuning q and
    /// v" baseline; the result is a model folder.
    Weights,
    /// Every weight of the model (full fine-tuning); the result is a model folder.
    Full,
}

/// Settings of an `ipa train` run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainRun {
    /// Model and data.
    pub data: DataSpec,
    /// Target modules (HF names).
    pub targets: Vec<String>,
    /// What trains.
    pub tuning: Tuning,
    /// Optimisation; its seed also seeds the validation split, random projectors and fits.
    pub train: TrainConfig,
    /// Which result (adapter or model) ends up in the output folder.
    pub keep: Keep,
    /// Which loop trains: the step loop or burn-train's Learner (adapters only, no online
    /// fit, validation at the end of its checkpoint windows).
    #[serde(default, skip_serializing_if = "Trainer::is_loop")]
    pub trainer: Trainer,
}

/// Settings of an `ipa eval` run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalRun {
    /// HF model folder.
    pub model: PathBuf,
    /// Adapter folder (this crate's or HF peft's); `None`: the base model.
    pub adapter: Option<PathBuf>,
    /// Folder with `<task>/test.json` per task.
    pub data_dir: PathBuf,
    /// Task names (LLM-Adapters' dataset folders).
    pub tasks: Vec<String>,
    /// Prompt layout.
    pub prompt_style: PromptStyle,
    /// Beams (1: greedy; the official evaluation uses 4).
    pub num_beams: usize,
    /// Tokens generated at most (official: 32).
    pub max_new_tokens: usize,
    /// Prompts per generation batch.
    pub batch_size: usize,
    /// Only the first N examples of each task.
    pub limit: Option<usize>,
    /// Read every task's answer as the leftmost match of this regular expression (default:
    /// the official answer words of the eight commonsense tasks, the distinct `answer` values
    /// of any other task's data).
    #[serde(default)]
    pub answer_pattern: Option<String>,
}

/// How a run treats its output folder and reports progress.
#[derive(Clone, Debug, Default)]
pub struct RunControl {
    /// What to do with a non-empty output folder.
    pub existing: Option<Existing>,
    /// Progress bars, a dashboard or nothing; stop requests.
    pub monitor: Monitor,
    /// Make Ctrl-C a stop request once training starts (a process-wide handler: for
    /// command-line front-ends).
    pub ctrl_c: bool,
    /// Stop (as if interrupted) after this many optimizer steps (tests of resume).
    pub stop_after: Option<usize>,
}

impl RunControl {
    fn existing(&self) -> Existing {
        self.existing.unwrap_or(Existing::Refuse)
    }
}

// ---------------------------------------------------------------------------------------------
// Files a run writes
// ---------------------------------------------------------------------------------------------

/// The resolved settings of `ipa fit`.
pub const FIT_CONFIG_FILE: &str = "fit_config.json";
/// The resolved settings of `ipa train`.
pub const TRAIN_CONFIG_FILE: &str = "train_config.json";
/// What `ipa train` did.
pub const TRAIN_REPORT_FILE: &str = "train_report.json";
/// The resolved settings of `ipa eval`.
pub const EVAL_CONFIG_FILE: &str = "eval_config.json";
/// The adapter a training run of adapters leaves.
pub const ADAPTER_DIR: &str = "adapter";
/// The model a training run of weights (or of every weight) leaves.
pub const MODEL_DIR: &str = "model";
/// The adapter as it was before the first step.
pub const INIT_ADAPTER_DIR: &str = "adapter_init";
/// The adapter of the best validation so far (inside `checkpoints/`).
const BEST_DIR: &str = "best";
const BEST_FILE: &str = "best.json";

fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::State(format!("serialising {}: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// The tokenizer, the training and validation splits (tokenized) and the pad id of a run.
pub struct InstructData {
    /// The model's tokenizer.
    pub tokenizer: Tokenizer,
    /// Training examples (the file minus the held-out ones), in file order.
    pub train: Vec<TokenizedExample>,
    /// Held-out examples.
    pub valid: Vec<TokenizedExample>,
    /// Id written in padded positions.
    pub pad_id: u32,
    /// Examples whose labels are all masked (no response token survives the cutoff).
    pub without_targets: usize,
}

/// A settings error about a file's content, reported as an error of that file.
fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::Config(message) => Error::file(path, message),
        other => other,
    }
}

/// The pad id of a tokenizer: its pad token, else EOS, else 0.
pub fn pad_id_of(tokenizer: &Tokenizer) -> u32 {
    tokenizer
        .pad_token_id
        .or(tokenizer.eos_token_id)
        .unwrap_or(0)
}

/// The indices held out for validation: the first `n` of a seeded shuffle (as LLM-Adapters'
/// `train_test_split(test_size=val_set_size, seed=42)` does, though not the same draw).
pub fn validation_indices(len: usize, n: usize, seed: u64) -> Result<Vec<usize>> {
    if n >= len {
        return Err(Error::Config(format!(
            "--val-set-size {n} leaves no training examples (the data has {len})"
        )));
    }
    let mut held: Vec<usize> = epoch_order(len, seed ^ 0x5EED, 0)[..n].to_vec();
    held.sort_unstable();
    Ok(held)
}

impl InstructData {
    /// Reads and tokenizes the data of `spec` for `model` (vocabulary checked in file order,
    /// so an error names the file's example index) and holds out the validation examples.
    pub fn load<B: Backend>(spec: &DataSpec, model: &Decoder<B>, seed: u64) -> Result<Self> {
        spec.validate()?;
        let tokenizer = Tokenizer::load(&spec.model)?;
        let examples = load_examples(&spec.data, false)?;
        let tokenized = tokenize_all(
            &tokenizer,
            &examples,
            spec.prompt_style,
            spec.cutoff,
            spec.mask_prompt,
        )
        .map_err(|e| in_file(&spec.data, e))?;
        check_vocabulary(&tokenized, model.config.vocab_size)
            .map_err(|e| in_file(&spec.data, e))?;
        // Targets are the labels from position 1 on (position t predicts label t + 1).
        let without_targets = tokenized
            .iter()
            .filter(|t| {
                t.labels
                    .iter()
                    .skip(1)
                    .all(|&l| l == crate::data::instruction::IGNORE_INDEX)
            })
            .count();
        if without_targets == tokenized.len() {
            return Err(Error::Config(format!(
                "no example of {} keeps a response token to learn from (--cutoff {} with \
                 --mask-prompt masks all of them): raise --cutoff or drop --mask-prompt",
                spec.data.display(),
                spec.cutoff
            )));
        }
        let held = validation_indices(tokenized.len(), spec.val_set_size, seed)?;
        let mut train = Vec::with_capacity(tokenized.len() - held.len());
        let mut valid = Vec::with_capacity(held.len());
        let mut next = held.iter().peekable();
        for (i, t) in tokenized.into_iter().enumerate() {
            if next.peek() == Some(&&i) {
                next.next();
                valid.push(t);
            } else {
                train.push(t);
            }
        }
        let pad_id = pad_id_of(&tokenizer);
        Ok(Self {
            tokenizer,
            train,
            valid,
            pad_id,
            without_targets,
        })
    }

    /// Tokens in the training split.
    pub fn train_tokens(&self) -> usize {
        self.train.iter().map(|t| t.input_ids.len()).sum()
    }
}

fn check_targets(targets: &[String]) -> Result<()> {
    if targets.is_empty() || targets.iter().any(|t| t.trim().is_empty()) {
        return Err(Error::Config(
            "--targets: give target module names separated by commas (e.g. q_proj,v_proj)".into(),
        ));
    }
    for t in targets {
        crate::fit::site_kind_of(t)?;
    }
    Ok(())
}

/// What a run read, by content: the model's config and weight headers, the data file.
fn inputs_identity(spec: &DataSpec) -> Result<Value> {
    Ok(json!({
        "model": model_identity(&spec.model)?,
        "data": data_identity(&spec.data)?,
    }))
}

// ---------------------------------------------------------------------------------------------
// fit
// ---------------------------------------------------------------------------------------------

/// What [`fit`] did.
#[derive(Clone, Debug, Serialize)]
pub struct FitReport {
    /// Projectors fitted (one per distinct input site).
    pub projectors: usize,
    /// Their rank.
    pub rank: usize,
    /// Tokens (rows) the estimators saw.
    pub tokens: usize,
    /// Wall time of the fit pass, in seconds.
    pub seconds: f64,
    /// The projectors file.
    pub path: PathBuf,
}

/// `ipa fit`: fits one projector per distinct input site of `run.targets` on the first
/// `run.fit.fraction` of the seeded shuffle of the training split and writes
/// `projectors.safetensors` and `fit_config.json` to `out`.
pub fn fit<B: Backend>(
    run: &FitRun,
    out: &Path,
    control: &RunControl,
    device: &B::Device,
) -> Result<FitReport> {
    run.data.validate()?;
    run.fit.validate()?;
    check_targets(&run.targets)?;
    let dir = OutDir::lock(out, "ipa fit")?;
    dir.prepare(control.existing(), "projectors", false)?;
    let model: Decoder<B> = load_decoder(&run.data.model, device)?;
    let data = InstructData::load(&run.data, &model, run.fit.seed)?;
    write_json(
        &out.join(FIT_CONFIG_FILE),
        &json!({ "settings": run, "inputs": inputs_identity(&run.data)? }),
    )?;
    let start = std::time::Instant::now();
    let fitted = fit_pass(
        &model,
        &data.train,
        &run.targets,
        &run.fit,
        data.pad_id,
        control.monitor.shows_bars(),
    )?;
    let tokens = fitted.rows_seen();
    let projectors = fitted.finish()?;
    save_projectors(&projectors, out)?;
    Ok(FitReport {
        projectors: projectors.len(),
        rank: run.fit.rank,
        tokens,
        seconds: start.elapsed().as_secs_f64(),
        path: out.join(PROJECTORS_FILE),
    })
}

// ---------------------------------------------------------------------------------------------
// train
// ---------------------------------------------------------------------------------------------

/// What [`train`] did (also `train_report.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainReport {
    /// The adapter every target got (`None` when weights trained without one).
    pub adapter: Option<AdapterConfig>,
    /// Adapted (or trained) linears; every parameter tensor for full fine-tuning.
    pub adapted: usize,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// Training and held-out examples.
    pub train_examples: usize,
    /// Held-out examples.
    pub valid_examples: usize,
    /// Training examples without a target token (their response was cut off or masked).
    pub examples_without_targets: usize,
    /// Optimizer steps done (including those before a resume) and the run's last step.
    pub steps: usize,
    /// Steps the run takes in all.
    pub run_steps: usize,
    /// Step this process resumed from (0: a fresh run).
    pub resumed_from: usize,
    /// The run stopped early on request; `adapter/` is not written yet.
    pub stopped_early: bool,
    /// Mean training loss of the last step.
    pub last_loss: Option<f64>,
    /// The step whose adapter is in `adapter/`, and its validation loss.
    pub kept_step: Option<usize>,
    /// Validation loss of the kept adapter.
    pub kept_valid_loss: Option<f64>,
    /// Training tokens per second in this process.
    pub tokens_per_second: f64,
    /// Wall time of the training steps over the whole run (resumed parts included), seconds.
    #[serde(default)]
    pub train_seconds: f64,
    /// The folder of the kept result: `adapter/`, or `model/` when weights trained.
    pub result_dir: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct BestRecord {
    step: usize,
    valid_loss: f64,
}

fn read_best(dir: &Path) -> Option<BestRecord> {
    let text = std::fs::read_to_string(dir.join(BEST_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Replaces the folder `dir` by a fresh adapter folder atomically (written beside it, then
/// renamed into place).
fn save_adapter_dir<B: Backend>(
    model: &Decoder<B>,
    adapter: &AdapterConfig,
    metadata: BTreeMap<String, String>,
    dir: &Path,
    extra: Option<(&str, &[u8])>,
) -> Result<()> {
    let parent = dir
        .parent()
        .ok_or_else(|| Error::file(dir, "has no parent folder"))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    }
    save_adapter(model, adapter, metadata, &tmp)?;
    if let Some((file, bytes)) = extra {
        write_atomic(&tmp.join(file), bytes)?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::file(dir, e))
}

/// Replaces the folder `dir` by a model checkpoint of `model`'s weights in the layout of
/// `source` (atomically: written beside it, then renamed); from a GGUF file, `tokenizer`'s
/// `Some`, a new f32 HF checkpoint with that tokenizer.
fn save_model_dir<B: Backend>(
    model: &Decoder<B>,
    source: &Path,
    tokenizer: Option<&Tokenizer>,
    dir: &Path,
    extra: Option<(&str, &[u8])>,
) -> Result<()> {
    let parent = dir
        .parent()
        .ok_or_else(|| Error::file(dir, "has no parent folder"))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    }
    match tokenizer {
        Some(tokenizer) => crate::export::export_model_standalone(model, tokenizer, &tmp)?,
        None => {
            crate::export::export_model(model, source, &tmp, crate::export::WeightDtype::Source)?
        }
    }
    if let Some((file, bytes)) = extra {
        write_atomic(&tmp.join(file), bytes)?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::file(dir, e))
}

fn copy_dir(from: &Path, to: &Path, skip: &[&str]) -> Result<()> {
    let parent = to
        .parent()
        .ok_or_else(|| Error::file(to, "has no parent folder"))?;
    let tmp = parent.join(".adapter.copy.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::file(from, e))? {
        let entry = entry.map_err(|e| Error::file(from, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if skip.contains(&name.as_str()) {
            continue;
        }
        std::fs::copy(entry.path(), tmp.join(&name)).map_err(|e| Error::file(entry.path(), e))?;
    }
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(|e| Error::file(to, e))?;
    }
    std::fs::rename(&tmp, to).map_err(|e| Error::file(to, e))
}

/// Attaches IPA or LoRA adapters to `model` as `projectors` says (fitting first for
/// [`ProjectorSource::PreFit`]); `resuming` skips fits and draws (the checkpoint holds every
/// adapter tensor). Returns the adapted paths.
#[allow(clippy::too_many_arguments)]
fn attach_for_run<B: Backend>(
    model: &mut Decoder<B>,
    run: &TrainRun,
    adapter: &AdapterConfig,
    projectors: &ProjectorSource,
    data: &InstructData,
    out: &Path,
    resuming: bool,
    control: &RunControl,
    device: &B::Device,
) -> Result<Vec<String>> {
    let placeholder = |_: &str| ProjectorInit::Zeros;
    if resuming {
        return model.attach_adapters(&run.targets, None, adapter, placeholder);
    }
    match projectors {
        ProjectorSource::Random { init } => {
            // A re-run draws the same projectors.
            B::seed(device, run.train.seed);
            let init = *init;
            model.attach_adapters(&run.targets, None, adapter, |_| match init {
                RandomInit::Kaiming => ProjectorInit::KaimingUniform,
                RandomInit::Orthogonal => ProjectorInit::Orthogonal,
            })
        }
        ProjectorSource::PreFit { fit } => {
            let fitted = fit_pass(
                model,
                &data.train,
                &run.targets,
                fit,
                data.pad_id,
                control.monitor.shows_bars(),
            )?;
            let projectors = fitted.finish()?;
            save_projectors(&projectors, out)?;
            let projectors = projectors
                .into_iter()
                .map(|(site, f)| (site, f.components))
                .collect();
            install_projectors(model, &run.targets, None, adapter, &projectors)
        }
        ProjectorSource::Saved { path } => {
            let projectors = load_projectors::<B>(path, device)?;
            install_projectors(model, &run.targets, None, adapter, &projectors).map_err(|e| {
                Error::file(
                    path,
                    format!("the projectors do not fit this run's targets or rank: {e}"),
                )
            })
        }
        // Placeholders: the online fit writes the projectors.
        ProjectorSource::Online { .. } => {
            model.attach_adapters(&run.targets, None, adapter, placeholder)
        }
    }
}

impl TrainRun {
    /// Checks the settings that do not depend on the model or the data.
    pub fn validate(&self) -> Result<()> {
        self.data.validate()?;
        self.train.validate()?;
        if self.trainer == Trainer::Learner {
            self.validate_for_learner()?;
        }
        let Tuning::Adapters {
            adapter,
            projectors,
        } = &self.tuning
        else {
            if self.tuning == Tuning::Weights {
                check_targets(&self.targets)?;
            }
            return Ok(());
        };
        check_targets(&self.targets)?;
        match (projectors, adapter.method) {
            (ProjectorSource::Random { .. }, AdapterMethod::Ipa) => {
                return Err(Error::Config(
                    "IPA's projectors are fitted: a random projector is LoRA (--method lora)"
                        .into(),
                ))
            }
            (ProjectorSource::Random { .. }, AdapterMethod::Lora) => {}
            (ProjectorSource::Saved { path }, AdapterMethod::Lora) => {
                return Err(Error::Config(format!(
                    "--projectors {}: LoRA draws its projectors at random and would ignore \
                     fitted ones; use --method ipa to train on them",
                    path.display()
                )))
            }
            (_, AdapterMethod::Lora) => {
                return Err(Error::Config(
                    "fitted (pre or online) projectors are IPA's: use --method ipa".into(),
                ))
            }
            (ProjectorSource::PreFit { fit }, AdapterMethod::Ipa) => {
                fit.validate()?;
                if fit.rank != adapter.rank {
                    return Err(Error::Config(format!(
                        "the fit's rank {} differs from the adapter's rank {}",
                        fit.rank, adapter.rank
                    )));
                }
            }
            (ProjectorSource::Online { fit }, AdapterMethod::Ipa) => fit.validate()?,
            (ProjectorSource::Saved { .. }, AdapterMethod::Ipa) => {}
        }
        Ok(())
    }

    /// What `--trainer learner` cannot run: weights without adapters (its checkpoints hold
    /// adapters only), online fits (no hook before each micro-batch), and validations that
    /// do not end one of its checkpoint windows.
    fn validate_for_learner(&self) -> Result<()> {
        match &self.tuning {
            Tuning::Weights | Tuning::Full => {
                return Err(Error::Config(
                    "--trainer learner trains adapters (its checkpoints hold the adapters \
                     only); --method weights and --method full run with --trainer loop"
                        .into(),
                ))
            }
            Tuning::Adapters {
                projectors: ProjectorSource::Online { .. },
                ..
            } => {
                return Err(Error::Config(
                    "--fit-mode online updates the projectors before every micro-batch, which \
                     burn-train's Learner has no hook for: use --trainer loop"
                        .into(),
                ))
            }
            Tuning::Adapters { .. } => {}
        }
        let (every, valid) = (self.train.checkpoint_every, self.train.valid_every);
        if every > 0 && valid > 0 && !valid.is_multiple_of(every) {
            return Err(Error::Config(format!(
                "--valid-every {valid}: --trainer learner checkpoints and validates at the end \
                 of burn-train epochs of --checkpoint-every {every} steps; give a multiple of \
                 {every} (or 0), or use --trainer loop"
            )));
        }
        Ok(())
    }

    /// The parameters that train.
    pub fn trainable(&self) -> Trainable {
        match self.tuning {
            Tuning::Adapters { .. } => Trainable::Adapters,
            Tuning::Weights => Trainable::Weights(self.targets.clone()),
            Tuning::Full => Trainable::All,
        }
    }

    /// What identifies the run in its checkpoints: the settings (without `max_steps`, which
    /// only says where this process stops) and the content of what it reads.
    fn fingerprint(&self, adapter: Option<&AdapterConfig>) -> Result<Value> {
        let mut settings = serde_json::to_value(self).expect("settings serialise");
        if let Some(train) = settings.get_mut("train").and_then(Value::as_object_mut) {
            train.remove("max_steps");
        }
        let mut inputs = inputs_identity(&self.data)?;
        if let Tuning::Adapters {
            projectors: ProjectorSource::Saved { path },
            ..
        } = &self.tuning
        {
            let file = if path.is_dir() {
                path.join(PROJECTORS_FILE)
            } else {
                path.clone()
            };
            inputs["projectors"] = data_identity(&file)?;
        }
        Ok(json!({ "settings": settings, "adapter": adapter, "inputs": inputs }))
    }
}

/// `ipa train`: see the [module documentation](self). Writes `train_config.json`,
/// `metrics.csv`, `checkpoints/`, `projectors.safetensors` (when it fits first),
/// `adapter/` and `train_report.json` to `out`.
pub fn train<B: Backend>(
    run: &TrainRun,
    out: &Path,
    control: &RunControl,
    devices: &[B::Device],
) -> Result<TrainReport> {
    type AB<B> = Autodiff<B>;
    run.validate()?;
    let device = devices
        .first()
        .ok_or_else(|| Error::Config("no device to train on".into()))?;
    let (spec, projectors) = match &run.tuning {
        Tuning::Adapters {
            adapter,
            projectors,
        } => (Some(adapter), Some(projectors)),
        _ => (None, None),
    };
    let online = match projectors {
        Some(ProjectorSource::Online { fit }) => Some(fit),
        _ => None,
    };
    if online.is_some() && devices.len() > 1 {
        return Err(Error::Config(
            "--fit-mode online trains on one device; drop --devices".into(),
        ));
    }
    let dir = OutDir::lock(out, "ipa train")?;
    dir.prepare(control.existing(), "a training run", true)?;

    let mut model: Decoder<B> = load_decoder(&run.data.model, device)?;
    let adapter = spec.map(|a| a.resolve(model.config.family)).transpose()?;
    let data = InstructData::load(&run.data, &model, run.train.seed)?;
    let fingerprint = run.fingerprint(adapter.as_ref())?;
    let resuming = control.existing() == Existing::Resume && resumable(out, run.trainer)?;
    write_json(
        &out.join(TRAIN_CONFIG_FILE),
        &json!({ "settings": run, "adapter": adapter, "inputs": fingerprint["inputs"] }),
    )?;
    if data.without_targets > 0 {
        eprintln!(
            "warning: {} of {} examples keep no response token after --cutoff {}{}; they add \
             nothing to the loss",
            data.without_targets,
            data.train.len() + data.valid.len(),
            run.data.cutoff,
            if run.data.mask_prompt {
                " with --mask-prompt"
            } else {
                ""
            }
        );
    }

    let trainable = run.trainable();
    let adapted = match (&adapter, projectors) {
        (Some(adapter), Some(projectors)) => attach_for_run(
            &mut model, run, adapter, projectors, &data, out, resuming, control, device,
        )?
        .len(),
        _ => match &trainable {
            Trainable::All => burn_store::ModuleSnapshot::collect(&model, None, None, false).len(),
            _ => model
                .linears_mut()
                .into_iter()
                .filter(|(p, _)| run.targets.iter().any(|t| p.ends_with(&format!(".{t}"))))
                .count(),
        },
    };
    if let (Some(adapter), false) = (&adapter, resuming) {
        // Where the adapter started, for measuring how far each part moved.
        let metadata = BTreeMap::from([("step".to_string(), "0".to_string())]);
        save_adapter_dir(&model, adapter, metadata, &out.join(INIT_ADAPTER_DIR), None)?;
    }
    let trainable_params = count_trainable(&model, &trainable);
    let run_steps = run.train.run_steps(data.train.len());
    if control.monitor.shows_bars() {
        let what = match (&adapter, &trainable) {
            (Some(a), _) => format!(
                "{adapted} {} adapters of rank {} on {}",
                a.method,
                a.rank,
                run.targets.join(",")
            ),
            (None, Trainable::All) => "every weight".to_string(),
            (None, _) => format!(
                "the weights of {adapted} linears ({})",
                run.targets.join(",")
            ),
        };
        eprintln!(
            "training {what} ({trainable_params} trainable parameters) over {} examples, {} \
             held out, {run_steps} steps",
            data.train.len(),
            data.valid.len(),
        );
    }

    let options = RunOptions {
        out_dir: Some(out.to_path_buf()),
        resume: control.existing() == Existing::Resume,
        fingerprint,
        stop_after: control.stop_after,
        monitor: control.monitor.clone(),
    };
    let best_dir = out.join("checkpoints").join(BEST_DIR);
    let keep_best = run.keep == Keep::Best;
    let base_name = run.data.model.display().to_string();
    // A GGUF base has no safetensors to mirror: a model result is written as a new checkpoint
    // with the file's tokenizer (the one the data was tokenized with).
    let gguf_tokenizer = (adapter.is_none() && crate::models::gguf::is_gguf(&run.data.model))
        .then_some(&data.tokenizer);
    // The result of a run: its adapter, or the model whose weights trained.
    let save_result = |inner: &Decoder<B>,
                       step: usize,
                       dir: &Path,
                       extra: Option<(&str, &[u8])>| {
        match &adapter {
            Some(adapter) => {
                let metadata = BTreeMap::from([
                    ("base_model".to_string(), base_name.clone()),
                    ("step".to_string(), step.to_string()),
                ]);
                save_adapter_dir(inner, adapter, metadata, dir, extra)
            }
            None => save_model_dir(inner, &run.data.model, gguf_tokenizer, dir, extra),
        }
    };
    if control.ctrl_c {
        // From here Ctrl-C checkpoints and stops (before, it ends the process: nothing to
        // keep).
        control.monitor.stop_on_ctrl_c()?;
    }
    let start = std::time::Instant::now();
    let trained = match run.trainer {
        Trainer::Loop => {
            let mut validate = |m: &CausalLm<AB<B>>, step: usize| -> Result<f64> {
                let inner = m.decoder.valid();
                let loss =
                    validation_loss(&inner, &data.valid, run.train.micro_batch_size, data.pad_id)?;
                if keep_best && read_best(&best_dir).is_none_or(|b| loss < b.valid_loss) {
                    let record = BestRecord {
                        step,
                        valid_loss: loss,
                    };
                    let bytes = serde_json::to_vec_pretty(&record).expect("record serialises");
                    save_result(&inner, step, &best_dir, Some((BEST_FILE, &bytes)))?;
                }
                Ok(loss)
            };
            let valid: Option<&mut Validation<'_, CausalLm<AB<B>>>> = if data.valid.is_empty() {
                None
            } else {
                Some(&mut validate)
            };
            let outcome = match online {
                Some(fit) => finetune_online::<AB<B>>(
                    model,
                    &data.train,
                    &run.train,
                    &options,
                    fit,
                    data.pad_id,
                    device,
                    valid,
                ),
                None => finetune::<AB<B>>(
                    model,
                    &data.train,
                    &run.train,
                    &options,
                    data.pad_id,
                    devices,
                    &trainable,
                    valid,
                ),
            };
            outcome.map(|o| Trained {
                last: o.model.decoder.valid(),
                history: o.history,
                resumed_from: o.resumed_from,
                stopped_early: o.stopped_early,
                elapsed_seconds: o.elapsed_seconds,
                best: None,
            })
        }
        Trainer::Learner => learn_lm::<B>(model, run, &data, options, keep_best, devices),
    };
    control.monitor.finish();
    let trained = trained?;
    let seconds = start.elapsed().as_secs_f64();
    let done = trained.history.last().map_or(0, |r| r.step);
    let steps_here = done - trained.resumed_from;
    let per_step = data.train_tokens() as f64 / run.train.steps_per_epoch(data.train.len()) as f64;
    let result_dir = out.join(if adapter.is_some() {
        ADAPTER_DIR
    } else {
        MODEL_DIR
    });
    let mut report = TrainReport {
        adapter: adapter.clone(),
        adapted,
        trainable_params,
        train_examples: data.train.len(),
        valid_examples: data.valid.len(),
        examples_without_targets: data.without_targets,
        steps: done,
        run_steps,
        resumed_from: trained.resumed_from,
        stopped_early: trained.stopped_early,
        last_loss: trained.history.last().map(|r| r.loss),
        kept_step: None,
        kept_valid_loss: None,
        tokens_per_second: per_step * steps_here as f64 / seconds.max(1e-9),
        train_seconds: trained.elapsed_seconds,
        result_dir: result_dir.clone(),
    };
    if trained.stopped_early {
        return Ok(report);
    }
    let best = keep_best.then(|| read_best(&best_dir)).flatten();
    match (trained.best, best) {
        (Some((step, valid_loss, model)), _) => {
            save_result(&model, step, &result_dir, None)?;
            report.kept_step = Some(step);
            report.kept_valid_loss = Some(valid_loss);
        }
        (None, Some(best)) => {
            copy_dir(&best_dir, &result_dir, &[BEST_FILE])?;
            report.kept_step = Some(best.step);
            report.kept_valid_loss = Some(best.valid_loss);
        }
        (None, None) => {
            save_result(&trained.last, report.steps, &result_dir, None)?;
            report.kept_step = trained.history.last().map(|r| r.step);
            report.kept_valid_loss = last_valid(&trained.history);
        }
    }
    write_json(&out.join(TRAIN_REPORT_FILE), &report)?;
    Ok(report)
}

/// What training left, whichever loop ran it.
struct Trained<B: Backend> {
    /// The model after the last step.
    last: Decoder<B>,
    /// Every optimizer step, those before a resume included.
    history: Vec<StepRecord>,
    resumed_from: usize,
    stopped_early: bool,
    elapsed_seconds: f64,
    /// The Learner's best window: its step, validation loss and model.
    best: Option<(usize, f64, Decoder<B>)>,
}

/// `ipa train --trainer learner`: the same run through burn-train's `Learner`
/// ([`crate::train::learner::learn`]), in windows of `--checkpoint-every` steps; the best
/// validation's adapters come back from its checkpoint.
fn learn_lm<B: Backend>(
    model: Decoder<B>,
    run: &TrainRun,
    data: &InstructData,
    options: RunOptions,
    keep_best: bool,
    devices: &[B::Device],
) -> Result<Trained<B>> {
    type AB<B> = Autodiff<B>;
    let out = options
        .out_dir
        .clone()
        .ok_or_else(|| Error::Config("the Learner needs an output folder".into()))?;
    let mut settings = LearnerSettings::from_train_config(&run.train, data.train.len(), &out)?;
    settings.keep = if keep_best && !data.valid.is_empty() {
        KeepBest::LowestLoss
    } else {
        KeepBest::Last
    };
    settings.resume = options.resume;
    settings.fingerprint = options.fingerprint;
    settings.monitor = options.monitor;
    settings.stop_after = options.stop_after;
    let model = trainable_lm::<AB<B>>(model, &Trainable::Adapters);
    let valid_examples = Arc::new(data.valid.clone());
    let micro = run.train.micro_batch_size;
    let pad_id = data.pad_id;
    let valid = ValidSet {
        batches: valid_examples.len().div_ceil(micro),
        make: Arc::new(move |i: usize, device: &B::Device| {
            let end = ((i + 1) * micro).min(valid_examples.len());
            Ok(lm_batch::<B>(
                &valid_examples[i * micro..end],
                pad_id,
                device,
            ))
        }),
    };
    let outcome = learn::<AB<B>, CausalLm<AB<B>>, TokenizedExample>(
        model,
        Arc::new(data.train.clone()),
        Arc::new(LmBatcher { pad_id }),
        valid,
        &settings,
        devices,
    )?;
    Ok(Trained {
        last: outcome.model.inner.decoder.clone(),
        history: outcome.log.history.clone(),
        resumed_from: outcome.resumed_from,
        stopped_early: outcome.stopped_early,
        elapsed_seconds: outcome.elapsed_seconds,
        best: outcome.best.map(|(w, m)| {
            (
                w.step,
                w.valid_loss.unwrap_or(f64::NAN),
                m.into_inner().decoder,
            )
        }),
    })
}

/// The validation loss of the last step, if it ran one.
fn last_valid(history: &[StepRecord]) -> Option<f64> {
    history.last().and_then(|r| r.valid_loss)
}

// ---------------------------------------------------------------------------------------------
// evaluate
// ---------------------------------------------------------------------------------------------

/// What [`evaluate`] did.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// Accuracy per task and `average`, in [0, 1].
    pub accuracy: BTreeMap<String, f64>,
    /// Examples evaluated.
    pub examples: usize,
    /// Wall time, in seconds.
    pub seconds: f64,
}

/// Whether `dir` holds an HF peft adapter (`adapter_config.json` with a `peft_type`).
fn is_peft_adapter(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(crate::adapter::ADAPTER_CONFIG_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|v| v.get("peft_type").is_some())
}

/// Attaches the adapters of a saved adapter folder to `model` and loads their weights: this
/// crate's format ([`crate::adapter::save_adapter`]) or an HF peft LoRA/DoRA adapter
/// (`adapter_config.json` with `peft_type`). Returns the adapter's configuration.
pub fn attach_saved_adapter<B: Backend>(
    model: &mut Decoder<B>,
    dir: &Path,
) -> Result<AdapterConfig> {
    if !dir.join(crate::adapter::ADAPTER_CONFIG_FILE).is_file() {
        return Err(Error::file(
            dir,
            format!(
                "is not an adapter folder (no {}): give `ipa train`'s <out>/adapter or an HF \
                 peft adapter folder",
                crate::adapter::ADAPTER_CONFIG_FILE
            ),
        ));
    }
    if is_peft_adapter(dir) {
        return Ok(crate::export::load_peft(model, dir)?.config);
    }
    let saved = read_adapter_config(dir)?;
    let mut targets: Vec<String> = saved
        .layers
        .keys()
        .filter_map(|path| path.rsplit('.').next().map(str::to_string))
        .collect();
    targets.sort();
    targets.dedup();
    let mut layers: Vec<usize> = saved
        .layers
        .keys()
        .filter_map(|p| p.split('.').nth(2).and_then(|s| s.parse().ok()))
        .collect();
    layers.sort();
    layers.dedup();
    model
        .attach_adapters(&targets, Some(&layers), &saved.adapter, |_| {
            ProjectorInit::Zeros
        })
        .map_err(|e| Error::file(dir, format!("does not fit the model: {e}")))?;
    load_adapter(model, dir)?;
    Ok(saved.adapter)
}

impl EvalRun {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.tasks.is_empty() {
            return Err(Error::Config("no task to evaluate (--tasks)".into()));
        }
        if self.num_beams == 0 {
            return Err(Error::Config("--num-beams must be at least 1".into()));
        }
        if self.max_new_tokens == 0 {
            return Err(Error::Config("--max-new-tokens must be at least 1".into()));
        }
        if self.batch_size == 0 {
            return Err(Error::Config("--batch-size must be at least 1".into()));
        }
        if self.limit == Some(0) {
            return Err(Error::Config("--limit 0 evaluates nothing".into()));
        }
        if let Some(p) = &self.answer_pattern {
            crate::eval::commonsense::EvalTask::with_pattern("-", p)?;
        }
        Ok(())
    }
}

/// `ipa eval`: generates an answer for every test example of `run.tasks` and writes
/// `predictions.jsonl`, `accuracy.json` and `eval_config.json` to `out`.
pub fn evaluate<B: Backend>(
    run: &EvalRun,
    out: &Path,
    control: &RunControl,
    device: &B::Device,
) -> Result<EvalReport> {
    run.validate()?;
    let dir = OutDir::lock(out, "ipa eval")?;
    dir.prepare(control.existing(), "an evaluation", false)?;
    let tokenizer = Tokenizer::load(&run.model)?;
    let mut model: Decoder<B> = load_decoder(&run.model, device)?;
    if let Some(adapter) = &run.adapter {
        attach_saved_adapter(&mut model, adapter)?;
    }
    let tests = run
        .tasks
        .iter()
        .map(|name| {
            TestSet::load(
                &run.data_dir,
                name,
                run.answer_pattern.as_deref(),
                run.limit,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut inputs = json!({ "model": model_identity(&run.model)? });
    for set in &tests {
        inputs[format!("test:{}", set.task.name)] = data_identity(&set.path)?;
    }
    write_json(
        &out.join(EVAL_CONFIG_FILE),
        &json!({ "settings": run, "inputs": inputs }),
    )?;
    let mut generation = GenerationConfig::greedy(&model, run.max_new_tokens);
    generation.pad_token_id = pad_id_of(&tokenizer);
    generation = generation.with_beams(run.num_beams);
    let start = std::time::Instant::now();
    let (accuracy, predictions) = crate::eval::evaluate(
        &model,
        &tokenizer,
        run.prompt_style,
        &tests,
        &generation,
        run.batch_size,
        control.monitor.shows_bars(),
    )?;
    write_predictions(&out.join("predictions.jsonl"), &predictions)?;
    let summary = accuracy_summary(&accuracy);
    write_json(&out.join("accuracy.json"), &summary)?;
    Ok(EvalReport {
        accuracy: summary,
        examples: predictions.len(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

//! `ipa fit`, `ipa train`, `ipa eval`: the instruction-tuning pipeline
//! ([`burn_ipa::pipelines::instruct`]) from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use burn::prelude::DeviceOps;
use burn::tensor::backend::Backend;
use burn_ipa::adapter::AdapterMethod;
use burn_ipa::backend::BackendJob;
use burn_ipa::data::instruction::PromptStyle;
use burn_ipa::fit::FitPassConfig;
use burn_ipa::pipelines::instruct::{
    self, AdapterSpec, DataSpec, EvalRun, FitRun, Keep, ProjectorSource, RandomInit, RunControl,
    TrainRun, Tuning,
};
use burn_ipa::pipelines::online::{OnlineFit, WarmStart};
use burn_ipa::pipelines::out_dir::Existing;
use burn_ipa::pipelines::trainer::Trainer;
use burn_ipa::train::{Monitor, TrainConfig};
use burn_ipa::{Error, Result};
use clap::{Args, ValueEnum};

use super::{exit_code, BackendArgs, OutArgs, ProgressArgs};

/// The default target modules of the paper's LLM runs.
pub const DEFAULT_TARGETS: &str = "q_proj,k_proj,v_proj,up_proj,down_proj";

/// The model and data every instruction-tuning command reads.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// HF model folder (config.json, model.safetensors or shards, tokenizer.json) or a GGUF
    /// file.
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
    pub prompt_style: PromptStyle,
    /// Exclude the prompt from the loss (LLM-Adapters' train_on_inputs = False; the official
    /// runs train on the whole sequence).
    #[arg(long)]
    pub mask_prompt: bool,
    /// Examples held out from a seeded shuffle for the validation loss (LLM-Adapters: 120);
    /// the projector fit never reads them either, so `ipa fit` and `ipa train` agree.
    #[arg(long, default_value_t = 120)]
    pub val_set_size: usize,
}

impl DataArgs {
    fn spec(&self) -> DataSpec {
        DataSpec {
            model: self.model.clone(),
            data: self.data.clone(),
            cutoff: self.cutoff,
            prompt_style: self.prompt_style,
            mask_prompt: self.mask_prompt,
            val_set_size: self.val_set_size,
        }
    }
}

/// Settings of the forward-only projector fit.
#[derive(Args, Debug, Clone)]
pub struct FitPassArgs {
    /// Fit algorithm: ipca (scikit-learn's IncrementalPCA, exact SVD per batch), rsvd (the
    /// authors' randomized IPCA, `torch.svd_lowrank` with niter 3: what the paper's tables
    /// used), gha (generalized Hebbian), covariance (exact streaming PCA) [default: ipca].
    /// Settings follow a colon: `gha:lr=1,decay=0.1,scale=component` (the defaults: each
    /// component's step normalised by its own variance and decayed, so one pass converges;
    /// `scale=largest` is Sanger's rule at lr/λ₁; the authors' code uses a fixed step 1e-3),
    /// `rsvd:niter=3,oversample=0`.
    #[arg(long)]
    pub algorithm: Option<String>,
    /// Fraction of the training split the fit reads: the first part of its seeded shuffle
    /// [default: 0.1, as the official runs].
    #[arg(long, allow_negative_numbers = true)]
    pub fit_fraction: Option<f64>,
    /// Sequences per fit forward pass [default: 64, the official runs' batch].
    #[arg(long)]
    pub fit_batch_size: Option<usize>,
}

impl FitPassArgs {
    fn algorithm(&self) -> String {
        self.algorithm.clone().unwrap_or_else(|| "ipca".into())
    }

    fn config(&self, rank: usize, seed: u64) -> FitPassConfig {
        FitPassConfig {
            algorithm: self.algorithm(),
            rank,
            fraction: self.fit_fraction.unwrap_or(0.1),
            batch_size: self.fit_batch_size.unwrap_or(64),
            seed,
        }
    }

    /// An error when a fit setting is given to a run that has no fit pass before training.
    fn refuse(&self, why: &str) -> Result<()> {
        let given: Vec<&str> = [
            (self.algorithm.is_some(), "--algorithm"),
            (self.fit_fraction.is_some(), "--fit-fraction"),
            (self.fit_batch_size.is_some(), "--fit-batch-size"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if given.is_empty() {
            return Ok(());
        }
        Err(Error::Config(format!(
            "{} set the projector fit before training, which this run does not have ({why})",
            given.join(", ")
        )))
    }
}

/// Adapter methods.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum MethodArg {
    /// Fitted projector.
    Ipa,
    /// Random projector.
    Lora,
}

impl From<MethodArg> for AdapterMethod {
    fn from(m: MethodArg) -> Self {
        match m {
            MethodArg::Ipa => AdapterMethod::Ipa,
            MethodArg::Lora => AdapterMethod::Lora,
        }
    }
}

/// What `ipa train` fine-tunes.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum TrainMethod {
    /// IPA adapters: projectors fitted to the layers' inputs.
    Ipa,
    /// LoRA adapters: random projectors.
    Lora,
    /// The --targets linears' own weights, no adapter (the paper's "q, v" baseline with
    /// --targets q_proj,v_proj); the result is a model folder.
    Weights,
    /// Every weight of the model (full fine-tuning); the result is a model folder.
    Full,
}

/// Adapter settings.
#[derive(Args, Debug, Clone)]
pub struct AdapterArgs {
    /// What trains: ipa or lora adapters (projector fitted to the layer's inputs, or random),
    /// or, without an adapter, the targets' own weights (weights) or every weight (full).
    #[arg(long, value_enum, default_value = "ipa")]
    pub method: TrainMethod,
    /// Adapter rank r [default: 32, the paper's LLM runs].
    #[arg(long)]
    pub rank: Option<usize>,
    /// IPA: the update's plain scaling factor [default: 0.25, 0.4 for Gemma-3, as the
    /// official scripts].
    ///
    /// An eighth of LoRA's default alpha/r = 2, so the same B moves the output eight times
    /// less; the official runs take thousands of steps. On a short run it matters: 35 steps on
    /// SmolLM2-135M (docs/results.md), IPA with a frozen projector averaged 51% at 0.25 and
    /// 72% at 2 (LoRA trained: 60%).
    #[arg(long, allow_negative_numbers = true)]
    pub scaling: Option<f64>,
    /// LoRA/DoRA: the update is scaled by alpha / r [default: 2·r].
    #[arg(long, allow_negative_numbers = true)]
    pub alpha: Option<f64>,
    /// Dropout on the adapter input [default: 0 for IPA, 0.05 for LoRA and DoRA, as the
    /// official scripts].
    #[arg(long, allow_negative_numbers = true)]
    pub dropout: Option<f64>,
    /// Train the projector too (`--train-projector` or `--train-projector true`: the paper's
    /// "Proj FT ✓"; `false`: frozen) [default: true for lora, false for ipa].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub train_projector: Option<bool>,
    /// LoRA: how the random projector is drawn [default: kaiming (HF peft) when it trains,
    /// orthogonal when frozen (the official code's random baseline)].
    #[arg(long, value_enum)]
    pub projector_init: Option<RandomInit>,
    /// DoRA: learn a magnitude per output as well (with --method ipa: IPA+DoRA).
    #[arg(long)]
    pub dora: bool,
    /// Target modules (HF names, comma-separated).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_TARGETS)]
    pub targets: Vec<String>,
}

impl AdapterArgs {
    fn rank(&self) -> usize {
        self.rank.unwrap_or(32)
    }

    /// An error naming the adapter settings given to a run without adapters.
    fn refuse(&self, method: &str) -> Result<()> {
        let given: Vec<&str> = [
            (self.rank.is_some(), "--rank"),
            (self.scaling.is_some(), "--scaling"),
            (self.alpha.is_some(), "--alpha"),
            (self.dropout.is_some(), "--dropout"),
            (self.train_projector.is_some(), "--train-projector"),
            (self.projector_init.is_some(), "--projector-init"),
            (self.dora, "--dora"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if given.is_empty() {
            return Ok(());
        }
        Err(Error::Config(format!(
            "{} set an adapter, which --method {method} does not have",
            given.join(", ")
        )))
    }

    fn spec(&self, method: AdapterMethod) -> AdapterSpec {
        AdapterSpec {
            method,
            rank: self.rank(),
            scaling: self.scaling,
            alpha: self.alpha,
            dropout: self.dropout,
            train_projector: self.train_projector,
            dora: self.dora,
        }
    }
}

/// When IPA's projectors are fitted.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum FitMode {
    /// Before training, adapters disabled (the official pre_ipca / pre_gha).
    Pre,
    /// During training, from the inputs of the training forward passes (online_ipca /
    /// online_gha).
    Online,
}

/// Optimisation settings (defaults: the official scripts, on HF Trainer's defaults).
#[derive(Args, Debug, Clone)]
pub struct OptimArgs {
    /// Peak learning rate (the official scripts: 1e-4; Llama-2 LoRA 3e-4, DoRA 2e-4).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1e-4)]
    pub learning_rate: f64,
    /// AdamW weight decay.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Epochs.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Examples per optimizer step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Examples per forward/backward pass; the gradients of batch-size / micro-batch-size
    /// passes are averaged (the official runs use 16 at once; the same step in less memory).
    #[arg(long, default_value_t = 4)]
    pub micro_batch_size: usize,
    /// Linear warm-up steps, then linear decay to 0.
    #[arg(long, default_value_t = 100)]
    pub warmup_steps: usize,
    /// Stop after this many optimizer steps (the schedule still spans every epoch).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Checkpoint every N optimizer steps (0: only at the end).
    #[arg(long, default_value_t = 80)]
    pub checkpoint_every: usize,
    /// Validation loss every N optimizer steps, and at the end of the schedule (0: never).
    #[arg(long, default_value_t = 80)]
    pub valid_every: usize,
    /// Clip the global gradient norm to this value (HF Trainer: 1.0); 0: no clipping.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// AdamW's epsilon (HF Trainer: 1e-8; burn's own default is 1e-5).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1e-8)]
    pub adam_epsilon: f64,
    /// Which adapter ends up in <out>/adapter: `best` validation loss (HF's
    /// load_best_model_at_end, every official run) or `last`.
    #[arg(long, value_enum, default_value = "best")]
    pub keep: Keep,
    /// Seeds the data order, dropout, the validation split, the fit and random projectors.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl OptimArgs {
    fn config(&self) -> TrainConfig {
        TrainConfig {
            learning_rate: self.learning_rate,
            weight_decay: self.weight_decay,
            epochs: self.epochs,
            batch_size: self.batch_size,
            micro_batch_size: self.micro_batch_size,
            warmup_steps: self.warmup_steps,
            max_steps: self.max_steps,
            checkpoint_every: self.checkpoint_every,
            valid_every: self.valid_every,
            seed: self.seed,
            max_grad_norm: self.max_grad_norm,
            adam_epsilon: self.adam_epsilon,
        }
    }
}

/// `ipa fit`.
#[derive(Args, Debug, Clone)]
pub struct FitCmd {
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub fit: FitPassArgs,
    /// Projector rank.
    #[arg(long, default_value_t = 32)]
    pub rank: usize,
    /// Target modules (HF names, comma-separated); q/k/v share one projector, as gate/up do.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_TARGETS)]
    pub targets: Vec<String>,
    /// Seeds the validation split, the shuffle and the randomized fits (as `ipa train
    /// --seed`).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[command(flatten)]
    pub out: OutArgs,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

impl FitCmd {
    /// Runs the command.
    pub fn run(self) -> Result<ExitCode> {
        let backend = self.backend.clone();
        let report = backend.run(self)?;
        println!(
            "fitted {} projectors of rank {} from {} tokens in {:.1}s ({:.0} tokens/s); saved to {}",
            report.projectors,
            report.rank,
            report.tokens,
            report.seconds,
            report.tokens as f64 / report.seconds.max(1e-9),
            report.path.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

impl BackendJob for FitCmd {
    type Output = instruct::FitReport;
    fn run<B: Backend>(self, device: B::Device, _: &str) -> Result<Self::Output> {
        let run = FitRun {
            data: self.data.spec(),
            targets: self.targets.clone(),
            fit: self.fit.config(self.rank, self.seed),
        };
        let control = RunControl {
            existing: Some(self.out.existing()),
            monitor: self.progress.monitor(),
            ..RunControl::default()
        };
        instruct::fit::<B>(&run, &self.out.out, &control, &device)
    }
}

/// `ipa train`.
#[derive(Args, Debug, Clone)]
pub struct TrainCmd {
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    #[command(flatten)]
    pub fit: FitPassArgs,
    /// `pre`: fit IPA's projectors once before training (the official pre_ipca/pre_gha);
    /// `online`: update them from the training forward passes (online_ipca/online_gha).
    #[arg(long, value_enum, default_value = "pre")]
    pub fit_mode: FitMode,
    /// Online: replace the projectors every N micro-batches.
    #[arg(long, default_value_t = 1)]
    pub online_update_every: usize,
    /// Online: stop fitting after N optimizer steps (the projectors stay fixed afterwards;
    /// needed for --resume to be exact). The official online modes never stop.
    #[arg(long)]
    pub online_stop_after: Option<usize>,
    #[command(flatten)]
    pub optim: OptimArgs,
    /// Projectors from `ipa fit` (IPA) instead of fitting them first.
    #[arg(long)]
    pub projectors: Option<PathBuf>,
    /// Output folder: train_config.json, metrics.csv, checkpoints/, adapter/,
    /// train_report.json (and projectors.safetensors when it fits).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its latest intact checkpoint (refused, naming what
    /// differs, if its settings, model or data changed).
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace what --out holds (by default a non-empty folder is refused).
    #[arg(long)]
    pub overwrite: bool,
    /// Data parallelism: device ordinals (comma-separated) to spread each step's micro-batches
    /// over; the model and optimizer live on the first. Gradients are gathered as
    /// burn-train's multi-device strategy does (with --trainer learner, it is that
    /// strategy: burn-train forks the model to each device, runs its share of every step's
    /// micro-batches there, and sums the gradients on the first device, where the global
    /// norm is clipped and AdamW steps).
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<usize>,
    /// Training loop: `loop` (the crate's step loop: checkpoints every --checkpoint-every
    /// steps, a stop checkpoints the current step, online fits) or `learner` (burn-train's
    /// SupervisedTraining and Learner: one burn-train epoch per --checkpoint-every steps,
    /// checkpointed by its file checkpointer with the adapters only, --resume at those
    /// points; validates at the end of them, so --valid-every must be a multiple of
    /// --checkpoint-every; a stop ends the run at its last checkpoint; adapters only, no
    /// --fit-mode online). Both take the same steps: without dropout they train the same
    /// adapters.
    #[arg(long, value_enum, default_value = "loop")]
    pub trainer: Trainer,
    /// Do not show progress bars.
    #[arg(long, conflicts_with = "tui")]
    pub quiet: bool,
    /// Show burn-train's terminal dashboard (plots of loss, learning rate and validation
    /// loss, progress, ETA) instead of progress bars; `q` offers to stop after a
    /// checkpoint. It keeps one CPU core busy redrawing.
    #[arg(long)]
    pub tui: bool,
}

impl TrainCmd {
    /// The run's settings.
    pub fn run_settings(&self) -> Result<TrainRun> {
        let seed = self.optim.seed;
        let method = match self.adapter.method {
            TrainMethod::Ipa => AdapterMethod::Ipa,
            TrainMethod::Lora => AdapterMethod::Lora,
            weights @ (TrainMethod::Weights | TrainMethod::Full) => {
                let name = if weights == TrainMethod::Full {
                    "full"
                } else {
                    "weights"
                };
                self.adapter.refuse(name)?;
                self.fit
                    .refuse(&format!("--method {name} has no projector"))?;
                if self.projectors.is_some() || self.fit_mode == FitMode::Online {
                    return Err(Error::Config(format!(
                        "--projectors and --fit-mode online are for IPA adapters, which \
                         --method {name} does not have"
                    )));
                }
                return Ok(TrainRun {
                    data: self.data.spec(),
                    targets: self.adapter.targets.clone(),
                    tuning: if weights == TrainMethod::Full {
                        Tuning::Full
                    } else {
                        Tuning::Weights
                    },
                    train: self.optim.config(),
                    keep: self.optim.keep,
                    trainer: self.trainer,
                });
            }
        };
        let online = self.fit_mode == FitMode::Online;
        if self.adapter.projector_init.is_some() && method != AdapterMethod::Lora {
            return Err(Error::Config(
                "--projector-init draws LoRA's random projector; IPA's are fitted".into(),
            ));
        }
        if !online && (self.online_stop_after.is_some() || self.online_update_every != 1) {
            return Err(Error::Config(
                "--online-update-every and --online-stop-after need --fit-mode online".into(),
            ));
        }
        match (method, &self.projectors, online) {
            (AdapterMethod::Lora, _, _) => self.fit.refuse("LoRA's projectors are random")?,
            (_, Some(_), _) => self.fit.refuse("--projectors gives them")?,
            (_, None, true)
                if self.fit.fit_fraction.is_some() || self.fit.fit_batch_size.is_some() =>
            {
                return Err(Error::Config(
                    "--fit-fraction and --fit-batch-size set the fit before training; \
                     --fit-mode online fits from the training batches"
                        .into(),
                ));
            }
            _ => {}
        }
        let projectors = match (method, &self.projectors, online) {
            (AdapterMethod::Lora, Some(path), _) => ProjectorSource::Saved { path: path.clone() },
            (AdapterMethod::Lora, None, true) => ProjectorSource::Online {
                fit: OnlineFit::new(&self.fit.algorithm())?,
            },
            (AdapterMethod::Lora, None, false) => {
                let trains = self.adapter.train_projector.unwrap_or(true);
                ProjectorSource::Random {
                    init: self.adapter.projector_init.unwrap_or(if trains {
                        RandomInit::Kaiming
                    } else {
                        RandomInit::Orthogonal
                    }),
                }
            }
            (AdapterMethod::Ipa, Some(_), true) => {
                return Err(Error::Config(
                    "--fit-mode online fits the projectors during training: drop --projectors"
                        .into(),
                ))
            }
            (AdapterMethod::Ipa, Some(path), false) => {
                ProjectorSource::Saved { path: path.clone() }
            }
            (AdapterMethod::Ipa, None, true) => ProjectorSource::Online {
                fit: OnlineFit {
                    update_every: self.online_update_every,
                    stop_after: self.online_stop_after,
                    warm_start: WarmStart::Zero,
                    seed,
                    ..OnlineFit::new(&self.fit.algorithm())?
                },
            },
            (AdapterMethod::Ipa, None, false) => ProjectorSource::PreFit {
                fit: self.fit.config(self.adapter.rank(), seed),
            },
        };
        Ok(TrainRun {
            data: self.data.spec(),
            targets: self.adapter.targets.clone(),
            tuning: Tuning::Adapters {
                adapter: self.adapter.spec(method),
                projectors,
            },
            train: self.optim.config(),
            keep: self.optim.keep,
            trainer: self.trainer,
        })
    }

    /// Runs the command: 0 when the run finished, 130 when it stopped on request.
    pub fn run(self) -> Result<ExitCode> {
        let backend = self.backend.clone();
        let report = backend.run(self.clone())?;
        if report.stopped_early {
            println!(
                "stopped on request after step {} of {}; the checkpoint is in {}: the same \
                 command with --resume continues",
                report.steps,
                report.run_steps,
                self.out
                    .join(match self.trainer {
                        Trainer::Loop => "checkpoints",
                        Trainer::Learner => "learner/checkpoint",
                    })
                    .display()
            );
            return Ok(exit_code(true));
        }
        println!(
            "{} steps ({} this run), {:.0} tokens/s; last loss {}; {} of step {}{} in {}",
            report.steps,
            report.steps - report.resumed_from,
            report.tokens_per_second,
            report
                .last_loss
                .map_or("-".to_string(), |l| format!("{l:.4}")),
            if report.adapter.is_some() {
                "adapter"
            } else {
                "model"
            },
            report.kept_step.map_or("-".to_string(), |s| s.to_string()),
            report
                .kept_valid_loss
                .map(|v| format!(" (validation loss {v:.4})"))
                .unwrap_or_default(),
            report.result_dir.display()
        );
        Ok(exit_code(false))
    }
}

/// The devices of `--devices`: the same kind as `device`, by ordinal (`device` alone when the
/// list is empty), each checked against the backend's device count.
pub fn data_parallel_devices<B: Backend>(
    device: &B::Device,
    ordinals: &[usize],
    backend_name: &str,
) -> Result<Vec<B::Device>> {
    if ordinals.is_empty() {
        return Ok(vec![device.clone()]);
    }
    let type_id = device.to_id().type_id;
    let count = B::device_count(type_id);
    let mut seen = Vec::new();
    ordinals
        .iter()
        .map(|&i| {
            if i >= count {
                return Err(Error::Config(format!(
                    "--devices: ordinal {i}, but the {backend_name} backend has {count} \
                     device(s) of this kind (0..{})",
                    count.saturating_sub(1)
                )));
            }
            if seen.contains(&i) {
                return Err(Error::Config(format!(
                    "--devices: ordinal {i} is given twice"
                )));
            }
            seen.push(i);
            let index = u16::try_from(i)
                .map_err(|_| Error::Config(format!("--devices: ordinal {i} is out of range")))?;
            Ok(B::Device::from_id(burn::tensor::backend::DeviceId::new(
                type_id, index,
            )))
        })
        .collect()
}

impl BackendJob for TrainCmd {
    type Output = instruct::TrainReport;
    fn run<B: Backend>(self, device: B::Device, backend_name: &str) -> Result<Self::Output> {
        let run = self.run_settings()?;
        let existing = Existing::from_flags(self.resume, self.overwrite)?;
        let monitor = if self.tui {
            Monitor::dashboard()?
        } else {
            Monitor::bars_if(!self.quiet)
        };
        let devices = data_parallel_devices::<B>(&device, &self.devices, backend_name)?;
        let control = RunControl {
            existing: Some(existing),
            monitor,
            ctrl_c: true,
            stop_after: None,
        };
        let report = instruct::train::<B>(&run, &self.out, &control, &devices);
        // The last handles on a dashboard give the terminal back before anything prints.
        drop(control);
        report
    }
}

/// `ipa eval`.
#[derive(Args, Debug, Clone)]
pub struct EvalCmd {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// HF model folder or GGUF file.
    #[arg(long)]
    pub model: PathBuf,
    /// Adapter folder: `ipa train`'s <out>/adapter, or an HF peft LoRA/DoRA adapter (none:
    /// the base model).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Folder with <dataset>/test.json per task (LLM-Adapters' dataset/).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Tasks: folder names under --data-dir, comma-separated. The eight commonsense tasks are
    /// read by their official answer words; any other folder's answers by the distinct
    /// `answer` values of its test data (or --answer-pattern).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "boolq,piqa,social_i_qa,hellaswag,winogrande,ARC-Easy,ARC-Challenge,openbookqa"
    )]
    pub tasks: Vec<String>,
    /// Prompt layout.
    #[arg(long, value_enum, default_value = "llm-adapters")]
    pub prompt_style: PromptStyle,
    /// Beams (the official evaluation: 4; 1 is greedy decoding, several times faster).
    #[arg(long, default_value_t = 4)]
    pub num_beams: usize,
    /// Tokens generated at most (official: 32).
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Prompts per batch (greedy decoding; beam search runs one prompt at a time).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Evaluate only the first N examples of each task.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Read answers as the leftmost match of this regular expression, for every task (e.g.
    /// `answer[1-4]`).
    #[arg(long)]
    pub answer_pattern: Option<String>,
    #[command(flatten)]
    pub out: OutArgs,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

impl EvalCmd {
    /// Runs the command and prints the accuracy table.
    pub fn run(self) -> Result<ExitCode> {
        let backend = self.backend.clone();
        let report = backend.run(self)?;
        println!("| task | accuracy |\n|---|---:|");
        for (task, acc) in &report.accuracy {
            println!("| {task} | {:.1} |", 100.0 * acc);
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl BackendJob for EvalCmd {
    type Output = instruct::EvalReport;
    fn run<B: Backend>(self, device: B::Device, _: &str) -> Result<Self::Output> {
        let run = EvalRun {
            model: self.model.clone(),
            adapter: self.adapter.clone(),
            data_dir: self.data_dir.clone(),
            tasks: self.tasks.clone(),
            prompt_style: self.prompt_style,
            num_beams: self.num_beams,
            max_new_tokens: self.max_new_tokens,
            batch_size: self.batch_size,
            limit: self.limit,
            answer_pattern: self.answer_pattern.clone(),
        };
        let control = RunControl {
            existing: Some(self.out.existing()),
            monitor: self.progress.monitor(),
            ..RunControl::default()
        };
        instruct::evaluate::<B>(&run, &self.out.out, &control, &device)
    }
}

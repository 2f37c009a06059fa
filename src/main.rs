//! `ipa`: the burn-ipa command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

use burn_ipa::backend::{run_on, BackendKind};
use burn_ipa::bench::{FitBench, ForwardBench};
use burn_ipa::projector::{FitAlgorithm, GhaConfig};
use clap::{Args, Parser, Subcommand};
use cli::instruct::{AdapterArgs, DataArgs, EvalJob, FitArgs, FitJob, PromptStyleArg, TrainJob};

mod cli;

/// IPA: information-preserving input projections for adapting foundation models.
///
/// LoRA adds s·B·A·x to a frozen layer with a random A; IPA fits the projector to the principal
/// directions of the inputs the layer sees, forward-only, before fine-tuning.
///
/// With no subcommand, runs `ipa quickstart`.
#[derive(Parser, Debug)]
#[command(name = "ipa", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// Where to compute.
#[derive(Args, Debug, Clone)]
struct BackendArgs {
    /// Compute backend (each must be compiled in: features ndarray, wgpu, cuda).
    #[arg(long, value_enum, default_value = "ndarray")]
    backend: BackendKind,
    /// GPU ordinal for wgpu/cuda.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Create weights, activations and adapters in bf16 (GPU backends; losses and projector
    /// statistics still compute in f32).
    #[arg(long)]
    bf16: bool,
}

impl BackendArgs {
    /// Runs `job` on the chosen backend, in bf16 if asked.
    fn run<J: burn_ipa::backend::BackendJob>(&self, job: J) -> burn_ipa::Result<J::Output> {
        if self.bf16 {
            run_on(self.backend, self.device, burn_ipa::backend::Bf16(job))
        } else {
            run_on(self.backend, self.device, job)
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The whole method in about a minute on a CPU, with no download.
    ///
    /// A tiny Llama-style base model (pretrained by this project on a generated corpus and
    /// embedded in the binary) is fine-tuned on a generated task set in the commonsense-170k
    /// format: IPA projectors are fitted forward-only, then IPA and LoRA are trained with the
    /// projector frozen and trainable, each evaluated by generation. Prints a table of
    /// trainable parameters and accuracy; writes the adapters, predictions, metrics and the
    /// resolved config under --out.
    Quickstart {
        #[command(flatten)]
        backend: BackendArgs,
        /// Output folder.
        #[arg(long, default_value = "runs/quickstart")]
        out: PathBuf,
        /// A few-second version (what the test suite runs).
        #[arg(long)]
        reduced: bool,
        /// Use this base model folder instead of the embedded one.
        #[arg(long)]
        base: Option<PathBuf>,
        /// Projector fit algorithm: ipca, rsvd, gha, covariance.
        #[arg(long, default_value = "ipca")]
        fit_algorithm: String,
        /// Training epochs (default: 3, or 1 with --reduced).
        #[arg(long)]
        epochs: Option<usize>,
        /// Peak learning rate.
        #[arg(long)]
        learning_rate: Option<f64>,
        /// Adapter rank.
        #[arg(long)]
        rank: Option<usize>,
        /// Do not show progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Fit IPA projectors forward-only on a fraction of the training data.
    ///
    /// Runs the frozen model over the first --fit-fraction of the seeded shuffle of --data
    /// (padding excluded) and fits one projector per distinct input of the targeted linears
    /// (q/k/v share one, gate/up share one). Writes projectors.safetensors and fit_config.json
    /// to --out; `ipa train --projectors <out>` starts from them.
    Fit {
        #[command(flatten)]
        backend: BackendArgs,
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        fit: FitArgs,
        /// Projector rank.
        #[arg(long, default_value_t = 32)]
        rank: usize,
        /// Target modules (HF names, comma-separated).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "q_proj,k_proj,v_proj,up_proj,down_proj"
        )]
        targets: Vec<String>,
        /// Seeds the shuffle and the randomized fits.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Do not show progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Fine-tune IPA or LoRA adapters on instruction data (causal LM).
    ///
    /// AdamW with linear warm-up then linear decay; only adapter parameters train. Writes
    /// train_config.json, metrics.csv (loss, learning rate, validation loss), checkpoints every
    /// --checkpoint-every steps (adapters and optimizer state only) and the final adapter to
    /// --out/adapter. With --resume, an interrupted run continues from its last checkpoint and
    /// ends exactly as an uninterrupted one would.
    Train {
        #[command(flatten)]
        backend: BackendArgs,
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        adapter: AdapterArgs,
        #[command(flatten)]
        fit: FitArgs,
        #[command(flatten)]
        fit_mode: cli::instruct::FitModeArgs,
        #[command(flatten)]
        train: TrainArgs,
        /// Projectors from `ipa fit` (IPA); without it the fit runs first.
        #[arg(long)]
        projectors: Option<PathBuf>,
        /// Examples held out for the validation loss.
        #[arg(long, default_value_t = 120)]
        val_set_size: usize,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Continue from the latest checkpoint in --out (refused if its settings differ).
        #[arg(long)]
        resume: bool,
        /// Data parallelism: GPU ordinals (comma-separated) to spread each step's micro-batches
        /// over; the model and optimizer live on the first. Gradients are gathered as
        /// burn-train's multi-device strategy does.
        #[arg(long, value_delimiter = ',')]
        devices: Vec<usize>,
        /// Do not show progress bars.
        #[arg(long, conflicts_with = "tui")]
        quiet: bool,
        /// Show burn-train's terminal dashboard (plots of loss, learning rate and validation
        /// loss, progress, ETA) instead of progress bars; `q` offers to stop after a
        /// checkpoint. It keeps one CPU core busy redrawing.
        #[arg(long)]
        tui: bool,
    },
    /// Evaluate on the commonsense test sets by generation.
    ///
    /// Generates after the LLM-Adapters evaluation prompt, takes the first answer word of the
    /// task's format (true/false, solution1/2, answer1-5, ending1-4, option1/2) and compares
    /// it with the reference. Writes predictions.jsonl, accuracy.json and eval_config.json.
    Eval {
        #[command(flatten)]
        backend: BackendArgs,
        /// HF model folder.
        #[arg(long)]
        model: PathBuf,
        /// Adapter folder written by `ipa train` (none: the base model).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Folder with <dataset>/test.json per task (LLM-Adapters' dataset/).
        #[arg(long)]
        data_dir: PathBuf,
        /// Tasks (comma-separated dataset names).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "boolq,piqa,social_i_qa,hellaswag,winogrande,ARC-Easy,ARC-Challenge,openbookqa"
        )]
        tasks: Vec<String>,
        /// Prompt layout.
        #[arg(long, value_enum, default_value = "llm-adapters")]
        prompt_style: PromptStyleArg,
        /// Beams (1: greedy; the official script uses 4).
        #[arg(long, default_value_t = 1)]
        num_beams: usize,
        /// Tokens generated at most.
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// Prompts per batch (greedy decoding).
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        /// Evaluate only the first N examples of each task.
        #[arg(long)]
        limit: Option<usize>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Do not show progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Fine-tune SigLIP on a VTAB-1k task (image–text classification with class prompts).
    ///
    /// Adapters on the vision tower (q_proj, v_proj by default), IPA projectors fitted on the
    /// training images first; cross-entropy over image-to-class-prompt logits; test accuracy
    /// every few epochs with the best adapter kept. Writes vtab_config.json, metrics.csv,
    /// eval.csv, report.json and best_adapter/ under --out.
    Vtab {
        #[command(flatten)]
        backend: BackendArgs,
        #[command(flatten)]
        args: cli::vtab::VtabArgs,
    },
    /// Fold an adapter into the base weights and write a full HF checkpoint.
    ///
    /// The output has the source's file names, shards, tensor names and dtypes (or all f32
    /// with --f32), plus its config and tokenizer files: HF transformers and `ipa` load it as
    /// a plain model.
    Merge {
        #[command(flatten)]
        backend: BackendArgs,
        /// HF model folder the adapter was trained on.
        #[arg(long)]
        model: PathBuf,
        /// Adapter folder written by `ipa train`.
        #[arg(long)]
        adapter: PathBuf,
        /// Write every weight in f32 instead of the source dtype.
        #[arg(long)]
        f32: bool,
        /// Output folder (not the model folder).
        #[arg(long)]
        out: PathBuf,
    },
    /// Export an adapter for other tools.
    ///
    /// `--format peft` writes adapter_config.json and adapter_model.safetensors that HF peft
    /// loads as a LoRA (or DoRA) adapter: IPA is LoRA-shaped, P becomes lora_A and B lora_B,
    /// and the scaling is folded into lora_alpha.
    Export {
        #[command(flatten)]
        backend: BackendArgs,
        /// Output format.
        #[arg(long, value_enum, default_value = "peft")]
        format: ExportFormat,
        /// HF model folder the adapter was trained on.
        #[arg(long)]
        model: PathBuf,
        /// Adapter folder written by `ipa train`.
        #[arg(long)]
        adapter: PathBuf,
        /// `base_model_name_or_path` to record (default: the --model path).
        #[arg(long)]
        base_model_name: Option<String>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Count the trainable adapter parameters of a model from its config.json alone.
    ///
    /// Prints LoRA/IPA with the projector frozen (✗) and trained (✓), plain and with DoRA.
    /// LoRA and IPA have the same shapes; only how P is obtained differs.
    Params {
        /// A preset (llama-2-7b, llama-3-8b, qwen-2.5-7b, gemma-3-4b,
        /// siglip-2-base-patch16-224, tiny-llama, tiny-siglip) or a model directory or
        /// config.json path.
        #[arg(long)]
        model: String,
        /// Adapter rank r.
        #[arg(long, default_value_t = 32)]
        rank: usize,
        /// Target module names (comma-separated HF names).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "q_proj,k_proj,v_proj,up_proj,down_proj"
        )]
        targets: Vec<String>,
        /// Towers to adapt (comma-separated): text, vision. Default: text for decoders, vision
        /// for SigLIP; multimodal Gemma-3 prints both text-only and text+vision.
        #[arg(long, value_delimiter = ',')]
        towers: Option<Vec<String>>,
    },
    /// Measure speed: `ipa bench fit` times the projector-fit algorithms.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

/// Adapter export formats.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ExportFormat {
    /// HF peft LoRA adapter.
    Peft,
}

/// Optimisation settings (defaults: LLM-Adapters' commonsense recipe).
#[derive(Args, Debug, Clone)]
struct TrainArgs {
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-4)]
    learning_rate: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Epochs.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Examples per optimizer step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Examples per forward/backward pass (gradients of batch_size/micro_batch_size passes
    /// are accumulated).
    #[arg(long, default_value_t = 4)]
    micro_batch_size: usize,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 100)]
    warmup_steps: usize,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Checkpoint every N optimizer steps (0: only at the end).
    #[arg(long, default_value_t = 80)]
    checkpoint_every: usize,
    /// Validation loss every N optimizer steps (0: never).
    #[arg(long, default_value_t = 80)]
    valid_every: usize,
    /// Seeds data order, dropout and the validation split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

impl TrainArgs {
    fn config(&self) -> burn_ipa::train::TrainConfig {
        burn_ipa::train::TrainConfig {
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
        }
    }
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Fit throughput (tokens/s) of each algorithm on synthetic activations.
    Fit {
        #[command(flatten)]
        backend: BackendArgs,
        /// Input widths (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "4096,14336")]
        widths: Vec<usize>,
        /// Projector rank.
        #[arg(long, default_value_t = 32)]
        rank: usize,
        /// Rows (tokens) per batch.
        #[arg(long, default_value_t = 4096)]
        batch_tokens: usize,
        /// Batches to time per algorithm, after one warm-up batch.
        #[arg(long, default_value_t = 5)]
        batches: usize,
        /// Stop timing an algorithm after this many seconds (one batch at least).
        #[arg(long, default_value_t = 60.0)]
        max_seconds: f64,
        /// Algorithms (comma-separated): ipca, rsvd, gha, covariance.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "rsvd,gha,covariance,ipca"
        )]
        algorithms: Vec<String>,
        /// Also write the rows as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Decoder forward throughput (tokens/s) of random Llama-architecture models.
    Forward {
        #[command(flatten)]
        backend: BackendArgs,
        /// Model sizes (comma-separated): tiny, 100m.
        #[arg(long, value_delimiter = ',', default_value = "tiny,100m")]
        sizes: Vec<String>,
        /// Sequences per batch.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Timed forward passes.
        #[arg(long, default_value_t = 5)]
        iters: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> burn_ipa::Result<()> {
    let command = cli.command.unwrap_or(Command::Quickstart {
        backend: BackendArgs {
            backend: BackendKind::Ndarray,
            device: 0,
            bf16: false,
        },
        out: PathBuf::from("runs/quickstart"),
        reduced: false,
        base: None,
        fit_algorithm: "ipca".into(),
        epochs: None,
        learning_rate: None,
        rank: None,
        quiet: false,
    });
    match command {
        Command::Fit {
            backend,
            data,
            fit,
            rank,
            targets,
            seed,
            out,
            quiet,
        } => backend.run(FitJob {
            data,
            fit,
            rank,
            targets,
            seed,
            out,
            progress: !quiet,
        }),
        Command::Train {
            backend,
            data,
            adapter,
            fit,
            fit_mode,
            train,
            projectors,
            val_set_size,
            out,
            resume,
            devices,
            quiet,
            tui,
        } => backend.run(TrainJob {
            data,
            adapter,
            fit,
            fit_mode,
            projectors,
            train: train.config(),
            val_set_size,
            out,
            devices,
            resume,
            progress: !quiet,
            tui,
        }),
        Command::Eval {
            backend,
            model,
            adapter,
            data_dir,
            tasks,
            prompt_style,
            num_beams,
            max_new_tokens,
            batch_size,
            limit,
            out,
            quiet,
        } => backend.run(EvalJob {
            model,
            adapter,
            data_dir,
            tasks,
            prompt_style,
            num_beams,
            max_new_tokens,
            batch_size,
            limit,
            out,
            progress: !quiet,
        }),
        Command::Vtab { backend, args } => cli::vtab::run(args, backend.backend, backend.device),
        Command::Merge {
            backend,
            model,
            adapter,
            f32,
            out,
        } => backend.run(cli::export::MergeJob {
            model,
            adapter,
            f32,
            out,
        }),
        Command::Export {
            backend,
            format: ExportFormat::Peft,
            model,
            adapter,
            base_model_name,
            out,
        } => backend.run(cli::export::ExportPeftJob {
            model,
            adapter,
            base_model_name,
            out,
        }),
        Command::Quickstart {
            backend,
            out,
            reduced,
            base,
            fit_algorithm,
            epochs,
            learning_rate,
            rank,
            quiet,
        } => {
            use burn_ipa::quickstart::{format_table, QuickstartConfig};
            let mut config = if reduced {
                QuickstartConfig::reduced()
            } else {
                QuickstartConfig::full()
            };
            config.base = base;
            config.fit.algorithm = fit_algorithm;
            if let Some(e) = epochs {
                config.train.epochs = e;
            }
            if let Some(lr) = learning_rate {
                config.train.learning_rate = lr;
            }
            if let Some(r) = rank {
                config.rank = r;
                config.alpha = 2.0 * r as f64;
            }
            let start = std::time::Instant::now();
            let rows = backend.run(QuickstartJob {
                config,
                out: out.clone(),
                progress: !quiet,
            })?;
            println!("{}", format_table(&rows));
            println!(
                "quickstart took {:.1}s on {}; adapters, predictions and metrics are in {}",
                start.elapsed().as_secs_f64(),
                backend.backend.name(),
                out.display()
            );
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Forward {
                    backend,
                    sizes,
                    batch,
                    seq,
                    iters,
                },
        } => {
            let job = ForwardBench {
                sizes,
                batch,
                seq,
                iters: iters.max(1),
            };
            let rows = run_on(backend.backend, backend.device, job)?;
            println!("| backend | model | params | dtype | tokens/pass | tokens/s |");
            println!("|---|---|---|---|---|---|");
            for r in &rows {
                println!(
                    "| {} | {} | {:.1}M | {} | {} | {:.0} |",
                    r.backend,
                    r.size,
                    r.params as f64 / 1e6,
                    r.dtype,
                    r.tokens,
                    r.tokens_per_second
                );
            }
            Ok(())
        }
        Command::Params {
            model,
            rank,
            targets,
            towers,
        } => params(&model, rank, &targets, towers),
        Command::Bench {
            what:
                BenchCommand::Fit {
                    backend,
                    widths,
                    rank,
                    batch_tokens,
                    batches,
                    max_seconds,
                    algorithms,
                    json,
                },
        } => {
            let algorithms = algorithms
                .iter()
                .map(|name| match name.as_str() {
                    "gha" => Ok(FitAlgorithm::Gha(GhaConfig::default())),
                    other => FitAlgorithm::from_name(other),
                })
                .collect::<burn_ipa::Result<Vec<_>>>()?;
            let job = FitBench {
                widths,
                rank,
                batch_tokens,
                batches: batches.max(1),
                max_seconds,
                algorithms,
            };
            let rows = run_on(backend.backend, backend.device, job)?;
            println!(
                "| backend | algorithm | d | rank | batch | batches | tokens/s | s/batch | finish s |"
            );
            println!("|---|---|---|---|---|---|---|---|---|");
            for r in &rows {
                println!(
                    "| {} | {} | {} | {} | {} | {} | {:.0} | {:.3} | {:.2} |",
                    r.backend,
                    r.algorithm,
                    r.d,
                    r.rank,
                    r.batch_tokens,
                    r.batches,
                    r.tokens_per_second,
                    r.seconds_per_batch,
                    r.finish_seconds
                );
            }
            if let Some(path) = json {
                let text = serde_json::to_vec_pretty(&rows)
                    .map_err(|e| burn_ipa::Error::file(&path, e))?;
                burn_ipa::adapter::write_atomic(&path, &text)?;
            }
            Ok(())
        }
    }
}

struct QuickstartJob {
    config: burn_ipa::quickstart::QuickstartConfig,
    out: PathBuf,
    progress: bool,
}

impl burn_ipa::backend::BackendJob for QuickstartJob {
    type Output = Vec<burn_ipa::quickstart::VariantResult>;
    fn run<B: burn::tensor::backend::Backend>(
        self,
        device: B::Device,
        _backend_name: &str,
    ) -> burn_ipa::Result<Self::Output> {
        burn_ipa::quickstart::run_quickstart::<B>(&self.config, &self.out, &device, self.progress)
    }
}

fn params(
    model: &str,
    rank: usize,
    targets: &[String],
    towers: Option<Vec<String>>,
) -> burn_ipa::Result<()> {
    use burn_ipa::adapter::AdapterConfig;
    use burn_ipa::models::params::{count_trainable, model_linears, read_model_config, Tower};
    let (value, file) = read_model_config(model)?;
    let linears = model_linears(&value, &file)?;
    let model_type = value
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let tower_sets: Vec<Vec<Tower>> = match towers {
        Some(names) => vec![names
            .iter()
            .map(|n| match n.as_str() {
                "text" => Ok(Tower::Text),
                "vision" => Ok(Tower::Vision),
                other => Err(burn_ipa::Error::Config(format!(
                    "unknown tower `{other}` (text, vision)"
                ))),
            })
            .collect::<burn_ipa::Result<_>>()?],
        None if model_type == "siglip" => vec![vec![Tower::Vision]],
        None if model_type == "gemma3" => vec![vec![Tower::Text], vec![Tower::Text, Tower::Vision]],
        None => vec![vec![Tower::Text]],
    };
    println!("{model}: rank {rank}, targets {}", targets.join(","));
    println!("| towers | method | Proj FT | trainable | layers |");
    println!("|---|---|---|---|---|");
    for towers in &tower_sets {
        let label = towers
            .iter()
            .map(|t| format!("{t:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join("+");
        for dora in [false, true] {
            for train in [false, true] {
                let adapter = AdapterConfig::ipa(rank)
                    .with_train_projector(train)
                    .with_dora(dora);
                let c = count_trainable(&linears, targets, towers, &adapter)?;
                println!(
                    "| {label} | {} | {} | {:.2}M ({}) | {} |",
                    if dora { "LoRA/IPA + DoRA" } else { "LoRA/IPA" },
                    if train { "✓" } else { "✗" },
                    c.trainable as f64 / 1e6,
                    c.trainable,
                    c.layers
                );
            }
        }
    }
    Ok(())
}

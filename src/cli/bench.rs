//! `ipa bench`: speed and memory measurements. None of them is a test; run them side by side
//! with `benches/torch_reference.py` (same settings) to get a ratio on the same machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn_ipa::bench::{BenchModel, FitBench, FitPassBench, ForwardBench, TrainBench};
use burn_ipa::pipelines::instruct::AdapterSpec;
use burn_ipa::projector::FitAlgorithm;
use burn_ipa::train::Trainable;
use burn_ipa::{Error, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use super::instruct::DEFAULT_TARGETS;
use super::BackendArgs;

/// What to measure.
#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Training steps (forward, loss, backward, clipping, AdamW): tokens/s and peak memory.
    ///
    /// The step of `ipa train` without the data loader, on a fixed batch of --batch × --seq
    /// token ids, every position labelled. `benches/torch_reference.py train` runs the same
    /// step in PyTorch + peft.
    Train(TrainBenchCmd),
    /// The forward-only fit pass (frozen model, every target site's estimator updated) next
    /// to the plain forward on the same batch.
    FitPass(FitPassBenchCmd),
    /// Fit throughput (tokens/s) of each algorithm alone on synthetic activations.
    Fit(FitBenchCmd),
    /// Decoder forward throughput (tokens/s) of random Llama-architecture models.
    Forward(ForwardBenchCmd),
}

impl BenchCmd {
    /// Runs the benchmark and prints its table.
    pub fn run(self) -> Result<ExitCode> {
        match self {
            BenchCmd::Train(cmd) => cmd.run(),
            BenchCmd::FitPass(cmd) => cmd.run(),
            BenchCmd::Fit(cmd) => cmd.run(),
            BenchCmd::Forward(cmd) => cmd.run(),
        }
    }
}

/// What the training benchmark trains.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum BenchMethod {
    /// LoRA adapters (projector trained unless --train-projector false).
    Lora,
    /// IPA adapters (projector frozen unless --train-projector); the projector is a random
    /// orthonormal one, which costs what a fitted one does.
    Ipa,
    /// The targets' own weights, no adapter.
    Weights,
    /// Every weight.
    Full,
}

/// The model of a benchmark.
#[derive(Args, Debug, Clone)]
pub struct BenchModelArgs {
    /// An HF model folder, a .gguf file, or `random:<size>` for random weights of a named
    /// shape: tiny, 100m, smollm2-135m, tinyllama-1.1b.
    #[arg(long, default_value = "random:smollm2-135m")]
    pub model: String,
    /// Sequences per batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Target linears (HF names, comma-separated).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_TARGETS)]
    pub targets: Vec<String>,
    /// Also write the rows as JSON to this file (replaced atomically).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Options of `ipa bench train`.
#[derive(Args, Debug)]
pub struct TrainBenchCmd {
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub model: BenchModelArgs,
    /// What trains.
    #[arg(long, value_enum, default_value = "lora")]
    pub method: BenchMethod,
    /// Adapter rank.
    #[arg(long, default_value_t = 32)]
    pub rank: usize,
    /// DoRA's magnitude vector on top (lora or ipa).
    #[arg(long)]
    pub dora: bool,
    /// Whether the projector trains [default: true for lora, false for ipa].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub train_projector: Option<bool>,
    /// Untimed steps first (kernel compilation, autotune, allocator warm-up).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
}

impl TrainBenchCmd {
    fn run(self) -> Result<ExitCode> {
        let adapter_method = match self.method {
            BenchMethod::Ipa => burn_ipa::adapter::AdapterMethod::Ipa,
            _ => burn_ipa::adapter::AdapterMethod::Lora,
        };
        let trainable = match self.method {
            BenchMethod::Lora | BenchMethod::Ipa => Trainable::Adapters,
            BenchMethod::Weights => Trainable::Weights(self.model.targets.clone()),
            BenchMethod::Full => Trainable::All,
        };
        if trainable != Trainable::Adapters && (self.dora || self.train_projector.is_some()) {
            return Err(Error::Config(
                "--dora and --train-projector need --method lora or ipa".into(),
            ));
        }
        let job = TrainBench {
            model: BenchModel::parse(&self.model.model)?,
            adapter: AdapterSpec {
                method: adapter_method,
                train_projector: self.train_projector,
                dora: self.dora,
                ..AdapterSpec::lora(self.rank)
            },
            targets: self.model.targets.clone(),
            trainable,
            batch: self.model.batch,
            seq: self.model.seq,
            warmup: self.warmup,
            steps: self.steps,
        };
        let row = self.backend.run(job)?;
        println!(
            "| backend | model | dtype | method | rank | trainable | batch × seq | tokens/s | s/step | peak RSS MiB |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {} | {} | {} | {} | {} | {} × {} | {:.1} | {:.3} | {} |",
            row.backend,
            row.model,
            row.dtype,
            row.method,
            row.rank,
            row.trainable_params,
            row.batch,
            row.seq,
            row.tokens_per_second,
            row.seconds_per_step,
            row.peak_rss_mib
                .map(|m| format!("{m:.0}"))
                .unwrap_or_else(|| "-".into())
        );
        write_json(self.model.json.as_deref(), &[row])?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Options of `ipa bench fit-pass`.
#[derive(Args, Debug)]
pub struct FitPassBenchCmd {
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub model: BenchModelArgs,
    /// Fit algorithms (comma-separated; settings as in `ipa fit --algorithm`).
    #[arg(long, value_delimiter = ',', default_value = "ipca,rsvd")]
    pub algorithms: Vec<String>,
    /// Projector rank.
    #[arg(long, default_value_t = 32)]
    pub rank: usize,
    /// Timed batches (after one untimed batch).
    #[arg(long, default_value_t = 3)]
    pub batches: usize,
}

impl FitPassBenchCmd {
    fn run(self) -> Result<ExitCode> {
        let job = FitPassBench {
            model: BenchModel::parse(&self.model.model)?,
            targets: self.model.targets.clone(),
            algorithms: parse_algorithms(&self.algorithms)?,
            rank: self.rank,
            batch: self.model.batch,
            seq: self.model.seq,
            batches: self.batches,
        };
        let rows = self.backend.run(job)?;
        println!(
            "| backend | model | dtype | pass | rank | batch × seq | tokens/s | time vs forward |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {} | {} | {} | {} | {} × {} | {:.1} | {:.2}× |",
                r.backend,
                r.model,
                r.dtype,
                r.algorithm,
                r.rank,
                r.batch,
                r.seq,
                r.tokens_per_second,
                r.relative_to_forward
            );
        }
        write_json(self.model.json.as_deref(), &rows)?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Options of `ipa bench fit`.
#[derive(Args, Debug)]
pub struct FitBenchCmd {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Input widths (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "4096,14336")]
    pub widths: Vec<usize>,
    /// Projector rank.
    #[arg(long, default_value_t = 32)]
    pub rank: usize,
    /// Rows (tokens) per batch.
    #[arg(long, default_value_t = 4096)]
    pub batch_tokens: usize,
    /// Batches to time per algorithm, after one warm-up batch.
    #[arg(long, default_value_t = 5)]
    pub batches: usize,
    /// Stop timing an algorithm after this many seconds (one batch at least).
    #[arg(long, default_value_t = 60.0)]
    pub max_seconds: f64,
    /// Algorithms (comma-separated; settings as in `ipa fit --algorithm`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "rsvd,gha,covariance,ipca"
    )]
    pub algorithms: Vec<String>,
    /// Also write the rows as JSON to this file (replaced atomically).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl FitBenchCmd {
    fn run(self) -> Result<ExitCode> {
        let job = FitBench {
            widths: self.widths,
            rank: self.rank,
            batch_tokens: self.batch_tokens,
            batches: self.batches,
            max_seconds: self.max_seconds,
            algorithms: parse_algorithms(&self.algorithms)?,
        };
        let rows = self.backend.run(job)?;
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
        write_json(self.json.as_deref(), &rows)?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Options of `ipa bench forward`.
#[derive(Args, Debug)]
pub struct ForwardBenchCmd {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Model sizes (comma-separated): tiny, 100m, smollm2-135m, tinyllama-1.1b.
    #[arg(long, value_delimiter = ',', default_value = "tiny,100m")]
    pub sizes: Vec<String>,
    /// Sequences per batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Timed forward passes.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Also write the rows as JSON to this file (replaced atomically).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl ForwardBenchCmd {
    fn run(self) -> Result<ExitCode> {
        if self.batch == 0 || self.seq == 0 || self.iters == 0 {
            return Err(Error::Config(
                "--batch, --seq and --iters must be at least 1".into(),
            ));
        }
        for size in &self.sizes {
            burn_ipa::bench::bench_decoder_config(size)?;
        }
        let job = ForwardBench {
            sizes: self.sizes,
            batch: self.batch,
            seq: self.seq,
            iters: self.iters,
        };
        let rows = self.backend.run(job)?;
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
        write_json(self.json.as_deref(), &rows)?;
        Ok(ExitCode::SUCCESS)
    }
}

fn parse_algorithms(names: &[String]) -> Result<Vec<FitAlgorithm>> {
    names.iter().map(|n| FitAlgorithm::from_name(n)).collect()
}

fn write_json<T: Serialize>(path: Option<&Path>, rows: &[T]) -> Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_vec_pretty(rows).map_err(|e| Error::file(path, e))?;
        burn_ipa::adapter::write_atomic(path, &text)?;
    }
    Ok(())
}

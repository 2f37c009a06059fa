//! `ipa`: the burn-ipa command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

use burn_ipa::backend::{run_on, BackendKind};
use burn_ipa::bench::FitBench;
use burn_ipa::projector::{FitAlgorithm, GhaConfig};
use clap::{Args, Parser, Subcommand};

/// IPA: information-preserving input projections for adapting foundation models.
///
/// LoRA adds s·B·A·x to a frozen layer with a random A; IPA fits the projector to the principal
/// directions of the inputs the layer sees, forward-only, before fine-tuning.
#[derive(Parser, Debug)]
#[command(name = "ipa", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure speed: `ipa bench fit` times the projector-fit algorithms.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
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
    match cli.command {
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

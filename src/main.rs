//! `ipa`: the burn-ipa command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

use burn_ipa::backend::{run_on, BackendKind};
use burn_ipa::bench::{FitBench, ForwardBench};
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
    match cli.command {
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

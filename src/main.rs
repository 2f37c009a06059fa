//! `ipa`: the burn-ipa command-line tool.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// IPA: information-preserving input projections for adapting foundation models.
///
/// LoRA adds s·B·A·x to a frozen layer with a random A; IPA fits the projector to the principal
/// directions of the inputs the layer sees, forward-only, before fine-tuning.
///
/// Defaults follow the authors' code (valeoai/peft-ipa), which made the paper's tables, where
/// it and the paper's text differ; `--help` of each command says where.
///
/// With no subcommand, runs `ipa quickstart`.
#[derive(Parser, Debug)]
#[command(name = "ipa", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
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
    Quickstart(cli::quickstart::QuickstartCmd),
    /// Fit IPA projectors forward-only on a fraction of the training data.
    ///
    /// Runs the frozen model over the first --fit-fraction of the seeded shuffle of the
    /// training split of --data (the --val-set-size held-out examples excluded, as `ipa train`
    /// excludes them; padding excluded) and fits one projector per distinct input of the
    /// targeted linears (q/k/v share one, gate/up share one). Writes projectors.safetensors and
    /// fit_config.json to --out; `ipa train --projectors <out>` starts from them.
    Fit(cli::instruct::FitCmd),
    /// Fine-tune IPA or LoRA adapters on instruction data (causal LM).
    ///
    /// AdamW (ε 1e-8, global gradient-norm clipping at 1.0, as HF's Trainer) with linear
    /// warm-up then linear decay; only adapter parameters train. IPA fits its projectors first
    /// (or reads --projectors, or fits them online). Writes train_config.json, metrics.csv,
    /// checkpoints every --checkpoint-every steps (adapters and optimizer state only, with
    /// checksums), the adapter with the best validation loss (--keep) to --out/adapter and
    /// train_report.json. With --resume an interrupted run continues from its last intact
    /// checkpoint and ends exactly as an uninterrupted one would. Ctrl-C stops after the
    /// current step with a checkpoint (exit status 130).
    ///
    /// IPA's defaults are the official IPA scripts' (scaling 0.25, or 0.4 for Gemma-3;
    /// dropout 0); the paper's text gives the same scalings. LoRA/DoRA's: alpha 2r, dropout
    /// 0.05.
    Train(cli::instruct::TrainCmd),
    /// Evaluate on the commonsense test sets by generation.
    ///
    /// Generates after the LLM-Adapters evaluation prompt (4 beams and 32 new tokens, as the
    /// official evaluation), takes the first answer word of the task's format (true/false,
    /// solution1/2, answer1-5, ending1-4, option1/2) and compares it with the reference.
    /// Writes predictions.jsonl, accuracy.json and eval_config.json.
    Eval(cli::instruct::EvalCmd),
    /// Fine-tune SigLIP on a VTAB-1k task (image–text classification with class prompts).
    ///
    /// Adapters on the vision tower (q_proj, v_proj by default), IPA projectors fitted on the
    /// training images first; cross-entropy over image-to-class-prompt logits; test accuracy
    /// every few epochs with the best adapter kept. Writes vtab_config.json, metrics.csv,
    /// eval.csv, report.json and best_adapter/ under --out.
    Vtab(cli::vtab::VtabCmd),
    /// Generate text from a model folder or GGUF file, optionally with an adapter.
    ///
    /// Greedy decoding (streamed as it is produced) or beam search, with the model's chat
    /// template under --chat; prints tokens/s at the end.
    Generate(cli::generate::GenerateCmd),
    /// Fold an adapter into the base weights and write a full HF checkpoint.
    ///
    /// The output has the source's file names, shards, tensor names and dtypes (or all f32
    /// with --f32), plus its config and tokenizer files: HF transformers and `ipa` load it as
    /// a plain model.
    Merge(cli::export::MergeCmd),
    /// Export an adapter for other tools.
    ///
    /// `--format peft` writes adapter_config.json and adapter_model.safetensors that HF peft
    /// loads as a LoRA (or DoRA) adapter: IPA is LoRA-shaped, P becomes lora_A and B lora_B,
    /// and the scaling is folded into lora_alpha.
    Export(cli::export::ExportCmd),
    /// Tables and plots of finished runs: mean ± std over seeds per variant.
    ///
    /// Groups run folders by their settings but the seed and writes report.md (accuracy per
    /// task and on average, trainable parameters, training time), report.json and PNG plots
    /// (loss curves, accuracy against rank and fit fraction, and cos(P, P₀) per layer for the
    /// runs whose projector trained).
    Report(cli::report::ReportCmd),
    /// Build instruction tasks from WordNet's definitions and hypernyms (real, human-written
    /// data available offline).
    ///
    /// `wordnet_definitions`: which of four words of the same lexicographer file means a
    /// definition (answer1-4); `wordnet_hypernyms`: is a word a kind of another (true/false).
    /// Training and test questions ask about disjoint words. Writes train.json and
    /// dataset/<task>/test.json in the LLM-Adapters layout, for `ipa train` and `ipa eval`.
    WordnetTasks(cli::wordnet::WordNetCmd),
    /// Count the trainable adapter parameters of a model from its config.json alone.
    ///
    /// Prints LoRA/IPA with the projector frozen (✗) and trained (✓), plain and with DoRA.
    /// LoRA and IPA have the same shapes; only how P is obtained differs.
    Params(cli::params::ParamsCmd),
    /// Measure speed and memory: training steps, the fit pass, the fit algorithms, the
    /// forward (`benches/torch_reference.py` runs the same settings in PyTorch).
    #[command(subcommand)]
    Bench(cli::bench::BenchCmd),
}

fn main() -> ExitCode {
    burn_ipa::heap::retain_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> burn_ipa::Result<ExitCode> {
    let command = cli
        .command
        .unwrap_or_else(|| Command::Quickstart(cli::quickstart::QuickstartCmd::default_run()));
    match command {
        Command::Quickstart(cmd) => cmd.run(),
        Command::Fit(cmd) => cmd.run(),
        Command::Train(cmd) => cmd.run(),
        Command::Eval(cmd) => cmd.run(),
        Command::Vtab(cmd) => cmd.run(),
        Command::Generate(cmd) => cmd.run(),
        Command::Merge(cmd) => cmd.run(),
        Command::Export(cmd) => cmd.run(),
        Command::Params(cmd) => cmd.run(),
        Command::WordnetTasks(cmd) => cmd.run(),
        Command::Report(cmd) => cmd.run(),
        Command::Bench(cmd) => cmd.run(),
    }
}

//! `ipa merge` and `ipa export`: adapters out of burn-ipa, into HF tools.

use std::path::PathBuf;
use std::process::ExitCode;

use burn::tensor::backend::Backend;
use burn_ipa::backend::BackendJob;
use burn_ipa::export::{
    export_merged_standalone, export_merged_with, export_peft_for, PeftLayout, WeightDtype,
};
use burn_ipa::models::gguf::{repository_name, GgufFile};
use burn_ipa::models::llama::Decoder;
use burn_ipa::models::loading::load_decoder;
use burn_ipa::models::source::ModelSource;
use burn_ipa::models::tokenizer::Tokenizer;
use burn_ipa::pipelines::instruct::attach_saved_adapter;
use burn_ipa::pipelines::out_dir::OutDir;
use burn_ipa::{Error, Result};
use clap::{Args, ValueEnum};

use super::{BackendArgs, OutArgs};

/// Adapter export formats.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExportFormat {
    /// HF peft LoRA adapter.
    Peft,
}

/// Refuses an output folder that is the model folder itself.
fn not_the_model(out: &std::path::Path, model: &std::path::Path) -> Result<()> {
    let same = match (out.canonicalize(), model.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(Error::file(
            out,
            "is the model folder: write the output to another folder",
        ));
    }
    Ok(())
}

/// `ipa export --format peft`.
#[derive(Args, Debug, Clone)]
pub struct ExportCmd {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "peft")]
    pub format: ExportFormat,
    /// HF model folder or GGUF file the adapter was trained on.
    #[arg(long)]
    pub model: PathBuf,
    /// Adapter folder written by `ipa train`.
    #[arg(long)]
    pub adapter: PathBuf,
    /// `base_model_name_or_path` to record (default: the --model folder; for a GGUF file, the
    /// repository name its metadata and file name give, e.g.
    /// HuggingFaceTB/SmolLM2-135M-Instruct).
    #[arg(long)]
    pub base_model_name: Option<String>,
    #[command(flatten)]
    pub out: OutArgs,
}

impl ExportCmd {
    /// Runs the command.
    pub fn run(self) -> Result<ExitCode> {
        let backend = self.backend.clone();
        let out = self.out.out.clone();
        let (rank, alpha, base) = backend.run(self)?;
        println!(
            "wrote a peft LoRA adapter (r = {rank}, lora_alpha = {alpha}, base model {base}) to {}",
            out.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

impl BackendJob for ExportCmd {
    type Output = (usize, f64, String);
    fn run<B: Backend>(self, device: B::Device, _: &str) -> Result<Self::Output> {
        not_the_model(&self.out.out, &self.model)?;
        let dir = OutDir::lock(&self.out.out, "ipa export")?;
        dir.prepare(self.out.existing(), "a peft adapter", false)?;
        let mut model: Decoder<B> = load_decoder(&self.model, &device)?;
        let adapter = attach_saved_adapter(&mut model, &self.adapter)?;
        let (layout, default_name) = match ModelSource::of(&self.model)? {
            // transformers builds the text-only *ForCausalLM class from a GGUF file.
            ModelSource::Gguf(file) => (
                PeftLayout::CausalLm,
                repository_name(&GgufFile::open(&file)?),
            ),
            // A multimodal Gemma-3 checkpoint names its language model's modules differently.
            ModelSource::Folder(dir) => {
                (PeftLayout::of_checkpoint(&dir)?, dir.display().to_string())
            }
        };
        let name = self.base_model_name.clone().unwrap_or(default_name);
        let ExportFormat::Peft = self.format;
        export_peft_for(&model, &adapter, &name, layout, &self.out.out)?;
        Ok((adapter.rank, adapter.scale() * adapter.rank as f64, name))
    }
}

/// `ipa merge`.
#[derive(Args, Debug, Clone)]
pub struct MergeCmd {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// HF model folder or GGUF file the adapter was trained on.
    #[arg(long)]
    pub model: PathBuf,
    /// Adapter folder written by `ipa train` (or an HF peft adapter).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Write every weight in f32 instead of the source dtype (from a GGUF file: always f32).
    #[arg(long)]
    pub f32: bool,
    /// Output folder (not the model folder); with --overwrite its old contents, shards and
    /// index included, are deleted first.
    #[command(flatten)]
    pub out: OutArgs,
}

impl MergeCmd {
    /// Runs the command.
    pub fn run(self) -> Result<ExitCode> {
        let backend = self.backend.clone();
        let out = self.out.out.clone();
        backend.run(self)?;
        println!("wrote the merged checkpoint to {}", out.display());
        Ok(ExitCode::SUCCESS)
    }
}

impl BackendJob for MergeCmd {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device, _: &str) -> Result<()> {
        not_the_model(&self.out.out, &self.model)?;
        let dir = OutDir::lock(&self.out.out, "ipa merge")?;
        dir.prepare(self.out.existing(), "a merged checkpoint", false)?;
        let mut model: Decoder<B> = load_decoder(&self.model, &device)?;
        attach_saved_adapter(&mut model, &self.adapter)?;
        match ModelSource::of(&self.model)? {
            ModelSource::Gguf(_) => {
                let tokenizer = Tokenizer::load(&self.model)?;
                export_merged_standalone(&model, &tokenizer, &self.out.out)
            }
            ModelSource::Folder(dir) => {
                let dtype = if self.f32 {
                    WeightDtype::F32
                } else {
                    WeightDtype::Source
                };
                export_merged_with(&model, &dir, &self.out.out, dtype)
            }
        }
    }
}

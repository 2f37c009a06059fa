//! `ipa merge` and `ipa export`: adapters out of burn-ipa, into HF tools.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn_ipa::backend::BackendJob;
use burn_ipa::export::{export_merged_with, export_peft_for, PeftLayout, WeightDtype};
use burn_ipa::instruct::attach_saved_adapter;
use burn_ipa::models::llama::Decoder;
use burn_ipa::models::loading::load_decoder;
use burn_ipa::Result;

/// `ipa export --format peft`: the adapter as a HF peft LoRA adapter.
pub struct ExportPeftJob {
    pub model: PathBuf,
    pub adapter: PathBuf,
    pub base_model_name: Option<String>,
    pub out: PathBuf,
}

impl BackendJob for ExportPeftJob {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device, _: &str) -> Result<()> {
        let mut model: Decoder<B> = load_decoder(&self.model, &device)?;
        attach_saved_adapter(&mut model, &self.adapter)?;
        let saved = burn_ipa::adapter::read_adapter_config(&self.adapter)?;
        let name = self
            .base_model_name
            .clone()
            .unwrap_or_else(|| self.model.display().to_string());
        // A multimodal Gemma-3 checkpoint names its language model's modules differently.
        let layout = PeftLayout::of_checkpoint(&self.model)?;
        export_peft_for(&model, &saved.adapter, &name, layout, &self.out)?;
        println!(
            "wrote a peft LoRA adapter (r = {}, lora_alpha = {}) to {}",
            saved.adapter.rank,
            saved.adapter.scale() * saved.adapter.rank as f64,
            self.out.display()
        );
        Ok(())
    }
}

/// `ipa merge`: a full HF checkpoint with the adapter folded into the weights.
pub struct MergeJob {
    pub model: PathBuf,
    pub adapter: PathBuf,
    pub f32: bool,
    pub out: PathBuf,
}

impl BackendJob for MergeJob {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device, _: &str) -> Result<()> {
        let mut model: Decoder<B> = load_decoder(&self.model, &device)?;
        attach_saved_adapter(&mut model, &self.adapter)?;
        let dtype = if self.f32 {
            WeightDtype::F32
        } else {
            WeightDtype::Source
        };
        export_merged_with(&model, &self.model, &self.out, dtype)?;
        println!("wrote the merged checkpoint to {}", self.out.display());
        Ok(())
    }
}

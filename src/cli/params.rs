//! `ipa params`: adapter parameter counts from a model's `config.json` alone.

use std::process::ExitCode;

use burn_ipa::adapter::AdapterConfig;
use burn_ipa::models::params::{count_trainable, model_linears, read_model_config, Tower};
use burn_ipa::{Error, Result};
use clap::Args;

/// Options of `ipa params`.
#[derive(Args, Debug, Clone)]
pub struct ParamsCmd {
    /// A preset (llama-2-7b, llama-3-8b, qwen-2.5-7b, gemma-3-4b,
    /// siglip-2-base-patch16-224, tiny-llama, tiny-siglip) or a model directory or
    /// config.json path.
    #[arg(long)]
    pub model: String,
    /// Adapter rank r.
    #[arg(long, default_value_t = 32)]
    pub rank: usize,
    /// Target module names (comma-separated HF names).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,up_proj,down_proj"
    )]
    pub targets: Vec<String>,
    /// Towers to adapt (comma-separated): text, vision. Default: text for decoders, vision
    /// for SigLIP; multimodal Gemma-3 prints both text-only and text+vision.
    #[arg(long, value_delimiter = ',')]
    pub towers: Option<Vec<String>>,
}

impl ParamsCmd {
    /// Prints the table.
    pub fn run(self) -> Result<ExitCode> {
        params(&self.model, self.rank, &self.targets, self.towers)?;
        Ok(ExitCode::SUCCESS)
    }
}

fn params(model: &str, rank: usize, targets: &[String], towers: Option<Vec<String>>) -> Result<()> {
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
                other => Err(Error::Config(format!(
                    "unknown tower `{other}` (text, vision)"
                ))),
            })
            .collect::<Result<_>>()?],
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

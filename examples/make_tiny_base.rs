//! Regenerates the bundled tiny base model in `models/tiny-base/`: generates the world's
//! corpus and tokenizer, pretrains a 2-layer Llama-style decoder from scratch on the CPU and
//! writes an HF-layout checkpoint.
//!
//! ```text
//! cargo run --release --example make_tiny_base [-- <out_dir> [epochs]]
//! ```

use std::path::PathBuf;

use burn::backend::{Autodiff, NdArray};
use burn_ipa::quickstart::base::{pretrain_base, PretrainSettings};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny-base"));
    let mut settings = PretrainSettings::default();
    if let Some(epochs) = args.next() {
        settings.epochs = epochs.parse()?;
    }
    let start = std::time::Instant::now();
    let history = pretrain_base::<Autodiff<NdArray<f32>>>(&out, &settings, &Default::default())?;
    let first = history.first().map(|r| r.loss).unwrap_or(f64::NAN);
    let tail: Vec<f64> = history.iter().rev().take(20).map(|r| r.loss).collect();
    let last = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
    println!(
        "pretrained {} steps in {:.1}s: loss {first:.3} → {last:.3} (mean of the last 20); written to {}",
        history.len(),
        start.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

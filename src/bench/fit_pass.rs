//! `ipa bench fit-pass`: the forward-only fit pass (the frozen model's forward with every
//! targeted site's estimator updated) against the plain forward on the same batch.
//!
//! The fit pass should cost about one forward: the estimators' updates are small GEMMs next
//! to the model's. `benches/torch_reference.py fit-pass` runs the authors' batched IPCA update
//! on the same model and batch.

use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;

use super::memory::peak_rss_mib;
use super::model::{bench_ids, BenchModel};
use crate::backend::BackendJob;
use crate::fit::decoder::DecoderFit;
use crate::models::ForwardOptions;
use crate::projector::FitAlgorithm;
use crate::{Error, Result};

/// Settings of the fit-pass benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct FitPassBench {
    /// The decoder.
    pub model: BenchModel,
    /// Target linears (HF names); their distinct input sites get one estimator each.
    pub targets: Vec<String>,
    /// Fit algorithms, each timed on its own.
    pub algorithms: Vec<FitAlgorithm>,
    /// Projector rank.
    pub rank: usize,
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Timed batches (after one untimed batch).
    pub batches: usize,
}

/// One measured fit-pass row.
#[derive(Clone, Debug, Serialize)]
pub struct FitPassBenchRow {
    /// Backend name.
    pub backend: String,
    /// Model label.
    pub model: String,
    /// Float type of the model.
    pub dtype: String,
    /// `forward` for the plain forward, else the fit algorithm.
    pub algorithm: String,
    /// Projector rank.
    pub rank: usize,
    /// Target linears.
    pub targets: String,
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Timed batches.
    pub batches: usize,
    /// Tokens per second.
    pub tokens_per_second: f64,
    /// Time relative to the plain forward (1.0 = free).
    pub relative_to_forward: f64,
    /// Peak resident memory of the process so far, MiB.
    pub peak_rss_mib: Option<f64>,
}

impl FitPassBench {
    /// Checks the settings before the model is loaded.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.seq == 0 {
            return Err(Error::Config(format!(
                "--batch {} --seq {}: a batch needs at least one token",
                self.batch, self.seq
            )));
        }
        if self.batches == 0 {
            return Err(Error::Config("--batches must be at least 1".into()));
        }
        if self.rank == 0 {
            return Err(Error::Config("--rank must be at least 1".into()));
        }
        if self.targets.is_empty() {
            return Err(Error::Config("--targets: give at least one linear".into()));
        }
        if self.algorithms.is_empty() {
            return Err(Error::Config("--algorithms: give at least one".into()));
        }
        Ok(())
    }
}

impl BackendJob for FitPassBench {
    type Output = Vec<FitPassBenchRow>;

    fn run<B: Backend>(self, device: B::Device, backend_name: &str) -> Result<Self::Output> {
        self.validate()?;
        let model = self.model.load::<B>(&device)?;
        let config = model.config.clone();
        let dtype = format!("{:?}", model.model.embed_tokens.weight.val().dtype());
        let ids = bench_ids(self.batch, self.seq, config.vocab_size);
        let input = || {
            Tensor::<B, 2, Int>::from_data(
                TensorData::new(ids.clone(), [self.batch, self.seq]),
                &device,
            )
        };
        let tokens = (self.batch * self.seq * self.batches) as f64;
        let row = |algorithm: &str, seconds: f64, forward_seconds: f64| FitPassBenchRow {
            backend: backend_name.to_string(),
            model: self.model.label(),
            dtype: dtype.clone(),
            algorithm: algorithm.to_string(),
            rank: self.rank,
            targets: self.targets.join(","),
            batch: self.batch,
            seq: self.seq,
            batches: self.batches,
            tokens_per_second: tokens / seconds,
            relative_to_forward: seconds / forward_seconds,
            peak_rss_mib: peak_rss_mib(),
        };

        // The plain forward, logits included (the fit pass computes them too).
        let options = ForwardOptions::default();
        let _ = model.forward(input(), &options)?.into_data();
        let start = Instant::now();
        for _ in 0..self.batches {
            let logits = model.forward(input(), &options)?;
            let _ = B::sync(&device);
            drop(logits);
        }
        let forward_seconds = start.elapsed().as_secs_f64();
        let mut rows = vec![row("forward", forward_seconds, forward_seconds)];
        report(&rows[0]);

        for algorithm in &self.algorithms {
            let mut fit = DecoderFit::new(&model, &self.targets, None, algorithm, self.rank, 0)?;
            fit.observe(&model, input(), None)?;
            let _ = B::sync(&device);
            let start = Instant::now();
            for _ in 0..self.batches {
                fit.observe(&model, input(), None)?;
                let _ = B::sync(&device);
            }
            let seconds = start.elapsed().as_secs_f64();
            rows.push(row(algorithm.name(), seconds, forward_seconds));
            report(rows.last().expect("just pushed"));
        }
        Ok(rows)
    }
}

fn report(row: &FitPassBenchRow) {
    eprintln!(
        "{:>8} {} {:>10} {:>9.1} tokens/s ({:.2}x the forward's time)",
        row.backend, row.model, row.algorithm, row.tokens_per_second, row.relative_to_forward
    );
}

//! `ipa bench fit`: projector-fit throughput on synthetic activations.

use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use serde::Serialize;

use crate::backend::BackendJob;
use crate::projector::FitAlgorithm;
use crate::{Error, Result};

/// Settings of the fit-throughput benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct FitBench {
    /// Input widths to test.
    pub widths: Vec<usize>,
    /// Projector rank.
    pub rank: usize,
    /// Rows (tokens) per batch.
    pub batch_tokens: usize,
    /// Batches to time per algorithm (after one warm-up batch).
    pub batches: usize,
    /// Stop timing an algorithm after this many seconds (at least one batch is timed).
    pub max_seconds: f64,
    /// The algorithms to run.
    pub algorithms: Vec<FitAlgorithm>,
}

/// One measured row.
#[derive(Clone, Debug, Serialize)]
pub struct FitBenchRow {
    /// Backend name.
    pub backend: String,
    /// Algorithm name.
    pub algorithm: String,
    /// Input width.
    pub d: usize,
    /// Rank.
    pub rank: usize,
    /// Rows per batch.
    pub batch_tokens: usize,
    /// Timed batches.
    pub batches: usize,
    /// Tokens per second over the timed updates.
    pub tokens_per_second: f64,
    /// Seconds per update.
    pub seconds_per_batch: f64,
    /// Seconds for `finish`.
    pub finish_seconds: f64,
}

impl FitBench {
    /// Checks the settings before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        if self.widths.is_empty() {
            return Err(Error::Config(
                "--widths: give at least one input width".into(),
            ));
        }
        if self.rank == 0 {
            return Err(Error::Config("--rank must be at least 1".into()));
        }
        if self.batch_tokens == 0 {
            return Err(Error::Config("--batch-tokens must be at least 1".into()));
        }
        if self.batches == 0 {
            return Err(Error::Config("--batches must be at least 1".into()));
        }
        if self.max_seconds.is_nan() || self.max_seconds <= 0.0 {
            return Err(Error::Config(format!(
                "--max-seconds {} is not a positive number of seconds",
                self.max_seconds
            )));
        }
        if self.algorithms.is_empty() {
            return Err(Error::Config("--algorithms: give at least one".into()));
        }
        for &d in &self.widths {
            if d < self.rank {
                return Err(Error::Config(format!(
                    "--widths {d}: every width must be at least the rank ({})",
                    self.rank
                )));
            }
        }
        Ok(())
    }
}

impl BackendJob for FitBench {
    type Output = Vec<FitBenchRow>;

    fn run<B: Backend>(self, device: B::Device, backend_name: &str) -> Result<Self::Output> {
        self.validate()?;
        let mut rows = Vec::new();
        for &d in &self.widths {
            // A decaying spectrum so every algorithm has directions to find; two batches cycled
            // so data generation stays out of the timings.
            let scales: Tensor<B, 2> = Tensor::<B, 1>::from_floats(
                (0..d)
                    .map(|j| 1.0 / (1.0 + j as f32).sqrt())
                    .collect::<Vec<_>>()
                    .as_slice(),
                &device,
            )
            .unsqueeze();
            let data: Vec<Tensor<B, 2>> = (0..2)
                .map(|_| {
                    Tensor::<B, 2>::random(
                        [self.batch_tokens, d],
                        Distribution::Normal(0.0, 1.0),
                        &device,
                    ) * scales.clone()
                })
                .collect();
            for algorithm in &self.algorithms {
                let mut fit = algorithm.build::<B>(d, self.rank, 0, &device)?;
                fit.update(data[0].clone(), None)?; // warm-up: kernels, autotune, allocations
                let _ = B::sync(&device);
                let budget = Duration::from_secs_f64(self.max_seconds);
                let start = Instant::now();
                let mut timed = 0;
                while timed < self.batches {
                    fit.update(data[(timed + 1) % 2].clone(), None)?;
                    let _ = B::sync(&device);
                    timed += 1;
                    if start.elapsed() > budget {
                        break;
                    }
                }
                let elapsed = start.elapsed().as_secs_f64();
                let finish_start = Instant::now();
                let fitted = fit.finish()?;
                let _ = fitted.components.into_data();
                let finish_seconds = finish_start.elapsed().as_secs_f64();
                let row = FitBenchRow {
                    backend: backend_name.to_string(),
                    algorithm: algorithm.name().to_string(),
                    d,
                    rank: self.rank,
                    batch_tokens: self.batch_tokens,
                    batches: timed,
                    tokens_per_second: (timed * self.batch_tokens) as f64 / elapsed,
                    seconds_per_batch: elapsed / timed as f64,
                    finish_seconds,
                };
                eprintln!(
                    "{:>8} {:>10} d={:<6} {:>12.0} tokens/s  ({:.3} s/batch over {} batches, finish {:.2} s)",
                    row.backend,
                    row.algorithm,
                    row.d,
                    row.tokens_per_second,
                    row.seconds_per_batch,
                    row.batches,
                    row.finish_seconds
                );
                rows.push(row);
            }
        }
        Ok(rows)
    }
}

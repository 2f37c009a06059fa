//! `ipa bench forward`: decoder forward throughput on random Llama-architecture models.

use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::Serialize;

use super::model::bench_decoder_config;
use crate::backend::BackendJob;
use crate::Result;

/// Settings of the decoder forward benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct ForwardBench {
    /// Model sizes: `tiny` (hidden 64, 2 layers) and `100m` (hidden 768, 12 layers, ~110M
    /// parameters with a 32k vocabulary), Llama architecture, random weights.
    pub sizes: Vec<String>,
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Timed forward passes (after one warm-up).
    pub iters: usize,
}

/// One measured forward row.
#[derive(Clone, Debug, Serialize)]
pub struct ForwardBenchRow {
    /// Backend name.
    pub backend: String,
    /// Model size label.
    pub size: String,
    /// Parameters of the model.
    pub params: usize,
    /// Float type of the weights and activations.
    pub dtype: String,
    /// Tokens per forward pass.
    pub tokens: usize,
    /// Tokens per second.
    pub tokens_per_second: f64,
}

impl BackendJob for ForwardBench {
    type Output = Vec<ForwardBenchRow>;

    fn run<B: Backend>(self, device: B::Device, backend_name: &str) -> Result<Self::Output> {
        use burn::module::Module;
        use burn::tensor::{Int, TensorData};
        let mut rows = Vec::new();
        for size in &self.sizes {
            let config = bench_decoder_config(size)?;
            let model = crate::models::Decoder::<B>::init(&config, &device);
            let params = model.num_params();
            let ids = super::model::bench_ids(self.batch, self.seq, config.vocab_size);
            let ids = Tensor::<B, 2, Int>::from_data(
                TensorData::new(ids, [self.batch, self.seq]),
                &device,
            );
            let options = crate::models::ForwardOptions::default();
            let _ = model.forward(ids.clone(), &options)?.into_data();
            let start = Instant::now();
            for _ in 0..self.iters {
                let logits = model.forward(ids.clone(), &options)?;
                let _ = B::sync(&device);
                drop(logits);
            }
            let elapsed = start.elapsed().as_secs_f64();
            let row = ForwardBenchRow {
                backend: backend_name.into(),
                size: size.clone(),
                params,
                dtype: format!("{:?}", Tensor::<B, 1>::empty([0], &device).dtype()),
                tokens: self.batch * self.seq,
                tokens_per_second: (self.iters * self.batch * self.seq) as f64 / elapsed,
            };
            eprintln!(
                "{:>8} {:>5} ({:.1}M params, {}) {:>10.0} tokens/s",
                row.backend,
                row.size,
                row.params as f64 / 1e6,
                row.dtype,
                row.tokens_per_second
            );
            rows.push(row);
        }
        Ok(rows)
    }
}

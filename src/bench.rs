//! Benchmarks behind `ipa bench`: projector-fit throughput.

use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use serde::Serialize;

use crate::backend::BackendJob;
use crate::projector::FitAlgorithm;
use crate::Result;

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

impl BackendJob for FitBench {
    type Output = Vec<FitBenchRow>;

    fn run<B: Backend>(self, device: B::Device, backend_name: &str) -> Result<Self::Output> {
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

/// The benchmark decoders' shapes.
pub fn bench_decoder_config(size: &str) -> Result<crate::models::DecoderConfig> {
    use crate::models::config::{DecoderConfig, DecoderFamily, LayerKind, RopeConfig};
    let (hidden, layers, heads, inter, vocab) = match size {
        "tiny" => (64, 2, 4, 128, 256),
        "100m" => (768, 12, 12, 2048, 32000),
        other => {
            return Err(crate::Error::Config(format!(
                "unknown bench size `{other}` (tiny, 100m)"
            )))
        }
    };
    Ok(DecoderConfig {
        family: DecoderFamily::Llama,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim: hidden / heads,
        rms_norm_eps: 1e-5,
        rope: RopeConfig {
            theta: 10_000.0,
            scaling: None,
        },
        local_rope: None,
        max_position_embeddings: 4096,
        tie_word_embeddings: true,
        attention_bias: false,
        layer_types: vec![LayerKind::Full; layers],
        sliding_window: None,
        query_pre_attn_scalar: None,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: None,
    })
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
            let ids: Vec<i64> = (0..self.batch * self.seq)
                .map(|i| (i * 7919 % config.vocab_size) as i64)
                .collect();
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

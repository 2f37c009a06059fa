//! `ipa bench train`: tokens/s and peak memory of adapter (or weight) training steps.
//!
//! A step here is the training loop's step without the data loader: forward, next-token
//! loss, backward, gradient clipping and AdamW, on a fixed batch of `batch × seq` tokens, all
//! of them labelled. `benches/torch_reference.py train` runs the same step in PyTorch + peft.

use std::time::Instant;

use burn::backend::Autodiff;
use burn::optim::{AdamWConfig, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn::train::TrainStep;
use serde::Serialize;

use super::memory::peak_rss_mib;
use super::model::{bench_ids, BenchModel};
use crate::adapter::{AdapterMethod, ProjectorInit};
use crate::backend::BackendJob;
use crate::models::ForwardOptions;
use crate::pipelines::instruct::AdapterSpec;
use crate::train::causal_lm::{count_trainable, trainable_lm, LmBatch, Trainable};
use crate::{Error, Result};

/// Settings of the training-step benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct TrainBench {
    /// The decoder.
    pub model: BenchModel,
    /// The adapter (ignored when `trainable` is not [`Trainable::Adapters`]).
    pub adapter: AdapterSpec,
    /// Target linears (HF names).
    pub targets: Vec<String>,
    /// What trains: the adapters, the target weights themselves, or everything.
    #[serde(skip)]
    pub trainable: Trainable,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Untimed steps first (kernel compilation, autotune, allocator warm-up).
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
}

/// One measured training row.
#[derive(Clone, Debug, Serialize)]
pub struct TrainBenchRow {
    /// Backend name.
    pub backend: String,
    /// Model label.
    pub model: String,
    /// Float type of weights and activations.
    pub dtype: String,
    /// What trains (`lora`, `ipa`, `dora`, `weights`, `full`).
    pub method: String,
    /// Adapter rank (0 without an adapter).
    pub rank: usize,
    /// Target linears.
    pub targets: String,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Timed steps.
    pub steps: usize,
    /// Tokens per second over the timed steps.
    pub tokens_per_second: f64,
    /// Seconds per step.
    pub seconds_per_step: f64,
    /// The loss after the last step (a sanity check that the step trains).
    pub last_loss: f64,
    /// Peak resident memory of the process, MiB (host memory; on a GPU backend the device
    /// memory is not included).
    pub peak_rss_mib: Option<f64>,
}

impl TrainBench {
    /// Checks the settings before the model is loaded.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.seq < 2 {
            return Err(Error::Config(format!(
                "--batch {} --seq {}: a step needs at least one sequence of two tokens",
                self.batch, self.seq
            )));
        }
        if self.steps == 0 {
            return Err(Error::Config("--steps must be at least 1".into()));
        }
        if self.targets.is_empty() && self.trainable != Trainable::All {
            return Err(Error::Config("--targets: give at least one linear".into()));
        }
        Ok(())
    }

    fn method_label(&self) -> String {
        match &self.trainable {
            Trainable::All => "full".into(),
            Trainable::Weights(_) => "weights".into(),
            Trainable::Adapters => {
                let base = match self.adapter.method {
                    AdapterMethod::Lora => "lora",
                    AdapterMethod::Ipa => "ipa",
                };
                let mut label = if self.adapter.dora {
                    format!("{base}+dora")
                } else {
                    base.to_string()
                };
                if self.adapter.train_projector == Some(self.adapter.method == AdapterMethod::Ipa) {
                    label.push_str(if self.adapter.method == AdapterMethod::Ipa {
                        " (P trained)"
                    } else {
                        " (P frozen)"
                    });
                }
                label
            }
        }
    }
}

impl BackendJob for TrainBench {
    type Output = TrainBenchRow;

    fn run<B: Backend>(self, device: B::Device, backend_name: &str) -> Result<Self::Output> {
        self.validate()?;
        let mut decoder = self.model.load::<B>(&device)?;
        let config = decoder.config.clone();
        if self.seq > config.max_position_embeddings {
            return Err(Error::Config(format!(
                "--seq {}: the model has {} positions",
                self.seq, config.max_position_embeddings
            )));
        }
        let rank = if self.trainable == Trainable::Adapters {
            let adapter = self.adapter.resolve(config.family)?;
            // The fitted projector's values do not change the step's cost: IPA gets random
            // orthonormal rows, LoRA its kaiming draw.
            let init = match self.adapter.method {
                AdapterMethod::Ipa => ProjectorInit::Orthogonal,
                AdapterMethod::Lora => ProjectorInit::KaimingUniform,
            };
            decoder.attach_adapters(&self.targets, None, &adapter, |_| init.clone())?;
            adapter.rank
        } else {
            0
        };
        let trainable_params = count_trainable(&decoder, &self.trainable);
        let dtype = format!("{:?}", decoder.model.embed_tokens.weight.val().dtype());
        let mut model = trainable_lm::<Autodiff<B>>(decoder, &self.trainable);
        let mut optim = AdamWConfig::new()
            .with_weight_decay(0.0)
            .with_epsilon(1e-8)
            .init::<Autodiff<B>, _>();
        let ids = bench_ids(self.batch, self.seq, config.vocab_size);
        let batch = || LmBatch::<Autodiff<B>> {
            input_ids: Tensor::<Autodiff<B>, 2, Int>::from_data(
                TensorData::new(ids.clone(), [self.batch, self.seq]),
                &device,
            ),
            labels: Tensor::<Autodiff<B>, 2, Int>::from_data(
                TensorData::new(ids.clone(), [self.batch, self.seq]),
                &device,
            ),
            options: ForwardOptions::default(),
            items: self.batch,
        };
        let mut last_loss = f64::NAN;
        let mut step = |model: crate::train::CausalLm<Autodiff<B>>| {
            let output = TrainStep::step(&model, batch());
            last_loss = output.item.loss;
            let mut grads = output.grads;
            crate::train::grad_norm::mean_and_clip::<Autodiff<B>, _>(&model, &mut grads, 1, 1.0);
            let model = optim.step(1e-4, model, grads);
            let _ = B::sync(&device);
            model
        };
        for _ in 0..self.warmup {
            model = step(model);
        }
        let start = Instant::now();
        for _ in 0..self.steps {
            model = step(model);
        }
        let elapsed = start.elapsed().as_secs_f64();
        drop(model);
        let tokens = self.batch * self.seq * self.steps;
        let row = TrainBenchRow {
            backend: backend_name.to_string(),
            model: self.model.label(),
            dtype,
            method: self.method_label(),
            rank,
            targets: self.targets.join(","),
            trainable_params,
            batch: self.batch,
            seq: self.seq,
            steps: self.steps,
            tokens_per_second: tokens as f64 / elapsed,
            seconds_per_step: elapsed / self.steps as f64,
            last_loss,
            peak_rss_mib: peak_rss_mib(),
        };
        eprintln!(
            "{:>8} {} {} r={} {:>9.1} tokens/s ({:.2} s/step over {} steps, loss {:.3}, peak RSS {})",
            row.backend,
            row.model,
            row.method,
            row.rank,
            row.tokens_per_second,
            row.seconds_per_step,
            row.steps,
            row.last_loss,
            row.peak_rss_mib
                .map(|m| format!("{m:.0} MiB"))
                .unwrap_or_else(|| "unknown".into())
        );
        Ok(row)
    }
}

//! IPA on a burn model of your own, trained with burn-train's `Learner`:
//!
//! 1. a small classifier written with burn's `Linear` (here: "pretrained" on one task);
//! 2. its linears wrapped in [`AdaptedLinear`] (frozen base, room for an adapter);
//! 3. the projectors fitted forward-only on the new task's inputs (incremental PCA of what
//!    each linear reads), installed as IPA adapters;
//! 4. the adapters trained with burn-train's `SupervisedTraining` through
//!    [`burn_ipa::train::learner::learn`] (checkpoints hold the adapters only);
//! 5. the adapters merged into the base weights (same outputs, one matmul per layer) and
//!    saved as an adapter folder.
//!
//! `cargo run --release --example own_model`

use std::sync::Arc;

use burn::backend::{Autodiff, NdArray};
use burn::data::dataloader::batcher::Batcher;
use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend, BackendTypes};
use burn::tensor::{Distribution, ElementConversion, Int, Tensor, TensorData};
use burn::train::metric::ItemLazy;
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use burn_ipa::adapter::{save_adapter, AdaptedLinear, AdapterConfig, ProjectorInit, Scaling};
use burn_ipa::projector::FitAlgorithm;
use burn_ipa::train::learner::{learn, KeepBest, LearnerSettings, ValidSet};
use burn_ipa::train::{StepOutput, TrainConfig};

type B = NdArray<f32>;
type AB = Autodiff<B>;
type Device = <B as BackendTypes>::Device;

const D_IN: usize = 32;
const HIDDEN: usize = 64;
const CLASSES: usize = 4;
const RANK: usize = 4;

// ---------------------------------------------------------------------------------------------
// The user's model, as written with burn alone
// ---------------------------------------------------------------------------------------------

/// A two-layer classifier.
#[derive(Module, Debug)]
struct Mlp<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    fn new(device: &B::Device) -> Self {
        Self {
            fc1: LinearConfig::new(D_IN, HIDDEN).init(device),
            fc2: LinearConfig::new(HIDDEN, CLASSES).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.fc2.forward(relu(self.fc1.forward(x)))
    }
}

// ---------------------------------------------------------------------------------------------
// The same model with adapted linears
// ---------------------------------------------------------------------------------------------

/// The classifier with each linear an [`AdaptedLinear`]: the base weights frozen, an adapter
/// attached later.
#[derive(Module, Debug)]
struct AdaptedMlp<B: Backend> {
    fc1: AdaptedLinear<B>,
    fc2: AdaptedLinear<B>,
}

impl<B: Backend> AdaptedMlp<B> {
    fn from_mlp(mlp: Mlp<B>) -> Self {
        Self {
            fc1: AdaptedLinear::new(mlp.fc1),
            fc2: AdaptedLinear::new(mlp.fc2),
        }
    }

    /// The inputs each linear reads: `x` for fc1, the hidden activations for fc2.
    fn forward_tap(&self, x: Tensor<B, 2>) -> (Tensor<B, 2>, [Tensor<B, 2>; 2]) {
        let hidden = relu(self.fc1.forward(x.clone()));
        (self.fc2.forward(hidden.clone()), [x, hidden])
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.forward_tap(x).0
    }

    fn layers_mut(&mut self) -> [&mut AdaptedLinear<B>; 2] {
        [&mut self.fc1, &mut self.fc2]
    }

    /// Cross-entropy and the step's figures.
    fn forward_step(&self, batch: Batch<B>) -> (Tensor<B, 1>, Output) {
        let logits = self.forward(batch.x);
        let predictions = logits.clone().argmax(1).squeeze_dim::<1>(1);
        let correct = predictions
            .equal(batch.y.clone())
            .int()
            .sum()
            .into_scalar()
            .elem::<i64>() as usize;
        let items = batch.y.dims()[0];
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits, batch.y);
        let value = loss.clone().into_scalar().elem::<f64>();
        (
            loss,
            Output {
                loss: value,
                correct,
                items,
            },
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Data, steps and outputs, as for any burn-train model
// ---------------------------------------------------------------------------------------------

/// One example: features and a class.
#[derive(Clone, Debug)]
struct Example {
    x: Vec<f32>,
    y: i64,
}

/// A batch of examples.
#[derive(Clone, Debug)]
struct Batch<B: Backend> {
    x: Tensor<B, 2>,
    y: Tensor<B, 1, Int>,
}

#[derive(Clone)]
struct ExampleBatcher;

impl<B: Backend> Batcher<B, Example, Batch<B>> for ExampleBatcher {
    fn batch(&self, items: Vec<Example>, device: &B::Device) -> Batch<B> {
        let n = items.len();
        let x: Vec<f32> = items.iter().flat_map(|e| e.x.iter().copied()).collect();
        let y: Vec<i64> = items.iter().map(|e| e.y).collect();
        Batch {
            x: Tensor::from_data(TensorData::new(x, [n, D_IN]), device),
            y: Tensor::from_data(TensorData::new(y, [n]), device),
        }
    }
}

/// What a step reports: the crate's learner reads it through [`StepOutput`].
#[derive(Clone, Debug)]
struct Output {
    loss: f64,
    correct: usize,
    items: usize,
}

impl StepOutput for Output {
    fn loss(&self) -> f64 {
        self.loss
    }
    fn items(&self) -> usize {
        self.items
    }
    fn correct(&self) -> Option<(usize, usize)> {
        Some((self.correct, self.items))
    }
}

impl ItemLazy for Output {
    type ItemSync = Output;
    fn sync(self) -> Output {
        self
    }
}

impl<B: AutodiffBackend> TrainStep for AdaptedMlp<B> {
    type Input = Batch<B>;
    type Output = Output;
    fn step(&self, batch: Batch<B>) -> TrainOutput<Output> {
        let (loss, output) = self.forward_step(batch);
        TrainOutput::new(self, loss.backward(), output)
    }
}

impl<B: Backend> InferenceStep for AdaptedMlp<B> {
    type Input = Batch<B>;
    type Output = Output;
    fn step(&self, batch: Batch<B>) -> Output {
        self.forward_step(batch).1
    }
}

/// Examples of task `task` (its rule: the class is the argmax of a random linear map of the
/// inputs), drawn with seed `draw`. The inputs have a decaying spectrum (most of their variance
/// in a few directions, as activations have).
fn task(task: u64, n: usize, draw: u64, device: &Device) -> Vec<Example> {
    B::seed(device, task);
    let rule = Tensor::<B, 2>::random([D_IN, CLASSES], Distribution::Normal(0.0, 1.0), device);
    B::seed(device, 1000 + draw);
    let scales: Vec<f32> = (0..D_IN).map(|j| 3.0 / (1.0 + j as f32)).collect();
    let scales = Tensor::<B, 1>::from_floats(scales.as_slice(), device).unsqueeze::<2>();
    let x = Tensor::<B, 2>::random([n, D_IN], Distribution::Normal(0.0, 1.0), device) * scales;
    let y = x.clone().matmul(rule).argmax(1).squeeze_dim::<1>(1);
    let x: Vec<f32> = x.into_data().to_vec().expect("f32");
    let y: Vec<i64> = y.into_data().convert::<i64>().to_vec().expect("i64");
    (0..n)
        .map(|i| Example {
            x: x[i * D_IN..(i + 1) * D_IN].to_vec(),
            y: y[i],
        })
        .collect()
}

fn accuracy(model: &AdaptedMlp<B>, examples: &[Example], device: &Device) -> f64 {
    let batch: Batch<B> = ExampleBatcher.batch(examples.to_vec(), device);
    let (_, out) = model.forward_step(batch);
    out.correct as f64 / out.items as f64
}

fn main() -> burn_ipa::Result<()> {
    let device = Default::default();
    let out = std::env::temp_dir().join("burn-ipa-example-own-model");
    let _ = std::fs::remove_dir_all(&out);

    // 1. "Pretrain" the user's model on a first task, with burn alone.
    let pretrain = task(1, 512, 0, &device);
    let mut mlp = Mlp::<AB>::new(&device);
    let mut optim = AdamWConfig::new().init();
    for _ in 0..60 {
        let batch: Batch<AB> = ExampleBatcher.batch(pretrain.clone(), &device);
        let logits = mlp.forward(batch.x);
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, batch.y);
        let grads = GradientsParams::from_grads(loss.backward(), &mlp);
        mlp = optim.step(1e-2, mlp, grads);
    }
    let base = mlp.valid();

    // 2. Wrap its linears; 3. fit each one's projector forward-only on the new task.
    let train = task(2, 384, 1, &device);
    let valid = task(2, 128, 2, &device);
    let test = task(2, 256, 3, &device);
    let mut model = AdaptedMlp::from_mlp(base);
    println!(
        "base model on the new task: test accuracy {:.1}%",
        100.0 * accuracy(&model, &test, &device)
    );
    let mut fits = [D_IN, HIDDEN].map(|d| {
        FitAlgorithm::from_name("ipca")
            .and_then(|a| a.build::<B>(d, RANK, 0, &device))
            .expect("a valid fit")
    });
    for chunk in train.chunks(64) {
        let batch: Batch<B> = ExampleBatcher.batch(chunk.to_vec(), &device);
        let (_, inputs) = model.forward_tap(batch.x);
        for (fit, input) in fits.iter_mut().zip(inputs) {
            fit.update(input, None)?;
        }
    }
    let config = AdapterConfig::ipa(RANK).with_scaling(Scaling::Factor(1.0));
    for (layer, fit) in model.layers_mut().into_iter().zip(&fits) {
        let projector = fit.finish()?.components;
        let attached = layer
            .clone()
            .attach(&config, ProjectorInit::Fitted(projector))?;
        *layer = attached;
    }

    // 4. Train the adapters with burn-train's Learner.
    let mut trainable = AdaptedMlp::<AB>::from_inner(model);
    for layer in trainable.layers_mut() {
        // The trainable flags live on autodiff tensors: set them after the move.
        layer.mark_trainable();
    }
    let train_config = TrainConfig {
        learning_rate: 3e-2,
        epochs: 16,
        batch_size: 32,
        micro_batch_size: 16,
        warmup_steps: 4,
        checkpoint_every: 48,
        valid_every: 48,
        ..TrainConfig::default()
    };
    let mut settings = LearnerSettings::from_train_config(&train_config, train.len(), &out)?;
    settings.keep = KeepBest::HighestAccuracy;
    settings.classifies = true;
    let held_out = Arc::new(valid);
    let valid = ValidSet {
        batches: held_out.len().div_ceil(64),
        make: Arc::new(move |i: usize, device: &Device| {
            let end = ((i + 1) * 64).min(held_out.len());
            Ok(ExampleBatcher.batch(held_out[i * 64..end].to_vec(), device))
        }),
    };
    let outcome = learn::<AB, AdaptedMlp<AB>, Example>(
        trainable,
        Arc::new(train),
        Arc::new(ExampleBatcher),
        valid,
        &settings,
        &[device],
    )?;
    let steps = outcome.steps();
    let (window, best) = outcome.best.expect("the run validated");
    let mut adapted = best.into_inner();
    println!(
        "{steps} steps; best validation after step {}: test accuracy {:.1}%",
        window.step,
        100.0 * accuracy(&adapted, &test, &device)
    );

    // 5. Save the adapter, then merge it into the base weights.
    let adapter_dir = out.join("adapter");
    save_adapter(&adapted, &config, Default::default(), &adapter_dir)?;
    let batch: Batch<B> = ExampleBatcher.batch(test[..8].to_vec(), &device);
    let before = adapted.forward(batch.x.clone());
    for layer in adapted.layers_mut() {
        layer.merge()?;
    }
    let gap = (adapted.forward(batch.x) - before)
        .abs()
        .max()
        .into_scalar();
    let checkpoints: u64 = std::fs::read_dir(burn_ipa::train::learner::checkpoint_dir(&out))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!("merged vs unmerged outputs: max |Δ| = {gap:e}");
    println!(
        "adapter saved to {}; checkpoints (adapters, optimizer, schedule): {checkpoints} bytes",
        adapter_dir.display()
    );
    Ok(())
}

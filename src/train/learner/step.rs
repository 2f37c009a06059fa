//! One Learner iteration is one optimizer step.
//!
//! burn-train's own `grads_accumulation(n)` steps the learning-rate scheduler on every
//! micro-batch, which stretches a warm-up/decay schedule by `n`. Here the data loader hands
//! the Learner one [`StepBatch`] per optimizer step — the step's micro-batches, each built
//! only when its turn comes — and [`AdapterOnly`]'s `TrainStep::step` runs them all,
//! accumulates their gradients and returns their mean: the scheduler steps once per optimizer
//! step, as in the step loop. The global gradient norm is clipped in the step on one device
//! and, on several, in `TrainStep::optimize` once burn-train has summed the devices' shares.

use std::sync::{Arc, Mutex};

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::metric::ItemLazy;
use burn::train::{InferenceStep, Interrupter, TrainOutput, TrainStep};

use super::adapter_only::AdapterOnly;
use crate::train::grad_norm::mean_and_clip;
use crate::train::StepOutput;
use crate::Error;

/// Where a failure inside a step goes: `TrainStep::step` cannot return an error, so it keeps
/// the first message here and asks the run to stop; the driver reports it as an error.
#[derive(Clone, Default)]
pub struct StepFailure {
    first: Arc<Mutex<Option<Failure>>>,
    interrupter: Option<Interrupter>,
}

#[derive(Clone, Debug)]
enum Failure {
    NonFinite(String),
    Other(String),
}

impl StepFailure {
    /// Failures stop the run through `interrupter`.
    pub fn new(interrupter: Interrupter) -> Self {
        Self {
            first: Arc::default(),
            interrupter: Some(interrupter),
        }
    }

    fn record(&self, failure: Failure) {
        let mut slot = self.first.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            if let Some(i) = &self.interrupter {
                let (Failure::NonFinite(m) | Failure::Other(m)) = &failure;
                i.stop(Some(m));
            }
            *slot = Some(failure);
        }
    }

    /// Keeps `message` (the first failure wins) and stops the run.
    pub fn fail(&self, message: String) {
        self.record(Failure::Other(message))
    }

    /// Keeps a non-finite loss (the first failure wins) and stops the run.
    pub fn fail_non_finite(&self, message: String) {
        self.record(Failure::NonFinite(message))
    }

    /// The first failure as an error, if any.
    pub fn error(&self) -> Option<Error> {
        let slot = self.first.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().map(|f| match f {
            Failure::NonFinite(m) => Error::NonFinite(m.clone()),
            Failure::Other(m) => Error::State(m.clone()),
        })
    }

    /// The message of the first failure, if any.
    pub fn message(&self) -> Option<String> {
        let slot = self.first.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().map(|f| match f {
            Failure::NonFinite(m) | Failure::Other(m) => m.clone(),
        })
    }
}

impl std::fmt::Debug for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepFailure")
            .field("message", &self.message())
            .finish()
    }
}

/// How [`AdapterOnly`] treats a step's gradient.
#[derive(Clone, Debug, Default)]
pub struct StepOptions {
    /// Clip the global L2 norm of the step's mean gradient to this value; 0: no clipping.
    pub max_grad_norm: f64,
    /// Clip inside `TrainStep::step` (one device: the step holds the whole gradient, and the
    /// norm is reported) rather than in `TrainStep::optimize` (several devices: each step
    /// holds one device's share).
    pub clip_in_step: bool,
    /// Where a non-finite loss or a batch that could not be built is reported.
    pub failure: StepFailure,
}

/// One micro-batch of a step: its dropout seed and how to build it.
pub struct MicroBatch<X> {
    /// Seeds the backend's generator before the forward pass (dropout).
    pub seed: u64,
    build: Box<dyn FnOnce() -> X + Send>,
}

impl<X> MicroBatch<X> {
    /// A micro-batch built by `build` when its forward pass comes.
    pub fn new(seed: u64, build: impl FnOnce() -> X + Send + 'static) -> Self {
        Self {
            seed,
            build: Box::new(build),
        }
    }
}

/// The input of one Learner iteration: the micro-batches of one optimizer step (on several
/// devices, this device's share of them).
pub struct StepBatch<B: Backend, X> {
    /// The optimizer step (0-based).
    pub step: usize,
    /// The epoch of the data the step reads (0-based).
    pub epoch: usize,
    /// Micro-batches of the whole step, on every device: the mean divides by this.
    pub step_micro_batches: usize,
    /// The device the micro-batches are built on.
    pub device: B::Device,
    /// This device's micro-batches, in order.
    pub micro: Vec<MicroBatch<X>>,
}

/// What one Learner iteration reports (one device's share of an optimizer step).
#[derive(Clone, Debug, PartialEq)]
pub struct StepItem {
    /// Optimizer steps done after this one (1-based).
    pub step: usize,
    /// Epoch of the data (0-based).
    pub epoch: usize,
    /// Sum over the micro-batches of their mean loss times their items.
    pub loss_sum: f64,
    /// Items (sequences, images) in the micro-batches.
    pub items: usize,
    /// `(correct, total)` predictions, for tasks that classify.
    pub correct: Option<(usize, usize)>,
    /// Global L2 norm of the step's mean gradient before clipping, when the step held all of
    /// it (one device).
    pub grad_norm: Option<f64>,
}

impl StepItem {
    /// Mean loss per item.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.items.max(1) as f64
    }
}

impl ItemLazy for StepItem {
    type ItemSync = StepItem;
    fn sync(self) -> StepItem {
        self
    }
}

/// A validation batch, or why it could not be built (an unreadable image).
pub struct ValidBatch<X> {
    /// The batch.
    pub batch: std::result::Result<X, String>,
}

/// What a validation batch reports.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidItem {
    /// Mean loss times [`weight`](Self::weight).
    pub loss_sum: f64,
    /// What the loss is a mean over (labelled tokens, or items).
    pub weight: usize,
    /// Items in the batch.
    pub items: usize,
    /// `(correct, total)` predictions, for tasks that classify.
    pub correct: Option<(usize, usize)>,
    /// The batch could not be built (the run stops with the error).
    pub failed: bool,
}

impl ItemLazy for ValidItem {
    type ItemSync = ValidItem;
    fn sync(self) -> ValidItem {
        self
    }
}

impl<B, M> TrainStep for AdapterOnly<B, M>
where
    B: AutodiffBackend,
    M: TrainStep + AutodiffModule<B>,
    M::Output: StepOutput,
{
    type Input = StepBatch<B, M::Input>;
    type Output = StepItem;

    fn step(&self, batch: StepBatch<B, M::Input>) -> TrainOutput<StepItem> {
        let mut accumulator = GradientsAccumulator::<Self>::new();
        let mut item = StepItem {
            step: batch.step + 1,
            epoch: batch.epoch,
            loss_sum: 0.0,
            items: 0,
            correct: None,
            grad_norm: None,
        };
        for micro in batch.micro {
            B::seed(&batch.device, micro.seed);
            let output = self.inner.step((micro.build)());
            let out = &output.item;
            if !out.loss().is_finite() {
                self.options.failure.fail_non_finite(format!(
                    "training loss at step {} (epoch {}) is {}",
                    item.step,
                    item.epoch,
                    out.loss()
                ));
            }
            item.loss_sum += out.loss() * out.items() as f64;
            item.items += out.items();
            if let Some((c, t)) = out.correct() {
                let (sc, st) = item.correct.get_or_insert((0, 0));
                *sc += c;
                *st += t;
            }
            accumulator.accumulate(self, output.grads);
        }
        let mut grads = accumulator.grads();
        let clip = if self.options.clip_in_step {
            self.options.max_grad_norm
        } else {
            0.0
        };
        let norm = mean_and_clip::<B, Self>(self, &mut grads, batch.step_micro_batches, clip);
        item.grad_norm = self.options.clip_in_step.then_some(norm);
        TrainOutput { grads, item }
    }

    fn optimize<BB, O>(self, optim: &mut O, lr: f64, mut grads: GradientsParams) -> Self
    where
        BB: AutodiffBackend,
        O: Optimizer<Self, BB>,
        Self: AutodiffModule<BB>,
    {
        if !self.options.clip_in_step && self.options.max_grad_norm > 0.0 {
            // The devices' shares are summed: clip the whole step's gradient.
            mean_and_clip::<BB, Self>(&self, &mut grads, 1, self.options.max_grad_norm);
        }
        optim.step(lr, self, grads)
    }
}

impl<B, M> InferenceStep for AdapterOnly<B, M>
where
    B: Backend,
    M: InferenceStep,
    M::Output: StepOutput,
{
    type Input = ValidBatch<M::Input>;
    type Output = ValidItem;

    fn step(&self, batch: ValidBatch<M::Input>) -> ValidItem {
        match batch.batch {
            Ok(input) => {
                let out = self.inner.step(input);
                ValidItem {
                    loss_sum: out.loss() * out.loss_weight() as f64,
                    weight: out.loss_weight(),
                    items: out.items(),
                    correct: out.correct(),
                    failed: false,
                }
            }
            Err(message) => {
                self.options.failure.fail(message);
                ValidItem {
                    loss_sum: 0.0,
                    weight: 0,
                    items: 0,
                    correct: None,
                    failed: true,
                }
            }
        }
    }
}

//! The training loop: seeded epochs of micro-batches, gradient accumulation, AdamW with the
//! warm-up/decay schedule, metrics, and step-level checkpoints with exact resume.
//!
//! The model's side is burn-train's [`TrainStep`]; the optimizer, gradient accumulation and
//! schedule are burn's own (`AdamW`, `GradientsAccumulator`, an `LrScheduler`). The loop itself
//! is ours rather than burn-train's `SupervisedTraining` because the fine-tuning protocol needs
//! what that loop does not do: checkpoints every N optimizer steps (it checkpoints per
//! epoch), checkpoints that hold only the adapters (it records the whole model, a 7B base
//! each time), a resume that reproduces the uninterrupted run, and I/O errors reported rather
//! than panicking.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{AdamW, AdamWConfig, GradientsAccumulator, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::train::TrainStep;
use burn_store::ModuleSnapshot;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{
    latest_checkpoint, load_checkpoint, read_state, save_checkpoint, CheckpointState, StepRecord,
};
use super::schedule::WarmupLinearDecay;
use super::{Monitor, RunMetric, StepOutput};
use crate::adapter::write_atomic;
use crate::{Error, Result};

/// Optimisation settings of a fine-tuning run (the paper's defaults where it has them).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Examples per forward/backward pass; `batch_size / micro_batch_size` micro-batches are
    /// accumulated per step.
    pub micro_batch_size: usize,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Stop after this many optimizer steps (the schedule still spans all epochs).
    pub max_steps: Option<usize>,
    /// Write a checkpoint every this many optimizer steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Compute the validation loss every this many optimizer steps (0: never).
    pub valid_every: usize,
    /// Seeds the data order and dropout.
    pub seed: u64,
    /// Clip the global L2 norm of each step's gradient to this value (HF Trainer's
    /// `max_grad_norm`, 1.0 in every official run); 0 turns clipping off.
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    /// AdamW's ε (HF Trainer and PyTorch: 1e-8; burn's own default is 1e-5).
    #[serde(default = "default_adam_epsilon")]
    pub adam_epsilon: f64,
}

fn default_max_grad_norm() -> f64 {
    1.0
}

fn default_adam_epsilon() -> f64 {
    1e-8
}

impl Default for TrainConfig {
    fn default() -> Self {
        // LLM-Adapters' commonsense settings: batch 16 in micro-batches of 4, 3 epochs,
        // 100 warm-up steps, save/eval every 80 steps; HF Trainer's AdamW ε and clipping.
        Self {
            learning_rate: 3e-4,
            weight_decay: 0.0,
            epochs: 3,
            batch_size: 16,
            micro_batch_size: 4,
            warmup_steps: 100,
            max_steps: None,
            checkpoint_every: 80,
            valid_every: 80,
            seed: 42,
            max_grad_norm: default_max_grad_norm(),
            adam_epsilon: default_adam_epsilon(),
        }
    }
}

impl TrainConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: &str| Err(Error::Config(format!("{field}: {why}")));
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad("learning_rate", "must be a positive number");
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return bad("weight_decay", "must be ≥ 0");
        }
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1");
        }
        if self.micro_batch_size == 0 || self.batch_size == 0 {
            return bad("batch_size", "batch sizes must be at least 1");
        }
        if self.max_steps == Some(0) {
            return bad("max_steps", "must be at least 1 (0 would train nothing)");
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return bad("max_grad_norm", "must be ≥ 0 (0: no clipping)");
        }
        if !(self.adam_epsilon > 0.0 && self.adam_epsilon.is_finite()) {
            return bad("adam_epsilon", "must be a positive number");
        }
        if !self.batch_size.is_multiple_of(self.micro_batch_size) {
            return bad(
                "micro_batch_size",
                &format!("must divide batch_size ({})", self.batch_size),
            );
        }
        Ok(())
    }

    /// Micro-batches per optimizer step.
    pub fn accumulation(&self) -> usize {
        self.batch_size / self.micro_batch_size
    }

    /// Optimizer steps per epoch over `n` examples (the last step may take fewer examples).
    pub fn steps_per_epoch(&self, n: usize) -> usize {
        n.div_ceil(self.batch_size)
    }

    /// Optimizer steps of the whole schedule.
    pub fn total_steps(&self, n: usize) -> usize {
        self.steps_per_epoch(n) * self.epochs
    }

    /// Optimizer steps this run takes.
    pub fn run_steps(&self, n: usize) -> usize {
        let total = self.total_steps(n);
        self.max_steps.map_or(total, |m| m.min(total))
    }
}

/// Where and how a run keeps its state.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Output folder for checkpoints and `metrics.csv`; `None` keeps nothing on disk.
    pub out_dir: Option<PathBuf>,
    /// Resume from the latest checkpoint in `out_dir` when there is one.
    pub resume: bool,
    /// Describes the run (config, model, data). A resume must find the same value.
    pub fingerprint: serde_json::Value,
    /// Stop (as if interrupted) after this many optimizer steps, after checkpointing.
    pub stop_after: Option<usize>,
    /// Where progress and metrics are shown, and where a stop request comes from (the
    /// dashboard's "stop", Ctrl-C): the loop checkpoints after the current step and returns.
    pub monitor: Monitor,
}

/// The trained model and the metrics of every optimizer step.
pub struct TrainOutcome<M> {
    /// The model after the last step.
    pub model: M,
    /// One record per optimizer step, including those before a resume.
    pub history: Vec<StepRecord>,
    /// Step the run resumed from (0 for a fresh run).
    pub resumed_from: usize,
    /// The run stopped before its last step (`stop_after`, or a stop request); the latest
    /// checkpoint holds where it stopped.
    pub stopped_early: bool,
    /// Wall time spent in training steps over the whole run, resumed parts included (as
    /// recorded in the checkpoints), in seconds.
    pub elapsed_seconds: f64,
}

/// Where optimizer step `step` (0-based) reads its examples: its epoch and the range of that
/// epoch's order ([`epoch_order`]) it takes, cut into micro-batches of
/// `config.micro_batch_size`. Shared by the step loop and the Learner's data loader, so both
/// see the same examples in the same micro-batches.
pub fn step_examples(
    n: usize,
    config: &TrainConfig,
    step: usize,
) -> (usize, std::ops::Range<usize>) {
    let steps_per_epoch = config.steps_per_epoch(n);
    let epoch = step / steps_per_epoch;
    let begin = (step % steps_per_epoch) * config.batch_size;
    (epoch, begin..(begin + config.batch_size).min(n))
}

/// The seed of micro-batch `micro` of optimizer step `step` (both 0-based): dropout draws
/// depend only on (seed, step, micro-batch), so a resumed run sees the same masks as an
/// uninterrupted one, whichever loop runs it.
pub fn micro_batch_seed(config: &TrainConfig, step: usize, micro: usize) -> u64 {
    config.seed
        ^ ((step * config.accumulation() + micro) as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407)
}

/// The order examples are seen in epoch `epoch`: a permutation seeded by the run's seed.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    order.shuffle(&mut rng);
    order
}

/// Trains `model` on `items` with AdamW. `batch` turns a slice of examples into the model's
/// input; `valid` (if given) computes a validation loss for the current model.
///
/// Only parameters that require gradients receive updates and optimizer state: build the
/// model with a frozen base and trainable adapters.
#[allow(clippy::too_many_arguments)]
pub fn train<B, M, I>(
    model: M,
    items: &[I],
    config: &TrainConfig,
    options: &RunOptions,
    device: &B::Device,
    batch: impl Fn(&[&I]) -> M::Input,
    valid: Option<&mut Validation<'_, M>>,
) -> Result<TrainOutcome<M>>
where
    B: AutodiffBackend,
    M: TrainStep + AutodiffModule<B> + ModuleSnapshot<B>,
    M::Output: StepOutput,
{
    train_with_hook(model, items, config, options, device, batch, valid, None)
}

/// Computes a validation loss for the current model after the given optimizer step
/// (1-based).
pub type Validation<'a, M> = dyn FnMut(&M, usize) -> Result<f64> + 'a;

/// Builds a micro-batch of examples on the device it is given (each data-parallel worker
/// builds its own).
pub type MakeBatch<'a, I, D, X> = dyn Fn(&[&I], &D) -> X + Sync + 'a;

/// [`MakeBatch`] for one device (the loop's own threads only).
type LocalBatch<'a, I, D, X> = dyn Fn(&[&I], &D) -> X + 'a;

/// Called before each micro-batch's forward pass with the model, the micro-batch's
/// examples and the optimizer step about to be taken (0-based); it may change the model
/// (online projector fits update the projectors here).
pub type BeforeMicroBatch<'a, M, I> = dyn FnMut(&mut M, &[&I], usize) -> Result<()> + 'a;

/// [`train`] with a hook run before every micro-batch.
#[allow(clippy::too_many_arguments)]
pub fn train_with_hook<B, M, I>(
    model: M,
    items: &[I],
    config: &TrainConfig,
    options: &RunOptions,
    device: &B::Device,
    batch: impl Fn(&[&I]) -> M::Input,
    valid: Option<&mut Validation<'_, M>>,
    before_micro_batch: Option<&mut BeforeMicroBatch<'_, M, I>>,
) -> Result<TrainOutcome<M>>
where
    B: AutodiffBackend,
    M: TrainStep + AutodiffModule<B> + ModuleSnapshot<B>,
    M::Output: StepOutput,
{
    let devices = [device.clone()];
    run_loop(
        model,
        items,
        config,
        options,
        &devices,
        &|examples: &[&I], _: &B::Device| batch(examples),
        valid,
        before_micro_batch,
        None,
    )
}

/// Data-parallel [`train_with_hook`]: the micro-batches of each optimizer step are spread over
/// `devices` (round-robin, one thread per device, the model forked to each), and their
/// gradients are summed on the first device, where the optimizer runs — the scheme of
/// burn-train's multi-device strategy. `batch` builds a micro-batch on the device it is given.
///
/// With dropout, draws on several devices come from generators seeded per micro-batch but may
/// interleave between threads where a backend shares one generator, so a resumed multi-device
/// run is exact only without dropout. Hooks run on the main thread for every micro-batch of a
/// step before they are dispatched.
#[allow(clippy::too_many_arguments)]
pub fn train_on_devices<B, M, I>(
    model: M,
    items: &[I],
    config: &TrainConfig,
    options: &RunOptions,
    devices: &[B::Device],
    batch: &MakeBatch<'_, I, B::Device, M::Input>,
    valid: Option<&mut Validation<'_, M>>,
    before_micro_batch: Option<&mut BeforeMicroBatch<'_, M, I>>,
) -> Result<TrainOutcome<M>>
where
    B: AutodiffBackend,
    M: TrainStep + AutodiffModule<B> + ModuleSnapshot<B>,
    M::Output: StepOutput + Send,
    I: Sync,
{
    if devices.is_empty() {
        return Err(Error::Config("no device to train on".into()));
    }
    run_loop(
        model,
        items,
        config,
        options,
        devices,
        batch,
        valid,
        before_micro_batch,
        Some(
            &|model: &M, micro: &[(usize, Vec<&I>)], seed_of: &dyn Fn(usize) -> u64| {
                parallel_micro_batches::<B, M, I>(model, micro, devices, batch, seed_of)
            },
        ),
    )
}

/// Runs the forward/backward passes of one step's micro-batches (`(index, examples)`) on
/// several devices; returns their outputs in micro-batch order.
type ParallelSteps<'a, M, I> = dyn Fn(
        &M,
        &[(usize, Vec<&I>)],
        &dyn Fn(usize) -> u64,
    ) -> Result<Vec<burn::train::TrainOutput<<M as TrainStep>::Output>>>
    + 'a;

fn parallel_micro_batches<B, M, I>(
    model: &M,
    micro: &[(usize, Vec<&I>)],
    devices: &[B::Device],
    batch: &MakeBatch<'_, I, B::Device, M::Input>,
    seed_of: &dyn Fn(usize) -> u64,
) -> Result<Vec<burn::train::TrainOutput<M::Output>>>
where
    B: AutodiffBackend,
    M: TrainStep + AutodiffModule<B>,
    M::Output: Send,
    I: Sync,
{
    let mut outputs = Vec::with_capacity(micro.len());
    for round in micro.chunks(devices.len()) {
        let seeds: Vec<u64> = round.iter().map(|(m, _)| seed_of(*m)).collect();
        let results: Vec<std::thread::Result<burn::train::TrainOutput<M::Output>>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = round
                    .iter()
                    .zip(devices)
                    .zip(seeds)
                    .map(|(((_, examples), device), seed)| {
                        let model = model.clone();
                        scope.spawn(move || {
                            B::seed(device, seed);
                            let forked = model.fork(device);
                            forked.step(batch(examples, device))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join()).collect()
            });
        for result in results {
            let output = result
                .map_err(|_| Error::State("a training thread on another device panicked".into()))?;
            let grads = output.grads.to_device(&devices[0], model);
            outputs.push(burn::train::TrainOutput {
                grads,
                item: output.item,
            });
        }
    }
    Ok(outputs)
}

#[allow(clippy::too_many_arguments)]
fn run_loop<B, M, I>(
    mut model: M,
    items: &[I],
    config: &TrainConfig,
    options: &RunOptions,
    devices: &[B::Device],
    batch: &LocalBatch<'_, I, B::Device, M::Input>,
    valid: Option<&mut Validation<'_, M>>,
    before_micro_batch: Option<&mut BeforeMicroBatch<'_, M, I>>,
    parallel: Option<&ParallelSteps<'_, M, I>>,
) -> Result<TrainOutcome<M>>
where
    B: AutodiffBackend,
    M: TrainStep + AutodiffModule<B> + ModuleSnapshot<B>,
    M::Output: StepOutput,
{
    let device = &devices[0];
    config.validate()?;
    if items.is_empty() {
        return Err(Error::Config("the training set is empty".into()));
    }
    let n = items.len();
    let total = config.total_steps(n);
    let run_steps = config.run_steps(n);
    let mut optim: OptimizerAdaptor<AdamW, M, B> = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .with_epsilon(config.adam_epsilon as f32)
        .init();
    let mut schedule = WarmupLinearDecay::new(config.learning_rate, config.warmup_steps, total);
    let mut history = Vec::new();
    let mut start = 0;
    let mut elapsed_before = 0.0;

    if options.resume {
        let out = options.out_dir.as_deref().ok_or_else(|| {
            Error::Config("resuming needs an output folder to resume from".into())
        })?;
        if let Some(dir) = latest_checkpoint(out)? {
            let state = read_state(&dir)?;
            if state.fingerprint != options.fingerprint {
                return Err(Error::file(
                    &dir,
                    format!(
                        "was written by a different run; {}",
                        super::fingerprint::describe_difference(
                            &state.fingerprint,
                            &options.fingerprint
                        )
                    ),
                ));
            }
            let record = load_checkpoint::<B, M, AdamW>(&dir, &mut model, device)?;
            optim = optim.load_record(record);
            schedule = schedule.load_record::<B>(state.step);
            start = state.step;
            history = state.history;
            elapsed_before = state.elapsed_seconds;
        }
    }

    // metrics.csv is derived from the history: written whole now (a resumed run's steps, or
    // just the header), so a line lost to a kill after the last checkpoint is restored even
    // when no step is left to run.
    if let Some(out) = &options.out_dir {
        write_metrics_csv(out, &history)?;
    }
    let monitor = &options.monitor;
    monitor.begin(start, run_steps);
    let result = steps_loop(
        model,
        items,
        config,
        options,
        devices,
        batch,
        valid,
        before_micro_batch,
        parallel,
        optim,
        schedule,
        &mut history,
        start,
        elapsed_before,
    );
    monitor.end();
    let (model, stopped_early, elapsed_seconds) = result?;
    Ok(TrainOutcome {
        model,
        history,
        resumed_from: start,
        stopped_early,
        elapsed_seconds,
    })
}

/// The optimizer steps from `start`; returns whether the run stopped before its end.
#[allow(clippy::too_many_arguments)]
fn steps_loop<B, M, I>(
    mut model: M,
    items: &[I],
    config: &TrainConfig,
    options: &RunOptions,
    devices: &[B::Device],
    batch: &LocalBatch<'_, I, B::Device, M::Input>,
    mut valid: Option<&mut Validation<'_, M>>,
    mut before_micro_batch: Option<&mut BeforeMicroBatch<'_, M, I>>,
    parallel: Option<&ParallelSteps<'_, M, I>>,
    mut optim: OptimizerAdaptor<AdamW, M, B>,
    mut schedule: WarmupLinearDecay,
    history: &mut Vec<StepRecord>,
    start: usize,
    elapsed_before: f64,
) -> Result<(M, bool, f64)>
where
    B: AutodiffBackend,
    M: TrainStep + AutodiffModule<B> + ModuleSnapshot<B>,
    M::Output: StepOutput,
{
    let started = std::time::Instant::now();
    let device = &devices[0];
    let n = items.len();
    let run_steps = config.run_steps(n);
    let total = config.total_steps(n);
    let monitor = &options.monitor;
    let steps_per_epoch = config.steps_per_epoch(n);
    let mut step = start;
    while step < run_steps {
        let (epoch, range) = step_examples(n, config, step);
        let order = epoch_order(n, config.seed, epoch);
        let mut accumulator = GradientsAccumulator::<M>::new();
        let (mut loss_sum, mut weight) = (0.0, 0usize);
        let (mut correct, mut judged) = (0usize, 0usize);
        let seed_of = |micro: usize| micro_batch_seed(config, step, micro);
        let mut record = |item: &M::Output| -> Result<()> {
            if !item.loss().is_finite() {
                return Err(Error::NonFinite(format!(
                    "training loss at step {} (epoch {epoch}) is {}",
                    step + 1,
                    item.loss()
                )));
            }
            loss_sum += item.loss() * item.items() as f64;
            weight += item.items();
            if let Some((c, t)) = item.correct() {
                correct += c;
                judged += t;
            }
            Ok(())
        };
        let micro: Vec<(usize, Vec<&I>)> = order[range]
            .chunks(config.micro_batch_size)
            .map(|chunk| chunk.iter().map(|&i| &items[i]).collect())
            .enumerate()
            .collect();
        let micro_batches = micro.len();
        match parallel.filter(|_| devices.len() > 1) {
            None => {
                for (m, examples) in &micro {
                    B::seed(device, seed_of(*m));
                    if let Some(hook) = before_micro_batch.as_deref_mut() {
                        hook(&mut model, examples, step)?;
                    }
                    let output = model.step(batch(examples, device));
                    record(&output.item)?;
                    accumulator.accumulate(&model, output.grads);
                }
            }
            Some(parallel) => {
                if let Some(hook) = before_micro_batch.as_deref_mut() {
                    for (_, examples) in &micro {
                        hook(&mut model, examples, step)?;
                    }
                }
                for output in parallel(&model, &micro, &seed_of)? {
                    record(&output.item)?;
                    accumulator.accumulate(&model, output.grads);
                }
            }
        }
        let lr = schedule.step();
        let mut grads = accumulator.grads();
        let grad_norm = super::grad_norm::mean_and_clip::<B, M>(
            &model,
            &mut grads,
            micro_batches,
            config.max_grad_norm,
        );
        model = optim.step(lr, model, grads);
        step += 1;

        let valid_loss = match valid.as_deref_mut() {
            Some(f)
                if config.valid_every > 0
                    // The end of the schedule, not of this process (`max_steps`): a run
                    // continued with a larger `max_steps` keeps the history it would have
                    // had uninterrupted.
                    && (step.is_multiple_of(config.valid_every) || step == total) =>
            {
                Some(f(&model, step)?)
            }
            _ => None,
        };
        let record = StepRecord {
            step,
            epoch,
            loss: loss_sum / weight.max(1) as f64,
            lr,
            valid_loss,
            accuracy: (judged > 0).then(|| correct as f64 / judged as f64),
            grad_norm: Some(grad_norm),
        };
        monitor.step(&record, steps_per_epoch, config.epochs);
        if let Some(v) = valid_loss {
            monitor.evaluated(RunMetric::Loss, v, step);
        }
        history.push(record);

        let stopping =
            step < run_steps && (options.stop_after == Some(step) || monitor.stop_requested());
        if let Some(out) = &options.out_dir {
            let due = (config.checkpoint_every > 0 && step.is_multiple_of(config.checkpoint_every))
                || step == run_steps
                || stopping;
            if due {
                let state = CheckpointState {
                    step,
                    fingerprint: options.fingerprint.clone(),
                    history: history.clone(),
                    elapsed_seconds: elapsed_before + started.elapsed().as_secs_f64(),
                };
                save_checkpoint(out, &model, &optim, &state)?;
            }
            // The file was written whole from the checkpoint's history when the run began.
            if let Some(last) = history.last() {
                append_metrics_line(out, last)?;
            }
        }
        if stopping {
            return Ok((
                model,
                true,
                elapsed_before + started.elapsed().as_secs_f64(),
            ));
        }
    }
    Ok((
        model,
        false,
        elapsed_before + started.elapsed().as_secs_f64(),
    ))
}

fn metrics_line(r: &StepRecord) -> String {
    let optional = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    format!(
        "{},{},{},{},{},{},{}\n",
        r.step,
        r.epoch,
        r.loss,
        r.lr,
        optional(r.valid_loss),
        optional(r.accuracy),
        optional(r.grad_norm)
    )
}

pub(crate) fn append_metrics_line(out_dir: &Path, record: &StepRecord) -> Result<()> {
    use std::io::Write;
    let path = out_dir.join("metrics.csv");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(metrics_line(record).as_bytes()))
        .map_err(|e| Error::file(&path, e))
}

/// The header of `metrics.csv`.
pub const METRICS_HEADER: &str = "step,epoch,loss,lr,valid_loss,accuracy,grad_norm";

/// Writes `metrics.csv` (step, epoch, loss, lr, valid_loss, accuracy, grad_norm; empty where a
/// step has none) from the history.
pub fn write_metrics_csv(out_dir: &Path, history: &[StepRecord]) -> Result<()> {
    let mut text = format!("{METRICS_HEADER}\n");
    for r in history {
        text.push_str(&metrics_line(r));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::file(out_dir, e))?;
    write_atomic(&out_dir.join("metrics.csv"), text.as_bytes())
}

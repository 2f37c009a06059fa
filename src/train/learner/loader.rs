//! Data loaders whose every `iter()` is the next *window* of optimizer steps.
//!
//! burn-train calls `iter()` once per epoch and checkpoints at the end of each epoch. A
//! [`StepLoader`] yields, at its k-th `iter()`, the steps of window `first + k` — the next
//! `window_steps` optimizer steps of the run, in the seeded order of the step loop
//! ([`epoch_order`], [`step_examples`]) — so burn-train's epochs are checkpoint windows and
//! `.checkpoint(w)` resumes at a window boundary with the data order of an uninterrupted run.
//! A [`ValidLoader`] yields the validation batches after the windows that validate and
//! nothing after the others.
//!
//! On several devices burn-train splits the training loader with `slice(start, end)` over
//! `num_items()`: here `num_items()` is the number of devices the loader was made for and a
//! slice is a set of devices; device `k` builds the micro-batches `m` of each step with
//! `m mod devices = k` (the step loop's round-robin), and every device yields one item per
//! step (possibly with no micro-batch), so the devices stay in step.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::tensor::backend::{Backend, BackendTypes};
use burn::train::Interrupter;

use super::step::{MicroBatch, StepBatch, ValidBatch};
use crate::train::trainer::{epoch_order, micro_batch_seed, step_examples, TrainConfig};

/// Which steps a run takes and how they are cut into windows.
#[derive(Clone, Debug)]
pub struct StepPlan {
    /// Batch sizes, epochs, seed.
    pub config: TrainConfig,
    /// Training examples.
    pub examples: usize,
    /// Optimizer steps per window (burn-train epoch).
    pub window_steps: usize,
    /// Optimizer steps of this run.
    pub run_steps: usize,
}

impl StepPlan {
    /// The plan of `config` over `examples` examples in windows of `window_steps` steps.
    pub fn new(config: &TrainConfig, examples: usize, window_steps: usize) -> Self {
        Self {
            config: config.clone(),
            examples,
            window_steps: window_steps.max(1),
            run_steps: config.run_steps(examples),
        }
    }

    /// Windows in the run.
    pub fn windows(&self) -> usize {
        self.run_steps.div_ceil(self.window_steps)
    }

    /// The steps of window `w` (1-based): 0-based step indices, end exclusive.
    pub fn window_range(&self, w: usize) -> Range<usize> {
        let start = (w.max(1) - 1) * self.window_steps;
        start.min(self.run_steps)..(w * self.window_steps).min(self.run_steps)
    }

    /// Optimizer steps done at the end of window `w`.
    pub fn window_end(&self, w: usize) -> usize {
        self.window_range(w).end
    }
}

/// Stops the run before a given step, as a stop request would (tests of resume).
#[derive(Clone, Default)]
pub(crate) struct StopBefore {
    pub step: Option<usize>,
    pub interrupter: Interrupter,
}

/// The training loader: see the [module documentation](self).
pub struct StepLoader<B: Backend, I, X> {
    items: Arc<Vec<I>>,
    batcher: Arc<dyn Batcher<B, I, X>>,
    plan: Arc<StepPlan>,
    device: B::Device,
    devices: usize,
    shards: Range<usize>,
    next_window: Mutex<usize>,
    stop: StopBefore,
}

impl<B: Backend, I, X> StepLoader<B, I, X> {
    /// A loader over `items` (batched by `batcher`) whose first `iter()` is window
    /// `first_window`, for a run on `devices` devices.
    pub(crate) fn new(
        items: Arc<Vec<I>>,
        batcher: Arc<dyn Batcher<B, I, X>>,
        plan: StepPlan,
        first_window: usize,
        devices: usize,
        stop: StopBefore,
    ) -> Self {
        let devices = devices.max(1);
        Self {
            items,
            batcher,
            plan: Arc::new(plan),
            device: Default::default(),
            devices,
            shards: 0..devices,
            next_window: Mutex::new(first_window),
            stop,
        }
    }

    fn derived(&self, device: B::Device, shards: Range<usize>) -> Self {
        let next = *self.next_window.lock().unwrap_or_else(|e| e.into_inner());
        Self {
            items: self.items.clone(),
            batcher: self.batcher.clone(),
            plan: self.plan.clone(),
            device,
            devices: self.devices,
            shards,
            next_window: Mutex::new(next),
            stop: self.stop.clone(),
        }
    }
}

impl<B, I, X> DataLoader<B, StepBatch<B, X>> for StepLoader<B, I, X>
where
    B: Backend,
    I: Clone + Send + Sync + 'static,
    X: Send + 'static,
{
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<StepBatch<B, X>> + 'a> {
        let window = {
            let mut next = self.next_window.lock().unwrap_or_else(|e| e.into_inner());
            let w = *next;
            *next += 1;
            w
        };
        let steps = self.plan.window_range(window);
        Box::new(StepIter {
            loader: self,
            next: steps.start,
            steps,
            order: None,
        })
    }

    fn num_items(&self) -> usize {
        self.shards.len()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, StepBatch<B, X>>> {
        Arc::new(self.derived(device.clone(), self.shards.clone()))
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, StepBatch<B, X>>> {
        let first = self.shards.start;
        Arc::new(self.derived(
            self.device.clone(),
            (first + start).min(self.shards.end)..(first + end).min(self.shards.end),
        ))
    }
}

struct StepIter<'a, B: Backend, I, X> {
    loader: &'a StepLoader<B, I, X>,
    steps: Range<usize>,
    next: usize,
    /// The order of the epoch being read.
    order: Option<(usize, Vec<usize>)>,
}

impl<B, I, X> Iterator for StepIter<'_, B, I, X>
where
    B: Backend,
    I: Clone + Send + Sync + 'static,
    X: Send + 'static,
{
    type Item = StepBatch<B, X>;

    fn next(&mut self) -> Option<StepBatch<B, X>> {
        let loader = self.loader;
        let step = self.next;
        if step >= self.steps.end {
            return None;
        }
        if loader.stop.step == Some(step) {
            loader.stop.interrupter.stop(Some("stop requested"));
            return None;
        }
        self.next += 1;
        let config = &loader.plan.config;
        let n = loader.plan.examples;
        let (epoch, range) = step_examples(n, config, step);
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.order = Some((epoch, epoch_order(n, config.seed, epoch)));
        }
        let order = &self.order.as_ref().expect("just set").1;
        let chunks: Vec<&[usize]> = order[range].chunks(config.micro_batch_size).collect();
        let step_micro_batches = chunks.len();
        let micro = chunks
            .into_iter()
            .enumerate()
            .filter(|(m, _)| loader.shards.contains(&(m % loader.devices)))
            .map(|(m, chunk)| {
                let items: Vec<I> = chunk.iter().map(|&i| loader.items[i].clone()).collect();
                let batcher = loader.batcher.clone();
                let device = loader.device.clone();
                MicroBatch::new(micro_batch_seed(config, step, m), move || {
                    batcher.batch(items, &device)
                })
            })
            .collect();
        Some(StepBatch {
            step,
            epoch,
            step_micro_batches,
            device: loader.device.clone(),
            micro,
        })
    }
}

impl<B, I, X> DataLoaderIterator<StepBatch<B, X>> for StepIter<'_, B, I, X>
where
    B: Backend,
    I: Clone + Send + Sync + 'static,
    X: Send + 'static,
{
    fn progress(&self) -> Progress {
        Progress::new(self.next - self.steps.start, self.steps.len())
    }
}

/// Builds validation batch `i` on a device, or says why it cannot.
pub type MakeValidBatch<B, X> =
    dyn Fn(usize, &<B as BackendTypes>::Device) -> std::result::Result<X, String> + Send + Sync;

/// The validation loader: `batches` batches after the windows in `windows`, none after the
/// others.
pub struct ValidLoader<B: Backend, X> {
    make: Arc<MakeValidBatch<B, X>>,
    batches: Range<usize>,
    windows: Arc<std::collections::BTreeSet<usize>>,
    device: B::Device,
    next_window: Mutex<usize>,
}

impl<B: Backend, X> ValidLoader<B, X> {
    pub(crate) fn new(
        make: Arc<MakeValidBatch<B, X>>,
        batches: usize,
        windows: std::collections::BTreeSet<usize>,
        first_window: usize,
    ) -> Self {
        Self {
            make,
            batches: 0..batches,
            windows: Arc::new(windows),
            device: Default::default(),
            next_window: Mutex::new(first_window),
        }
    }

    fn derived(&self, device: B::Device, batches: Range<usize>) -> Self {
        let next = *self.next_window.lock().unwrap_or_else(|e| e.into_inner());
        Self {
            make: self.make.clone(),
            batches,
            windows: self.windows.clone(),
            device,
            next_window: Mutex::new(next),
        }
    }
}

impl<B: Backend, X: Send + 'static> DataLoader<B, ValidBatch<X>> for ValidLoader<B, X> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<ValidBatch<X>> + 'a> {
        let window = {
            let mut next = self.next_window.lock().unwrap_or_else(|e| e.into_inner());
            let w = *next;
            *next += 1;
            w
        };
        let batches = if self.windows.contains(&window) {
            self.batches.clone()
        } else {
            0..0
        };
        Box::new(ValidIter {
            loader: self,
            next: batches.start,
            batches,
        })
    }

    fn num_items(&self) -> usize {
        self.batches.len()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, ValidBatch<X>>> {
        Arc::new(self.derived(device.clone(), self.batches.clone()))
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, ValidBatch<X>>> {
        let first = self.batches.start;
        let end = (first + end).min(self.batches.end);
        Arc::new(self.derived(self.device.clone(), (first + start).min(end)..end))
    }
}

struct ValidIter<'a, B: Backend, X> {
    loader: &'a ValidLoader<B, X>,
    batches: Range<usize>,
    next: usize,
}

impl<B: Backend, X> Iterator for ValidIter<'_, B, X> {
    type Item = ValidBatch<X>;

    fn next(&mut self) -> Option<ValidBatch<X>> {
        if self.next >= self.batches.end {
            return None;
        }
        let i = self.next;
        self.next += 1;
        Some(ValidBatch {
            batch: (self.loader.make)(i, &self.loader.device),
        })
    }
}

impl<B: Backend, X> DataLoaderIterator<ValidBatch<X>> for ValidIter<'_, B, X> {
    fn progress(&self) -> Progress {
        Progress::new(self.next - self.batches.start, self.batches.len())
    }
}

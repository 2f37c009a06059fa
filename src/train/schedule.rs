//! Linear warm-up then linear decay, as HF's `get_linear_schedule_with_warmup` (the schedule of
//! the paper's runs), as a burn `LrScheduler`.

use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::LearningRate;
use burn::tensor::backend::Backend;

/// The learning rate of optimizer step `k` (0-based) is `peak · k / warmup` during warm-up,
/// then `peak · (total − k) / (total − warmup)`, never below 0. As in HF, the very first update
/// of a run with warm-up uses a rate of 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupLinearDecay {
    peak: LearningRate,
    warmup: usize,
    total: usize,
    /// Steps already taken.
    step: usize,
}

impl WarmupLinearDecay {
    /// A schedule peaking at `peak` after `warmup` of `total` optimizer steps.
    pub fn new(peak: LearningRate, warmup: usize, total: usize) -> Self {
        Self {
            peak,
            warmup,
            total: total.max(1),
            step: 0,
        }
    }

    /// The rate of step `k` without advancing.
    pub fn rate_at(&self, k: usize) -> LearningRate {
        if k < self.warmup {
            return self.peak * k as f64 / self.warmup as f64;
        }
        let left = self.total.saturating_sub(k) as f64;
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        self.peak * (left / span).max(0.0)
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> usize {
        self.step
    }
}

impl LrScheduler for WarmupLinearDecay {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> LearningRate {
        let lr = self.rate_at(self.step);
        self.step += 1;
        lr
    }

    fn to_record<B: Backend>(&self) -> usize {
        self.step
    }

    fn load_record<B: Backend>(mut self, record: usize) -> Self {
        self.step = record;
        self
    }
}

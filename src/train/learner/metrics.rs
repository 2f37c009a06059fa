//! The Learner's metrics as burn-train [`Metric`]s: loss, accuracy (burn-train's own
//! `LearningRateMetric` gives the learning rate), and the run log — two text metrics,
//! `Step` and `Validation`, that see every item and keep the history the output folder
//! shows (`metrics.csv`, the windows' validations) and the checkpointing strategy reads.
//!
//! burn-train processes items on its own thread, in order: a window's training steps, the
//! end of its training epoch, its validation batches, the end of its validation epoch
//! ([`Metric::clear`] on the validation metrics). At that end the run log closes the window:
//! it writes the window's lines to `metrics.csv` and `learner_log.json` and wakes the
//! checkpointing strategy, which waits for it before deciding what to keep.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Adaptor, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes,
    NumericEntry, SerializedEntry,
};
use serde::{Deserialize, Serialize};

use super::loader::StepPlan;
use super::step::{StepFailure, StepItem, ValidItem};
use crate::adapter::write_atomic;
use crate::train::checkpoint::StepRecord;
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------------
// Loss and accuracy
// ---------------------------------------------------------------------------------------------

/// What [`LossMetric`] reads from an item: a mean loss and what it is a mean over.
#[derive(Clone, Debug)]
pub struct LossInput {
    /// Mean loss times `weight`.
    pub loss_sum: f64,
    /// Items or tokens.
    pub weight: usize,
}

impl Adaptor<LossInput> for StepItem {
    fn adapt(&self) -> LossInput {
        LossInput {
            loss_sum: self.loss_sum,
            weight: self.items,
        }
    }
}

impl Adaptor<LossInput> for ValidItem {
    fn adapt(&self) -> LossInput {
        LossInput {
            loss_sum: self.loss_sum,
            weight: self.weight,
        }
    }
}

/// The mean loss, weighted by items (training) or by what the loss is a mean over
/// (validation: the labelled tokens of a causal LM, as the step loop's validation weighs
/// them). burn-train's own `LossMetric` reads a loss tensor; the steps here report host
/// values.
#[derive(Clone, Default)]
pub struct LossMetric {
    state: NumericMetricState,
}

impl LossMetric {
    /// The metric's name, as the dashboard shows it.
    pub const NAME: &'static str = "Loss";

    /// A fresh metric.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The entry of an item that carries nothing to average (an empty share of a step).
fn empty_entry() -> SerializedEntry {
    SerializedEntry::new(
        "-".into(),
        NumericEntry::Aggregated {
            aggregated_value: 0.0,
            count: 0,
        }
        .serialize(),
    )
}

impl Metric for LossMetric {
    type Input = LossInput;

    fn name(&self) -> MetricName {
        Arc::new(Self::NAME.to_string())
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: false,
        }
        .into()
    }

    fn update(&mut self, item: &LossInput, _: &MetricMetadata) -> SerializedEntry {
        if item.weight == 0 {
            return empty_entry();
        }
        self.state.update(
            item.loss_sum / item.weight as f64,
            item.weight,
            FormatOptions::new(self.name()).precision(4),
        )
    }

    fn clear(&mut self) {
        self.state.reset()
    }
}

impl Numeric for LossMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }
    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}

/// What [`AccuracyMetric`] reads from an item.
#[derive(Clone, Debug)]
pub struct AccuracyInput {
    /// Correct predictions.
    pub correct: usize,
    /// Predictions.
    pub total: usize,
}

impl Adaptor<AccuracyInput> for StepItem {
    fn adapt(&self) -> AccuracyInput {
        let (correct, total) = self.correct.unwrap_or((0, 0));
        AccuracyInput { correct, total }
    }
}

impl Adaptor<AccuracyInput> for ValidItem {
    fn adapt(&self) -> AccuracyInput {
        let (correct, total) = self.correct.unwrap_or((0, 0));
        AccuracyInput { correct, total }
    }
}

/// The share of correct predictions, in percent, for tasks that classify.
#[derive(Clone, Default)]
pub struct AccuracyMetric {
    state: NumericMetricState,
}

impl AccuracyMetric {
    /// The metric's name, as the dashboard shows it.
    pub const NAME: &'static str = "Accuracy";

    /// A fresh metric.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Metric for AccuracyMetric {
    type Input = AccuracyInput;

    fn name(&self) -> MetricName {
        Arc::new(Self::NAME.to_string())
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: Some("%".into()),
            higher_is_better: true,
        }
        .into()
    }

    fn update(&mut self, item: &AccuracyInput, _: &MetricMetadata) -> SerializedEntry {
        if item.total == 0 {
            return empty_entry();
        }
        self.state.update(
            100.0 * item.correct as f64 / item.total as f64,
            item.total,
            FormatOptions::new(self.name()).unit("%").precision(2),
        )
    }

    fn clear(&mut self) {
        self.state.reset()
    }
}

impl Numeric for AccuracyMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }
    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}

// ---------------------------------------------------------------------------------------------
// The run log
// ---------------------------------------------------------------------------------------------

/// One window of a Learner run (a burn-train "epoch"): the steps it ended on and its
/// validation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WindowRecord {
    /// The window (burn-train's epoch number, 1-based).
    pub window: usize,
    /// Optimizer steps done at its end.
    pub step: usize,
    /// Mean validation loss, when the window validated.
    pub valid_loss: Option<f64>,
    /// `(correct, total)` predictions of the validation, for tasks that classify.
    pub valid_correct: Option<(usize, usize)>,
    /// Wall time of the run at the window's end (resumed parts included), in seconds.
    pub elapsed_seconds: f64,
}

/// `learner_log.json`: what the windows so far did, read back by a resume.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LearnerLog {
    /// Identifies the run; a resume must find the same.
    pub fingerprint: serde_json::Value,
    /// Steps per window.
    pub window_steps: usize,
    /// Every closed window, in order.
    pub windows: Vec<WindowRecord>,
    /// Every optimizer step of the closed windows.
    pub history: Vec<StepRecord>,
}

/// The file of a run's [`LearnerLog`] inside its output folder.
pub const LEARNER_LOG_FILE: &str = "learner_log.json";

impl LearnerLog {
    /// Reads `learner_log.json` of `out_dir`, if there is one.
    pub fn read(out_dir: &Path) -> Result<Option<Self>> {
        let path = out_dir.join(LEARNER_LOG_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::file(&path, format!("not a Learner run log: {e}")))
    }

    /// Keeps the windows up to `window` and their steps.
    pub fn truncate(&mut self, window: usize) {
        self.windows.retain(|w| w.window <= window);
        let step = self.windows.last().map_or(0, |w| w.step);
        self.history.retain(|r| r.step <= step);
    }
}

/// What the run log needs to know about the run.
#[derive(Clone, Debug)]
pub(crate) struct LogPlan {
    pub out_dir: PathBuf,
    pub steps: StepPlan,
    /// Windows that validate, and their validation's batch count.
    pub valid_windows: BTreeSet<usize>,
    pub valid_batches: usize,
    /// The first window this process trains.
    pub first_window: usize,
    pub elapsed_before: f64,
}

#[derive(Default)]
struct PendingStep {
    epoch: usize,
    loss_sum: f64,
    items: usize,
    correct: Option<(usize, usize)>,
    lr: f64,
    grad_norm: Option<f64>,
}

#[derive(Default)]
struct PendingValid {
    loss_sum: f64,
    weight: usize,
    correct: Option<(usize, usize)>,
    batches: usize,
    failed: bool,
}

struct LogState {
    plan: LogPlan,
    log: LearnerLog,
    pending: BTreeMap<usize, PendingStep>,
    valid: PendingValid,
    /// The window the next validation end closes.
    next_window: usize,
    /// Windows closed by this process, and whether each was complete.
    closed: BTreeMap<usize, bool>,
    started: Instant,
}

/// The shared state behind the [`StepLog`] and [`ValidLog`] metrics (clones share it).
#[derive(Clone)]
pub struct RunLog {
    shared: Arc<(Mutex<LogState>, Condvar)>,
    failure: StepFailure,
}

impl RunLog {
    pub(crate) fn new(plan: LogPlan, log: LearnerLog, failure: StepFailure) -> Self {
        let state = LogState {
            next_window: plan.first_window,
            plan,
            log,
            pending: BTreeMap::new(),
            valid: PendingValid::default(),
            closed: BTreeMap::new(),
            started: Instant::now(),
        };
        Self {
            shared: Arc::new((Mutex::new(state), Condvar::new())),
            failure,
        }
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The log of the closed windows.
    pub fn log(&self) -> LearnerLog {
        self.state().log.clone()
    }

    /// Waits (up to `timeout`) until window `window` is closed; whether it closed complete
    /// (every step and the whole validation seen, the files written).
    pub(crate) fn wait_closed(&self, window: usize, timeout: Duration) -> bool {
        let (lock, ready) = &*self.shared;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = ready
            .wait_timeout_while(guard, timeout, |s| !s.closed.contains_key(&window))
            .unwrap_or_else(|e| e.into_inner());
        guard.closed.get(&window).copied().unwrap_or(false)
    }

    fn add_step(&self, item: &StepItem, lr: Option<f64>) {
        let mut state = self.state();
        let step = state.pending.entry(item.step).or_default();
        step.epoch = item.epoch;
        step.loss_sum += item.loss_sum;
        step.items += item.items;
        if let Some((c, t)) = item.correct {
            let (sc, st) = step.correct.get_or_insert((0, 0));
            *sc += c;
            *st += t;
        }
        step.lr = lr.unwrap_or(step.lr);
        step.grad_norm = item.grad_norm.or(step.grad_norm);
    }

    fn add_valid(&self, item: &ValidItem) {
        let mut state = self.state();
        let v = &mut state.valid;
        v.batches += 1;
        v.failed |= item.failed;
        v.loss_sum += item.loss_sum;
        v.weight += item.weight;
        if let Some((c, t)) = item.correct {
            let (sc, st) = v.correct.get_or_insert((0, 0));
            *sc += c;
            *st += t;
        }
    }

    /// The end of a validation epoch: closes the window.
    fn close_window(&self) {
        let mut state = self.state();
        let window = state.next_window;
        state.next_window += 1;
        let pending = std::mem::take(&mut state.pending);
        let valid = std::mem::take(&mut state.valid);
        let range = state.plan.steps.window_range(window);
        let validates = state.plan.valid_windows.contains(&window);
        let complete = pending.len() == range.len()
            && pending.keys().copied().eq(range.start + 1..=range.end)
            && !valid.failed
            && (!validates || valid.batches == state.plan.valid_batches);
        let mut written = false;
        if complete {
            let records: Vec<StepRecord> = pending
                .into_iter()
                .map(|(step, p)| StepRecord {
                    step,
                    epoch: p.epoch,
                    loss: p.loss_sum / p.items.max(1) as f64,
                    lr: p.lr,
                    valid_loss: None,
                    accuracy: p.correct.map(|(c, t)| c as f64 / t.max(1) as f64),
                    grad_norm: p.grad_norm,
                })
                .collect();
            let mut records = records;
            let valid_loss =
                (validates && valid.weight > 0).then(|| valid.loss_sum / valid.weight as f64);
            if let Some(last) = records.last_mut() {
                last.valid_loss = valid_loss;
            }
            let elapsed = state.plan.elapsed_before + state.started.elapsed().as_secs_f64();
            let record = WindowRecord {
                window,
                step: range.end,
                valid_loss,
                valid_correct: if validates { valid.correct } else { None },
                elapsed_seconds: elapsed,
            };
            state.log.history.extend(records.iter().cloned());
            state.log.windows.push(record);
            match write_window(&state.plan.out_dir, &state.log, &records) {
                Ok(()) => written = true,
                Err(e) => self.failure.fail(e.to_string()),
            }
        }
        state.closed.insert(window, written);
        drop(state);
        self.shared.1.notify_all();
    }
}

/// Writes `learner_log.json` whole and appends the window's lines to `metrics.csv`.
fn write_window(out_dir: &Path, log: &LearnerLog, records: &[StepRecord]) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(log)
        .map_err(|e| Error::State(format!("serialising the Learner log: {e}")))?;
    write_atomic(&out_dir.join(LEARNER_LOG_FILE), &bytes)?;
    for record in records {
        crate::train::trainer::append_metrics_line(out_dir, record)?;
    }
    Ok(())
}

/// The text metric `Step` on the training split: shows the optimizer step and feeds the
/// run log.
#[derive(Clone)]
pub struct StepLog {
    log: RunLog,
    run_steps: usize,
}

impl StepLog {
    pub(crate) fn new(log: RunLog, run_steps: usize) -> Self {
        Self { log, run_steps }
    }
}

impl Adaptor<StepItem> for StepItem {
    fn adapt(&self) -> StepItem {
        self.clone()
    }
}

impl Adaptor<ValidItem> for ValidItem {
    fn adapt(&self) -> ValidItem {
        self.clone()
    }
}

impl Metric for StepLog {
    type Input = StepItem;

    fn name(&self) -> MetricName {
        Arc::new("Step".to_string())
    }

    fn update(&mut self, item: &StepItem, metadata: &MetricMetadata) -> SerializedEntry {
        self.log.add_step(item, metadata.lr);
        SerializedEntry::new(
            format!("{} of {}", item.step, self.run_steps),
            item.step.to_string(),
        )
    }

    fn clear(&mut self) {}
}

/// The text metric `Validation` on the validation split: counts the batches, feeds the run
/// log and closes the window at the end of the validation epoch.
#[derive(Clone)]
pub struct ValidLog {
    log: RunLog,
    batches: usize,
}

impl ValidLog {
    pub(crate) fn new(log: RunLog) -> Self {
        Self { log, batches: 0 }
    }
}

impl Metric for ValidLog {
    type Input = ValidItem;

    fn name(&self) -> MetricName {
        Arc::new("Validation".to_string())
    }

    fn update(&mut self, item: &ValidItem, _: &MetricMetadata) -> SerializedEntry {
        self.log.add_valid(item);
        self.batches += 1;
        SerializedEntry::new(format!("batch {}", self.batches), self.batches.to_string())
    }

    fn clear(&mut self) {
        self.batches = 0;
        self.log.close_window();
    }
}

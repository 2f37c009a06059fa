//! [`learn`]: a fine-tuning run through burn-train's `SupervisedTraining` and `Learner`.

use std::collections::{BTreeSet, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::module::{AutodiffModule, Module, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::checkpoint::{Checkpointer, FileCheckpointer};
use burn::train::metric::LearningRateMetric;
use burn::train::{
    ExecutionStrategy, InferenceStep, Learner, LearningComponentsMarker, MultiDeviceOptim,
    SupervisedTraining, TrainStep, TrainingStrategy,
};
use serde_json::Value;

use super::adapter_only::{AdapterOnly, AdapterRecord};
use super::checkpoint::{
    best_window, checkpoint_dir, checkpoint_file, checkpoint_windows, delete_checkpoint,
    learner_dir, CheckpointRecorder, KeepBest, KeepWindows,
};
use super::loader::{MakeValidBatch, StepLoader, StepPlan, StopBefore, ValidLoader};
use super::metrics::{
    AccuracyMetric, LearnerLog, LogPlan, LossMetric, RunLog, StepLog, ValidLog, WindowRecord,
    LEARNER_LOG_FILE,
};
use super::renderer::learner_renderer;
use super::step::{StepFailure, StepOptions};
use crate::train::checkpoint::OptimRecord;
use crate::train::fingerprint::describe_difference;
use crate::train::monitor::Monitor;
use crate::train::schedule::WarmupLinearDecay;
use crate::train::trainer::write_metrics_csv;
use crate::train::{StepOutput, TrainConfig};
use crate::{Error, Result};

/// How a Learner run is cut, validated, kept and shown.
#[derive(Clone, Debug)]
pub struct LearnerSettings {
    /// Optimisation (AdamW, warm-up/decay schedule, batch and micro-batch, clipping, seed).
    /// `checkpoint_every` and `valid_every` are not read: the window and the validation
    /// steps below say when the run checkpoints and validates.
    pub train: TrainConfig,
    /// Optimizer steps per window: burn-train checkpoints (and validates) at the end of each.
    pub window_steps: usize,
    /// The steps after which the run validates; each must end a window.
    pub valid_steps: BTreeSet<usize>,
    /// Which adapters besides the last the run keeps.
    pub keep: KeepBest,
    /// The task classifies: accuracy is a metric.
    pub classifies: bool,
    /// Output folder: `learner/` (burn-train's checkpoints and logs), `learner_log.json`,
    /// `metrics.csv`.
    pub out_dir: PathBuf,
    /// Resume from the latest intact checkpoint in `out_dir`, if there is one.
    pub resume: bool,
    /// Describes the run; a resume must find the same.
    pub fingerprint: Value,
    /// Dashboard, progress bar or nothing; its stop requests end the run at its last window.
    pub monitor: Monitor,
    /// Stop (as a stop request would) before this optimizer step (tests of resume).
    pub stop_after: Option<usize>,
}

impl LearnerSettings {
    /// Settings for a run of `train` in windows of `train.checkpoint_every` steps (the whole
    /// run when 0), validating every `train.valid_every` steps and at the end of the
    /// schedule — the step loop's points; an error when a validation step does not end a
    /// window.
    pub fn from_train_config(train: &TrainConfig, examples: usize, out_dir: &Path) -> Result<Self> {
        train.validate()?;
        let run_steps = train.run_steps(examples);
        let total = train.total_steps(examples);
        let window_steps = if train.checkpoint_every > 0 {
            train.checkpoint_every
        } else {
            run_steps
        };
        if train.valid_every > 0 && !train.valid_every.is_multiple_of(window_steps) {
            return Err(Error::Config(format!(
                "valid_every (--valid-every) {}: burn-train validates at the end of its epochs, \
                 here windows of {window_steps} steps (checkpoint_every, --checkpoint-every; \
                 the whole run when 0); give a multiple of {window_steps}, or 0",
                train.valid_every
            )));
        }
        let valid_steps = if train.valid_every == 0 {
            BTreeSet::new()
        } else {
            (1..=run_steps)
                .filter(|s| s.is_multiple_of(train.valid_every) || *s == total)
                .collect()
        };
        Ok(Self {
            train: train.clone(),
            window_steps,
            valid_steps,
            keep: KeepBest::Last,
            classifies: false,
            out_dir: out_dir.to_path_buf(),
            resume: false,
            fingerprint: Value::Null,
            monitor: Monitor::silent(),
            stop_after: None,
        })
    }
}

/// The validation data of a run: `batches` batches, built on demand.
pub struct ValidSet<B: Backend, X> {
    /// Batches in one validation.
    pub batches: usize,
    /// Builds batch `i` on a device.
    pub make: Arc<MakeValidBatch<B, X>>,
}

impl<B: Backend, X: 'static> ValidSet<B, X> {
    /// No validation.
    pub fn none() -> Self {
        Self {
            batches: 0,
            make: Arc::new(|_, _| Err("the run has no validation data".into())),
        }
    }
}

/// What a Learner run did.
pub struct LearnerOutcome<M> {
    /// The model after the run (after its last window, or later steps when it stopped).
    pub model: M,
    /// The window of the best validation so far and the model as it was then (restored from
    /// its checkpoint unless it is the last window of a finished run;
    /// [`LearnerSettings::keep`]; `None` for [`KeepBest::Last`] or when nothing validated).
    pub best: Option<(WindowRecord, M)>,
    /// Windows and optimizer steps, those before a resume included.
    pub log: LearnerLog,
    /// Optimizer steps done when this process began (0: a fresh run).
    pub resumed_from: usize,
    /// The run stopped before its last window (a stop request); the last checkpoint holds
    /// where it stopped.
    pub stopped_early: bool,
    /// Wall time of the run's windows, resumed parts included, in seconds.
    pub elapsed_seconds: f64,
}

impl<M> LearnerOutcome<M> {
    /// Optimizer steps done (at the last closed window).
    pub fn steps(&self) -> usize {
        self.log.windows.last().map_or(0, |w| w.step)
    }
}

/// The model burn-train trains: `M` seen through its adapters.
type Wrapped<B, M> = AdapterOnly<B, M>;

/// burn-train's components of a run: AdamW, the warm-up/decay schedule, the wrapped model.
type Components<B, M> = LearningComponentsMarker<
    B,
    WarmupLinearDecay,
    Wrapped<B, M>,
    OptimizerAdaptor<AdamW, Wrapped<B, M>, B>,
>;

/// Trains `model` (on an autodiff backend, its adapters marked trainable) on `items` with
/// burn-train: one Learner iteration per optimizer step, one burn-train epoch per window of
/// `settings.window_steps` steps, a checkpoint of the adapters, optimizer and schedule at
/// the end of each window, validation on `valid` after the windows ending at
/// `settings.valid_steps`. On several `devices` it uses burn-train's multi-device strategy
/// (each step's micro-batches spread over the devices, their gradients summed on the first,
/// where the optimizer runs).
///
/// The data order, dropout seeds, schedule, clipping and optimizer are the step loop's
/// ([`crate::train::train`]): on one device without dropout both give the same adapters.
pub fn learn<B, M, I>(
    model: M,
    items: Arc<Vec<I>>,
    batcher: Arc<dyn Batcher<B, I, M::Input>>,
    valid: ValidSet<B::InnerBackend, <M::InnerModule as InferenceStep>::Input>,
    settings: &LearnerSettings,
    devices: &[B::Device],
) -> Result<LearnerOutcome<Wrapped<B::InnerBackend, M::InnerModule>>>
where
    B: AutodiffBackend,
    M: TrainStep + AutodiffModule<B> + 'static,
    M::Input: Send + 'static,
    M::Output: StepOutput,
    M::InnerModule: InferenceStep + 'static,
    <M::InnerModule as InferenceStep>::Input: Send + 'static,
    <M::InnerModule as InferenceStep>::Output: StepOutput,
    I: Clone + Send + Sync + 'static,
{
    let config = &settings.train;
    config.validate()?;
    if items.is_empty() {
        return Err(Error::Config("the training set is empty".into()));
    }
    let device = devices
        .first()
        .ok_or_else(|| Error::Config("no device to train on".into()))?
        .clone();
    let plan = StepPlan::new(config, items.len(), settings.window_steps);
    let windows = plan.windows();
    if let Some(s) = settings
        .valid_steps
        .iter()
        .find(|&&s| s == 0 || s > plan.run_steps || !(1..=windows).any(|w| plan.window_end(w) == s))
    {
        return Err(Error::Config(format!(
            "validation after step {s}, which does not end a window of {} steps",
            plan.window_steps
        )));
    }
    let out = settings.out_dir.as_path();
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    let monitor = &settings.monitor;
    let interrupter = monitor.interrupter();
    let failure = StepFailure::new(interrupter.clone());
    let model = AdapterOnly::new(
        model,
        StepOptions {
            max_grad_norm: config.max_grad_norm,
            clip_in_step: devices.len() == 1,
            failure: failure.clone(),
        },
    );

    // Where the run starts: the latest intact checkpoint of the same run, or nothing.
    let mut log = LearnerLog {
        fingerprint: settings.fingerprint.clone(),
        window_steps: plan.window_steps,
        ..LearnerLog::default()
    };
    let mut start_window = 0;
    if settings.resume {
        if let Some(saved) = LearnerLog::read(out)? {
            start_window = resume_window(&model, out, &saved, settings, &plan, &device)?;
            log = saved;
            log.truncate(start_window);
        }
    }
    for w in checkpoint_windows(out) {
        if w > start_window {
            delete_checkpoint(out, w);
        }
    }
    remove_metric_logs_after(out, start_window);
    let resumed_from = log.windows.last().map_or(0, |w| w.step);
    let elapsed_before = log.windows.last().map_or(0.0, |w| w.elapsed_seconds);
    write_metrics_csv(out, &log.history)?;
    let saved_windows = checkpoint_windows(out);

    let valid_windows: BTreeSet<usize> = (1..=windows)
        .filter(|&w| valid.batches > 0 && settings.valid_steps.contains(&plan.window_end(w)))
        .collect();
    let run_log = RunLog::new(
        LogPlan {
            out_dir: out.to_path_buf(),
            steps: plan.clone(),
            valid_windows: valid_windows.clone(),
            valid_batches: valid.batches,
            first_window: start_window + 1,
            elapsed_before,
        },
        log,
        failure.clone(),
    );
    let train_loader = StepLoader::new(
        items,
        batcher,
        plan.clone(),
        start_window + 1,
        devices.len(),
        StopBefore {
            step: settings.stop_after.filter(|&s| s < plan.run_steps),
            interrupter: interrupter.clone(),
        },
    );
    let valid_loader = ValidLoader::<B::InnerBackend, _>::new(
        valid.make,
        valid.batches,
        valid_windows,
        start_window + 1,
    );

    let optim: OptimizerAdaptor<AdamW, Wrapped<B, M>, B> = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .with_epsilon(config.adam_epsilon as f32)
        .init();
    let schedule = WarmupLinearDecay::new(
        config.learning_rate,
        config.warmup_steps,
        config.total_steps(plan.examples),
    );
    let strategy: TrainingStrategy<Components<B, M>> = if devices.len() > 1 {
        ExecutionStrategy::multi(devices.to_vec(), MultiDeviceOptim::OptimMainDevice).into()
    } else {
        ExecutionStrategy::single(device.clone()).into()
    };
    let mut training = SupervisedTraining::<Components<B, M>>::new(
        learner_dir(out),
        Arc::new(train_loader),
        Arc::new(valid_loader),
    )
    .metric_train_numeric(LossMetric::new())
    .metric_valid_numeric(LossMetric::new())
    .metric_train_numeric(LearningRateMetric::new())
    .metric_train(StepLog::new(run_log.clone(), plan.run_steps))
    .metric_valid(ValidLog::new(run_log.clone()))
    .with_file_checkpointer(CheckpointRecorder::new())
    .with_checkpointing_strategy(KeepWindows::new(
        run_log.clone(),
        settings.keep,
        saved_windows,
    ))
    .num_epochs(windows)
    .renderer(learner_renderer(
        monitor,
        &plan,
        devices.len(),
        plan.window_end(start_window),
    ))
    .with_interrupter(interrupter.clone())
    .with_application_logger(None)
    .with_training_strategy(strategy);
    if settings.classifies {
        training = training
            .metric_train_numeric(AccuracyMetric::new())
            .metric_valid_numeric(AccuracyMetric::new());
    }
    if start_window > 0 {
        training = training.checkpoint(start_window);
    }

    let learner = Learner::new(model, optim, schedule);
    let result = std::panic::catch_unwind(AssertUnwindSafe(move || training.launch(learner)));
    let result = result.map_err(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown cause".into());
        Error::State(format!("burn-train's training failed: {why}"))
    })?;
    if let Some(e) = failure.error() {
        return Err(e);
    }
    if let Some(message) = interrupter.get_message() {
        if ["I/O Error", "Recorder error", "Unknown error"]
            .iter()
            .any(|p| message.starts_with(p))
        {
            return Err(Error::file(
                checkpoint_dir(out),
                format!("writing a checkpoint failed: {message}"),
            ));
        }
    }
    let log = run_log.log();
    let completed = log.windows.last().map(|w| w.step) == Some(plan.run_steps);
    let model = result.model;
    let best = match best_window(&log.windows, settings.keep) {
        // The model is the last window's only when no step ran after it.
        Some(w) if completed && Some(w.window) == log.windows.last().map(|l| l.window) => {
            Some((w.clone(), model.clone()))
        }
        Some(w) => {
            let record = restore_model::<B::InnerBackend>(out, w.window, &device)?;
            model
                .check_record(&record)
                .map_err(|why| Error::file(checkpoint_file(out, "model", w.window), why))?;
            Some((w.clone(), model.clone().load_record(record)))
        }
        None => None,
    };
    let elapsed_seconds = log
        .windows
        .last()
        .map_or(elapsed_before, |w| w.elapsed_seconds);
    Ok(LearnerOutcome {
        model,
        best,
        log,
        resumed_from,
        stopped_early: !completed,
        elapsed_seconds,
    })
}

/// Removes burn-train's metric logs of the windows after `window` (a run cut short left
/// them; the windows run again).
fn remove_metric_logs_after(out: &Path, window: usize) {
    for split in ["train", "valid"] {
        let dir = learner_dir(out).join(split);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let epoch = name
                .strip_prefix("epoch-")
                .and_then(|e| e.parse::<usize>().ok());
            if epoch.is_some_and(|e| e > window) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The adapter record of window `window`'s checkpoint.
fn restore_model<B: Backend>(
    out: &Path,
    window: usize,
    device: &B::Device,
) -> Result<AdapterRecord<B>> {
    let checkpointer =
        FileCheckpointer::new(CheckpointRecorder::new(), checkpoint_dir(out), "model");
    Checkpointer::<AdapterRecord<B>, B>::restore(&checkpointer, window, device).map_err(|e| {
        Error::file(
            checkpoint_file(out, "model", window),
            format!("cannot read the checkpoint: {e}"),
        )
    })
}

/// The window to resume from: the newest one of `saved` whose checkpoint reads back whole
/// and fits the run (with a warning naming what was wrong with newer ones); an error when
/// the log comes from another run or no checkpoint is intact.
fn resume_window<B, M>(
    model: &Wrapped<B, M>,
    out: &Path,
    saved: &LearnerLog,
    settings: &LearnerSettings,
    plan: &StepPlan,
    device: &B::Device,
) -> Result<usize>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    let log_path = out.join(LEARNER_LOG_FILE);
    if saved.fingerprint != settings.fingerprint {
        return Err(Error::file(
            &log_path,
            format!(
                "was written by a different run; {}",
                describe_difference(&saved.fingerprint, &settings.fingerprint)
            ),
        ));
    }
    if saved.window_steps != plan.window_steps {
        return Err(Error::file(
            &log_path,
            format!(
                "the run checkpointed every {} steps, this one every {}: resume with the same \
                 checkpoint interval",
                saved.window_steps, plan.window_steps
            ),
        ));
    }
    let on_disk = checkpoint_windows(out);
    let mut first_error: Option<Error> = None;
    for w in saved.windows.iter().rev() {
        if !on_disk.contains(&w.window) {
            continue;
        }
        match check_checkpoint(model, out, w.window, plan.window_end(w.window), device) {
            Ok(()) => {
                if let Some(e) = &first_error {
                    eprintln!(
                        "warning: {e}\nwarning: resuming from the checkpoint of step {}",
                        w.step
                    );
                }
                return Ok(w.window);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(Error::State(format!(
            "no intact checkpoint to resume from: {e}"
        ))),
        None if saved.windows.is_empty() => Ok(0),
        None => Err(Error::file(
            checkpoint_dir(out),
            "holds none of the checkpoints learner_log.json lists",
        )),
    }
}

/// Reads back window `window`'s checkpoint (adapters, optimizer, schedule) and checks it fits
/// `model` and ends at step `end_step`: burn-train's own restore panics on a bad file.
fn check_checkpoint<B, M>(
    model: &Wrapped<B, M>,
    out: &Path,
    window: usize,
    end_step: usize,
    device: &B::Device,
) -> Result<()>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    let dir = checkpoint_dir(out);
    let record = restore_model::<B>(out, window, device)?;
    let model_file = checkpoint_file(out, "model", window);
    model
        .check_record(&record)
        .map_err(|why| Error::file(&model_file, format!("does not fit the model: it {why}")))?;
    let ids: HashSet<ParamId> = Wrapped::<B, M>::record_ids(&record).into_iter().collect();

    let optim_file = checkpoint_file(out, "optim", window);
    let checkpointer = FileCheckpointer::new(CheckpointRecorder::new(), &dir, "optim");
    let optim: OptimRecord<AdamW, Wrapped<B, M>, B> = Checkpointer::<
        OptimRecord<AdamW, Wrapped<B, M>, B>,
        B,
    >::restore(&checkpointer, window, device)
    .map_err(|e| Error::file(&optim_file, format!("cannot read the checkpoint: {e}")))?;
    if optim.keys().any(|id| !ids.contains(id)) {
        return Err(Error::file(
            &optim_file,
            "holds optimizer state for a parameter the adapters do not have",
        ));
    }

    let schedule_file = checkpoint_file(out, "scheduler", window);
    let checkpointer = FileCheckpointer::new(CheckpointRecorder::new(), &dir, "scheduler");
    let steps: usize = Checkpointer::<usize, B>::restore(&checkpointer, window, device)
        .map_err(|e| Error::file(&schedule_file, format!("cannot read the checkpoint: {e}")))?;
    if steps != end_step {
        return Err(Error::file(
            &schedule_file,
            format!(
                "the checkpoint is at step {steps}, but this run's window {window} ends at step \
                 {end_step} (an earlier run stopped there with another --max-steps)"
            ),
        ));
    }
    Ok(())
}

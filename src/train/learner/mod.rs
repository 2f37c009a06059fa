//! Fine-tuning with burn-train's `Learner` and `SupervisedTraining`, for any model whose
//! linears are [`AdaptedLinear`](crate::adapter::AdaptedLinear)s.
//!
//! burn-train 0.21 handles the optimizer, the schedule, the metrics, the dashboard and
//! checkpoints per epoch. Four pieces fit the fine-tuning protocol to it:
//!
//! * [`AdapterOnly`]: the model with a hand-written `Module` whose record is its adapters
//!   only, so burn-train's checkpoints are adapter-sized (its derived record would hold the
//!   frozen base too) and restore the parameter ids the optimizer state is keyed by;
//! * [`StepLoader`]: a data loader whose every `iter()` is the next window of optimizer
//!   steps in the step loop's seeded order, so burn-train's epochs are checkpoint windows and
//!   `.checkpoint(w)` resumes at a window boundary with the same data;
//! * [`StepBatch`]: one Learner iteration holds the micro-batches of one optimizer step and
//!   accumulates them inside `TrainStep::step`, so the learning-rate schedule steps once per
//!   optimizer step (burn-train's `grads_accumulation` steps it per micro-batch);
//! * metrics ([`LossMetric`], [`AccuracyMetric`], burn-train's `LearningRateMetric`) and a
//!   run log that writes `metrics.csv` and decides, with [`KeepWindows`], which windows'
//!   checkpoints stay: the last two and the best validation's.
//!
//! [`learn`] puts them together. What it cannot do that the step loop
//! ([`crate::train::train`]) does: checkpoint between windows (a stop request ends the run
//! at its last window; the steps after it run again on resume), hooks before each
//! micro-batch (online projector fits), and validation at points that do not end a window.
//! Restore errors (burn-train panics on them) are found before training by reading the
//! checkpoint back; save errors (burn-train stops through its interrupter) are reported as
//! errors.
//!
//! On several devices, [`learn`] uses burn-train's multi-device strategy with the optimizer
//! on the first device (`MultiDeviceOptim::OptimMainDevice`): each device runs its share of
//! every step's micro-batches on a fork of the model, burn-train sums the shares' gradients
//! on the first device, and `TrainStep::optimize` clips the sum's global norm before AdamW.

mod adapter_only;
mod checkpoint;
mod loader;
mod metrics;
mod renderer;
mod run;
mod step;

pub use adapter_only::{AdapterOnly, AdapterRecord, AdapterRecordItem, LayerAdapter, ParamData};
pub use checkpoint::{
    best_window, checkpoint_dir, checkpoint_file, checkpoint_windows, learner_dir,
    CheckpointRecorder, KeepBest, LEARNER_DIR,
};
pub use loader::{MakeValidBatch, StepLoader, StepPlan, ValidLoader};
pub use metrics::{
    AccuracyInput, AccuracyMetric, LearnerLog, LossInput, LossMetric, RunLog, StepLog, ValidLog,
    WindowRecord, LEARNER_LOG_FILE,
};
pub use run::{learn, LearnerOutcome, LearnerSettings, ValidSet};
pub use step::{MicroBatch, StepBatch, StepFailure, StepItem, StepOptions, ValidBatch, ValidItem};

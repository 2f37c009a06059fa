//! Fine-tuning: the training tasks (causal-LM instruction tuning, SigLIP classification), the
//! learning-rate schedule, a step-driven loop with step-level checkpoints and exact resume
//! ([`trainer`]), and the same runs through burn-train's `Learner` ([`learner`]).

pub mod causal_lm;
pub mod checkpoint;
pub mod fingerprint;
pub mod frozen_head_loss;
pub mod grad_norm;
pub mod learner;
mod metrics;
pub mod monitor;
pub mod schedule;
mod siglip_classification;
pub mod trainer;

pub use causal_lm::{
    causal_lm_loss, count_trainable, decoder_loss, finetune, lm_batch, trainable_lm,
    validation_loss, CausalLm, LmBatch, LmBatcher, LmOutput, Trainable,
};
pub use checkpoint::{latest_checkpoint, StepRecord};
pub use frozen_head_loss::{frozen_head_loss, frozen_head_loss_in_chunks};
pub use metrics::StepOutput;
pub use monitor::{Monitor, RunMetric};
pub use schedule::WarmupLinearDecay;
pub use siglip_classification::{
    class_prompt, class_prompt_ids, classification_loss, evaluate_vtab, ClassificationStep,
    SiglipClassifier,
};
pub use trainer::{
    epoch_order, micro_batch_seed, step_examples, train, train_on_devices, train_with_hook,
    BeforeMicroBatch, MakeBatch, RunOptions, TrainConfig, TrainOutcome, Validation,
};

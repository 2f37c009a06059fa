//! Fine-tuning: the training tasks (causal-LM instruction tuning, SigLIP classification), the
//! learning-rate schedule, and a step-driven loop with step-level checkpoints and exact resume.

mod metrics;

pub use metrics::StepOutput;

//! Evaluation: answer extraction and accuracy for the commonsense tasks, and evaluation by
//! generation.

pub mod commonsense;
pub mod generation;

pub use generation::{accuracy_summary, evaluate, write_predictions, Prediction, TestSet};

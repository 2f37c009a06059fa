//! Evaluation: answer extraction and accuracy for the commonsense tasks.

pub mod commonsense;

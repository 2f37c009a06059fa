//! Datasets: instruction-tuning JSON in the LLM-Adapters format (commonsense-170k and its
//! eight test sets), and VTAB-1k image classification.

pub mod instruction;
pub mod vtab;
pub mod wordnet;
pub mod wordnet_tasks;

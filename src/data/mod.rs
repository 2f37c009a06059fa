//! Datasets: instruction-tuning JSON in the LLM-Adapters format (commonsense-170k and its
//! eight test sets).

pub mod instruction;

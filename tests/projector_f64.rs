//! The projector suite on ndarray in f64, with tolerances near machine precision. A separate test
//! binary: burn keeps one default float type per device and process, so f32 and f64 runs of
//! the CPU backend cannot share a process.

mod common;

/// The backend the suite runs on.
pub type SuiteBackend = common::Exact;

#[path = "suites/projector.rs"]
mod suite;

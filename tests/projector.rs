//! The projector suite on the backend under test (flex by default; see `common`).

mod common;

/// The backend the suite runs on.
pub type SuiteBackend = common::TestBackend;

#[path = "suites/projector.rs"]
mod suite;

//! The paper's experiments as library pipelines, one per experiment, which every front-end
//! (the `ipa` subcommands, the quickstart, a user's program) calls:
//!
//! * [`instruct`]: instruction tuning of a decoder (commonsense-170k protocol): fit, train,
//!   evaluate;
//! * [`online`]: the online projector fits used by [`instruct`]'s `online_*` modes;
//! * [`vtab`]: VTAB-1k classification with SigLIP-2;
//! * [`out_dir`]: the output-folder lock and overwrite policy they share;
//! * [`trainer`]: which loop trains a run (the step loop or burn-train's `Learner`).

pub mod instruct;
pub mod online;
pub mod out_dir;
pub mod trainer;
pub mod vtab;

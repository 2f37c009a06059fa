//! # burn-ipa
//!
//! IPA — information-preserving input projections for adapting foundation models — on the
//! [burn](https://burn.dev) deep-learning framework.
//!
//! A frozen linear layer `y = W0 x` gets a low-rank residual `s · B (P x)`. LoRA draws the
//! projector `P` at random; IPA fits it, forward-only, to the principal directions of the inputs
//! the layer actually sees, and may fine-tune it afterwards.
//!
//! * [`adapter`]: [`adapter::AdaptedLinear`], a frozen base linear layer with an optional LoRA,
//!   IPA or DoRA adapter, merge/unmerge and adapter files.
//! * [`projector`]: the forward-only fit algorithms (incremental PCA as scikit-learn does it,
//!   randomized incremental PCA as the authors' code does it, the generalized Hebbian algorithm,
//!   and an exact streaming covariance PCA) behind the [`projector::ProjectorFit`] trait.
//!
//! Everything is generic over `B: Backend`: the same code runs on ndarray (CPU), wgpu and CUDA.

pub mod adapter;
pub mod backend;
pub mod bench;
pub mod data;
pub mod error;
pub mod eval;
pub mod export;
pub mod fit;
pub mod heap;
pub mod models;
pub mod pipelines;
pub mod projector;
pub mod quickstart;
pub mod report;
pub mod train;

pub use error::{Error, Result};

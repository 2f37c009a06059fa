//! Benchmarks behind `ipa bench`: training steps, the forward-only fit pass, the projector-fit
//! algorithms alone and the decoder forward. Each is a [`crate::backend::BackendJob`], so it
//! runs on whichever backend the user picks; none is a test (no timing is asserted anywhere).
//! `benches/torch_reference.py` runs the same configurations in PyTorch + peft.

pub mod fit;
pub mod fit_pass;
pub mod forward;
pub mod memory;
pub mod model;
pub mod train;

pub use fit::{FitBench, FitBenchRow};
pub use fit_pass::{FitPassBench, FitPassBenchRow};
pub use forward::{ForwardBench, ForwardBenchRow};
pub use model::{bench_decoder_config, BenchModel};
pub use train::{TrainBench, TrainBenchRow};

//! The `ipa` subcommands: each one's clap `Args` struct is its job. They parse, call the
//! library pipeline and print; they hold no logic of their own.

pub mod bench;
pub mod export;
pub mod generate;
pub mod instruct;
pub mod params;
pub mod quickstart;
pub mod report;
pub mod vtab;
pub mod wordnet;

use std::path::PathBuf;
use std::process::ExitCode;

use burn_ipa::backend::{run_on, BackendJob, BackendKind};
use burn_ipa::pipelines::out_dir::Existing;
use burn_ipa::train::Monitor;
use burn_ipa::Result;
use clap::Args;

/// Exit status of a run stopped on request (Ctrl-C): 128 + SIGINT, as shells expect.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Where to compute.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// Compute backend (each must be compiled in: features flex, ndarray, wgpu, cuda). flex is
    /// burn's own CPU backend and the faster one here; ndarray is burn's legacy CPU backend.
    #[arg(long, value_enum, default_value = "flex")]
    pub backend: BackendKind,
    /// Device ordinal of the backend (GPUs; CPU backends have only device 0).
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Create weights, activations and adapters in bf16 (GPU backends; losses and projector
    /// statistics still compute in f32).
    #[arg(long)]
    pub bf16: bool,
}

impl BackendArgs {
    /// Runs `job` on the chosen backend and device, in bf16 if asked.
    pub fn run<J: BackendJob>(&self, job: J) -> Result<J::Output> {
        if self.bf16 {
            run_on(self.backend, self.device, burn_ipa::backend::Bf16(job))
        } else {
            run_on(self.backend, self.device, job)
        }
    }
}

/// The output folder and what to do when it is not empty.
#[derive(Args, Debug, Clone)]
pub struct OutArgs {
    /// Output folder (created if needed; locked while the command runs).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace what the output folder holds (by default a non-empty folder is refused).
    #[arg(long)]
    pub overwrite: bool,
}

impl OutArgs {
    /// The policy for a command that cannot resume.
    pub fn existing(&self) -> Existing {
        if self.overwrite {
            Existing::Overwrite
        } else {
            Existing::Refuse
        }
    }
}

/// Progress display.
#[derive(Args, Debug, Clone)]
pub struct ProgressArgs {
    /// Do not show progress bars.
    #[arg(long)]
    pub quiet: bool,
}

impl ProgressArgs {
    /// Bars unless `--quiet`.
    pub fn monitor(&self) -> Monitor {
        Monitor::bars_if(!self.quiet)
    }
}

/// What a subcommand returns to the shell.
pub fn exit_code(stopped_early: bool) -> ExitCode {
    if stopped_early {
        ExitCode::from(EXIT_INTERRUPTED)
    } else {
        ExitCode::SUCCESS
    }
}

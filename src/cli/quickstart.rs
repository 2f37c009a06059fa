//! `ipa quickstart`: the whole method on the bundled tiny base, with no download.

use std::path::PathBuf;
use std::process::ExitCode;

use burn::tensor::backend::Backend;
use burn_ipa::backend::BackendJob;
use burn_ipa::pipelines::out_dir::Existing;
use burn_ipa::quickstart::{format_table, run_quickstart, QuickstartConfig, VariantResult};
use burn_ipa::Result;
use clap::Args;

use super::BackendArgs;

/// Options of `ipa quickstart` (unset ones take the quickstart's own settings).
#[derive(Args, Debug, Clone)]
pub struct QuickstartCmd {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Output folder (a folder holding a quickstart with the same settings is replaced;
    /// anything else is refused without --overwrite).
    #[arg(long, default_value = "runs/quickstart")]
    pub out: PathBuf,
    /// Replace what the output folder holds.
    #[arg(long)]
    pub overwrite: bool,
    /// A few-second version (what the test suite runs).
    #[arg(long)]
    pub reduced: bool,
    /// Use this base model folder instead of the embedded one.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Projector fit algorithm: ipca, rsvd, gha, covariance [default: ipca].
    #[arg(long)]
    pub fit_algorithm: Option<String>,
    /// Training epochs [default: 3, or 1 with --reduced].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Peak learning rate [default: 5e-3].
    #[arg(long, allow_negative_numbers = true)]
    pub learning_rate: Option<f64>,
    /// Adapter rank, with LoRA's alpha at 2·rank [default: 8, or 4 with --reduced].
    #[arg(long)]
    pub rank: Option<usize>,
    /// Do not show progress bars.
    #[arg(long)]
    pub quiet: bool,
}

impl QuickstartCmd {
    /// The defaults when `ipa` runs without a subcommand.
    pub fn default_run() -> Self {
        Self {
            backend: BackendArgs {
                backend: burn_ipa::backend::BackendKind::Flex,
                device: 0,
                bf16: false,
            },
            out: PathBuf::from("runs/quickstart"),
            overwrite: false,
            reduced: false,
            base: None,
            fit_algorithm: None,
            epochs: None,
            learning_rate: None,
            rank: None,
            quiet: false,
        }
    }

    /// The quickstart's settings with what the options set.
    pub fn config(&self) -> QuickstartConfig {
        let mut config = if self.reduced {
            QuickstartConfig::reduced()
        } else {
            QuickstartConfig::full()
        };
        config.base = self.base.clone();
        if let Some(a) = &self.fit_algorithm {
            config.fit.algorithm = a.clone();
        }
        if let Some(e) = self.epochs {
            config.train.epochs = e;
        }
        if let Some(lr) = self.learning_rate {
            config.train.learning_rate = lr;
        }
        if let Some(r) = self.rank {
            config = config.with_rank(r);
        }
        config
    }

    /// Runs the quickstart and prints its table.
    pub fn run(self) -> Result<ExitCode> {
        let start = std::time::Instant::now();
        let backend = self.backend.clone();
        let out = self.out.clone();
        let rows = backend.run(self)?;
        println!("{}", format_table(&rows));
        println!(
            "quickstart took {:.1}s on {}; adapters, predictions and metrics are in {}",
            start.elapsed().as_secs_f64(),
            backend.backend.name(),
            out.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

impl BackendJob for QuickstartCmd {
    type Output = Vec<VariantResult>;
    fn run<B: Backend>(self, device: B::Device, _: &str) -> Result<Self::Output> {
        let existing = if self.overwrite {
            Existing::Overwrite
        } else {
            Existing::Refuse
        };
        run_quickstart::<B>(&self.config(), &self.out, &device, !self.quiet, existing)
    }
}

//! `ipa report`: tables and plots of run folders.

use std::path::PathBuf;
use std::process::ExitCode;

use burn_ipa::report::write_report;
use burn_ipa::Result;
use clap::Args;

/// Options of `ipa report`.
#[derive(Args, Debug, Clone)]
pub struct ReportCmd {
    /// Run folders (`ipa train` outputs, with their evaluation in `<run>/eval/`, and `ipa eval`
    /// outputs alone for zero-shot rows), or folders holding them (searched 3 levels deep).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where report.md, report.json and the PNGs go.
    #[arg(long)]
    pub out: PathBuf,
    /// TrueType font for the plots' text [default: a usual system font such as DejaVu Sans].
    #[arg(long)]
    pub font: Option<PathBuf>,
    /// Write the tables only.
    #[arg(long)]
    pub no_plots: bool,
    /// Also copy every evaluated run's records (configs, metrics.csv, train report, accuracy,
    /// predictions, and its projector cosines in projector_cosine.json) into this folder, in
    /// the runs' layout and without their weights: a few hundred KiB to keep or commit, that
    /// `ipa report` reads like the runs. Added to on every call; a record already there with
    /// other contents is refused.
    #[arg(long)]
    pub archive: Option<PathBuf>,
}

impl ReportCmd {
    /// Writes the report and prints its table.
    pub fn run(self) -> Result<ExitCode> {
        if let Some(dest) = &self.archive {
            let runs = burn_ipa::report::runs::find_runs(&self.runs)?;
            let written = burn_ipa::report::archive::archive_runs(&runs, &self.runs, dest)?;
            println!("archived {} files into {}", written.len(), dest.display());
        }
        let (variants, files) =
            write_report(&self.runs, &self.out, !self.no_plots, self.font.as_deref())?;
        print!("{}", burn_ipa::report::table::markdown_table(&variants));
        println!(
            "{} variants; {} and {} plots in {}",
            variants.len(),
            files.markdown.display(),
            files.plots.len(),
            self.out.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

//! `ipa report`: the runs of an experiment grid as a table (mean ± std over seeds, per
//! variant) and plots.
//!
//! * [`runs`]: reading run folders (`train_config.json`, `metrics.csv`, `eval/accuracy.json`,
//!   `adapter_init/` and `adapter/`) and evaluations alone (a base model's zero-shot run);
//! * [`table`]: variants (runs equal but for the seed), their statistics, the Markdown table;
//! * [`archive`]: the runs' records without their weights, to keep or commit;
//! * [`plots`]: PNGs of the loss curves, accuracy against rank and fit fraction, and how far
//!   each trained projector moved from its initialisation.

pub mod archive;
pub mod plots;
pub mod runs;
pub mod table;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::adapter::write_atomic;
use crate::{Error, Result};

/// What [`write_report`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct ReportFiles {
    /// `report.md`.
    pub markdown: PathBuf,
    /// `report.json`.
    pub json: PathBuf,
    /// The plots written (those with something to show).
    pub plots: Vec<PathBuf>,
}

/// Reads every run under `roots`, groups them into variants and writes `report.md`,
/// `report.json` and (unless `plots` is false) the PNG plots into `out`. `font` is the
/// TrueType font for the plots' text (default: a usual system font).
pub fn write_report(
    roots: &[PathBuf],
    out: &Path,
    plots: bool,
    font: Option<&Path>,
) -> Result<(Vec<table::Variant>, ReportFiles)> {
    let runs = runs::find_runs(roots)?;
    let variants = table::group(&runs);
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    let markdown = out.join("report.md");
    let mut text = String::from("# Results\n\n");
    text.push_str(&table::markdown_table(&variants));
    text.push('\n');
    let mut written = Vec::new();
    if plots {
        plots::use_font(font)?;
        let plot = |name: &str| out.join(name);
        if plots::loss_curves(&variants, &plot("loss_curves.png"))? {
            written.push(plot("loss_curves.png"));
        }
        if plots::accuracy_against(
            &variants,
            |k| k.rank.map(|r| r as f64),
            |k| k.label_without_rank(),
            "Accuracy against the rank",
            "rank r",
            &plot("accuracy_vs_rank.png"),
        )? {
            written.push(plot("accuracy_vs_rank.png"));
        }
        if plots::accuracy_against(
            &variants,
            |k| k.fit_fraction.map(|f| 100.0 * f),
            |k| k.label_without_fraction(),
            "Accuracy against the share of the training set the fit reads",
            "fit fraction (%)",
            &plot("accuracy_vs_fit_fraction.png"),
        )? {
            written.push(plot("accuracy_vs_fit_fraction.png"));
        }
        if plots::projector_cosine_bars(&variants, &plot("projector_cosine.png"))? {
            written.push(plot("projector_cosine.png"));
        }
        for p in &written {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            text.push_str(&format!("![{name}]({name})\n\n"));
        }
    }
    write_atomic(&markdown, text.as_bytes())?;
    let json = out.join("report.json");
    let bytes = serde_json::to_vec_pretty(&variants)
        .map_err(|e| Error::State(format!("serialising the report: {e}")))?;
    write_atomic(&json, &bytes)?;
    Ok((
        variants,
        ReportFiles {
            markdown,
            json,
            plots: written,
        },
    ))
}

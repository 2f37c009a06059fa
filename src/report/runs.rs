//! Reading the folders `ipa train` and `ipa eval` leave: settings, metrics, accuracy, and how
//! far each adapter's projector moved from where it started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use serde_json::Value;

use super::archive::PROJECTOR_COSINE_FILE;
use crate::adapter::ADAPTER_WEIGHTS_FILE;
use crate::pipelines::instruct::{
    ADAPTER_DIR, EVAL_CONFIG_FILE, INIT_ADAPTER_DIR, TRAIN_CONFIG_FILE, TRAIN_REPORT_FILE,
};
use crate::{Error, Result};

/// One training run (with its evaluation when there is one), or an evaluation alone (a base
/// model's zero-shot accuracy).
#[derive(Clone, Debug)]
pub struct RunRecord {
    /// The run's folder.
    pub dir: PathBuf,
    /// `settings` of `train_config.json` (or `eval_config.json` for an evaluation alone).
    pub settings: Value,
    /// The resolved adapter (`adapter` of `train_config.json`), if the run trained one.
    pub adapter: Option<Value>,
    /// Whether this is an evaluation without training.
    pub eval_only: bool,
    /// `train_report.json`, when the run finished.
    pub report: Option<Value>,
    /// `(step, training loss)` of `metrics.csv`.
    pub losses: Vec<(usize, f64)>,
    /// Accuracy per task and `average`, in [0, 1].
    pub accuracy: Option<BTreeMap<String, f64>>,
    /// Per adapted layer, the cosine similarity between the trained projector and its
    /// initial value (`adapter_init/`), when both are there.
    pub projector_cosine: Vec<(String, f64)>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("not valid JSON: {e}")))
}

/// `(step, loss)` of a `metrics.csv`.
fn read_losses(path: &Path) -> Result<Vec<(usize, f64)>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    text.lines()
        .skip(1)
        .enumerate()
        .map(|(i, line)| {
            let mut f = line.split(',');
            let bad = || {
                Error::file(
                    path,
                    format!("line {}: expected step,epoch,loss,...", i + 2),
                )
            };
            let step = f.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
            f.next();
            let loss = f.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
            Ok((step, loss))
        })
        .collect()
}

/// The f32 tensors of an adapter file by name.
fn adapter_tensors(dir: &Path) -> Result<BTreeMap<String, Vec<f32>>> {
    let path = dir.join(ADAPTER_WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::file(&path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(&path, format!("not a safetensors file: {e}")))?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = crate::adapter::decode_floats(&view).map_err(|m| Error::Tensor {
                path: path.clone(),
                tensor: name.clone(),
                message: m,
            })?;
            Ok((name, values))
        })
        .collect()
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64, *y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}

/// Per layer (the projector's tensor name without `.lora_A.weight`), the cosine similarity of
/// the trained projector to its initial value; an archived run (no adapters) keeps them in
/// `projector_cosine.json`.
fn projector_cosines(run: &Path) -> Result<Vec<(String, f64)>> {
    let (init, last) = (run.join(INIT_ADAPTER_DIR), run.join(ADAPTER_DIR));
    if !init.join(ADAPTER_WEIGHTS_FILE).is_file() || !last.join(ADAPTER_WEIGHTS_FILE).is_file() {
        let kept = run.join(PROJECTOR_COSINE_FILE);
        if kept.is_file() {
            let text = std::fs::read_to_string(&kept).map_err(|e| Error::file(&kept, e))?;
            return serde_json::from_str(&text).map_err(|e| {
                Error::file(&kept, format!("not a list of [layer, cosine] pairs: {e}"))
            });
        }
        return Ok(Vec::new());
    }
    let (a, b) = (adapter_tensors(&init)?, adapter_tensors(&last)?);
    Ok(a.iter()
        .filter_map(|(name, v0)| {
            let layer = name.strip_suffix(".lora_A.weight")?;
            Some((layer.to_string(), cosine(v0, b.get(name)?)))
        })
        .collect())
}

/// The accuracy of a run: `eval/accuracy.json` in its folder, or `accuracy.json` itself.
fn read_accuracy(dir: &Path) -> Result<Option<BTreeMap<String, f64>>> {
    for path in [
        dir.join("eval").join("accuracy.json"),
        dir.join("accuracy.json"),
    ] {
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e))?;
            return serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::file(&path, format!("not an accuracy map: {e}")));
        }
    }
    Ok(None)
}

/// Reads the run in `dir`: a training run (`train_config.json`) or an evaluation alone
/// (`eval_config.json` with `accuracy.json`).
pub fn read_run(dir: &Path) -> Result<RunRecord> {
    let train = dir.join(TRAIN_CONFIG_FILE);
    if train.is_file() {
        let config = read_json(&train)?;
        let report_path = dir.join(TRAIN_REPORT_FILE);
        return Ok(RunRecord {
            dir: dir.to_path_buf(),
            settings: config.get("settings").cloned().unwrap_or(Value::Null),
            adapter: config.get("adapter").filter(|a| !a.is_null()).cloned(),
            eval_only: false,
            report: if report_path.is_file() {
                Some(read_json(&report_path)?)
            } else {
                None
            },
            losses: read_losses(&dir.join("metrics.csv"))?,
            accuracy: read_accuracy(dir)?,
            projector_cosine: projector_cosines(dir)?,
        });
    }
    let eval = dir.join(EVAL_CONFIG_FILE);
    if eval.is_file() && dir.join("accuracy.json").is_file() {
        let config = read_json(&eval)?;
        return Ok(RunRecord {
            dir: dir.to_path_buf(),
            settings: config.get("settings").cloned().unwrap_or(Value::Null),
            adapter: None,
            eval_only: true,
            report: None,
            losses: Vec::new(),
            accuracy: read_accuracy(dir)?,
            projector_cosine: Vec::new(),
        });
    }
    Err(Error::file(
        dir,
        format!("holds neither {TRAIN_CONFIG_FILE} nor {EVAL_CONFIG_FILE} with accuracy.json"),
    ))
}

/// Every run under `roots` (each a run folder or a folder of runs, searched 3 levels deep).
/// An evaluation folder inside a training run (`<run>/eval/`) belongs to the run.
pub fn find_runs(roots: &[PathBuf]) -> Result<Vec<RunRecord>> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
        if dir.join(TRAIN_CONFIG_FILE).is_file()
            || (dir.join(EVAL_CONFIG_FILE).is_file() && dir.join("accuracy.json").is_file())
        {
            out.push(dir.to_path_buf());
            return Ok(());
        }
        if depth == 0 {
            return Ok(());
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::file(dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        entries.sort();
        for entry in entries {
            walk(&entry, depth - 1, out)?;
        }
        Ok(())
    }
    let mut dirs = Vec::new();
    for root in roots {
        if !root.is_dir() {
            return Err(Error::file(root, "is not a folder"));
        }
        walk(root, 3, &mut dirs)?;
    }
    let runs = dirs
        .iter()
        .map(|d| read_run(d))
        .collect::<Result<Vec<_>>>()?;
    if runs.is_empty() {
        return Err(Error::Config(format!(
            "no run under {} (folders with {TRAIN_CONFIG_FILE}, or {EVAL_CONFIG_FILE} with \
             accuracy.json)",
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(runs)
}

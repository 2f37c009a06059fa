//! Keeping a grid's records without its weights: each run's settings, metrics, report,
//! evaluation and projector cosines copied into another folder, small enough to commit, that
//! `ipa report` reads as it reads the runs themselves.

use std::path::{Path, PathBuf};

use super::runs::RunRecord;
use crate::adapter::write_atomic;
use crate::pipelines::instruct::{EVAL_CONFIG_FILE, TRAIN_CONFIG_FILE, TRAIN_REPORT_FILE};
use crate::{Error, Result};

/// The file an archived run keeps its projector cosines in (its adapters are left behind).
pub const PROJECTOR_COSINE_FILE: &str = "projector_cosine.json";

/// The record files of a run folder, relative to it.
const RECORD_FILES: &[&str] = &[
    TRAIN_CONFIG_FILE,
    TRAIN_REPORT_FILE,
    "metrics.csv",
    EVAL_CONFIG_FILE,
    "accuracy.json",
    "predictions.jsonl",
    "eval/eval_config.json",
    "eval/accuracy.json",
    "eval/predictions.jsonl",
];

/// Writes `bytes` to `path` unless it holds them already; a file with other contents is
/// refused (an archive is added to, never overwritten).
fn put(path: &Path, bytes: &[u8]) -> Result<bool> {
    if path.exists() {
        let old = std::fs::read(path).map_err(|e| Error::file(path, e))?;
        if old == bytes {
            return Ok(false);
        }
        return Err(Error::file(
            path,
            "already archived with other contents (a rerun of the same run?); move the \
             archived copy away to replace it",
        ));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::file(parent, e))?;
    }
    write_atomic(path, bytes)?;
    Ok(true)
}

/// The folder of `run` relative to the root it was found under.
fn relative_to_root<'a>(run: &'a Path, roots: &[PathBuf]) -> Option<&'a Path> {
    roots
        .iter()
        .filter_map(|root| run.strip_prefix(root).ok())
        .min_by_key(|rel| rel.components().count())
}

/// Copies the records of the finished `runs` (those with an accuracy) found under `roots` into
/// `dest`, in the same layout, with their projector cosines; returns the files written.
/// Unfinished runs are left out; files already archived with the same contents are skipped.
pub fn archive_runs(runs: &[RunRecord], roots: &[PathBuf], dest: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for run in runs.iter().filter(|r| r.accuracy.is_some()) {
        let rel = relative_to_root(&run.dir, roots).unwrap_or(Path::new(""));
        let rel = if rel.as_os_str().is_empty() {
            // A root that is itself a run: keep its folder name.
            run.dir.file_name().map(PathBuf::from).unwrap_or_default()
        } else {
            rel.to_path_buf()
        };
        let target = dest.join(&rel);
        if target.starts_with(&run.dir) {
            return Err(Error::file(
                dest,
                format!("is inside the run {} it would archive", run.dir.display()),
            ));
        }
        for name in RECORD_FILES {
            let src = run.dir.join(name);
            if !src.is_file() {
                continue;
            }
            let bytes = std::fs::read(&src).map_err(|e| Error::file(&src, e))?;
            if put(&target.join(name), &bytes)? {
                written.push(target.join(name));
            }
        }
        if !run.projector_cosine.is_empty() {
            let bytes = serde_json::to_vec_pretty(&run.projector_cosine)
                .map_err(|e| Error::State(format!("serialising cosines: {e}")))?;
            let path = target.join(PROJECTOR_COSINE_FILE);
            if put(&path, &bytes)? {
                written.push(path);
            }
        }
    }
    Ok(written)
}

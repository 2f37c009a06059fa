//! What a Learner run keeps on disk, and which windows it keeps.
//!
//! burn-train's file checkpointer writes `model-<w>`, `optim-<w>` and `scheduler-<w>` into
//! `<out>/learner/checkpoint/` at the end of window `w`; with [`AdapterOnly`] the model file
//! holds the adapters only. [`KeepWindows`] — the run's checkpointing strategy — keeps the
//! last two windows (the newest, and one to fall back on if it was cut short) and the window
//! of the best validation, and deletes the others. It waits until the run log has closed the
//! window ([`RunLog`]): burn-train computes metrics on another thread, so a strategy that
//! queried its event store right away could miss the window's own validation.
//!
//! [`AdapterOnly`]: super::AdapterOnly

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::train::checkpoint::{CheckpointingAction, CheckpointingStrategy};
use burn::train::metric::store::EventStoreClient;
use serde::{Deserialize, Serialize};

use super::metrics::{RunLog, WindowRecord};

/// burn-train's folder inside a run's output folder (its checkpoints and metric logs).
pub const LEARNER_DIR: &str = "learner";

/// The recorder of the checkpoints: burn's named MessagePack in full precision, so a resume
/// continues from the exact values.
pub type CheckpointRecorder = NamedMpkFileRecorder<FullPrecisionSettings>;

/// burn-train's folder of the run in `out_dir`.
pub fn learner_dir(out_dir: &Path) -> PathBuf {
    out_dir.join(LEARNER_DIR)
}

/// The checkpoint folder of the run in `out_dir`.
pub fn checkpoint_dir(out_dir: &Path) -> PathBuf {
    learner_dir(out_dir).join("checkpoint")
}

/// The file of a checkpoint part (`model`, `optim`, `scheduler`) of window `window`.
pub fn checkpoint_file(out_dir: &Path, part: &str, window: usize) -> PathBuf {
    checkpoint_dir(out_dir).join(format!("{part}-{window}.mpk"))
}

/// The windows with a model checkpoint in `out_dir`, oldest first.
pub fn checkpoint_windows(out_dir: &Path) -> BTreeSet<usize> {
    std::fs::read_dir(checkpoint_dir(out_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().to_string();
            name.strip_prefix("model-")?
                .strip_suffix(".mpk")?
                .parse()
                .ok()
        })
        .collect()
}

/// Deletes every part of window `window`'s checkpoint.
pub(crate) fn delete_checkpoint(out_dir: &Path, window: usize) {
    for part in ["model", "optim", "scheduler"] {
        let _ = std::fs::remove_file(checkpoint_file(out_dir, part, window));
    }
}

/// Which window's adapters a run keeps besides the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepBest {
    /// The last window only.
    Last,
    /// The window of the lowest validation loss (the earliest among equals).
    LowestLoss,
    /// The window of the highest validation accuracy (the earliest among equals).
    HighestAccuracy,
}

/// The best window of `windows` under `keep` (`None` for [`KeepBest::Last`] or when no
/// window validated).
pub fn best_window(windows: &[WindowRecord], keep: KeepBest) -> Option<&WindowRecord> {
    let mut best: Option<(&WindowRecord, f64)> = None;
    for w in windows {
        let score = match keep {
            KeepBest::Last => return None,
            KeepBest::LowestLoss => w.valid_loss.map(|l| -l),
            KeepBest::HighestAccuracy => w.valid_correct.map(|(c, t)| c as f64 / t.max(1) as f64),
        };
        if let Some(score) = score {
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((w, score));
            }
        }
    }
    best.map(|(w, _)| w)
}

/// The run's checkpointing strategy: see the [module documentation](self).
pub(crate) struct KeepWindows {
    log: RunLog,
    keep: KeepBest,
    saved: BTreeSet<usize>,
}

impl KeepWindows {
    /// A strategy that finds the windows `saved` on disk.
    pub(crate) fn new(log: RunLog, keep: KeepBest, saved: BTreeSet<usize>) -> Self {
        Self { log, keep, saved }
    }
}

/// Kept windows besides the best.
const KEEP_LAST: usize = 2;

/// How long the strategy waits for the metrics thread to close a window.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(600);

impl CheckpointingStrategy for KeepWindows {
    fn checkpointing(&mut self, epoch: usize, _: &EventStoreClient) -> Vec<CheckpointingAction> {
        if !self.log.wait_closed(epoch, CLOSE_TIMEOUT) {
            // Cut short (a stop during its validation) or its log could not be written: the
            // previous checkpoint stays the one to resume from.
            return Vec::new();
        }
        self.saved.insert(epoch);
        let log = self.log.log();
        let best = best_window(&log.windows, self.keep).map(|w| w.window);
        let last: Vec<usize> = self.saved.iter().rev().take(KEEP_LAST).copied().collect();
        let mut actions = vec![CheckpointingAction::Save];
        let drop: Vec<usize> = self
            .saved
            .iter()
            .copied()
            .filter(|w| !last.contains(w) && Some(*w) != best)
            .collect();
        for w in drop {
            self.saved.remove(&w);
            actions.push(CheckpointingAction::Delete(w));
        }
        actions
    }
}

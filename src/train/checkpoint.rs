//! Step-level training checkpoints that survive interruption.
//!
//! A checkpoint is a folder `checkpoints/step-<N>/` holding
//! * `trainable.safetensors`: the parameters the optimizer updates plus every adapter tensor
//!   (a fitted, frozen projector too), by burn module path — never the frozen base model;
//! * `optimizer.bin`: the optimizer's state (burn record, full precision), keyed by parameter
//!   id, with `param_ids.json` mapping those ids to module paths so a fresh process, whose
//!   parameters have new ids, can re-key it;
//! * `state.json`: the step reached, the metrics so far and the run's fingerprint;
//! * `manifest.json`: the SHA-256 of each file above, checked before anything is decoded, so
//!   a truncated or bit-flipped file is reported by name instead of reaching a decoder.
//!
//! It is written into `step-<N>.tmp/` and renamed; then the file `checkpoints/latest` is
//! replaced atomically. An interruption at any point leaves the previous checkpoint intact,
//! and the previous checkpoint is kept beside the newest: a resume whose latest checkpoint
//! fails its manifest falls back to it, with a warning.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Optimizer, SimpleOptimizer};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use serde::{Deserialize, Serialize};

use super::fingerprint::file_sha256;
use crate::adapter::write_atomic;
use crate::{Error, Result};

const TRAINABLE_FILE: &str = "trainable.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.bin";
const IDS_FILE: &str = "param_ids.json";
const STATE_FILE: &str = "state.json";
const MANIFEST_FILE: &str = "manifest.json";
const LATEST_FILE: &str = "latest";
/// Checkpoints kept: the newest and the one before it.
const KEPT: usize = 2;

/// One logged optimizer step.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    /// Optimizer steps done (1-based).
    pub step: usize,
    /// Epoch (0-based) the step belongs to.
    pub epoch: usize,
    /// Mean training loss over the step's micro-batches.
    pub loss: f64,
    /// Learning rate the step used.
    pub lr: f64,
    /// Validation loss, when the step ran a validation.
    pub valid_loss: Option<f64>,
    /// Share of correct predictions over the step's micro-batches, for tasks that classify.
    #[serde(default)]
    pub accuracy: Option<f64>,
    /// Global L2 norm of the step's mean gradient, before clipping.
    #[serde(default)]
    pub grad_norm: Option<f64>,
}

/// What `state.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimizer steps done.
    pub step: usize,
    /// Identifies the run (config, model, data); a resume must match it.
    pub fingerprint: serde_json::Value,
    /// Metrics of every step so far.
    pub history: Vec<StepRecord>,
    /// Wall time spent in training steps up to this checkpoint, in seconds.
    #[serde(default)]
    pub elapsed_seconds: f64,
}

/// The checkpoint folder of a run's output directory.
pub fn checkpoints_dir(out_dir: &Path) -> PathBuf {
    out_dir.join("checkpoints")
}

/// Paths (and current ids) of the parameters a checkpoint keeps: those in `trainable` and all
/// adapter tensors.
fn kept_params<B: AutodiffBackend, M: ModuleSnapshot<B>>(
    model: &M,
    trainable: &HashSet<ParamId>,
) -> BTreeMap<String, ParamId> {
    model
        .collect(None, None, false)
        .into_iter()
        .filter_map(|s| {
            let path = s.full_path();
            let id = s.tensor_id?;
            (trainable.contains(&id) || is_adapter_tensor(&path)).then_some((path, id))
        })
        .collect()
}

fn is_adapter_tensor(path: &str) -> bool {
    ["adapter.projector", "adapter.up", "adapter.magnitude"]
        .iter()
        .any(|s| path == *s || path.ends_with(&format!(".{s}")))
}

/// The optimizer record of a burn "simple" optimizer (AdamW, SGD, ...): state by parameter id.
pub type OptimRecord<O, M, B> = <OptimizerAdaptor<O, M, B> as Optimizer<M, B>>::Record;

/// Saves a checkpoint of `model` and `optim` after `state.step` optimizer steps, then drops
/// the older ones. Returns the checkpoint's folder.
pub fn save_checkpoint<B, M, O>(
    out_dir: &Path,
    model: &M,
    optim: &OptimizerAdaptor<O, M, B>,
    state: &CheckpointState,
) -> Result<PathBuf>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + ModuleSnapshot<B>,
    O: SimpleOptimizer<B::InnerBackend>,
{
    let root = checkpoints_dir(out_dir);
    let name = format!("step-{}", state.step);
    let dir = root.join(&name);
    let tmp = root.join(format!("{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;

    let record = optim.to_record();
    let trainable: HashSet<ParamId> = record.keys().copied().collect();
    let kept = kept_params(model, &trainable);
    let paths: Vec<String> = kept.keys().cloned().collect();
    let weights = tmp.join(TRAINABLE_FILE);
    let mut store = SafetensorsStore::from_file(&weights).with_full_paths(paths.clone());
    model
        .save_into(&mut store)
        .map_err(|e| Error::file(&weights, format!("cannot write the parameters: {e}")))?;

    let ids: BTreeMap<String, String> = kept
        .iter()
        .filter(|(_, id)| trainable.contains(id))
        .map(|(path, id)| (path.clone(), id.serialize()))
        .collect();
    write_json(&tmp.join(IDS_FILE), &ids)?;
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = Recorder::<B>::record(&recorder, record, ())
        .map_err(|e| Error::State(format!("serialising the optimizer state: {e:?}")))?;
    write_atomic(&tmp.join(OPTIMIZER_FILE), &bytes)?;
    write_json(&tmp.join(STATE_FILE), state)?;
    let mut manifest = BTreeMap::new();
    for name in [TRAINABLE_FILE, OPTIMIZER_FILE, IDS_FILE, STATE_FILE] {
        manifest.insert(name.to_string(), file_sha256(&tmp.join(name))?);
    }
    write_json(&tmp.join(MANIFEST_FILE), &manifest)?;
    sync_dir(&tmp);

    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::file(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::file(&dir, e))?;
    write_atomic(&root.join(LATEST_FILE), name.as_bytes())?;
    // Older checkpoints go only once the new one is in place; the one before it stays as a
    // fallback.
    for (_, old) in checkpoint_dirs(&root).into_iter().skip(KEPT) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(dir)
}

/// The complete `step-<N>` folders under `root`, newest first.
fn checkpoint_dirs(root: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse::<usize>().ok()?;
            entry.path().is_dir().then(|| (step, entry.path()))
        })
        .collect();
    found.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    found
}

/// Checks every file of a checkpoint against its `manifest.json`; the error names the file.
pub fn verify_checkpoint(dir: &Path) -> Result<()> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path)
        .map_err(|e| Error::file(&manifest_path, format!("cannot read the manifest: {e}")))?;
    let manifest: BTreeMap<String, String> = serde_json::from_str(&text)
        .map_err(|e| Error::file(&manifest_path, format!("damaged manifest: {e}")))?;
    for name in [TRAINABLE_FILE, OPTIMIZER_FILE, IDS_FILE, STATE_FILE] {
        let path = dir.join(name);
        let expected = manifest
            .get(name)
            .ok_or_else(|| Error::file(&manifest_path, format!("does not list `{name}`")))?;
        if !path.is_file() {
            return Err(Error::file(&path, "missing from the checkpoint"));
        }
        let actual = file_sha256(&path)?;
        if &actual != expected {
            return Err(Error::file(
                &path,
                format!(
                    "damaged: its SHA-256 is {actual}, the checkpoint's manifest says {expected}                      ({} bytes on disk; truncated or overwritten?)",
                    std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
                ),
            ));
        }
    }
    Ok(())
}

/// The folder of the checkpoint to resume from under `out_dir`, if any: the latest one when
/// it passes [`verify_checkpoint`], otherwise the newest earlier one that does (with a
/// warning on standard error naming the damaged file). An error when checkpoints exist and
/// none is intact.
pub fn latest_checkpoint(out_dir: &Path) -> Result<Option<PathBuf>> {
    let root = checkpoints_dir(out_dir);
    let latest = root.join(LATEST_FILE);
    let mut candidates: Vec<PathBuf> = Vec::new();
    if latest.exists() {
        let name = std::fs::read_to_string(&latest).map_err(|e| Error::file(&latest, e))?;
        candidates.push(root.join(name.trim()));
    }
    for (_, dir) in checkpoint_dirs(&root) {
        if !candidates.contains(&dir) {
            candidates.push(dir);
        }
    }
    let mut first_error: Option<Error> = None;
    for dir in candidates {
        match verify_checkpoint(&dir) {
            Ok(()) => {
                if let Some(e) = &first_error {
                    eprintln!(
                        "warning: {e}\nwarning: resuming from the previous checkpoint, {}",
                        dir.display()
                    );
                }
                return Ok(Some(dir));
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(Error::State(format!(
            "no intact checkpoint to resume from: {e}"
        ))),
        None => Ok(None),
    }
}

/// Reads a checkpoint's `state.json`.
pub fn read_state(dir: &Path) -> Result<CheckpointState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::file(&path, format!("not a checkpoint state: {e}")))
}

/// Loads a checkpoint into `model` (its kept parameters) and returns the optimizer record
/// re-keyed to the model's current parameter ids.
pub fn load_checkpoint<B, M, O>(
    dir: &Path,
    model: &mut M,
    device: &B::Device,
) -> Result<OptimRecord<O, M, B>>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + ModuleSnapshot<B>,
    O: SimpleOptimizer<B::InnerBackend>,
{
    verify_checkpoint(dir)?;
    let weights = dir.join(TRAINABLE_FILE);
    let mut store = SafetensorsStore::from_file(&weights)
        .allow_partial(true)
        .validate(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| Error::file(&weights, format!("{e}")))?;
    if let Some(err) = result.errors.first() {
        return Err(Error::file(&weights, format!("{err:?}")));
    }
    if let Some(unused) = result.unused.first() {
        return Err(Error::Tensor {
            path: weights,
            tensor: unused.clone(),
            message: "the model has no such parameter (checkpoint of another model?)".into(),
        });
    }

    let ids_path = dir.join(IDS_FILE);
    let text = std::fs::read_to_string(&ids_path).map_err(|e| Error::file(&ids_path, e))?;
    let saved: BTreeMap<String, String> = serde_json::from_str(&text)
        .map_err(|e| Error::file(&ids_path, format!("not a parameter-id map: {e}")))?;
    let current: HashMap<String, ParamId> = model
        .collect(None, None, false)
        .into_iter()
        .filter_map(|s| Some((s.full_path(), s.tensor_id?)))
        .collect();
    let mut rekey = HashMap::new();
    for (path, old) in &saved {
        let old = ParamId::try_deserialize(old)
            .ok_or_else(|| Error::file(&ids_path, format!("bad id for `{path}`")))?;
        let new = current.get(path).ok_or_else(|| Error::Tensor {
            path: ids_path.clone(),
            tensor: path.clone(),
            message: "the model has no such parameter".into(),
        })?;
        rekey.insert(old, *new);
    }
    let opt_path = dir.join(OPTIMIZER_FILE);
    let bytes = std::fs::read(&opt_path).map_err(|e| Error::file(&opt_path, e))?;
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let record: OptimRecord<O, M, B> = Recorder::<B>::load(&recorder, bytes, device)
        .map_err(|e| Error::file(&opt_path, format!("not an optimizer state: {e:?}")))?;
    record
        .into_iter()
        .map(|(old, state)| match rekey.get(&old) {
            Some(new) => Ok((*new, state)),
            None => Err(Error::file(
                &opt_path,
                format!(
                    "state for parameter {} that {IDS_FILE} does not name",
                    old.serialize()
                ),
            )),
        })
        .collect()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::State(format!("serialising {}: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

/// Flushes a directory's entries where the platform allows it.
fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

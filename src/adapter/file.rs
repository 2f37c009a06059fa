//! Adapter files: only the adapter weights, in safetensors, plus a JSON config.
//!
//! A directory holds `adapter_config.json` and `adapter_model.safetensors`. Tensor names follow
//! HF peft: `<layer path>.lora_A.weight` (`P`, `[r, d_in]`), `<layer path>.lora_B.weight`
//! (`B`, `[d_out, r]`) and `<layer path>.lora_magnitude_vector` (DoRA's `m`, `[d_out]`), where
//! the layer path is the burn module path of the [`AdaptedLinear`](super::AdaptedLinear).
//! Both files are written to temporary names and renamed, so a failure leaves no half file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, TensorData};
use burn_store::{ModuleSnapshot, PathFilter, TensorSnapshot};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::config::AdapterConfig;
use crate::{Error, Result};

/// File name of the adapter weights inside an adapter directory.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// File name of the adapter config inside an adapter directory.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
const FORMAT: &str = "burn-ipa-adapter";
const FORMAT_VERSION: u32 = 1;

/// The JSON written next to the adapter weights.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdapterFileConfig {
    /// Always `burn-ipa-adapter`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// The adapter configuration shared by every adapted layer.
    pub adapter: AdapterConfig,
    /// Adapted layers by module path, with their `[d_in, d_out]`.
    pub layers: BTreeMap<String, [usize; 2]>,
    /// Free-form provenance (base model, fit algorithm, ...).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// One adapter tensor in module-path and file-name terms.
struct Entry {
    /// Path of the burn parameter, e.g. `layers.0.q_proj.adapter.projector`.
    param_path: String,
    /// Name in the file, e.g. `layers.0.q_proj.lora_A.weight`.
    file_name: String,
    /// The adapted layer's path.
    layer: String,
    /// Stored transposed relative to burn's layout (`projector`, `up`).
    transposed: bool,
}

const PARAM_SUFFIXES: [(&str, &str, bool); 3] = [
    (".adapter.projector", ".lora_A.weight", true),
    (".adapter.up", ".lora_B.weight", true),
    (".adapter.magnitude", ".lora_magnitude_vector", false),
];

fn entry_for_param(param_path: &str) -> Option<Entry> {
    let dotted = format!(".{param_path}");
    PARAM_SUFFIXES.iter().find_map(|(param, file, transposed)| {
        let layer = dotted
            .strip_suffix(param)?
            .trim_start_matches('.')
            .to_string();
        let file_name = if layer.is_empty() {
            file.trim_start_matches('.').to_string()
        } else {
            format!("{layer}{file}")
        };
        Some(Entry {
            param_path: param_path.to_string(),
            file_name,
            layer,
            transposed: *transposed,
        })
    })
}

fn adapter_filter() -> PathFilter {
    PathFilter::new().with_regex(r"(^|\.)adapter\.(projector|up|magnitude)$")
}

/// Saves the adapter weights of every adapted layer in `model` to `dir` (created if needed).
///
/// `config` is the adapter configuration the layers were built with; `metadata` is stored as is.
pub fn save_adapter<B: Backend, M: Module<B>>(
    model: &M,
    config: &AdapterConfig,
    metadata: BTreeMap<String, String>,
    dir: &Path,
) -> Result<()> {
    let snapshots = model.collect(Some(adapter_filter()), None, false);
    if snapshots.is_empty() {
        return Err(Error::State("the model has no adapters to save".into()));
    }
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut layers = BTreeMap::new();
    for snap in &snapshots {
        let path = snap.full_path();
        let entry = entry_for_param(&path)
            .ok_or_else(|| Error::State(format!("unexpected adapter parameter `{path}`")))?;
        let data = snap
            .to_data()
            .map_err(|e| Error::State(format!("reading `{path}`: {e:?}")))?
            .convert::<f32>();
        let mut shape = data.shape.to_vec();
        let mut values = data
            .to_vec::<f32>()
            .map_err(|e| Error::State(format!("reading `{path}`: {e:?}")))?;
        if entry.transposed {
            values = transpose(&values, shape[0], shape[1]);
            shape.swap(0, 1);
            if path.ends_with(".projector") {
                // lora_A is [r, d_in]; record the layer's d_in.
                layers.entry(entry.layer.clone()).or_insert([0, 0])[0] = shape[1];
            } else {
                layers.entry(entry.layer.clone()).or_insert([0, 0])[1] = shape[0];
            }
        }
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((entry.file_name, shape, bytes));
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(StDtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::State(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let mut st_meta = std::collections::HashMap::new();
    st_meta.insert("format".to_string(), "pt".to_string());
    let bytes = safetensors::tensor::serialize(views, Some(st_meta))
        .map_err(|e| Error::State(format!("serialising adapter: {e}")))?;

    let file_config = AdapterFileConfig {
        format: FORMAT.into(),
        version: FORMAT_VERSION,
        adapter: config.clone(),
        layers,
        metadata,
    };
    let json = serde_json::to_vec_pretty(&file_config)
        .map_err(|e| Error::State(format!("serialising adapter config: {e}")))?;

    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    write_atomic(&dir.join(ADAPTER_WEIGHTS_FILE), &bytes)?;
    write_atomic(&dir.join(ADAPTER_CONFIG_FILE), &json)?;
    Ok(())
}

/// Reads an adapter directory's config.
pub fn read_adapter_config(dir: &Path) -> Result<AdapterFileConfig> {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e))?;
    let config: AdapterFileConfig =
        serde_json::from_str(&text).map_err(|e| Error::file(&path, e))?;
    if config.format != FORMAT {
        return Err(Error::file(
            &path,
            format!("field `format` is `{}`, expected `{FORMAT}`", config.format),
        ));
    }
    if config.version != FORMAT_VERSION {
        return Err(Error::file(
            &path,
            format!("unsupported adapter format version {}", config.version),
        ));
    }
    Ok(config)
}

/// Loads adapter weights from `dir` into a model whose adapters are already attached (with the
/// same configuration). Every adapter tensor of the model must be in the file with the same
/// shape and every tensor of the file must fit the model; otherwise the model is left unchanged
/// and the error names the offending tensor.
pub fn load_adapter<B: Backend, M: ModuleSnapshot<B>>(
    model: &mut M,
    dir: &Path,
) -> Result<AdapterFileConfig> {
    let config = read_adapter_config(dir)?;
    let path: PathBuf = dir.join(ADAPTER_WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::file(&path, e))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(&path, format!("not a valid safetensors file: {e}")))?;

    // What the model expects, by file name.
    let expected: BTreeMap<String, (Entry, Vec<usize>, DType, Vec<String>)> = model
        .collect(Some(adapter_filter()), None, false)
        .into_iter()
        .filter_map(|snap| {
            let entry = entry_for_param(&snap.full_path())?;
            let mut shape = snap.shape.to_vec();
            if entry.transposed {
                shape.swap(0, 1);
            }
            let containers = snap.container_stack.clone().unwrap_or_default();
            Some((
                entry.file_name.clone(),
                (entry, shape, snap.dtype, containers),
            ))
        })
        .collect();
    if expected.is_empty() {
        return Err(Error::State(
            "the model has no adapters attached to load into".into(),
        ));
    }
    for name in file.names() {
        if !expected.contains_key(name) {
            return Err(Error::Tensor {
                path: path.clone(),
                tensor: name.to_string(),
                message: "no adapted layer of the model has this tensor".into(),
            });
        }
    }
    let mut snapshots = Vec::with_capacity(expected.len());
    for (name, (entry, shape, dtype, containers)) in &expected {
        let view = file.tensor(name).map_err(|_| Error::Tensor {
            path: path.clone(),
            tensor: name.clone(),
            message: "missing from the file".into(),
        })?;
        if view.shape() != shape.as_slice() {
            return Err(Error::Tensor {
                path: path.clone(),
                tensor: name.clone(),
                message: format!(
                    "shape {:?} in the file, model expects {shape:?}",
                    view.shape()
                ),
            });
        }
        let mut values = decode_floats(&view).map_err(|message| Error::Tensor {
            path: path.clone(),
            tensor: name.clone(),
            message,
        })?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::Tensor {
                path: path.clone(),
                tensor: name.clone(),
                message: "contains NaN or infinite values".into(),
            });
        }
        let mut burn_shape = shape.clone();
        if entry.transposed {
            values = transpose(&values, shape[0], shape[1]);
            burn_shape.swap(0, 1);
        }
        let data = TensorData::new(values, burn_shape).convert_dtype(*dtype);
        let path_stack = entry.param_path.split('.').map(str::to_string).collect();
        snapshots.push(TensorSnapshot::from_data(
            data,
            path_stack,
            containers.clone(),
            ParamId::new(),
        ));
    }
    let count = snapshots.len();
    let result = model.apply(snapshots, Some(adapter_filter()), None, false);
    // Names and shapes were checked above, so a failure here is a bug, not bad input.
    if let Some(err) = result.errors.first() {
        return Err(Error::State(format!("applying adapter weights: {err}")));
    }
    if result.applied.len() != count {
        return Err(Error::State(format!(
            "applied {} of {count} adapter tensors (missing: {:?})",
            result.applied.len(),
            result.missing
        )));
    }
    Ok(config)
}

/// The values of a float safetensors tensor (f32, f16, bf16 or f64) as f32.
pub(crate) fn decode_floats(view: &TensorView<'_>) -> std::result::Result<Vec<f32>, String> {
    let data = view.data();
    Ok(match view.dtype() {
        StDtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        StDtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        StDtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        StDtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => return Err(format!("unsupported dtype {other:?}")),
    })
}

/// A row-major `[rows, cols]` matrix transposed to `[cols, rows]`.
pub(crate) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = values[i * cols + j];
        }
    }
    out
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// readers never see a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::file(path, "not a file path"))?
        .to_string_lossy()
        .to_string();
    let tmp = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::file(path, e));
    }
    Ok(())
}

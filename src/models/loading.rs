//! Loading HF checkpoints: `config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`, in f32, f16 or bf16, through burn-store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use burn_store::{
    KeyRemapper, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
    TensorSnapshot,
};

use super::config::DecoderConfig;
use super::llama::Decoder;
use crate::{Error, Result};

/// Converts every float tensor to the model's float type while loading (bf16 checkpoints into
/// an f32 model, say); the conversion happens on the host, tensor by tensor.
#[derive(Clone, Debug)]
struct CastTo(DType);

impl ModuleAdapter for CastTo {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        let target = self.0;
        if !snapshot.dtype.is_float() || snapshot.dtype == target {
            return snapshot.clone();
        }
        let source = snapshot.clone_data_fn();
        TensorSnapshot::from_closure(
            Rc::new(move || source().map(|data| data.convert_dtype(target))),
            target,
            snapshot.shape.clone(),
            snapshot.path_stack.clone().unwrap_or_default(),
            snapshot.container_stack.clone().unwrap_or_default(),
            snapshot.tensor_id.unwrap_or_default(),
        )
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// Keys in HF decoder checkpoints that the decoder does not hold: rotary buffers of old
/// checkpoints and the vision side of multimodal ones.
fn ignored_key(key: &str) -> bool {
    key.ends_with("rotary_emb.inv_freq")
        || key.starts_with("vision_tower.")
        || key.starts_with("multi_modal_projector.")
        || key.starts_with("model.vision_tower.")
        || key.starts_with("model.multi_modal_projector.")
}

/// HF key → burn module path for decoders.
pub fn decoder_remapper() -> KeyRemapper {
    KeyRemapper::from_patterns(vec![
        // Multimodal Gemma-3: the published layout and transformers-5's in-memory one.
        (r"^language_model\.model\.", "model."),
        (r"^model\.language_model\.", "model."),
        (r"^language_model\.lm_head\.", "lm_head."),
        // Linear layers are AdaptedLinear: their weights sit under `base`.
        (r"^(.*(?:_proj|lm_head))\.(weight|bias)$", "$1.base.$2"),
    ])
    .expect("static patterns compile")
}

/// The safetensors files of a model directory, from the shard index when there is one.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::file(&index, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::file(&index, e))?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::file(&index, "`weight_map` missing or not an object"))?;
        let files: BTreeSet<String> = map
            .values()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    Error::file(&index, format!("`weight_map` value {v} is not a file name"))
                })
            })
            .collect::<Result<_>>()?;
        return files
            .into_iter()
            .map(|f| {
                let path = dir.join(&f);
                if path.exists() {
                    Ok(path)
                } else {
                    Err(Error::file(&index, format!("shard `{f}` does not exist")))
                }
            })
            .collect();
    }
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::file(
        dir,
        "no model.safetensors or model.safetensors.index.json",
    ))
}

/// Loads weights from safetensors `files` into `model`, converting HF names and layouts.
/// Every parameter of the model must be found with the right shape, and every tensor of the
/// files must be used (or known to be irrelevant); otherwise the error names the tensor.
pub fn load_weights<B: Backend, M: ModuleSnapshot<B>>(
    model: &mut M,
    files: &[PathBuf],
    remapper: KeyRemapper,
    dtype: DType,
) -> Result<()> {
    let expected: BTreeMap<String, Vec<usize>> = model
        .collect(None, None, false)
        .into_iter()
        .map(|s| (s.full_path(), s.shape.to_vec()))
        .collect();
    let mut applied = BTreeSet::new();
    for file in files {
        let mut store = SafetensorsStore::from_file(file)
            .remap(remapper.clone())
            .with_from_adapter(PyTorchToBurnAdapter.chain(CastTo(dtype)))
            .allow_partial(true)
            .validate(false);
        for original in safetensors_keys(file)?.iter().filter(|k| !ignored_key(k)) {
            if !expected.contains_key(&remap_one(&remapper, original)) {
                return Err(Error::Tensor {
                    path: file.clone(),
                    tensor: original.clone(),
                    message: "the model has no such parameter".into(),
                });
            }
        }
        let result = model
            .load_from(&mut store)
            .map_err(|e| Error::file(file, format!("{e}")))?;
        if let Some(err) = result.errors.first() {
            return Err(Error::file(file, format!("{err}")));
        }
        applied.extend(result.applied);
    }
    if let Some(missing) = expected.keys().find(|k| !applied.contains(*k)) {
        return Err(Error::Tensor {
            path: files.first().cloned().unwrap_or_default(),
            tensor: missing.clone(),
            message: "missing from the checkpoint".into(),
        });
    }
    Ok(())
}

/// The tensor names of a safetensors file, read from its header only.
pub fn safetensors_keys(file: &Path) -> Result<Vec<String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(file).map_err(|e| Error::file(file, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| Error::file(file, "not a safetensors file (shorter than its header)"))?;
    let len = u64::from_le_bytes(len);
    let size = f.metadata().map_err(|e| Error::file(file, e))?.len();
    if len > size.saturating_sub(8) || len > 100 << 20 {
        return Err(Error::file(
            file,
            "not a safetensors file (bad header length)",
        ));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|e| Error::file(file, e))?;
    let value: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| Error::file(file, format!("not a safetensors file (header: {e})")))?;
    let map = value
        .as_object()
        .ok_or_else(|| Error::file(file, "not a safetensors file (header is not an object)"))?;
    Ok(map
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect())
}

fn remap_one(remapper: &KeyRemapper, key: &str) -> String {
    let mut out = key.to_string();
    for (re, to) in remapper.to_regex_pairs() {
        out = re.replace(&out, to.as_str()).into_owned();
    }
    out
}

/// Loads a decoder (Llama-2/3, Qwen-2.5, Gemma-3 text) from an HF model directory into the
/// device's default float type.
pub fn load_decoder<B: Backend>(dir: &Path, device: &B::Device) -> Result<Decoder<B>> {
    let config = DecoderConfig::from_file(&dir.join("config.json"))?;
    let files = weight_files(dir)?;
    let mut model = Decoder::<B>::init(&config, device);
    let dtype = Tensor::<B, 1>::empty([0], device).dtype();
    load_weights(&mut model, &files, decoder_remapper(), dtype)?;
    Ok(model)
}

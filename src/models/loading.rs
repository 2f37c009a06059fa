//! Loading HF checkpoints: `config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`, in f32, f16 or bf16, through burn-store; or a GGUF file
//! (see [`super::gguf`]).

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
use super::source::ModelSource;
use crate::{Error, Result};

/// Converts every float tensor to the model's float type while loading (bf16 checkpoints into
/// an f32 model, say); the conversion happens on the host, tensor by tensor.
#[derive(Clone, Debug)]
pub(crate) struct CastTo(pub(crate) DType);

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
    let expected = lazy_file_shapes(model);
    let mut applied = BTreeSet::new();
    for file in files {
        // Names, dtypes and shapes are checked from the header before anything is decoded,
        // with shapes in the file's own layout.
        let header = safetensors_header(file)?;
        for (original, entry) in header.iter().filter(|(k, _)| !ignored_key(k)) {
            let bad = |message: String| Error::Tensor {
                path: file.clone(),
                tensor: original.clone(),
                message,
            };
            let Some(shape) = expected.get(&remap_one(&remapper, original)) else {
                return Err(bad("the model has no such parameter".into()));
            };
            if !FLOAT_DTYPES.contains(&entry.dtype.as_str()) {
                return Err(bad(format!(
                    "dtype {} is not a float type (F32, F16, BF16 or F64); the model's weights \
                     are floats",
                    entry.dtype
                )));
            }
            if &entry.shape != shape {
                return Err(bad(format!(
                    "the file has shape {:?}, the model expects {shape:?} (in the file's \
                     layout: [out_features, in_features] for linear weights); is config.json \
                     the checkpoint's own?",
                    entry.shape
                )));
            }
        }
        let mut store = SafetensorsStore::from_file(file)
            .remap(remapper.clone())
            .with_from_adapter(PyTorchToBurnAdapter.chain(CastTo(dtype)))
            .allow_partial(true)
            .validate(false);
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

/// Every float parameter's path and shape in a checkpoint's layout (burn's `Linear` stores
/// `[in, out]`, checkpoints `[out, in]`), read without initialising lazy parameters: a
/// freshly built model would otherwise draw every weight at random only to overwrite it.
pub fn lazy_file_shapes<B: Backend, M: ModuleSnapshot<B>>(
    model: &M,
) -> BTreeMap<String, Vec<usize>> {
    struct Shapes {
        path: Vec<String>,
        containers: Vec<String>,
        out: BTreeMap<String, Vec<usize>>,
    }
    impl<B: Backend> burn::module::ModuleVisitor<B> for Shapes {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.containers.push(container_type.to_string());
            // Enum variants are not part of paths (as burn-store's collector builds them).
            if !container_type.starts_with("Enum:") {
                self.path.push(name.to_string());
            }
        }
        fn exit_module(&mut self, _name: &str, container_type: &str) {
            self.containers.pop();
            if !container_type.starts_with("Enum:") {
                self.path.pop();
            }
        }
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<B, D>>,
        ) {
            let mut shape = param.lazy_shape().to_vec();
            let in_linear = self.containers.last().is_some_and(|c| c == "Struct:Linear");
            let name = self.path.last().map(String::as_str).unwrap_or_default();
            if in_linear && shape.len() == 2 && name == "weight" {
                shape.reverse();
            }
            self.out.insert(self.path.join("."), shape);
        }
    }
    let mut visitor = Shapes {
        path: Vec::new(),
        containers: Vec::new(),
        out: BTreeMap::new(),
    };
    model.visit(&mut visitor);
    visitor.out
}

/// One tensor's entry in a safetensors header.
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderEntry {
    /// The dtype as the file names it (`F32`, `BF16`, `I32`, ...).
    pub dtype: String,
    /// The shape in the file's layout.
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    pub offsets: [u64; 2],
}

/// The header of a safetensors file, read and checked against the file's size without
/// reading the tensor data.
pub fn safetensors_header(file: &Path) -> Result<BTreeMap<String, HeaderEntry>> {
    use std::io::Read;
    let mut f = std::fs::File::open(file).map_err(|e| Error::file(file, e))?;
    let size = f.metadata().map_err(|e| Error::file(file, e))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| {
        Error::file(
            file,
            format!("not a safetensors file: {size} bytes, shorter than its 8-byte header length"),
        )
    })?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(Error::file(
            file,
            format!("not a safetensors file (a header length of {len} bytes)"),
        ));
    }
    if len > size - 8 {
        return Err(Error::file(
            file,
            format!(
                "truncated: its header alone needs {} bytes, the file has {size}",
                len + 8
            ),
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
    let mut out = BTreeMap::new();
    let mut data_end = 0u64;
    for (name, entry) in map.iter().filter(|(k, _)| *k != "__metadata__") {
        let bad = |what: &str| Error::Tensor {
            path: file.to_path_buf(),
            tensor: name.clone(),
            message: format!("bad header entry: {what}"),
        };
        let dtype = entry
            .get("dtype")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("no dtype"))?
            .to_string();
        let shape = entry
            .get("shape")
            .and_then(|v| v.as_array())
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize).ok_or_else(|| bad("shape")))
            .collect::<Result<Vec<_>>>()?;
        let offsets = entry
            .get("data_offsets")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some([a[0].as_u64()?, a[1].as_u64()?]))
            .ok_or_else(|| bad("data_offsets"))?;
        data_end = data_end.max(offsets[1]);
        out.insert(
            name.clone(),
            HeaderEntry {
                dtype,
                shape,
                offsets,
            },
        );
    }
    let expected = 8 + len + data_end;
    if size < expected {
        return Err(Error::file(
            file,
            format!(
                "truncated: its header describes {expected} bytes, the file has {size} \
                 ({} missing; an interrupted download or copy?)",
                expected - size
            ),
        ));
    }
    Ok(out)
}

/// The tensor names of a safetensors file, read from its header only.
pub fn safetensors_keys(file: &Path) -> Result<Vec<String>> {
    Ok(safetensors_header(file)?.into_keys().collect())
}

/// Float dtypes a checkpoint tensor may have.
const FLOAT_DTYPES: [&str; 4] = ["F32", "F16", "BF16", "F64"];

pub(crate) fn remap_one(remapper: &KeyRemapper, key: &str) -> String {
    let mut out = key.to_string();
    for (re, to) in remapper.to_regex_pairs() {
        out = re.replace(&out, to.as_str()).into_owned();
    }
    out
}

/// Loads a decoder (Llama-2/3, Qwen-2.5, Gemma-3 text) from an HF model directory or a GGUF
/// file into the device's default float type.
pub fn load_decoder<B: Backend>(path: &Path, device: &B::Device) -> Result<Decoder<B>> {
    let dir = match ModelSource::of(path)? {
        ModelSource::Gguf(file) => return super::gguf::load_decoder_gguf(&file, device),
        ModelSource::Folder(dir) => dir,
    };
    let dir = dir.as_path();
    let config = DecoderConfig::from_file(&dir.join("config.json"))?;
    let files = weight_files(dir)?;
    let mut model = Decoder::<B>::init(&config, device);
    let dtype = Tensor::<B, 1>::empty([0], device).dtype();
    load_weights(&mut model, &files, decoder_remapper(), dtype)?;
    Ok(model)
}

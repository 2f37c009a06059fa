//! GGUF checkpoints (llama.cpp's one-file format) as model sources: a `--model file.gguf`
//! loads as a [`Decoder`] and a [`Tokenizer`](crate::models::tokenizer::Tokenizer), with the
//! weights dequantized on the host.
//!
//! * [`file`]: the container — header, metadata, tensor directory, raw tensor data.
//! * [`dequant`]: ggml's tensor types (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
//!   Q6_K) decoded to f32.
//! * [`arch`]: metadata → [`DecoderConfig`], llama.cpp tensor names → HF names, and the value
//!   changes llama.cpp's converter makes, undone.
//! * [`tokenizer`]: the `tokenizer.*` metadata as a `tokenizers` tokenizer.
//!
//! Precision: weights are dequantized to f32 exactly (ggml's formulas), then converted to the
//! device's float type (bf16 under `--bf16`, which rounds them).

pub mod arch;
pub mod dequant;
pub mod file;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use burn::module::ParamId;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorData};
use burn_store::{
    ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, TensorSnapshot, TensorSnapshotError,
};

pub use arch::{decoder_config, hf_name};
pub use dequant::GgmlType;
pub use file::{is_gguf, GgufFile, MetaValue, TensorInfo};
pub use tokenizer::{tokenizer_from_gguf, GgufTokenizer};

use super::config::DecoderConfig;
use super::llama::Decoder;
use super::loading::{decoder_remapper, remap_one, CastTo};
use crate::{Error, Result};

/// Loads the decoder of a GGUF file into the device's default float type.
pub fn load_decoder_gguf<B: Backend>(path: &Path, device: &B::Device) -> Result<Decoder<B>> {
    let file = GgufFile::open(path)?;
    let config = decoder_config(&file)?;
    let mut model = Decoder::<B>::init(&config, device);
    let dtype = Tensor::<B, 1>::empty([0], device).dtype();
    load_gguf_weights(&mut model, Rc::new(file), &config, dtype)?;
    Ok(model)
}

/// Loads every tensor of `file` into `model` (built from `config`), tensor by tensor: each
/// is read, dequantized, restored to HF's values and layout, then converted to `dtype`.
/// Every parameter must be in the file with its shape, and every tensor of the file must be
/// one of the model's; the errors name the tensor.
pub fn load_gguf_weights<B: Backend>(
    model: &mut Decoder<B>,
    file: Rc<GgufFile>,
    config: &DecoderConfig,
    dtype: DType,
) -> Result<()> {
    let remapper = decoder_remapper();
    let tensor_err = |t: &TensorInfo, message: String| Error::Tensor {
        path: file.path.clone(),
        tensor: t.name.clone(),
        message,
    };
    let mut snapshots = Vec::with_capacity(file.tensors.len());
    let mut by_path = BTreeMap::new();
    for t in &file.tensors {
        let hf = hf_name(config.family, &t.name).ok_or_else(|| {
            tensor_err(t, format!("not a tensor of a {:?} decoder", config.family))
        })?;
        let path = remap_one(&remapper, &hf);
        let shape = t.shape();
        by_path.insert(path.clone(), t.name.clone());
        let (source, info, config) = (file.clone(), t.clone(), config.clone());
        let hf_shape = shape.clone();
        let data = Rc::new(move || {
            let mut values = source
                .read_f32(&info)
                .map_err(|e| TensorSnapshotError::IoError(e.to_string()))?;
            arch::restore_values(&config, &info.name, &hf_shape, &mut values);
            Ok(TensorData::new(values, hf_shape.clone()))
        });
        snapshots.push(TensorSnapshot::from_closure(
            data,
            DType::F32,
            Shape::from(shape),
            path.split('.').map(str::to_string).collect(),
            Vec::new(),
            ParamId::new(),
        ));
    }
    // The model's parameters are lazy: they are never drawn at random, only filled (reading
    // them first, to check shapes, would draw every one of them).
    let adapter: Box<dyn ModuleAdapter> = Box::new(PyTorchToBurnAdapter.chain(CastTo(dtype)));
    let result = model.apply(snapshots, None, Some(adapter), false);
    let name_of = |path: &str| {
        by_path
            .get(path)
            .cloned()
            .unwrap_or_else(|| path.to_string())
    };
    if let Some(err) = result.errors.first() {
        return Err(Error::file(&file.path, format!("{err}")));
    }
    if let Some(unused) = result.unused.first() {
        return Err(Error::Tensor {
            path: file.path.clone(),
            tensor: name_of(unused),
            message: format!("the model has no parameter `{unused}`"),
        });
    }
    if let Some((missing, _)) = result.missing.first() {
        return Err(Error::file(
            &file.path,
            format!("the model's parameter `{missing}` is not in the file"),
        ));
    }
    Ok(())
}

/// A name for the model in `file` that HF tools resolve (for peft's
/// `base_model_name_or_path`), not a local path: the source repository the converter
/// recorded (`general.source.huggingface.repository`, or a hub URL in `general.source.url` /
/// `general.base_model.0.repo_url`); otherwise `general.organization` / the file's name
/// without its quantization suffix (`HuggingFaceTB/SmolLM2-135M-Instruct` for
/// `SmolLM2-135M-Instruct.Q4_1.gguf`); without an organization, that name alone.
pub fn repository_name(file: &GgufFile) -> String {
    let text = |key: &str| file.get(key).and_then(MetaValue::as_str).map(str::trim);
    if let Some(repo) = text("general.source.huggingface.repository").filter(|r| r.contains('/')) {
        return repo.to_string();
    }
    for key in ["general.source.url", "general.base_model.0.repo_url"] {
        if let Some(repo) = text(key).and_then(|u| u.strip_prefix("https://huggingface.co/")) {
            let repo = repo.trim_end_matches('/');
            if repo.split('/').count() == 2 {
                return repo.to_string();
            }
        }
    }
    let stem = file
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = strip_quant_suffix(&stem);
    match text("general.organization").filter(|o| !o.is_empty() && !o.contains(' ')) {
        Some(org) => format!("{org}/{name}"),
        None => name.to_string(),
    }
}

/// `SmolLM2-135M-Instruct.Q4_1` → `SmolLM2-135M-Instruct`, `gemma-3-270m-q4_k_m` →
/// `gemma-3-270m`: drops a trailing `.`/`-` part naming a ggml type.
fn strip_quant_suffix(stem: &str) -> &str {
    let quant = |s: &str| {
        let s = s.to_ascii_lowercase();
        let mut c = s.chars();
        match (c.next(), c.next()) {
            (Some('q'), Some(d)) if d.is_ascii_digit() => true,
            (Some('i'), Some('q')) => true,
            _ => matches!(s.as_str(), "f16" | "bf16" | "f32"),
        }
    };
    match stem.rfind(['.', '-']) {
        Some(at) if at > 0 && quant(&stem[at + 1..]) => &stem[..at],
        _ => stem,
    }
}

#[cfg(test)]
mod tests {
    use super::strip_quant_suffix;

    #[test]
    fn quant_suffixes() {
        assert_eq!(
            strip_quant_suffix("SmolLM2-135M-Instruct.Q4_1"),
            "SmolLM2-135M-Instruct"
        );
        assert_eq!(strip_quant_suffix("gemma-3-270m-q4_k_m"), "gemma-3-270m");
        assert_eq!(strip_quant_suffix("model-f16"), "model");
        assert_eq!(strip_quant_suffix("qwen2-7b"), "qwen2-7b");
    }
}

//! Adapter parameter counts from `config.json` alone: the shapes of every linear layer of a
//! model, matched against target module names.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::config::DecoderConfig;
use crate::adapter::AdapterConfig;
use crate::{Error, Result};

/// Which part of a model a linear belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tower {
    /// The language model (or SigLIP's text tower).
    Text,
    /// A vision encoder (SigLIP, Gemma-3's vision tower).
    Vision,
}

/// One linear layer: HF module path and shape.
#[derive(Clone, Debug, Serialize)]
pub struct LinearShape {
    /// HF module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub path: String,
    /// Module name, e.g. `q_proj`.
    pub name: String,
    /// Layer index within its tower.
    pub layer: usize,
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
    /// Tower.
    pub tower: Tower,
}

/// The linear layers of a decoder's transformer blocks (the output head is not a target).
pub fn decoder_linears(c: &DecoderConfig, prefix: &str) -> Vec<LinearShape> {
    let (d, i) = (c.hidden_size, c.intermediate_size);
    let q = c.num_attention_heads * c.head_dim;
    let kv = c.num_key_value_heads * c.head_dim;
    let mut out = Vec::new();
    for layer in 0..c.num_hidden_layers {
        for (block, name, d_in, d_out) in [
            ("self_attn", "q_proj", d, q),
            ("self_attn", "k_proj", d, kv),
            ("self_attn", "v_proj", d, kv),
            ("self_attn", "o_proj", q, d),
            ("mlp", "gate_proj", d, i),
            ("mlp", "up_proj", d, i),
            ("mlp", "down_proj", i, d),
        ] {
            out.push(LinearShape {
                path: format!("{prefix}layers.{layer}.{block}.{name}"),
                name: name.into(),
                layer,
                d_in,
                d_out,
                tower: Tower::Text,
            });
        }
    }
    out
}

/// The linear layers of a SigLIP-style encoder (`q_proj, k_proj, v_proj, out_proj, fc1, fc2`).
pub fn encoder_linears(
    config: &Value,
    file: &Path,
    key: &str,
    prefix: &str,
    tower: Tower,
) -> Result<Vec<LinearShape>> {
    let get = |field: &str| -> Result<usize> {
        config
            .get(field)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| Error::file(file, format!("`{key}.{field}` missing or not an integer")))
    };
    let (d, i, layers) = (
        get("hidden_size")?,
        get("intermediate_size")?,
        get("num_hidden_layers")?,
    );
    let mut out = Vec::new();
    for layer in 0..layers {
        for (block, name, d_in, d_out) in [
            ("self_attn", "q_proj", d, d),
            ("self_attn", "k_proj", d, d),
            ("self_attn", "v_proj", d, d),
            ("self_attn", "out_proj", d, d),
            ("mlp", "fc1", d, i),
            ("mlp", "fc2", i, d),
        ] {
            out.push(LinearShape {
                path: format!("{prefix}encoder.layers.{layer}.{block}.{name}"),
                name: name.into(),
                layer,
                d_in,
                d_out,
                tower,
            });
        }
    }
    Ok(out)
}

/// Every adaptable linear layer a `config.json` describes: decoders (Llama, Qwen-2, Gemma-3
/// text), multimodal Gemma-3 (text + vision tower) and SigLIP (text + vision towers). `file`
/// names the config in errors.
pub fn model_linears(value: &Value, file: &Path) -> Result<Vec<LinearShape>> {
    let model_type = value
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    match model_type {
        "siglip" => {
            let sub = |k: &str| {
                value
                    .get(k)
                    .ok_or_else(|| Error::file(file, format!("`{k}` missing")))
            };
            let mut out = encoder_linears(
                sub("text_config")?,
                file,
                "text_config",
                "text_model.",
                Tower::Text,
            )?;
            out.extend(encoder_linears(
                sub("vision_config")?,
                file,
                "vision_config",
                "vision_model.",
                Tower::Vision,
            )?);
            Ok(out)
        }
        _ => {
            let decoder = DecoderConfig::from_json(value, file)?;
            let mut out = decoder_linears(&decoder, "model.");
            if model_type == "gemma3" {
                if let Some(vision) = value.get("vision_config") {
                    out.extend(encoder_linears(
                        vision,
                        file,
                        "vision_config",
                        "vision_tower.vision_model.",
                        Tower::Vision,
                    )?);
                }
            }
            Ok(out)
        }
    }
}

/// The `config.json` of the paper's base models, bundled so shapes need no download.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "llama-2-7b",
        include_str!("../../models/presets/llama-2-7b/config.json"),
    ),
    (
        "llama-3-8b",
        include_str!("../../models/presets/llama-3-8b/config.json"),
    ),
    (
        "qwen-2.5-7b",
        include_str!("../../models/presets/qwen-2.5-7b/config.json"),
    ),
    (
        "gemma-3-4b",
        include_str!("../../models/presets/gemma-3-4b/config.json"),
    ),
    (
        "siglip-2-base-patch16-224",
        include_str!("../../models/presets/siglip-2-base-patch16-224/config.json"),
    ),
    (
        "tiny-llama",
        include_str!("../../models/presets/tiny-llama/config.json"),
    ),
    (
        "tiny-siglip",
        include_str!("../../models/presets/tiny-siglip/config.json"),
    ),
];

/// Reads `--model`: a bundled preset name, a model directory holding `config.json`, the
/// path of a `config.json`, or a GGUF file (its config as `config.json` would have it).
/// Returns the parsed JSON and the name to use in errors.
pub fn read_model_config(model: &str) -> Result<(Value, PathBuf)> {
    if let Some((name, text)) = PRESETS.iter().find(|(name, _)| *name == model) {
        let label = PathBuf::from(format!("models/presets/{name}/config.json"));
        let value = serde_json::from_str(text).map_err(|e| Error::file(&label, e))?;
        return Ok((value, label));
    }
    let path = PathBuf::from(model);
    if path.is_file() && super::gguf::is_gguf(&path) {
        let gguf = super::gguf::GgufFile::open(&path)?;
        let config = super::gguf::decoder_config(&gguf)?;
        return Ok((config.to_hf_json("float32"), path));
    }
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path
    };
    if !file.is_file() {
        return Err(Error::Config(format!(
            "`{model}` is neither a preset ({}) nor a model directory with config.json nor a \
             GGUF file",
            PRESETS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let text = std::fs::read_to_string(&file).map_err(|e| Error::file(&file, e))?;
    let value = serde_json::from_str(&text).map_err(|e| Error::file(&file, e))?;
    Ok((value, file))
}

/// Trainable adapter parameters for the targeted linears, and the matched layers.
#[derive(Clone, Debug, Serialize)]
pub struct ParamCount {
    /// Sum over targeted layers.
    pub trainable: usize,
    /// Targeted layers.
    pub layers: usize,
    /// Parameters of all linear layers considered (the adapted part of the model).
    pub base_linear_params: usize,
}

/// Counts the adapter's trainable parameters on every linear whose name is in `targets` and
/// whose tower is in `towers`.
pub fn count_trainable(
    linears: &[LinearShape],
    targets: &[String],
    towers: &[Tower],
    adapter: &AdapterConfig,
) -> Result<ParamCount> {
    let mut count = ParamCount {
        trainable: 0,
        layers: 0,
        base_linear_params: 0,
    };
    for l in linears.iter().filter(|l| towers.contains(&l.tower)) {
        count.base_linear_params += l.d_in * l.d_out;
        if targets.iter().any(|t| t == &l.name) {
            adapter
                .validate(l.d_in, l.d_out)
                .map_err(|e| e.in_context(&l.path))?;
            count.trainable += adapter.trainable_params(l.d_in, l.d_out);
            count.layers += 1;
        }
    }
    if count.layers == 0 {
        return Err(Error::Config(format!(
            "no linear layer is named any of {targets:?}"
        )));
    }
    Ok(count)
}

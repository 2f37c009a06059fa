//! The SigLIP configuration: both towers' shapes as HF's `config.json` gives them.

use std::path::Path;

use serde_json::Value;

use crate::models::json_fields::Fields;
use crate::{Error, Result};

/// The text tower's shapes (HF `text_config`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SiglipTextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Longest token sequence (rows of the position table).
    pub max_position_embeddings: usize,
    /// Output width of the text `head`.
    pub projection_size: usize,
}

/// The vision tower's shapes (HF `vision_config`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SiglipVisionConfig {
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Side of the (square) input image in pixels.
    pub image_size: usize,
    /// Side of a (square) patch in pixels.
    pub patch_size: usize,
    /// Input channels.
    pub num_channels: usize,
}

impl SiglipVisionConfig {
    /// Patches per image side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patches per image (the vision sequence length; there is no class token).
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
}

/// A SigLIP checkpoint's configuration: both towers.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SiglipConfig {
    /// The text tower.
    pub text_config: SiglipTextConfig,
    /// The vision tower.
    pub vision_config: SiglipVisionConfig,
}

/// SigLIP-specific checks on a tower's config object.
pub(super) trait TowerChecks {
    fn check_act(&self) -> Result<()>;
    fn heads(&self, hidden: usize) -> Result<usize>;
}

impl TowerChecks for Fields<'_> {
    /// `hidden_act` must be the tanh-approximated GELU every SigLIP checkpoint uses.
    fn check_act(&self) -> Result<()> {
        match self.get("hidden_act") {
            None => Ok(()),
            Some(v) if v.as_str() == Some("gelu_pytorch_tanh") => Ok(()),
            Some(v) => Err(self.err(
                "hidden_act",
                format!("{v} is not supported (expected \"gelu_pytorch_tanh\")"),
            )),
        }
    }
    /// Hidden size and head count that divide evenly.
    fn heads(&self, hidden: usize) -> Result<usize> {
        let heads = self.positive_or("num_attention_heads", 12)?;
        if !hidden.is_multiple_of(heads) {
            return Err(self.err(
                "num_attention_heads",
                format!("{heads} does not divide hidden_size = {hidden}"),
            ));
        }
        Ok(heads)
    }
}

impl SiglipConfig {
    /// Reads `config.json` from a file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::file(path, e))?;
        Self::from_json(&value, path)
    }

    /// Parses a `config.json` value; `file` names it in errors. Keys absent from a tower's
    /// object take HF's `SiglipTextConfig` / `SiglipVisionConfig` defaults (the published
    /// SigLIP configs rely on them), but both objects must be present.
    pub fn from_json(value: &Value, file: &Path) -> Result<Self> {
        let top = Fields {
            value,
            file,
            prefix: "",
        };
        match top.str("model_type") {
            Some("siglip") => {}
            Some(other) => {
                return Err(top.err(
                    "model_type",
                    format!("`{other}` is not supported (expected `siglip`)"),
                ))
            }
            None => return Err(top.err("model_type", "missing (expected `siglip`)")),
        }
        let t = Fields {
            value: top.object("text_config")?,
            file,
            prefix: "text_config.",
        };
        let v = Fields {
            value: top.object("vision_config")?,
            file,
            prefix: "vision_config.",
        };
        t.check_act()?;
        v.check_act()?;

        let text_hidden = t.positive_or("hidden_size", 768)?;
        let text_config = SiglipTextConfig {
            vocab_size: t.positive_or("vocab_size", 32000)?,
            hidden_size: text_hidden,
            intermediate_size: t.positive_or("intermediate_size", 3072)?,
            num_hidden_layers: t.usize_or("num_hidden_layers", 12)?,
            num_attention_heads: t.heads(text_hidden)?,
            layer_norm_eps: t.f64_or("layer_norm_eps", 1e-6)?,
            max_position_embeddings: t.positive_or("max_position_embeddings", 64)?,
            projection_size: t.positive_or("projection_size", text_hidden)?,
        };

        let vision_hidden = v.positive_or("hidden_size", 768)?;
        for key in ["image_size", "patch_size"] {
            if let Some(x) = v.get(key).filter(|x| !x.is_u64()) {
                return Err(v.err(key, format!("expected one integer (square), found {x}")));
            }
        }
        let image_size = v.positive_or("image_size", 224)?;
        let patch_size = v.positive_or("patch_size", 16)?;
        if patch_size > image_size {
            return Err(v.err(
                "patch_size",
                format!("{patch_size} exceeds image_size = {image_size}"),
            ));
        }
        if !v.bool_or("vision_use_head", true)? {
            return Err(v.err(
                "vision_use_head",
                "SiglipModel needs the attention pooling head (got false)",
            ));
        }
        let vision_config = SiglipVisionConfig {
            hidden_size: vision_hidden,
            intermediate_size: v.positive_or("intermediate_size", 3072)?,
            num_hidden_layers: v.usize_or("num_hidden_layers", 12)?,
            num_attention_heads: v.heads(vision_hidden)?,
            layer_norm_eps: v.f64_or("layer_norm_eps", 1e-6)?,
            image_size,
            patch_size,
            num_channels: v.positive_or("num_channels", 3)?,
        };
        if text_config.projection_size != vision_config.hidden_size {
            return Err(t.err(
                "projection_size",
                format!(
                    "{} differs from vision_config.hidden_size = {}: the embeddings could \
                     not be compared",
                    text_config.projection_size, vision_config.hidden_size
                ),
            ));
        }
        Ok(Self {
            text_config,
            vision_config,
        })
    }
}

//! Decoder configuration read from a Hugging Face `config.json`.
//!
//! One [`DecoderConfig`] covers Llama-2/3 (`model_type: llama`), Qwen-2.5 (`qwen2`) and Gemma-3
//! text (`gemma3_text`, or the text part of a multimodal `gemma3` checkpoint). Field names
//! follow HF's; every missing or unsupported field is an error naming the file and key.

use std::path::Path;

use serde_json::Value;

use super::json_fields::Fields;
use crate::{Error, Result};

/// Which decoder family a checkpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoderFamily {
    /// Llama-2 and Llama-3: RMSNorm, SwiGLU, no biases.
    Llama,
    /// Qwen-2 / Qwen-2.5: as Llama with q/k/v biases.
    Qwen2,
    /// Gemma-3 text: `(1 + w)` RMSNorm, q/k norms, four norms per layer, GELU-tanh,
    /// embeddings × √hidden, sliding-window and global layers with two rope bases.
    Gemma3,
}

/// How rotary frequencies are rescaled for long contexts.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Llama-3.1's piecewise rescaling of frequencies.
    Llama3 {
        /// Overall factor.
        factor: f64,
        /// Low-frequency factor.
        low_freq_factor: f64,
        /// High-frequency factor.
        high_freq_factor: f64,
        /// Context length of pretraining.
        original_max_position_embeddings: f64,
    },
    /// Positions divided by `factor` (Gemma-3's global layers).
    Linear {
        /// The divisor.
        factor: f64,
    },
}

/// Rotary embedding settings of one kind of layer.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RopeConfig {
    /// Base θ.
    pub theta: f64,
    /// Optional frequency rescaling.
    pub scaling: Option<RopeScaling>,
}

/// Attention span of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// Attends to every earlier position.
    Full,
    /// Attends to the last `sliding_window` positions (Gemma-3 local layers).
    Sliding,
}

/// A decoder's shapes and options.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DecoderConfig {
    /// Family.
    pub family: DecoderFamily,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Per-head size.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rope of full-attention layers.
    pub rope: RopeConfig,
    /// Rope of sliding-window layers (Gemma-3: θ = 1e4, no scaling); `None` = same as `rope`.
    pub local_rope: Option<RopeConfig>,
    /// Longest sequence the positions support.
    pub max_position_embeddings: usize,
    /// The output head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections have biases.
    pub attention_bias: bool,
    /// Kind of each layer.
    pub layer_types: Vec<LayerKind>,
    /// Window of sliding layers.
    pub sliding_window: Option<usize>,
    /// Attention scale is `query_pre_attn_scalar^-0.5` (Gemma-3) instead of `head_dim^-0.5`.
    pub query_pre_attn_scalar: Option<f64>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens.
    pub eos_token_ids: Vec<u32>,
    /// Padding token.
    pub pad_token_id: Option<u32>,
}

impl DecoderConfig {
    /// Reads `config.json` from a file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::file(path, e))?;
        Self::from_json(&value, path)
    }

    /// Parses a `config.json` value; `file` names it in errors.
    pub fn from_json(value: &Value, file: &Path) -> Result<Self> {
        let top = Fields {
            value,
            file,
            prefix: "",
        };
        let model_type = top
            .str("model_type")
            .ok_or_else(|| top.err("model_type", "missing"))?;
        // Multimodal Gemma-3 keeps the language model's settings under `text_config`.
        let (fields, family) = match model_type {
            "llama" => (top, DecoderFamily::Llama),
            "qwen2" => (top, DecoderFamily::Qwen2),
            "gemma3_text" => (top, DecoderFamily::Gemma3),
            "gemma3" => {
                let text = top.get("text_config").ok_or_else(|| {
                    top.err("text_config", "missing for a multimodal gemma3 checkpoint")
                })?;
                (
                    Fields {
                        value: text,
                        file,
                        prefix: "text_config.",
                    },
                    DecoderFamily::Gemma3,
                )
            }
            other => {
                return Err(top.err(
                    "model_type",
                    format!("`{other}` is not supported (llama, qwen2, gemma3_text, gemma3)"),
                ))
            }
        };
        let f = &fields;
        let hidden_size = f.usize("hidden_size")?;
        let num_attention_heads = f.usize("num_attention_heads")?;
        let num_key_value_heads = f
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        for (key, value) in [
            ("hidden_size", hidden_size),
            ("num_attention_heads", num_attention_heads),
            ("num_key_value_heads", num_key_value_heads),
        ] {
            if value == 0 {
                return Err(f.err(key, "must be at least 1"));
            }
        }
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(f.err(
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} does not divide num_attention_heads = \
                     {num_attention_heads} (each key/value head serves a group of query heads)"
                ),
            ));
        }
        let head_dim = match f.opt_usize("head_dim")? {
            Some(0) => return Err(f.err("head_dim", "must be at least 1")),
            Some(h) => h,
            None if hidden_size % num_attention_heads != 0 => {
                return Err(f.err(
                    "hidden_size",
                    format!(
                        "{hidden_size} is not divisible by num_attention_heads = \
                         {num_attention_heads}, and there is no head_dim to say the head width"
                    ),
                ))
            }
            None => hidden_size / num_attention_heads,
        };
        let num_hidden_layers = f.usize("num_hidden_layers")?;
        for (key, value) in [
            ("num_hidden_layers", num_hidden_layers),
            ("intermediate_size", f.usize("intermediate_size")?),
            ("vocab_size", f.usize("vocab_size")?),
        ] {
            if value == 0 {
                return Err(f.err(key, "must be at least 1"));
            }
        }
        let (rope, local_rope, layer_types, sliding_window, query_pre_attn_scalar) = match family {
            DecoderFamily::Gemma3 => {
                let layer_types = gemma_layer_types(f, num_hidden_layers)?;
                let (global, local) = match f.get("rope_parameters") {
                    // transformers ≥ 5: one entry per layer type.
                    Some(p) if p.get("full_attention").is_some() => {
                        let sub = Fields {
                            value: p,
                            file,
                            prefix: "rope_parameters.",
                        };
                        (
                            parse_rope(&sub, "full_attention", 1_000_000.0)?,
                            parse_rope(&sub, "sliding_attention", 10_000.0)?,
                        )
                    }
                    // Published checkpoints: rope_theta/rope_scaling for global layers,
                    // rope_local_base_freq for local ones.
                    _ => (
                        RopeConfig {
                            theta: f.opt_f64("rope_theta")?.unwrap_or(1_000_000.0),
                            scaling: parse_rope_scaling(f, "rope_scaling")?,
                        },
                        RopeConfig {
                            theta: f.opt_f64("rope_local_base_freq")?.unwrap_or(10_000.0),
                            scaling: None,
                        },
                    ),
                };
                (
                    global,
                    Some(local),
                    layer_types,
                    Some(f.usize("sliding_window")?),
                    Some(
                        f.opt_f64("query_pre_attn_scalar")?
                            .unwrap_or(head_dim as f64),
                    ),
                )
            }
            _ => {
                if f.bool_or("use_sliding_window", false)? {
                    return Err(f.err(
                        "use_sliding_window",
                        "sliding-window attention is only supported for gemma3",
                    ));
                }
                let rope = match f.get("rope_parameters") {
                    Some(_) => parse_rope(f, "rope_parameters", 10_000.0)?,
                    None => RopeConfig {
                        theta: f.opt_f64("rope_theta")?.unwrap_or(10_000.0),
                        scaling: parse_rope_scaling(f, "rope_scaling")?,
                    },
                };
                (
                    rope,
                    None,
                    vec![LayerKind::Full; num_hidden_layers],
                    None,
                    None,
                )
            }
        };
        if family == DecoderFamily::Gemma3 {
            for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
                if f.get(key).is_some() {
                    return Err(f.err(key, "logit soft-capping is not supported (Gemma-2 style)"));
                }
            }
        }
        let hidden_act = f
            .str("hidden_act")
            .or_else(|| f.str("hidden_activation"))
            .unwrap_or(if family == DecoderFamily::Gemma3 {
                "gelu_pytorch_tanh"
            } else {
                "silu"
            });
        let expected_act = if family == DecoderFamily::Gemma3 {
            "gelu_pytorch_tanh"
        } else {
            "silu"
        };
        if hidden_act != expected_act {
            return Err(f.err(
                "hidden_act",
                format!("`{hidden_act}` is not supported for this model (expected {expected_act})"),
            ));
        }
        if f.bool_or("mlp_bias", false)? {
            return Err(f.err("mlp_bias", "MLP biases are not supported"));
        }
        let attention_bias = match family {
            DecoderFamily::Qwen2 => true,
            _ => f.bool_or("attention_bias", false)?,
        };
        // Token ids may sit at the top level of multimodal configs.
        let ids = |key: &str| -> Result<Vec<u32>> {
            let own = f.token_ids(key)?;
            if own.is_empty() {
                top_ids(value, file, key)
            } else {
                Ok(own)
            }
        };
        Ok(Self {
            family,
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope,
            local_rope,
            max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            tie_word_embeddings: {
                let default = family != DecoderFamily::Llama;
                fields.bool_or(
                    "tie_word_embeddings",
                    Fields {
                        value,
                        file,
                        prefix: "",
                    }
                    .bool_or("tie_word_embeddings", default)?,
                )?
            },
            attention_bias,
            layer_types,
            sliding_window,
            query_pre_attn_scalar,
            bos_token_id: ids("bos_token_id")?.first().copied(),
            eos_token_ids: ids("eos_token_id")?,
            pad_token_id: ids("pad_token_id")?.first().copied(),
        })
    }

    /// The HF `config.json` of this decoder (the text-only `*ForCausalLM` classes:
    /// `LlamaForCausalLM`, `Qwen2ForCausalLM`, `Gemma3ForCausalLM` with `model_type`
    /// `gemma3_text`), with weights declared as `dtype`. [`DecoderConfig::from_json`] reads it
    /// back to `self`.
    pub fn to_hf_json(&self, dtype: &str) -> Value {
        use serde_json::json;
        let (architecture, model_type, act) = match self.family {
            DecoderFamily::Llama => ("LlamaForCausalLM", "llama", "silu"),
            DecoderFamily::Qwen2 => ("Qwen2ForCausalLM", "qwen2", "silu"),
            DecoderFamily::Gemma3 => ("Gemma3ForCausalLM", "gemma3_text", "gelu_pytorch_tanh"),
        };
        let scaling = |r: &RopeConfig| match &r.scaling {
            None => Value::Null,
            Some(s) => serde_json::to_value(s).expect("rope scaling serialises"),
        };
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        let mut c = json!({
            "architectures": [architecture],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope.theta,
            "rope_scaling": scaling(&self.rope),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": dtype,
        });
        let obj = c.as_object_mut().expect("an object");
        match self.family {
            DecoderFamily::Gemma3 => {
                let local = self.local_rope.as_ref().unwrap_or(&self.rope);
                obj.insert("hidden_activation".into(), json!(act));
                obj.insert("rope_local_base_freq".into(), json!(local.theta));
                obj.insert("sliding_window".into(), json!(self.sliding_window));
                obj.insert(
                    "query_pre_attn_scalar".into(),
                    json!(self.query_pre_attn_scalar),
                );
                let kinds: Vec<&str> = self
                    .layer_types
                    .iter()
                    .map(|k| match k {
                        LayerKind::Full => "full_attention",
                        LayerKind::Sliding => "sliding_attention",
                    })
                    .collect();
                obj.insert("layer_types".into(), json!(kinds));
                obj.insert("final_logit_softcapping".into(), Value::Null);
                obj.insert("attn_logit_softcapping".into(), Value::Null);
                obj.insert("attention_bias".into(), json!(self.attention_bias));
            }
            DecoderFamily::Qwen2 => {
                obj.insert("hidden_act".into(), json!(act));
                obj.insert("use_sliding_window".into(), json!(false));
            }
            DecoderFamily::Llama => {
                obj.insert("hidden_act".into(), json!(act));
                obj.insert("attention_bias".into(), json!(self.attention_bias));
                obj.insert("mlp_bias".into(), json!(false));
            }
        }
        c
    }

    /// Attention scale applied to `q·k`.
    pub fn attention_scale(&self) -> f64 {
        match self.query_pre_attn_scalar {
            Some(s) => s.powf(-0.5),
            None => (self.head_dim as f64).powf(-0.5),
        }
    }
}

fn top_ids(value: &Value, file: &Path, key: &str) -> Result<Vec<u32>> {
    Fields {
        value,
        file,
        prefix: "",
    }
    .token_ids(key)
}

/// A transformers-5 `rope_parameters` object: `rope_theta` plus the scaling fields.
fn parse_rope(f: &Fields<'_>, key: &str, default_theta: f64) -> Result<RopeConfig> {
    let v = f.get(key).ok_or_else(|| f.err(key, "missing"))?;
    let prefix = format!("{}{key}.", f.prefix);
    let sub = Fields {
        value: v,
        file: f.file,
        prefix: &prefix,
    };
    Ok(RopeConfig {
        theta: sub.opt_f64("rope_theta")?.unwrap_or(default_theta),
        scaling: parse_rope_scaling(f, key)?,
    })
}

fn parse_rope_scaling(f: &Fields<'_>, key: &str) -> Result<Option<RopeScaling>> {
    let Some(v) = f.get(key) else { return Ok(None) };
    let sub = Fields {
        value: v,
        file: f.file,
        prefix: "",
    };
    let kind = sub
        .str("rope_type")
        .or_else(|| sub.str("type"))
        .unwrap_or("default");
    let err = |msg: String| f.err(key, msg);
    let num = |k: &str| -> Result<f64> {
        sub.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| err(format!("`{k}` missing or not a number")))
    };
    Ok(match kind {
        "default" => None,
        "llama3" => Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        "linear" => Some(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        other => {
            return Err(err(format!(
                "rope type `{other}` is not supported (default, llama3, linear)"
            )))
        }
    })
}

fn gemma_layer_types(f: &Fields<'_>, layers: usize) -> Result<Vec<LayerKind>> {
    if let Some(Value::Array(items)) = f.get("layer_types") {
        if items.len() != layers {
            return Err(f.err(
                "layer_types",
                format!("has {} entries for {layers} layers", items.len()),
            ));
        }
        return items
            .iter()
            .map(|v| match v.as_str() {
                Some("full_attention") => Ok(LayerKind::Full),
                Some("sliding_attention") => Ok(LayerKind::Sliding),
                _ => Err(f.err("layer_types", format!("unknown layer type {v}"))),
            })
            .collect();
    }
    // Older configs: every `sliding_window_pattern`-th layer is global.
    let pattern = f.opt_usize("sliding_window_pattern")?.unwrap_or(6).max(1);
    Ok((0..layers)
        .map(|i| {
            if (i + 1) % pattern == 0 {
                LayerKind::Full
            } else {
                LayerKind::Sliding
            }
        })
        .collect())
}

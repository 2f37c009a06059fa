//! What llama.cpp's converter did to an HF decoder, undone: the `DecoderConfig` from the
//! `<arch>.*` metadata, llama.cpp's tensor names back to HF's, and the two value changes —
//! q/k rows permuted for the `llama` architecture, Gemma's zero-centred norm weights stored
//! as `1 + w`.
//!
//! The config follows what HF transformers builds from the same file (its GGUF loader), so
//! that both load one model: settings the file does not record take the HF config class's
//! defaults (Gemma-3: local rope θ 10⁴, every sixth layer global, `query_pre_attn_scalar` =
//! head size).

use super::file::GgufFile;
use crate::models::config::{DecoderConfig, DecoderFamily, LayerKind, RopeConfig, RopeScaling};
use crate::{Error, Result};

/// The architectures burn-ipa reads (`general.architecture`).
pub const ARCHITECTURES: [&str; 3] = ["llama", "qwen2", "gemma3"];

/// The family of `general.architecture`.
pub fn family(file: &GgufFile) -> Result<DecoderFamily> {
    match file.str("general.architecture")? {
        "llama" => Ok(DecoderFamily::Llama),
        "qwen2" => Ok(DecoderFamily::Qwen2),
        "gemma3" => Ok(DecoderFamily::Gemma3),
        other => Err(file.key_error(
            "general.architecture",
            format!("`{other}` is not supported ({})", ARCHITECTURES.join(", ")),
        )),
    }
}

/// The decoder configuration a GGUF file describes.
pub fn decoder_config(file: &GgufFile) -> Result<DecoderConfig> {
    let family = family(file)?;
    let arch = file.str("general.architecture")?.to_string();
    let key = |k: &str| format!("{arch}.{k}");
    let usize_of = |k: &str| file.u64(&key(k)).map(|v| v as usize);
    let hidden_size = usize_of("embedding_length")?;
    let num_hidden_layers = usize_of("block_count")?;
    let num_attention_heads = usize_of("attention.head_count")?;
    let num_key_value_heads = file
        .opt_u64(&key("attention.head_count_kv"))?
        .map(|v| v as usize)
        .unwrap_or(num_attention_heads);
    if num_attention_heads == 0
        || num_key_value_heads == 0
        || num_attention_heads % num_key_value_heads != 0
    {
        return Err(file.key_error(
            &key("attention.head_count_kv"),
            format!("{num_key_value_heads} must divide the {num_attention_heads} query heads"),
        ));
    }
    let head_dim = match file.opt_u64(&key("attention.key_length"))? {
        Some(h) => h as usize,
        None => hidden_size / num_attention_heads,
    };
    if let Some(v) = file.opt_u64(&key("attention.value_length"))? {
        if v as usize != head_dim {
            return Err(file.key_error(
                &key("attention.value_length"),
                format!("{v} differs from the key length {head_dim}"),
            ));
        }
    }
    if let Some(rot) = file.opt_u64(&key("rope.dimension_count"))? {
        if rot as usize != head_dim {
            return Err(file.key_error(
                &key("rope.dimension_count"),
                format!(
                    "partial rotary embeddings ({rot} of {head_dim} dimensions) are not supported"
                ),
            ));
        }
    }
    let theta_default = if family == DecoderFamily::Gemma3 {
        1_000_000.0
    } else {
        10_000.0
    };
    let rope = RopeConfig {
        theta: file
            .opt_f64(&key("rope.freq_base"))?
            .unwrap_or(theta_default),
        scaling: rope_scaling(file, &arch)?,
    };
    if file.tensor("rope_freqs.weight").is_some() {
        return Err(Error::Tensor {
            path: file.path.clone(),
            tensor: "rope_freqs.weight".into(),
            message: "per-frequency rope factors (Llama-3.1 style scaling) are not supported"
                .into(),
        });
    }
    let vocab_size = match file.opt_u64(&key("vocab_size"))? {
        Some(v) => v as usize,
        None => file.array("tokenizer.ggml.tokens")?.len(),
    };
    let intermediate_size = usize_of("feed_forward_length")?;
    let tie_word_embeddings = file.tensor("output.weight").is_none();
    let token = |k: &str| -> Result<Option<u32>> {
        Ok(file
            .opt_u64(&format!("tokenizer.ggml.{k}"))?
            .map(|v| v as u32))
    };
    let (local_rope, layer_types, sliding_window, query_pre_attn_scalar) = match family {
        DecoderFamily::Gemma3 => {
            // Not in the file: llama.cpp and HF's Gemma3TextConfig both fix these.
            let pattern = 6;
            let layer_types = (0..num_hidden_layers)
                .map(|i| {
                    if (i + 1) % pattern == 0 {
                        LayerKind::Full
                    } else {
                        LayerKind::Sliding
                    }
                })
                .collect();
            (
                Some(RopeConfig {
                    theta: 10_000.0,
                    scaling: None,
                }),
                layer_types,
                Some(usize_of("attention.sliding_window")?),
                Some(head_dim as f64),
            )
        }
        _ => (None, vec![LayerKind::Full; num_hidden_layers], None, None),
    };
    let attention_bias = match family {
        DecoderFamily::Qwen2 => true,
        _ => file.tensor("blk.0.attn_q.bias").is_some(),
    };
    Ok(DecoderConfig {
        family,
        vocab_size,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: file
            .opt_f64(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-6),
        rope,
        local_rope,
        max_position_embeddings: file
            .opt_u64(&key("context_length"))?
            .map(|v| v as usize)
            .unwrap_or(4096),
        tie_word_embeddings,
        attention_bias,
        layer_types,
        sliding_window,
        query_pre_attn_scalar,
        bos_token_id: token("bos_token_id")?,
        eos_token_ids: token("eos_token_id")?.into_iter().collect(),
        pad_token_id: token("padding_token_id")?,
    })
}

fn rope_scaling(file: &GgufFile, arch: &str) -> Result<Option<RopeScaling>> {
    let type_key = format!("{arch}.rope.scaling.type");
    let Some(kind) = file.get(&type_key) else {
        return Ok(None);
    };
    let factor_key = format!("{arch}.rope.scaling.factor");
    match kind.as_str() {
        Some("none") => Ok(None),
        Some("linear") => {
            let factor = file
                .opt_f64(&factor_key)?
                .ok_or_else(|| file.key_error(&factor_key, "missing for linear rope scaling"))?;
            Ok((factor != 1.0).then_some(RopeScaling::Linear { factor }))
        }
        _ => Err(file.key_error(
            &type_key,
            format!("rope scaling {kind:?} is not supported (none, linear)"),
        )),
    }
}

/// The HF name of a llama.cpp tensor name (`blk.3.attn_q.weight` →
/// `model.layers.3.self_attn.q_proj.weight`), `None` for names no decoder of `family` has.
pub fn hf_name(family: DecoderFamily, name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, param) = rest.rsplit_once('.')?;
    if param != "weight" && param != "bias" {
        return None;
    }
    let gemma = family == DecoderFamily::Gemma3;
    let hf = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        // Llama/Qwen have one norm before the MLP, which HF calls post_attention_layernorm;
        // Gemma-3 has four, and its `ffn_norm` is the one before the MLP.
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" if gemma => "post_attention_layernorm",
        "post_ffw_norm" if gemma => "post_feedforward_layernorm",
        "attn_q_norm" if gemma => "self_attn.q_norm",
        "attn_k_norm" if gemma => "self_attn.k_norm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{param}"))
}

/// Undoes what llama.cpp's converter did to the values of tensor `name` (HF row-major
/// `values` of shape `shape`): the q/k row permutation of the `llama` architecture and
/// Gemma's `1 + w` norms.
pub fn restore_values(config: &DecoderConfig, name: &str, shape: &[usize], values: &mut Vec<f32>) {
    match config.family {
        DecoderFamily::Llama => {
            let heads = if name.contains(".attn_q.") {
                Some(config.num_attention_heads)
            } else if name.contains(".attn_k.") {
                Some(config.num_key_value_heads)
            } else {
                None
            };
            if let Some(heads) = heads {
                let cols = shape.get(1).copied().unwrap_or(1);
                *values = unpermute_rows(values, heads, shape[0], cols);
            }
        }
        DecoderFamily::Gemma3 if name.ends_with("norm.weight") => {
            values.iter_mut().for_each(|w| *w -= 1.0);
        }
        _ => {}
    }
}

/// Inverts llama.cpp's `permute` of q/k rows: within each head of `rows / heads` rows,
/// llama.cpp stores HF row `s · half + i` (s ∈ {0, 1}, i < half) at `2i + s`, interleaving
/// the two halves that HF's rotary embedding rotates together. `values` is `[rows, cols]`.
pub fn unpermute_rows(values: &[f32], heads: usize, rows: usize, cols: usize) -> Vec<f32> {
    let head_rows = rows / heads;
    let half = head_rows / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for s in 0..2 {
            for i in 0..half {
                let hf = h * head_rows + s * half + i;
                let gguf = h * head_rows + 2 * i + s;
                out[hf * cols..(hf + 1) * cols]
                    .copy_from_slice(&values[gguf * cols..(gguf + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_by_hand() {
        // Two heads of four rows, one column: llama.cpp's rows [a0 a2 a1 a3 | b0 b2 b1 b3]
        // are HF's [a0 a1 a2 a3 | b0 b1 b2 b3].
        let gguf = [0.0, 2.0, 1.0, 3.0, 10.0, 12.0, 11.0, 13.0];
        let hf = unpermute_rows(&gguf, 2, 8, 1);
        assert_eq!(hf, vec![0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0]);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp's converter: reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2).
        let (heads, rows, cols) = (3, 12, 2);
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let half = rows / heads / 2;
        let mut permuted = vec![0f32; hf.len()];
        for h in 0..heads {
            for s in 0..2 {
                for i in 0..half {
                    // Source index (h, s, i) goes to (h, i, s).
                    let src = (h * 2 + s) * half + i;
                    let dst = (h * half + i) * 2 + s;
                    permuted[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(permuted, hf);
        assert_eq!(unpermute_rows(&permuted, heads, rows, cols), hf);
    }

    #[test]
    fn names() {
        let g = DecoderFamily::Gemma3;
        let l = DecoderFamily::Llama;
        assert_eq!(
            hf_name(l, "blk.12.attn_q.weight").as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name(l, "blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_name(g, "blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.pre_feedforward_layernorm.weight")
        );
        assert_eq!(
            hf_name(g, "blk.5.post_ffw_norm.weight").as_deref(),
            Some("model.layers.5.post_feedforward_layernorm.weight")
        );
        assert_eq!(hf_name(l, "blk.0.post_ffw_norm.weight"), None);
        assert_eq!(
            hf_name(l, "output.weight").as_deref(),
            Some("lm_head.weight")
        );
        assert_eq!(hf_name(l, "blk.x.attn_q.weight"), None);
    }
}

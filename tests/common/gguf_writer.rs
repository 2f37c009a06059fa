//! A GGUF writer for tests, and a converter from the tiny HF fixtures to GGUF that does what
//! llama.cpp's `convert_hf_to_gguf.py` does (names, q/k row permutation for llama, `1 + w`
//! Gemma norms, metadata keys), written independently of the loader it checks.

use std::path::Path;

use burn_ipa::models::gguf::MetaValue;
use safetensors::SafeTensors;
use serde_json::Value;

/// A GGUF file under construction (version 3, alignment 32).
#[derive(Default)]
pub struct GgufWriter {
    pub meta: Vec<(String, MetaValue)>,
    /// name, dims (fastest first), ggml type id, raw bytes
    pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::Str(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend(x.to_le_bytes()),
        MetaValue::I16(x) => out.extend(x.to_le_bytes()),
        MetaValue::U32(x) => out.extend(x.to_le_bytes()),
        MetaValue::I32(x) => out.extend(x.to_le_bytes()),
        MetaValue::U64(x) => out.extend(x.to_le_bytes()),
        MetaValue::I64(x) => out.extend(x.to_le_bytes()),
        MetaValue::F32(x) => out.extend(x.to_le_bytes()),
        MetaValue::F64(x) => out.extend(x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::Str(s) => put_str(out, s),
        MetaValue::Array(items) => {
            out.extend(items.first().map(type_id).unwrap_or(4).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| put_value(out, i));
        }
    }
}

impl GgufWriter {
    pub fn meta(&mut self, key: &str, value: MetaValue) -> &mut Self {
        self.meta.retain(|(k, _)| k != key);
        self.meta.push((key.to_string(), value));
        self
    }

    pub fn remove_meta(&mut self, key: &str) -> &mut Self {
        self.meta.retain(|(k, _)| k != key);
        self
    }

    /// An f32 tensor of row-major `shape` (slowest first, as PyTorch).
    pub fn f32_tensor(&mut self, name: &str, shape: &[usize], values: &[f32]) -> &mut Self {
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors.push((name.to_string(), dims, 0, bytes));
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.meta.len() as u64).to_le_bytes());
        for (k, v) in &self.meta {
            put_str(&mut out, k);
            out.extend(type_id(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        let data_start = out.len() as u64;
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            assert_eq!(out.len() as u64 - data_start, off);
            out.extend(data);
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
        }
        out
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.to_bytes()).unwrap();
    }
}

/// A GPT-2 style tokenizer of `n` ≤ 256 single-character tokens (the byte alphabet's
/// characters) and no merges.
pub fn tiny_gpt2_tokenizer(w: &mut GgufWriter, n: usize, bos: u32, eos: u32) {
    let alphabet: Vec<char> = ('!'..='~')
        .chain('¡'..='¬')
        .chain('®'..='ÿ')
        .chain('Ā'..='Ń')
        .collect();
    let tokens: Vec<MetaValue> = alphabet[..n]
        .iter()
        .map(|c| MetaValue::Str(c.to_string()))
        .collect();
    w.meta("tokenizer.ggml.model", MetaValue::Str("gpt2".into()))
        .meta("tokenizer.ggml.pre", MetaValue::Str("default".into()))
        .meta("tokenizer.ggml.tokens", MetaValue::Array(tokens))
        .meta(
            "tokenizer.ggml.token_type",
            MetaValue::Array(vec![MetaValue::I32(1); n]),
        )
        .meta("tokenizer.ggml.merges", MetaValue::Array(Vec::new()))
        .meta("tokenizer.ggml.bos_token_id", MetaValue::U32(bos))
        .meta("tokenizer.ggml.eos_token_id", MetaValue::U32(eos));
}

/// llama.cpp's `permute`: HF row `s·half + i` of each head goes to row `2i + s`.
fn permute(values: &[f32], heads: usize, rows: usize, cols: usize) -> Vec<f32> {
    let half = rows / heads / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for s in 0..2 {
            for i in 0..half {
                let src = h * 2 * half + s * half + i;
                let dst = h * 2 * half + 2 * i + s;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The GGUF name of an HF tensor name of `arch`.
fn gguf_name(arch: &str, hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").expect("a layer tensor");
    let (layer, rest) = rest.split_once('.').unwrap();
    let (module, param) = rest.rsplit_once('.').unwrap();
    let gemma = arch == "gemma3";
    let name = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if gemma => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        other => panic!("unexpected module {other}"),
    };
    format!("blk.{layer}.{name}.{param}")
}

/// Converts the tiny HF fixture in `dir` (config.json + f32 model.safetensors) to a GGUF
/// file at `out`, as llama.cpp's converter would, with a tiny GPT-2 tokenizer.
pub fn convert_fixture(dir: &Path, out: &Path) {
    fixture_to_gguf(dir).write(out);
}

/// [`convert_fixture`], returning the writer (to add metadata before writing).
pub fn fixture_to_gguf(dir: &Path) -> GgufWriter {
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let arch = match config["model_type"].as_str().unwrap() {
        "gemma3_text" => "gemma3",
        other => other,
    };
    let u = |k: &str| match k {
        "head_dim" if config[k].is_null() => u32::try_from(
            config["hidden_size"].as_u64().unwrap()
                / config["num_attention_heads"].as_u64().unwrap(),
        )
        .unwrap(),
        _ => config[k].as_u64().unwrap() as u32,
    };
    let mut w = GgufWriter::default();
    w.meta("general.architecture", MetaValue::Str(arch.into()))
        .meta("general.name", MetaValue::Str("tiny".into()))
        .meta(
            &format!("{arch}.block_count"),
            MetaValue::U32(u("num_hidden_layers")),
        )
        .meta(
            &format!("{arch}.context_length"),
            MetaValue::U32(u("max_position_embeddings")),
        )
        .meta(
            &format!("{arch}.embedding_length"),
            MetaValue::U32(u("hidden_size")),
        )
        .meta(
            &format!("{arch}.feed_forward_length"),
            MetaValue::U32(u("intermediate_size")),
        )
        .meta(
            &format!("{arch}.attention.head_count"),
            MetaValue::U32(u("num_attention_heads")),
        )
        .meta(
            &format!("{arch}.attention.head_count_kv"),
            MetaValue::U32(u("num_key_value_heads")),
        )
        .meta(
            &format!("{arch}.attention.layer_norm_rms_epsilon"),
            MetaValue::F32(config["rms_norm_eps"].as_f64().unwrap() as f32),
        );
    let rope = &config["rope_parameters"];
    let global = if arch == "gemma3" {
        &rope["full_attention"]
    } else {
        rope
    };
    w.meta(
        &format!("{arch}.rope.freq_base"),
        MetaValue::F32(global["rope_theta"].as_f64().unwrap() as f32),
    );
    if global["rope_type"] == "linear" {
        w.meta(
            &format!("{arch}.rope.scaling.type"),
            MetaValue::Str("linear".into()),
        )
        .meta(
            &format!("{arch}.rope.scaling.factor"),
            MetaValue::F32(global["factor"].as_f64().unwrap() as f32),
        );
    }
    if arch == "gemma3" {
        w.meta(
            &format!("{arch}.attention.key_length"),
            MetaValue::U32(u("head_dim")),
        )
        .meta(
            &format!("{arch}.attention.value_length"),
            MetaValue::U32(u("head_dim")),
        )
        .meta(
            &format!("{arch}.attention.sliding_window"),
            MetaValue::U32(u("sliding_window")),
        );
    } else {
        w.meta(
            &format!("{arch}.rope.dimension_count"),
            MetaValue::U32(u("head_dim")),
        );
    }
    let vocab = u("vocab_size") as usize;
    tiny_gpt2_tokenizer(&mut w, vocab, 0, 0);
    for (key, id) in [("bos", "bos_token_id"), ("eos", "eos_token_id")] {
        let meta = format!("tokenizer.ggml.{key}_token_id");
        match config[id].as_u64() {
            Some(v) => w.meta(&meta, MetaValue::U32(v as u32)),
            None => w.remove_meta(&meta),
        };
    }

    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let heads = u("num_attention_heads") as usize;
    let kv_heads = u("num_key_value_heads") as usize;
    for name in names {
        let view = st.tensor(&name).unwrap();
        let shape = view.shape().to_vec();
        let mut values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let cols = shape.get(1).copied().unwrap_or(1);
        if arch == "llama" && name.ends_with("q_proj.weight") {
            values = permute(&values, heads, shape[0], cols);
        } else if arch == "llama" && name.ends_with("k_proj.weight") {
            values = permute(&values, kv_heads, shape[0], cols);
        } else if arch == "gemma3" && name.ends_with("norm.weight") {
            values.iter_mut().for_each(|v| *v += 1.0);
        }
        w.f32_tensor(&gguf_name(arch, &name), &shape, &values);
    }
    w
}

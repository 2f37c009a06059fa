//! Parity on real pretrained GGUF checkpoints — SmolLM2-135M-Instruct (Q4_1, llama) and
//! Gemma-3 270M (Q4_K_M, gemma3) — against what HF transformers builds from the same files
//! (tests/fixtures/gguf/{smollm2,gemma3}.json, made by tests/fixtures/make_gguf_fixtures.py):
//! tokenizer ids, config, last-position logits, greedy and beam continuations, the chat
//! template; `ipa generate --chat` and a merge from the GGUF base on SmolLM2. (The other
//! commands' flags on a GGUF base are tested on a tiny converted checkpoint in tests/gguf.rs.)
//!
//! The files come from scripts/fetch-models.sh into $BURN_IPA_MODELS (default
//! ~/.cache/burn-ipa/models); a test whose file is absent prints a note and passes.

mod common;

use std::path::PathBuf;
use std::process::Command;

use burn::tensor::{Int, Tensor, TensorData};
use burn_ipa::export::export_merged_standalone;
use burn_ipa::models::chat::{render_chat, ChatMessage};
use burn_ipa::models::generate::{generate, GenerationConfig};
use burn_ipa::models::gguf::{repository_name, GgufFile};
use burn_ipa::models::loading::load_decoder;
use burn_ipa::models::tokenizer::Tokenizer;
use burn_ipa::models::{Decoder, ForwardOptions};
use common::*;
use serde_json::Value;

type B = TestBackend;

fn models_dir() -> PathBuf {
    match std::env::var_os("BURN_IPA_MODELS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/burn-ipa/models"),
    }
}

/// The checkpoint of `name`, or `None` (with a note) when it has not been fetched.
fn checkpoint(name: &str) -> Option<PathBuf> {
    let path = match name {
        "smollm2" => models_dir().join("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "gemma3" => models_dir().join("gemma-3-270m/gemma-3-270m-q4_k_m.gguf"),
        _ => unreachable!(),
    };
    if path.is_file() {
        Some(path)
    } else {
        note(&format!(
            "note: skipped, {} is not there (run scripts/fetch-models.sh {name})",
            path.display()
        ));
        None
    }
}

/// A line on the terminal even when the test harness captures output (it captures the print
/// macros, not the stream).
fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn last_logits(model: &Decoder<B>, ids: &[u32]) -> Vec<f64> {
    let data = TensorData::new(
        ids.iter().map(|&t| t as i64).collect::<Vec<_>>(),
        [1, ids.len()],
    );
    let input = Tensor::<B, 2, Int>::from_data(data, &Default::default());
    let options = ForwardOptions {
        attention_mask: None,
        position_ids: None,
    };
    let logits = model.forward(input, &options).unwrap();
    let [_, s, v] = logits.shape().dims();
    host(logits.slice([0..1, s - 1..s, 0..v]))
}

fn tokenizer_parity(tok: &Tokenizer, want: &Value, name: &str) {
    assert_eq!(
        tok.bos_token_id,
        want["bos_token_id"].as_u64().map(|v| v as u32)
    );
    assert_eq!(
        tok.eos_token_id,
        want["eos_token_id"].as_u64().map(|v| v as u32)
    );
    assert_eq!(
        tok.pad_token_id,
        want["pad_token_id"].as_u64().map(|v| v as u32)
    );
    assert_eq!(
        tok.vocab_size(),
        want["vocab_size"].as_u64().unwrap() as usize
    );
    let strings = want["strings"].as_array().unwrap();
    assert!(strings.len() >= 20);
    for s in strings {
        let text = s["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids_of(&s["ids"]),
            "{name}: {text:?}"
        );
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids_of(&s["ids_no_special"]),
            "{name}: {text:?} without special tokens"
        );
    }
}

/// Logits, greedy and beam continuations of `model` against the fixture.
fn model_parity(model: &Decoder<B>, want: &Value, name: &str) {
    let mut worst = 0f64;
    for case in want["logits"].as_array().unwrap() {
        let got = last_logits(model, &ids_of(&case["ids"]));
        let top: Vec<u32> = {
            let mut order: Vec<usize> = (0..got.len()).collect();
            order.sort_by(|&a, &b| got[b].total_cmp(&got[a]));
            order[..10].iter().map(|&i| i as u32).collect()
        };
        assert_eq!(top, ids_of(&case["top_ids"]), "{name}: top-10 ids");
        let stride = case["stride"].as_u64().unwrap() as usize;
        let strided: Vec<f64> = got.iter().step_by(stride).copied().collect();
        let pairs = vec1(&case["top_values"])
            .into_iter()
            .zip(
                ids_of(&case["top_ids"])
                    .into_iter()
                    .map(|i| got[i as usize]),
            )
            .chain(vec1(&case["strided"]).into_iter().zip(strided));
        for (w, g) in pairs {
            worst = worst.max((w - g).abs());
        }
        let max = got.iter().copied().fold(f64::MIN, f64::max);
        let mean = got.iter().sum::<f64>() / got.len() as f64;
        worst = worst.max((max - case["max"].as_f64().unwrap()).abs());
        worst = worst.max((mean - case["mean"].as_f64().unwrap()).abs());
    }
    note(&format!(
        "{name}: last-position logits vs HF transformers, max |Δ| = {worst:.2e}"
    ));
    assert!(worst <= 1e-4, "{name}: logits differ by {worst:e}");

    for case in want["greedy"].as_array().unwrap() {
        let config = GenerationConfig::greedy(model, 16);
        let got = generate(model, &[ids_of(&case["ids"])], &config).unwrap();
        assert_eq!(
            got[0],
            ids_of(&case["new_ids"]),
            "{name}: greedy {}",
            case["prompt"]
        );
    }
    let beam = &want["beam"];
    let prompt = ids_of(&want["logits"][0]["ids"]);
    let config = GenerationConfig::greedy(model, 8).with_beams(3);
    let got = generate(model, &[prompt], &config).unwrap();
    assert_eq!(got[0], ids_of(&beam["new_ids"]), "{name}: beam search");
}

/// Everything on one loaded model (loads are slow in the test profile): tokenizer, config,
/// logits, greedy and beam continuations, chat template. Returns the model and tokenizer.
fn parity(name: &str) -> Option<(PathBuf, Decoder<B>, Tokenizer, Value)> {
    let path = checkpoint(name)?;
    let want = fixture(&format!("gguf/{name}.json"));
    let tok = Tokenizer::load(&path).unwrap();
    tokenizer_parity(&tok, &want["tokenizer"], name);
    let model = load_decoder::<B>(&path, &Default::default()).unwrap();
    let c = &model.config;
    let hf = &want["config"];
    for (ours, key) in [
        (c.vocab_size, "vocab_size"),
        (c.hidden_size, "hidden_size"),
        (c.intermediate_size, "intermediate_size"),
        (c.num_hidden_layers, "num_hidden_layers"),
        (c.num_attention_heads, "num_attention_heads"),
        (c.num_key_value_heads, "num_key_value_heads"),
        (c.head_dim, "head_dim"),
        (c.max_position_embeddings, "max_position_embeddings"),
    ] {
        assert_eq!(ours as u64, hf[key].as_u64().unwrap(), "{name}: {key}");
    }
    assert_eq!(
        c.tie_word_embeddings,
        hf["tie_word_embeddings"].as_bool().unwrap()
    );
    assert_eq!(
        c.sliding_window.map(|w| w as u64),
        hf["sliding_window"].as_u64()
    );
    if let Some(types) = hf["layer_types"].as_array() {
        assert_eq!(
            &c.to_hf_json("float32")["layer_types"],
            &Value::Array(types.clone())
        );
    }
    model_parity(&model, &want, name);

    if let Some(chat) = want.get("chat") {
        let template = tok.chat_template.as_deref().expect("a chat template");
        let messages: Vec<ChatMessage> = chat["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage {
                role: m["role"].as_str().unwrap().into(),
                content: m["content"].as_str().unwrap().into(),
            })
            .collect();
        let text = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap();
        let rendered = render_chat(
            template,
            &messages,
            true,
            &text(tok.bos_token_id),
            &text(tok.eos_token_id),
        )
        .unwrap();
        assert_eq!(
            rendered,
            chat["rendered"].as_str().unwrap(),
            "{name}: chat template"
        );
        assert_eq!(tok.encode(&rendered, false).unwrap(), ids_of(&chat["ids"]));
    }
    Some((path, model, tok, want))
}

/// SmolLM2 also checks `ipa generate --chat` end to end, and a merge from the GGUF base
/// (an HF folder that reloads to the adapted model, with the same tokenizer).
#[test]
fn smollm2_matches_hf_transformers() {
    let Some((path, mut model, tok, want)) = parity("smollm2") else {
        return;
    };
    let chat = &want["chat"];
    let (ok, out, err) = ipa(&[
        "generate",
        "--model",
        path.to_str().unwrap(),
        "--chat",
        "--prompt",
        chat["messages"][0]["content"].as_str().unwrap(),
        "--max-new-tokens",
        "12",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        format!("{}\n", chat["new_text"].as_str().unwrap()),
        "--chat"
    );
    // HF's continuation ends with EOS, which is not printed or counted.
    let generated = ids_of(&chat["new_ids"])
        .iter()
        .filter(|&&t| Some(t) != tok.eos_token_id)
        .count();
    assert!(
        err.contains(&format!("{generated} tokens in")) && err.contains("tokens/s"),
        "{err}"
    );

    assert_eq!(
        repository_name(&GgufFile::open(&path).unwrap()),
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    );

    attach_random_adapter(&mut model, 0.05, 11);
    let prompt = ids_of(&want["logits"][0]["ids"]);
    let adapted = last_logits(&model, &prompt);
    let tmp = temp_dir("gguf-smollm2-merge");
    export_merged_standalone(&model, &tok, &tmp).unwrap();
    let mut reloaded = load_decoder::<B>(&tmp, &Default::default()).unwrap();
    assert!(reloaded
        .linears_mut()
        .iter()
        .all(|(_, l)| l.adapter.is_none()));
    let got = last_logits(&reloaded, &prompt);
    let worst = got
        .iter()
        .zip(&adapted)
        .map(|(a, b)| (a - b).abs())
        .fold(0f64, f64::max);
    note(&format!(
        "smollm2: merged checkpoint vs adapted model, max |Δ| = {worst:.2e}"
    ));
    assert!(worst < 1e-3, "merged vs adapted logits: {worst:e}");
    let merged_tok = Tokenizer::load(&tmp).unwrap();
    for s in want["tokenizer"]["strings"].as_array().unwrap() {
        let text = s["text"].as_str().unwrap();
        assert_eq!(
            merged_tok.encode(text, true).unwrap(),
            ids_of(&s["ids"]),
            "{text:?}"
        );
    }
    assert_eq!(merged_tok.chat_template, tok.chat_template);
    assert_eq!(
        (
            merged_tok.bos_token_id,
            merged_tok.eos_token_id,
            merged_tok.pad_token_id
        ),
        (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    );
}

#[test]
fn gemma3_matches_hf_transformers() {
    parity("gemma3");
}

fn ipa(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ipa"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

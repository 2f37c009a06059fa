//! GGUF input without a download: dequantization against llama.cpp's `gguf` Python package
//! (tests/fixtures/gguf/dequant.json, made by tests/fixtures/make_gguf_fixtures.py), the tiny
//! HF fixtures converted to GGUF as llama.cpp's converter does (tests/common/gguf_writer.rs)
//! against HF's logits, and bad files, through the library and the `ipa` binary.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use burn_ipa::adapter::save_adapter;
use burn_ipa::models::config::DecoderConfig;
use burn_ipa::models::generate::{generate, GenerationConfig};
use burn_ipa::models::gguf::dequant::{dequantize, GgmlType};
use burn_ipa::models::gguf::{decoder_config, GgufFile, MetaValue};
use burn_ipa::models::loading::load_decoder;
use burn_ipa::models::tokenizer::Tokenizer;
use burn_ipa::models::ForwardOptions;
use common::gguf_writer::{convert_fixture, fixture_to_gguf, tiny_gpt2_tokenizer, GgufWriter};
use common::*;

type B = TestBackend;

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn every_type_dequantizes_as_the_gguf_package_does() {
    let cases = fixture("gguf/dequant.json");
    let cases = cases.as_object().unwrap();
    assert_eq!(cases.len(), GgmlType::ALL.len());
    for ty in GgmlType::ALL {
        let entry = &cases[ty.name()];
        assert_eq!(entry["id"].as_u64().unwrap() as u32, ty.id(), "{ty:?}");
        assert_eq!(entry["block"].as_u64().unwrap() as usize, ty.block_size());
        assert_eq!(
            entry["type_size"].as_u64().unwrap() as usize,
            ty.type_size()
        );
        for (k, case) in entry["cases"].as_array().unwrap().iter().enumerate() {
            let bytes = hex(case["bytes"].as_str().unwrap());
            let want: Vec<f32> = case["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().parse::<f32>().unwrap())
                .collect();
            let mut got = vec![0f32; want.len()];
            dequantize(ty, &bytes, &mut got).unwrap();
            // The same f32 operations in the same order: bit-identical.
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{ty:?} case {k} value {i}: {g} vs {w}"
                );
            }
            // For the package's own quantizer's output, the values are close to the source.
            if let Some(src) = case.get("source") {
                let src: Vec<f32> = src
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().parse().unwrap())
                    .collect();
                let worst = got
                    .iter()
                    .zip(&src)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(worst < 0.05, "{ty:?}: quantization error {worst}");
            }
        }
    }
}

fn tiny_gguf(name: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{name}.gguf"));
    convert_fixture(&fixture_dir(name), &out);
    out
}

/// A llama.cpp-style GGUF of each tiny fixture loads to HF's logits: names, q/k row
/// permutation (llama), `1 + w` norms (gemma3), biases (qwen2) and the config from metadata.
#[test]
fn tiny_fixtures_as_gguf_match_hf() {
    let tmp = temp_dir("gguf-tiny");
    for name in ["llama2", "qwen2", "gemma3"] {
        let path = tiny_gguf(name, &tmp);
        let expected = fixture(&format!("models/{name}/expected.json"));
        let from_hf = DecoderConfig::from_file(&fixture_dir(name).join("config.json")).unwrap();
        let mut from_gguf = decoder_config(&GgufFile::open(&path).unwrap()).unwrap();
        // The HF configs of the fixtures name no pad token where the GGUF tokenizer has none
        // either; the rest must agree field by field.
        from_gguf.pad_token_id = from_hf.pad_token_id;
        // f32 metadata: θ and ε round-trip through f32.
        assert!((from_gguf.rms_norm_eps - from_hf.rms_norm_eps).abs() < 1e-12);
        from_gguf.rms_norm_eps = from_hf.rms_norm_eps;
        assert_eq!(from_gguf, from_hf, "{name}: config");
        // config.json written from the config reads back to it.
        let json = from_hf.to_hf_json("float32");
        assert_eq!(
            DecoderConfig::from_json(&json, Path::new("config.json")).unwrap(),
            from_hf,
            "{name}: to_hf_json round trip"
        );

        let model = load_decoder::<B>(&path, &Default::default()).unwrap();
        let (ids, mask, [b, s]) = ids_and_mask::<B>(&expected);
        let options = ForwardOptions {
            attention_mask: Some(mask.clone()),
            position_ids: None,
        };
        let got = host(model.forward(ids, &options).unwrap());
        let want: Vec<f64> = expected["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().flat_map(vec1))
            .collect();
        let v = got.len() / (b * s);
        for i in (0..b * s).filter(|&i| mask[i]) {
            assert_close(
                &got[i * v..(i + 1) * v],
                &want[i * v..(i + 1) * v],
                1e-4,
                &format!("{name} position {i}"),
            );
        }
    }
}

fn ipa() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ipa"))
}

/// `ipa generate` on a GGUF file prints what the library's greedy decoding gives, decoded.
#[test]
fn generate_command_on_a_gguf_file() {
    let tmp = temp_dir("gguf-generate");
    let path = tiny_gguf("llama2", &tmp);
    let tokenizer = Tokenizer::load(&path).unwrap();
    let model = load_decoder::<B>(&path, &Default::default()).unwrap();
    let prompt = "abcd";
    let ids = tokenizer.encode(prompt, true).unwrap();
    // The tiny tokenizer: one token per character, ids in the byte alphabet's order.
    assert_eq!(ids, vec![64, 65, 66, 67]);
    let mut config = GenerationConfig::greedy(&model, 6);
    config.eos_token_ids = vec![2];
    let want = generate(&model, &[ids], &config).unwrap();
    let want_text = tokenizer.decode(&want[0], true).unwrap();
    assert!(!want_text.is_empty());
    let out = ipa()
        .args(["generate", "--model"])
        .arg(&path)
        .args(["--prompt", prompt, "--max-new-tokens", "6"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{want_text}\n")
    );
    assert!(stderr.contains("tokens/s"), "{stderr}");
    assert!(
        stderr.contains(&format!("{} tokens in", want[0].len())),
        "{stderr}"
    );

    // --max-new-tokens bounds the output; --chat needs a template the file lacks.
    let out = ipa()
        .args(["generate", "--model"])
        .arg(&path)
        .args(["--prompt", prompt, "--max-new-tokens", "2"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 tokens in"));
    let out = ipa()
        .args(["generate", "--chat", "--model"])
        .arg(&path)
        .args(["--prompt", prompt])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no chat template"));
}

fn minimal(w: &mut GgufWriter) {
    w.meta("general.architecture", MetaValue::Str("llama".into()));
    tiny_gpt2_tokenizer(w, 8, 0, 1);
    w.f32_tensor("output_norm.weight", &[4], &[1.0; 4]);
}

/// The error of `ipa generate --model <path>`, which must fail cleanly.
fn cli_error(path: &Path) -> String {
    let out = ipa()
        .args(["generate", "--model"])
        .arg(path)
        .args(["--prompt", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(1), "exit code (not a panic)");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_files_are_clear_errors() {
    let tmp = temp_dir("gguf-bad");
    let good = {
        let mut w = GgufWriter::default();
        minimal(&mut w);
        w.to_bytes()
    };
    assert!(GgufFile::open(&{
        let p = tmp.join("good.gguf");
        std::fs::write(&p, &good).unwrap();
        p
    })
    .is_ok());

    // Wrong magic.
    let p = tmp.join("magic.gguf");
    let mut bytes = good.clone();
    bytes[..4].copy_from_slice(b"GGML");
    std::fs::write(&p, &bytes).unwrap();
    let e = cli_error(&p);
    assert!(
        e.contains("magic.gguf") && e.contains("not a GGUF file"),
        "{e}"
    );

    // Truncated: in the header, and in the tensor data.
    for (name, keep) in [("cut-header.gguf", 100), ("cut-data.gguf", good.len() - 24)] {
        let p = tmp.join(name);
        std::fs::write(&p, &good[..keep]).unwrap();
        let e = cli_error(&p);
        assert!(e.contains(name) && e.contains("truncated"), "{name}: {e}");
    }
    let p = tmp.join("tiny.gguf");
    std::fs::write(&p, b"GG").unwrap();
    assert!(cli_error(&p).contains("shorter than the header"));

    // A corrupt string length is an error, not an allocation of 2^60 bytes.
    let p = tmp.join("length.gguf");
    let mut bytes = good.clone();
    bytes[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    let e = GgufFile::open(&p).unwrap_err().to_string();
    assert!(e.contains("truncated or corrupt"), "{e}");

    // An unknown quantization type names the tensor and the type.
    let p = tmp.join("iq2.gguf");
    let mut w = GgufWriter::default();
    minimal(&mut w);
    w.tensors.push((
        "blk.0.attn_q.weight".into(),
        vec![256, 4],
        16,
        vec![0; 66 * 4],
    ));
    w.write(&p);
    let e = cli_error(&p);
    assert!(
        e.contains("blk.0.attn_q.weight")
            && e.contains("IQ2_XXS")
            && e.contains("does not dequantize"),
        "{e}"
    );

    // A missing tokenizer key names the key.
    let p = tmp.join("no-tokens.gguf");
    let mut w = GgufWriter::default();
    minimal(&mut w);
    w.remove_meta("tokenizer.ggml.tokens");
    w.write(&p);
    let e = Tokenizer::load(&p).err().expect("an error").to_string();
    assert!(
        e.contains("no-tokens.gguf") && e.contains("`tokenizer.ggml.tokens`: missing"),
        "{e}"
    );
    let e = cli_error(&p);
    assert!(e.contains("`tokenizer.ggml.tokens`: missing"), "{e}");

    // An unsupported architecture names the key.
    let p = tmp.join("arch.gguf");
    let mut w = GgufWriter::default();
    minimal(&mut w);
    w.meta("general.architecture", MetaValue::Str("mamba".into()));
    w.write(&p);
    let e = load_decoder::<B>(&p, &Default::default())
        .expect_err("an error")
        .to_string();
    assert!(
        e.contains("`general.architecture`") && e.contains("mamba"),
        "{e}"
    );

    // A path that is neither a folder nor a file.
    let e = cli_error(&tmp.join("missing.gguf"));
    assert!(e.contains("no such model folder or GGUF file"), "{e}");
}

fn run_ipa(args: &[&std::ffi::OsStr]) -> (String, String) {
    let out = ipa().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "ipa {args:?}: {stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

macro_rules! os_args {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new($a)),*] };
}

/// `ipa generate`'s flags on a GGUF base, each against the library: --num-beams,
/// --prompts-file, --adapter, --chat.
#[test]
fn generate_flags_on_a_gguf_file() {
    let tmp = temp_dir("gguf-generate-flags");
    let fixture = fixture_dir("llama2");
    let path = tmp.join("tiny.gguf");
    convert_fixture(&fixture, &path);
    // The same model with a chat template.
    let chat_path = tmp.join("chat.gguf");
    let mut w = fixture_to_gguf(&fixture);
    w.meta(
        "tokenizer.chat_template",
        MetaValue::Str(
            "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}\n\
             {% if add_generation_prompt %}<bot>{% endif %}"
                .into(),
        ),
    );
    w.write(&chat_path);
    let tokenizer = Tokenizer::load(&path).unwrap();
    let mut model = load_decoder::<B>(&path, &Default::default()).unwrap();
    let mut config = GenerationConfig::greedy(&model, 6);
    config.eos_token_ids = vec![2];
    let text = |ids: &[u32]| tokenizer.decode(ids, true).unwrap();
    let p = path.as_os_str();

    // --num-beams 3: the library's beam search.
    let beam = generate(
        &model,
        &[tokenizer.encode("abcd", true).unwrap()],
        &config.clone().with_beams(3),
    )
    .unwrap();
    let (out, _) = run_ipa(os_args![
        "generate",
        "--model",
        p,
        "--prompt",
        "abcd",
        "--max-new-tokens",
        "6",
        "--num-beams",
        "3"
    ]);
    assert_eq!(out, format!("{}\n", text(&beam[0])));

    // --prompts-file: each line a prompt, empty lines skipped.
    let prompts = tmp.join("prompts.txt");
    std::fs::write(&prompts, "abcd\n\nxyz\n").unwrap();
    let want: Vec<String> = ["abcd", "xyz"]
        .iter()
        .map(|p| {
            text(&generate(&model, &[tokenizer.encode(p, true).unwrap()], &config).unwrap()[0])
        })
        .collect();
    let (out, err) = run_ipa(os_args![
        "generate",
        "--model",
        p,
        "--prompts-file",
        prompts.as_os_str(),
        "--max-new-tokens",
        "6"
    ]);
    assert_eq!(out, format!("{}\n{}\n", want[0], want[1]));
    assert!(err.contains("[2/2] xyz"), "{err}");

    // --adapter: the adapted model's continuation, not the base's.
    let adapter_config = attach_random_adapter(&mut model, 1.0, 11);
    let adapter = tmp.join("adapter");
    save_adapter(&model, &adapter_config, BTreeMap::new(), &adapter).unwrap();
    let adapted = generate(&model, &[tokenizer.encode("abcd", true).unwrap()], &config).unwrap();
    assert_ne!(
        text(&adapted[0]),
        want[0],
        "the adapter changes the continuation"
    );
    let (out, _) = run_ipa(os_args![
        "generate",
        "--model",
        p,
        "--adapter",
        adapter.as_os_str(),
        "--prompt",
        "abcd",
        "--max-new-tokens",
        "6"
    ]);
    assert_eq!(out, format!("{}\n", text(&adapted[0])));

    // --chat: the prompt goes through the template ("<user>abcd<bot>").
    let templated = tokenizer.encode("<user>abcd<bot>", false).unwrap();
    let base = load_decoder::<B>(&path, &Default::default()).unwrap();
    let chat = generate(&base, &[templated], &config).unwrap();
    let (out, _) = run_ipa(os_args![
        "generate",
        "--model",
        chat_path.as_os_str(),
        "--chat",
        "--prompt",
        "abcd",
        "--max-new-tokens",
        "6"
    ]);
    assert_eq!(out, format!("{}\n", text(&chat[0])));
    assert_ne!(text(&chat[0]), want[0], "the template changes the prompt");
}

/// `ipa merge` and `ipa export --format peft` from a GGUF base: an HF folder that reloads to
/// the adapted model with the same tokenizer, and a peft adapter naming the base by the
/// repository its metadata and file name give.
#[test]
fn merge_and_export_from_a_gguf_file() {
    let tmp = temp_dir("gguf-merge-export");
    let path = tmp.join("Tiny-Llama.F32.gguf");
    let mut w = fixture_to_gguf(&fixture_dir("llama2"));
    w.meta("general.organization", MetaValue::Str("tinyorg".into()));
    w.write(&path);
    let mut model = load_decoder::<B>(&path, &Default::default()).unwrap();
    let config = attach_random_adapter(&mut model, 1.0, 11);
    let adapter = tmp.join("adapter");
    save_adapter(&model, &config, BTreeMap::new(), &adapter).unwrap();
    let expected = fixture("models/llama2/expected.json");
    let (ids, mask, _) = ids_and_mask::<B>(&expected);
    let options = ForwardOptions {
        attention_mask: Some(mask.clone()),
        position_ids: None,
    };
    let adapted = host(model.forward(ids.clone(), &options).unwrap());

    let merged = tmp.join("merged");
    let p = path.as_os_str();
    run_ipa(os_args![
        "merge",
        "--model",
        p,
        "--adapter",
        adapter.as_os_str(),
        "--out",
        merged.as_os_str()
    ]);
    let mut reloaded = load_decoder::<B>(&merged, &Default::default()).unwrap();
    assert!(reloaded
        .linears_mut()
        .iter()
        .all(|(_, l)| l.adapter.is_none()));
    let got = host(reloaded.forward(ids, &options).unwrap());
    let v = got.len() / mask.len();
    for i in (0..mask.len()).filter(|&i| mask[i]) {
        assert_close(
            &got[i * v..(i + 1) * v],
            &adapted[i * v..(i + 1) * v],
            1e-4,
            "merged",
        );
    }
    let config_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config_json["architectures"][0], "LlamaForCausalLM");
    let (a, b) = (
        Tokenizer::load(&path).unwrap(),
        Tokenizer::load(&merged).unwrap(),
    );
    for text in ["abcd", "hello world", "~!"] {
        assert_eq!(a.encode(text, true).unwrap(), b.encode(text, true).unwrap());
    }
    assert_eq!(
        (a.bos_token_id, a.eos_token_id),
        (b.bos_token_id, b.eos_token_id)
    );

    let peft = tmp.join("peft");
    let (out, _) = run_ipa(os_args![
        "export",
        "--format",
        "peft",
        "--model",
        p,
        "--adapter",
        adapter.as_os_str(),
        "--out",
        peft.as_os_str()
    ]);
    assert!(out.contains("tinyorg/Tiny-Llama"), "{out}");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(written["base_model_name_or_path"], "tinyorg/Tiny-Llama");
    // --base-model-name still wins.
    run_ipa(os_args![
        "export",
        "--format",
        "peft",
        "--model",
        p,
        "--adapter",
        adapter.as_os_str(),
        "--out",
        peft.as_os_str(),
        "--overwrite",
        "--base-model-name",
        "me/mine"
    ]);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(written["base_model_name_or_path"], "me/mine");
}

/// A checkpoint without one of the model's weights, or with a tensor the model has no place
/// for, is refused naming the tensor — through both loading routes.
#[test]
fn missing_and_unknown_tensors_are_named() {
    let tmp = temp_dir("gguf-missing");
    // GGUF: drop a tensor, then add an unknown one.
    let mut w = fixture_to_gguf(&fixture_dir("llama2"));
    w.tensors.retain(|t| t.0 != "blk.1.ffn_up.weight");
    let p = tmp.join("missing.gguf");
    w.write(&p);
    let e = load_decoder::<B>(&p, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.layers.1.mlp.up_proj") && e.contains("not in the file"),
        "{e}"
    );
    let mut w = fixture_to_gguf(&fixture_dir("llama2"));
    w.f32_tensor("blk.9.attn_q.weight", &[64, 64], &[0.0; 64 * 64]);
    let p = tmp.join("extra.gguf");
    w.write(&p);
    let e = load_decoder::<B>(&p, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("blk.9.attn_q.weight") && e.contains("no parameter"),
        "{e}"
    );
    let mut w = fixture_to_gguf(&fixture_dir("llama2"));
    w.f32_tensor("blk.0.attn_q.weight.scale", &[1], &[0.0]);
    let p = tmp.join("odd.gguf");
    w.write(&p);
    let e = load_decoder::<B>(&p, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("blk.0.attn_q.weight.scale") && e.contains("not a tensor of"),
        "{e}"
    );

    // safetensors: the same two faults in a copy of the fixture folder.
    let src = fixture_dir("llama2");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let write_variant = |name: &str, drop: &str, extra: Option<&str>| {
        let dir = tmp.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
        let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
            .tensors()
            .into_iter()
            .filter(|(n, _)| n != drop)
            .collect();
        let zeros = vec![0u8; 4 * 64];
        if let Some(extra) = extra {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![64], &zeros)
                .unwrap();
            views.push((extra.to_string(), v));
        }
        let out = safetensors::tensor::serialize(views, None).unwrap();
        std::fs::write(dir.join("model.safetensors"), out).unwrap();
        dir
    };
    let dir = write_variant("st-missing", "model.layers.1.mlp.up_proj.weight", None);
    let e = load_decoder::<B>(&dir, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.layers.1.mlp.up_proj") && e.contains("missing from the checkpoint"),
        "{e}"
    );
    let dir = write_variant("st-extra", "", Some("model.layers.0.mlp.extra.weight"));
    let e = load_decoder::<B>(&dir, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.layers.0.mlp.extra.weight") && e.contains("no such parameter"),
        "{e}"
    );
}

/// `ipa fit`, `train` (with `--resume`) and `eval` take a GGUF file as `--model`; a resume
/// against a different GGUF at the same path is refused, naming what changed.
#[test]
fn fit_train_and_eval_from_a_gguf_file() {
    let ws = Workspace::new("gguf-pipeline", 6, 2);
    let model = ws.path("Tiny-Llama.F32.gguf");
    // One token per character: the evaluation prompt needs more than the fixture's 128
    // positions (RoPE has no table to outgrow).
    let longer = || {
        let mut w = fixture_to_gguf(&fixture_dir("llama2"));
        w.meta("llama.context_length", MetaValue::U32(512));
        w
    };
    longer().write(&model);
    let (m, data) = (s(&model).to_string(), s(&ws.train_json()).to_string());
    let fit = ws.path("fit");
    ipa_ok(&[
        "fit",
        "--model",
        &m,
        "--data",
        &data,
        "--rank",
        "2",
        "--cutoff",
        "64",
        "--val-set-size",
        "4",
        "--fit-fraction",
        "1",
        "--out",
        s(&fit),
        "--quiet",
    ]);
    let projectors = tensors(&fit.join("projectors.safetensors"));
    assert!(!projectors.is_empty());
    assert!(projectors.values().all(|p| p.iter().any(|v| *v != 0.0)));
    // Each site's explained variance per component is in the file's metadata, largest first.
    let bytes = std::fs::read(fit.join("projectors.safetensors")).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    for site in projectors.keys() {
        let values: Vec<f64> =
            serde_json::from_str(&meta[&format!("{site}.explained_variance")]).unwrap();
        assert_eq!(values.len(), 2, "{site}");
        assert!(
            values[0] >= values[1] && values[1] > 0.0,
            "{site}: {values:?}"
        );
    }

    let run = ws.path("run");
    let train = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "train",
            "--model",
            &m,
            "--data",
            &data,
            "--rank",
            "2",
            "--cutoff",
            "64",
            "--val-set-size",
            "4",
            "--batch-size",
            "4",
            "--micro-batch-size",
            "2",
            "--checkpoint-every",
            "1",
            "--projectors",
            s(&fit),
            "--keep",
            "last",
            "--out",
            s(&run),
            "--quiet",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        a.extend(extra.iter().map(|a| a.to_string()));
        a
    };
    ipa_ok(&train(&["--max-steps", "2"]));
    let config = std::fs::read_to_string(run.join("train_config.json")).unwrap();
    assert!(config.contains("gguf_header_sha256"), "{config}");
    ipa_ok(&train(&["--max-steps", "3", "--resume"]));
    assert!(run.join("adapter/adapter_model.safetensors").is_file());

    eval_short_task(&ws, &m, Some(&run.join("adapter")));

    // Another model at the same path: its metadata differs, and the resume says so.
    let mut w = longer();
    w.meta("general.name", MetaValue::Str("another model".into()));
    w.write(&model);
    ipa_err(
        &train(&["--max-steps", "4", "--resume"]),
        &["gguf_header_sha256"],
    );
}

/// `ipa train --method weights` and `--method full` from a GGUF file: the result is a new HF
/// checkpoint (there are no source safetensors to mirror) that `ipa eval` loads; with
/// `--targets q_proj,v_proj` only those weights differ from the base's (the HF fixture the
/// GGUF was converted from, F32, so equal bit for bit), with `full` the others move too.
#[test]
fn weights_and_full_fine_tuning_from_a_gguf_file() {
    let ws = Workspace::new("gguf-weights", 6, 2);
    let model = ws.path("Tiny-Llama.F32.gguf");
    let mut w = fixture_to_gguf(&fixture_dir("llama2"));
    w.meta("llama.context_length", MetaValue::U32(512));
    w.write(&model);
    let base = tensors(&fixture_dir("llama2").join("model.safetensors"));
    let (m, data) = (s(&model).to_string(), s(&ws.train_json()).to_string());
    let train = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "train",
            "--model",
            &m,
            "--data",
            &data,
            "--cutoff",
            "64",
            "--val-set-size",
            "4",
            "--batch-size",
            "4",
            "--micro-batch-size",
            "2",
            "--max-steps",
            "2",
            "--learning-rate",
            "1e-3",
            "--out",
            s(out),
            "--quiet",
        ];
        a.extend_from_slice(extra);
        ipa_ok(&a);
        tensors(&out.join("model/model.safetensors"))
    };
    let qv = train(
        &ws.path("qv"),
        &["--method", "weights", "--targets", "q_proj,v_proj"],
    );
    let full = train(&ws.path("full"), &["--method", "full"]);
    for (name, values) in &base {
        let trained = |t: &BTreeMap<String, Vec<f32>>| {
            t.get(name)
                .unwrap_or_else(|| panic!("`{name}` is not in the trained checkpoint"))
                != values
        };
        let targeted = name.contains("q_proj") || name.contains("v_proj");
        assert_eq!(trained(&qv), targeted, "{name} (q,v run)");
        if name.ends_with("proj.weight") {
            assert!(trained(&full), "{name} (full run)");
        }
    }
    for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        assert!(ws.path("qv/model").join(file).is_file(), "{file}");
    }
    eval_short_task(&ws, s(&ws.path("qv/model")), None);
}

/// `ipa eval` of `model` (with `adapter`) on a task of two short questions (the tiny models
/// have 128 positions), which must write its accuracy.
fn eval_short_task(ws: &Workspace, model: &str, adapter: Option<&Path>) {
    let tasks = ws.path("tasks");
    std::fs::create_dir_all(tasks.join("short")).unwrap();
    std::fs::write(
        tasks.join("short/test.json"),
        r#"[{"instruction": "is a cat a pet?", "input": "", "output": "true", "answer": "true"},
            {"instruction": "is a rock a pet?", "input": "", "output": "false", "answer": "false"}]"#,
    )
    .unwrap();
    let eval = ws.path("eval");
    let mut args = vec!["eval", "--model", model];
    if let Some(adapter) = adapter {
        args.extend(["--adapter", s(adapter)]);
    }
    args.extend([
        "--data-dir",
        s(&tasks),
        "--tasks",
        "short",
        "--num-beams",
        "1",
        "--max-new-tokens",
        "2",
        "--out",
        s(&eval),
        "--overwrite",
        "--quiet",
    ]);
    ipa_ok(&args);
    assert!(eval.join("accuracy.json").is_file());
}

//! HF peft export and merged-checkpoint export of the decoders, against adapters that HF peft
//! made and saved on the tiny Llama-3 fixture and the multimodal Gemma-3 fixture
//! (`tests/fixtures/peft_export/`, made by `tests/fixtures/make_peft_export_fixtures.py`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{Distribution, Int, Tensor};
use burn_ipa::adapter::{AdapterConfig, ProjectorInit, Scaling};
use burn_ipa::export::{
    decoder_linears, export_merged, export_merged_with, export_peft, export_peft_for, load_peft,
    PeftLayout, WeightDtype,
};
use burn_ipa::models::loading::{load_decoder, safetensors_keys};
use burn_ipa::models::{Decoder, ForwardOptions};
use burn_ipa::Error;
use common::*;
use safetensors::SafeTensors;
use serde_json::Value;

type B = TestBackend;

const BASE_REL: &str = "tests/fixtures/models/llama3";
const GEMMA3_MM_REL: &str = "tests/fixtures/models/gemma3_mm";

/// The base checkpoint a peft fixture case was made on.
fn case_base(case: &str) -> &'static str {
    if case == "gemma3_mm" {
        GEMMA3_MM_REL
    } else {
        BASE_REL
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn base_dir() -> PathBuf {
    root().join(BASE_REL)
}

fn peft_dir(case: &str) -> PathBuf {
    root().join("tests/fixtures/peft_export").join(case)
}

fn temp_dir(tag: &str) -> TempDir {
    common::temp_dir(&format!("export-{tag}"))
}

fn expected(case: &str) -> Value {
    fixture(&format!("peft_export/{case}/expected.json"))
}

fn inputs(expected: &Value) -> (Tensor<B, 2, Int>, ForwardOptions) {
    let (ids, mask, _) = ids_and_mask::<B>(expected);
    let options = ForwardOptions {
        attention_mask: Some(mask),
        position_ids: None,
    };
    (ids, options)
}

fn logits(model: &Decoder<B>, expected: &Value) -> Vec<f64> {
    let (ids, options) = inputs(expected);
    host(model.forward(ids, &options).unwrap())
}

/// Compares logits at the real (unpadded) positions: HF's values at padded queries are
/// arbitrary.
#[track_caller]
fn compare(got: &[f64], want: &[f64], expected: &Value, tol: f64, what: &str) {
    let (_, options) = inputs(expected);
    let mask = options.attention_mask.unwrap();
    let v = got.len() / mask.len();
    assert_eq!(got.len(), want.len(), "{what}: size");
    for (i, keep) in mask.iter().enumerate() {
        if *keep {
            assert_close(
                &got[i * v..(i + 1) * v],
                &want[i * v..(i + 1) * v],
                tol,
                &format!("{what}: position {i}"),
            );
        }
    }
}

fn flat(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(flat).collect(),
        other => vec![other.as_f64().unwrap()],
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// name → (dtype, shape, raw bytes) of a safetensors file.
fn tensors(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                (
                    format!("{:?}", view.dtype()),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                ),
            )
        })
        .collect()
}

/// `target_modules` as a set: a list's names, or a regex as one string.
fn string_set(v: &Value) -> BTreeSet<String> {
    match v.as_str() {
        Some(regex) => BTreeSet::from([regex.to_string()]),
        None => v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect(),
    }
}

fn peft_model(case: &str) -> (Decoder<B>, burn_ipa::export::PeftAdapter) {
    let mut model = load_decoder::<B>(&root().join(case_base(case)), &Default::default()).unwrap();
    let loaded = load_peft(&mut model, &peft_dir(case)).unwrap();
    (model, loaded)
}

fn peft_roundtrip(case: &str) {
    let exp = expected(case);
    let (model, loaded) = peft_model(case);
    let peft_config = read_json(&peft_dir(case).join("adapter_config.json"));

    // What load_peft read.
    let theirs = tensors(&peft_dir(case).join("adapter_model.safetensors"));
    assert_eq!(
        loaded.layers.len(),
        5 * model.config.num_hidden_layers,
        "{case}: 5 targets"
    );
    let per_layer = if case == "dora" { 3 } else { 2 };
    assert_eq!(
        loaded.layers.len() * per_layer,
        theirs.len(),
        "{case}: A, B (and DoRA's magnitude) per layer"
    );
    assert_eq!(loaded.base_model.as_deref(), Some(case_base(case)));
    assert_eq!(loaded.config.rank, 4);
    assert_eq!(loaded.config.dora, case == "dora");
    assert!((loaded.config.scale() - exp["scaling"].as_f64().unwrap()).abs() < 1e-12);

    // Our forward with peft's adapters gives peft's logits.
    let ours = logits(&model, &exp);
    compare(
        &ours,
        &flat(&exp["logits"]),
        &exp,
        1e-4,
        &format!("{case}: peft logits"),
    );

    // Re-exported: the same tensors, bit for bit, and the same config fields.
    let out = temp_dir(&format!("peft-{case}"));
    let layout = PeftLayout::of_checkpoint(&root().join(case_base(case))).unwrap();
    assert_eq!(layout == PeftLayout::Gemma3Multimodal, case == "gemma3_mm");
    export_peft_for(&model, &loaded.config, case_base(case), layout, &out).unwrap();
    let mine = tensors(&out.join("adapter_model.safetensors"));
    assert_eq!(
        mine.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "{case}: tensor names"
    );
    for (name, (dtype, shape, bytes)) in &theirs {
        let (my_dtype, my_shape, my_bytes) = &mine[name];
        assert_eq!(my_dtype, dtype, "{name}");
        assert_eq!(my_shape, shape, "{name}");
        assert!(my_bytes == bytes, "{name}: values differ");
    }
    let config = read_json(&out.join("adapter_config.json"));
    for key in [
        "peft_type",
        "task_type",
        "r",
        "use_dora",
        "use_rslora",
        "bias",
        "fan_in_fan_out",
        "base_model_name_or_path",
    ] {
        assert_eq!(config[key], peft_config[key], "{case}: {key}");
    }
    for key in ["lora_alpha", "lora_dropout"] {
        assert_eq!(
            config[key].as_f64(),
            peft_config[key].as_f64(),
            "{case}: {key}"
        );
    }
    assert_eq!(
        string_set(&config["target_modules"]),
        string_set(&peft_config["target_modules"]),
        "{case}: target_modules"
    );

    // And the export loads back to the same model.
    let mut again = load_decoder::<B>(&root().join(case_base(case)), &Default::default()).unwrap();
    let reloaded = load_peft(&mut again, &out).unwrap();
    assert_eq!(reloaded.config, loaded.config);
    assert_eq!(reloaded.layers, loaded.layers);
    compare(
        &logits(&again, &exp),
        &ours,
        &exp,
        1e-6,
        &format!("{case}: reloaded"),
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn peft_lora_adapter_loads_with_peft_logits_and_exports_as_peft_wrote_it() {
    peft_roundtrip("lora");
}

#[test]
fn peft_adapter_of_a_multimodal_gemma3_loads_with_peft_logits_and_exports_as_peft_wrote_it() {
    peft_roundtrip("gemma3_mm");
}

#[test]
fn peft_dora_rslora_adapter_loads_with_peft_logits_and_exports_as_peft_wrote_it() {
    peft_roundtrip("dora");
}

/// Sets every adapter's `B` to random values so the adapters change the output.
fn randomize_up(model: &mut Decoder<B>) {
    for (_, linear) in model.linears_mut() {
        if let Some(a) = linear.adapter.as_mut() {
            let dims = a.up.val().shape().dims::<2>();
            a.up = Param::from_tensor(Tensor::random(
                dims,
                Distribution::Normal(0.0, 0.1),
                &Default::default(),
            ));
        }
    }
}

#[test]
fn ipa_adapter_exports_as_lora_with_alpha_scale_times_rank() {
    let exp = expected("lora");
    let mut model = load_decoder::<B>(&base_dir(), &Default::default()).unwrap();
    let config = AdapterConfig::ipa(4).with_dora(true);
    let targets: Vec<String> = ["q_proj", "v_proj", "down_proj"].map(String::from).into();
    model
        .attach_adapters(&targets, None, &config, |_| ProjectorInit::KaimingUniform)
        .unwrap();
    randomize_up(&mut model);
    let before = logits(&model, &exp);

    let out = temp_dir("ipa");
    export_peft(&model, &config, "my-base", &out).unwrap();
    let written = read_json(&out.join("adapter_config.json"));
    assert_eq!(written["lora_alpha"], 1, "0.25 · 4");
    assert_eq!(written["use_rslora"], false);
    assert_eq!(written["use_dora"], true);
    assert_eq!(written["r"], 4);
    assert_eq!(written["base_model_name_or_path"], "my-base");
    assert_eq!(
        string_set(&written["target_modules"]),
        ["down_proj", "q_proj", "v_proj"].map(String::from).into()
    );
    let names = tensors(&out.join("adapter_model.safetensors"));
    assert_eq!(
        names.len(),
        3 * 2 * 3,
        "A, B and magnitude of 3 targets in 2 layers"
    );
    let (_, shape, _) = &names["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"];
    assert_eq!(shape, &[4, 128]);

    // Loaded back as LoRA with alpha = 1: the same function.
    let mut again = load_decoder::<B>(&base_dir(), &Default::default()).unwrap();
    let loaded = load_peft(&mut again, &out).unwrap();
    assert!((loaded.config.scale() - 0.25).abs() < 1e-15);
    assert!(loaded.config.dora);
    // The reloaded adapter computes in another order (peft's layout, the scale in alpha):
    // the same function to f32 rounding through two layers.
    compare(&logits(&again, &exp), &before, &exp, 1e-5, "ipa reloaded");

    // Adapters on some layers only: target_modules becomes a full-match pattern.
    let mut partial = load_decoder::<B>(&base_dir(), &Default::default()).unwrap();
    let lora = AdapterConfig::lora(2);
    partial
        .attach_adapters(&targets, Some(&[1]), &lora, |_| {
            ProjectorInit::KaimingUniform
        })
        .unwrap();
    let out2 = temp_dir("partial");
    export_peft(&partial, &lora, "my-base", &out2).unwrap();
    let written = read_json(&out2.join("adapter_config.json"));
    assert_eq!(
        written["target_modules"],
        "^(?:model\\.layers\\.1\\.self_attn\\.q_proj|model\\.layers\\.1\\.self_attn\\.v_proj\
         |model\\.layers\\.1\\.mlp\\.down_proj)$"
    );
    assert_eq!(written["lora_alpha"], 4);
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&out2);
}

fn merged_case(case: &str) {
    let exp = expected(case);
    let (model, _) = peft_model(case);
    let adapted = logits(&model, &exp);
    let out = temp_dir(&format!("merged-{case}"));
    export_merged(&model, &base_dir(), &out).unwrap();

    // The model passed in is untouched.
    assert!(decoder_linears(&model).iter().all(|(_, l)| !l.is_merged()));
    // Same tensor names, shapes and dtypes as the source; config and generation config copied,
    // nothing else.
    let source = tensors(&base_dir().join("model.safetensors"));
    let written = tensors(&out.join("model.safetensors"));
    assert_eq!(
        written.keys().collect::<Vec<_>>(),
        source.keys().collect::<Vec<_>>()
    );
    for (name, (dtype, shape, bytes)) in &source {
        assert_eq!(
            (&written[name].0, &written[name].1),
            (dtype, shape),
            "{name}"
        );
        let merged_weight = name.contains("q_proj")
            || name.contains("k_proj")
            || name.contains("v_proj")
            || name.contains("up_proj")
            || name.contains("down_proj");
        assert_eq!(written[name].2 != *bytes, merged_weight, "{name}: changed");
    }
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["config.json", "generation_config.json", "model.safetensors"]
    );
    assert_eq!(
        std::fs::read(out.join("config.json")).unwrap(),
        std::fs::read(base_dir().join("config.json")).unwrap()
    );

    // It loads as a plain model with the adapted model's logits (and peft's merged ones).
    let reloaded = load_decoder::<B>(&out, &Default::default()).unwrap();
    assert!(decoder_linears(&reloaded)
        .iter()
        .all(|(_, l)| l.adapter.is_none()));
    let got = logits(&reloaded, &exp);
    compare(
        &got,
        &adapted,
        &exp,
        1e-5,
        &format!("{case}: merged vs adapted"),
    );
    compare(
        &got,
        &flat(&exp["logits_merged"]),
        &exp,
        1e-4,
        &format!("{case}: merged vs peft merge_and_unload"),
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn merged_lora_checkpoint_reloads_with_the_adapted_logits() {
    merged_case("lora");
}

#[test]
fn merged_dora_checkpoint_reloads_with_the_adapted_logits() {
    merged_case("dora");
}

#[test]
fn merged_export_keeps_bf16_and_shards_or_writes_f32() {
    let exp = expected("lora");
    // A bf16 source checkpoint split into two shards with an index.
    let src = temp_dir("bf16-src");
    std::fs::copy(base_dir().join("config.json"), src.join("config.json")).unwrap();
    let bytes = std::fs::read(base_dir().join("model_bf16.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let all = file.tensors();
    let (first, second): (Vec<_>, Vec<_>) = all
        .iter()
        .cloned()
        .partition(|(name, _)| name.contains("layers.0.") || name.contains("embed"));
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        for (name, _) in &part {
            weight_map.insert(name.clone(), Value::from(shard));
        }
        let data = safetensors::tensor::serialize(part, None).unwrap();
        std::fs::write(src.join(shard), data).unwrap();
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        src.join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();

    let mut model = load_decoder::<B>(&src, &Default::default()).unwrap();
    load_peft(&mut model, &peft_dir("lora")).unwrap();
    let adapted = logits(&model, &exp);

    // Source dtype: bf16 shards, same layout.
    let out = temp_dir("bf16-out");
    export_merged(&model, &src, &out).unwrap();
    let index = read_json(&out.join("model.safetensors.index.json"));
    let mut total = 0;
    for shard in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        let t = tensors(&out.join(shard));
        assert!(t.values().all(|(dtype, _, _)| dtype == "BF16"), "{shard}");
        assert_eq!(
            safetensors_keys(&out.join(shard)).unwrap().len(),
            safetensors_keys(&src.join(shard)).unwrap().len()
        );
        total += t.values().map(|(_, _, b)| b.len()).sum::<usize>();
    }
    assert_eq!(index["metadata"]["total_size"], total);
    assert_eq!(index["weight_map"], Value::Object(weight_map));
    let reloaded = load_decoder::<B>(&out, &Default::default()).unwrap();
    // The merged weights are rounded to bf16 (8 significant bits).
    compare(
        &logits(&reloaded, &exp),
        &adapted,
        &exp,
        3e-2,
        "bf16 merged",
    );

    // f32: exact merge, config says float32.
    let out32 = temp_dir("f32-out");
    export_merged_with(&model, &src, &out32, WeightDtype::F32).unwrap();
    let t = tensors(&out32.join("model-00002-of-00002.safetensors"));
    assert!(t.values().all(|(dtype, _, _)| dtype == "F32"));
    assert_eq!(read_json(&out32.join("config.json"))["dtype"], "float32");
    let reloaded = load_decoder::<B>(&out32, &Default::default()).unwrap();
    compare(&logits(&reloaded, &exp), &adapted, &exp, 1e-5, "f32 merged");
    for dir in [src, out, out32] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn exports_refuse_models_without_adapters_and_unwritable_places() {
    let plain = load_decoder::<B>(&base_dir(), &Default::default()).unwrap();
    let out = temp_dir("errors");
    let err = export_peft(&plain, &AdapterConfig::lora(4), "base", &out.join("a")).unwrap_err();
    assert!(matches!(err, Error::State(_)), "{err}");
    let err = export_merged(&plain, &base_dir(), &out.join("m")).unwrap_err();
    assert!(matches!(err, Error::State(_)), "{err}");
    assert!(!out.join("a").exists() && !out.join("m").exists());

    let (model, loaded) = peft_model("lora");
    // A directory below a regular file cannot be created.
    let blocker = out.join("file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let err = export_peft(&model, &loaded.config, "base", &blocker.join("sub")).unwrap_err();
    assert!(matches!(err, Error::File { .. }), "{err}");
    let err = export_merged(&model, &base_dir(), &blocker.join("sub")).unwrap_err();
    assert!(matches!(err, Error::File { .. }), "{err}");

    // A configuration that is not the adapters' own.
    let other = AdapterConfig::lora(4).with_scaling(Scaling::Factor(0.5));
    let err = export_peft(&model, &other, "base", &out.join("b")).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(
        err.to_string().contains("model.layers.0.self_attn.q_proj"),
        "{err}"
    );

    // The source cannot be overwritten, and must hold the model's weights.
    let err = export_merged(&model, &base_dir(), &base_dir()).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    let err = export_merged(
        &model,
        &root().join("tests/fixtures/models/qwen2"),
        &out.join("q"),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("not in the source checkpoint"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn load_peft_rejects_what_it_cannot_represent() {
    let dir = temp_dir("bad-peft");
    let src = peft_dir("lora");
    let weights = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), &weights).unwrap();
    let config = read_json(&src.join("adapter_config.json"));
    let mut model = load_decoder::<B>(&base_dir(), &Default::default()).unwrap();
    let try_with = |edit: &dyn Fn(&mut Value), model: &mut Decoder<B>| {
        let mut c = config.clone();
        edit(&mut c);
        std::fs::write(
            dir.join("adapter_config.json"),
            serde_json::to_vec(&c).unwrap(),
        )
        .unwrap();
        load_peft(model, &dir).unwrap_err().to_string()
    };
    let err = try_with(&|c| c["peft_type"] = "IA3".into(), &mut model);
    assert!(err.contains("peft_type"), "{err}");
    let err = try_with(&|c| c["r"] = 8.into(), &mut model);
    assert!(
        err.contains("lora_A.weight") && err.contains("shape"),
        "{err}"
    );
    let err = try_with(&|c| c["use_dora"] = true.into(), &mut model);
    assert!(err.contains("lora_magnitude_vector"), "{err}");
    let err = try_with(
        &|c| c["rank_pattern"] = serde_json::json!({"q_proj": 2}),
        &mut model,
    );
    assert!(err.contains("rank_pattern"), "{err}");
    // Nothing was attached by the failed loads.
    assert!(decoder_linears(&model)
        .iter()
        .all(|(_, l)| l.adapter.is_none()));

    // A tensor for a module the model does not have.
    let qwen = root().join("tests/fixtures/models/qwen2");
    let mut other = load_decoder::<B>(&qwen, &Default::default()).unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("adapter_model.safetensors"),
        safetensors::tensor::serialize(
            [(
                "base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    vec![1, 1],
                    &[0u8; 4],
                )
                .unwrap(),
            )],
            None,
        )
        .unwrap(),
    )
    .unwrap();
    let err = load_peft(&mut other, &dir).unwrap_err().to_string();
    assert!(err.contains("no such linear layer"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

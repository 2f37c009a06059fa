//! Bad checkpoints and inputs give clear errors naming the file and key; adapters attach by
//! HF module name and leave the output unchanged until trained.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData};
use burn_ipa::adapter::{AdapterConfig, ProjectorInit};
use burn_ipa::models::loading::load_decoder;
use burn_ipa::models::ForwardOptions;
use common::*;

type B = TestBackend;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama2")
}

/// A copy of the llama2 fixture with its config and tensors edited.
fn edited_checkpoint(
    tag: &str,
    edit_config: impl Fn(&mut serde_json::Value),
    edit_tensors: impl Fn(&mut Vec<(String, Vec<usize>, Vec<u8>)>),
) -> TempDir {
    let dir = temp_dir(&format!("bad-{tag}"));
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("config.json")).unwrap())
            .unwrap();
    edit_config(&mut config);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    let bytes = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec(), view.data().to_vec()))
        .collect();
    edit_tensors(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    let out = safetensors::tensor::serialize(views, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), out).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    let err = load_decoder::<B>(dir, &Default::default()).expect_err("loading should fail");
    err.to_string()
}

#[test]
fn unknown_model_type_names_the_file_and_key() {
    let dir = edited_checkpoint("type", |c| c["model_type"] = "gpt2".into(), |_| {});
    let err = load_err(&dir);
    assert!(
        err.contains("config.json") && err.contains("model_type") && err.contains("gpt2"),
        "{err}"
    );
}

#[test]
fn unsupported_options_and_bad_fields_are_named() {
    let dir = edited_checkpoint("act", |c| c["hidden_act"] = "relu".into(), |_| {});
    assert!(load_err(&dir).contains("hidden_act"));
    let dir = edited_checkpoint(
        "rope",
        |c| c["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "factor": 2.0}),
        |_| {},
    );
    assert!(load_err(&dir).contains("yarn"));
    let dir = edited_checkpoint("heads", |c| c["num_key_value_heads"] = 3.into(), |_| {});
    assert!(load_err(&dir).contains("num_key_value_heads"));
    let dir = edited_checkpoint("hidden", |c| c["hidden_size"] = "big".into(), |_| {});
    assert!(load_err(&dir).contains("hidden_size"));
}

#[test]
fn missing_extra_and_misshaped_tensors_are_named() {
    let key = "model.layers.1.mlp.down_proj.weight";
    let dir = edited_checkpoint("missing", |_| {}, |t| t.retain(|(n, _, _)| n != key));
    let err = load_err(&dir);
    assert!(
        err.contains("layers.1.mlp.down_proj") && err.contains("missing"),
        "{err}"
    );

    let dir = edited_checkpoint(
        "extra",
        |_| {},
        |t| {
            t.push((
                "model.layers.0.mlp.extra_proj.weight".into(),
                vec![2],
                vec![0; 8],
            ))
        },
    );
    let err = load_err(&dir);
    assert!(
        err.contains("model.layers.0.mlp.extra_proj.weight"),
        "{err}"
    );

    let dir = edited_checkpoint(
        "shape",
        |_| {},
        |t| {
            let entry = t.iter_mut().find(|(n, _, _)| n == key).unwrap();
            entry.1 = vec![entry.1[1], entry.1[0]]; // transposed shape, same byte count
        },
    );
    let err = load_err(&dir);
    assert!(err.contains("down_proj"), "{err}");

    let empty = temp_dir("empty");
    std::fs::copy(fixture_dir().join("config.json"), empty.join("config.json")).unwrap();
    assert!(load_err(&empty).contains("model.safetensors"));
}

#[test]
fn sequences_longer_than_the_positions_are_refused() {
    let model = load_decoder::<B>(&fixture_dir(), &Default::default()).unwrap();
    let max = model.config.max_position_embeddings;
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![5i64; max + 1], [1, max + 1]),
        &Default::default(),
    );
    let err = model
        .forward(ids, &ForwardOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("max_position_embeddings"), "{err}");
}

#[test]
fn adapters_attach_by_name_and_layer_and_start_as_identity() {
    let mut model = load_decoder::<B>(&fixture_dir(), &Default::default()).unwrap();
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![5i64, 9, 11, 3], [1, 4]),
        &Default::default(),
    );
    let before = host(
        model
            .forward(ids.clone(), &ForwardOptions::default())
            .unwrap(),
    );
    let targets: Vec<String> = ["q_proj", "v_proj", "down_proj"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let adapted = model
        .attach_adapters(&targets, Some(&[1]), &AdapterConfig::lora(4), |_| {
            ProjectorInit::KaimingUniform
        })
        .unwrap();
    assert_eq!(
        adapted,
        vec![
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.self_attn.v_proj",
            "model.layers.1.mlp.down_proj"
        ]
    );
    assert!(model.model.layers[1].self_attn.q_proj.adapter.is_some());
    assert!(model.model.layers[0].self_attn.q_proj.adapter.is_none());
    assert!(model.model.layers[1].self_attn.k_proj.adapter.is_none());
    // B = 0: the adapted model computes the same logits.
    let after = host(model.forward(ids, &ForwardOptions::default()).unwrap());
    assert_close(&after, &before, 1e-6, "logits after attaching");

    let err = model.attach_adapters(
        &["qproj".to_string()],
        None,
        &AdapterConfig::lora(4),
        |_| ProjectorInit::KaimingUniform,
    );
    assert!(err.unwrap_err().to_string().contains("qproj"));
    let err = model.attach_adapters(&targets, Some(&[7]), &AdapterConfig::lora(4), |_| {
        ProjectorInit::KaimingUniform
    });
    assert!(err.unwrap_err().to_string().contains("layer 7"));
}

/// The llama2 fixture re-saved as two shards with an index, the second shard in f16.
fn sharded_checkpoint(second_in_f16: bool) -> TempDir {
    let dir = temp_dir(&format!("sharded-{second_in_f16}"));
    std::fs::copy(fixture_dir().join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let half = names.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (shard, chunk) in [&names[..half], &names[half..]].iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", shard + 1);
        let f16 = shard == 1 && second_in_f16;
        let owned: Vec<(String, Vec<usize>, Vec<u8>)> = chunk
            .iter()
            .map(|n| {
                let view = st.tensor(n).unwrap();
                let data = if f16 {
                    view.data()
                        .chunks_exact(4)
                        .flat_map(|c| {
                            half::f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                                .to_le_bytes()
                        })
                        .collect()
                } else {
                    view.data().to_vec()
                };
                weight_map.insert(n.to_string(), file.clone().into());
                (n.clone(), view.shape().to_vec(), data)
            })
            .collect();
        let dtype = if f16 {
            safetensors::Dtype::F16
        } else {
            safetensors::Dtype::F32
        };
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
            .iter()
            .map(|(n, s, d)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(dtype, s.clone(), d).unwrap(),
                )
            })
            .collect();
        std::fs::write(
            dir.join(&file),
            safetensors::tensor::serialize(views, None).unwrap(),
        )
        .unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    dir
}

#[test]
fn sharded_and_half_precision_checkpoints_load() {
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![5i64, 9, 11, 3, 77], [1, 5]),
        &Default::default(),
    );
    let reference = host(
        load_decoder::<B>(&fixture_dir(), &Default::default())
            .unwrap()
            .forward(ids.clone(), &ForwardOptions::default())
            .unwrap(),
    );
    let sharded = load_decoder::<B>(&sharded_checkpoint(false), &Default::default()).unwrap();
    assert_close(
        &host(
            sharded
                .forward(ids.clone(), &ForwardOptions::default())
                .unwrap(),
        ),
        &reference,
        1e-6,
        "sharded f32",
    );
    // f16 weights (rounded to 11 bits) computed in f32: close, not equal.
    let half = load_decoder::<B>(&sharded_checkpoint(true), &Default::default()).unwrap();
    let got = host(half.forward(ids, &ForwardOptions::default()).unwrap());
    assert_close(&got, &reference, 2e-2, "half of the weights in f16");
    assert!(got != reference, "f16 rounding should show");

    // An index naming a shard that is not there.
    let dir = sharded_checkpoint(false);
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("model.safetensors.index.json") && err.contains("model-00002-of-00002"),
        "{err}"
    );
}

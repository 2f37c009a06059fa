//! Decoder parity with HF transformers on tiny random checkpoints (made by
//! `tests/fixtures/make_model_fixtures.py`).

mod common;

use std::path::PathBuf;

use burn::tensor::Tensor;
use burn_ipa::models::loading::{decoder_remapper, load_decoder, load_weights};
use burn_ipa::models::{Decoder, DecoderConfig, ForwardOptions, Site, SiteKind};
use common::*;

type B = TestBackend;

fn model_dir(name: &str) -> PathBuf {
    common::source_root()
        .join("tests/fixtures/models")
        .join(name)
}

/// Logits at the real (unpadded) positions only: HF's values at padded queries are arbitrary.
fn compare_logits(
    got: Tensor<B, 3>,
    want: &serde_json::Value,
    mask: &[bool],
    tol: f64,
    what: &str,
) {
    let [b, s, v] = got.shape().dims();
    let got = host(got);
    let want: Vec<f64> = want
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().flat_map(vec1))
        .collect();
    assert_eq!(got.len(), want.len(), "{what}: size");
    let mut checked = 0;
    for i in 0..b * s {
        if mask[i] {
            assert_close(
                &got[i * v..(i + 1) * v],
                &want[i * v..(i + 1) * v],
                tol,
                &format!("{what}: position {i}"),
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}

fn parity(name: &str) {
    let dir = model_dir(name);
    let expected = fixture(&format!("models/{name}/expected.json"));
    let device = Default::default();
    let model = load_decoder::<B>(&dir, &device).unwrap();
    let (ids, mask, _) = ids_and_mask(&expected);
    let options = ForwardOptions {
        attention_mask: Some(mask.clone()),
        position_ids: None,
    };
    let logits = model.forward(ids.clone(), &options).unwrap();
    compare_logits(logits, &expected["logits"], &mask, 1e-4, name);

    if expected.get("logits_bf16").is_some() {
        let config = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
        let mut bf16 = Decoder::<B>::init(&config, &device);
        load_weights(
            &mut bf16,
            &[dir.join("model_bf16.safetensors")],
            decoder_remapper(),
            burn::tensor::DType::F32,
        )
        .unwrap();
        let logits = bf16.forward(ids.clone(), &options).unwrap();
        compare_logits(
            logits,
            &expected["logits_bf16"],
            &mask,
            1e-4,
            &format!("{name} (bf16 weights)"),
        );
    }

    if expected.get("tap_attn_input_l0").is_some() {
        let mut taps = std::collections::BTreeMap::new();
        model
            .forward_tap(
                ids,
                &options,
                &mut |site: Site, rows: Tensor<B, 2>, _keep: &[bool]| {
                    if site.layer == 0 {
                        taps.insert(site.kind, host(rows));
                    }
                },
            )
            .unwrap();
        for (kind, key) in [
            (SiteKind::Attention, "tap_attn_input_l0"),
            (SiteKind::Mlp, "tap_mlp_input_l0"),
            (SiteKind::MlpDown, "tap_down_input_l0"),
        ] {
            let (want, [s, _]) = mat(&expected[key]);
            let got = &taps[&kind][..want.len()];
            assert_eq!(s, 7);
            assert_close(got, &want, 1e-4, &format!("{name}: {key}"));
        }
    }
}

#[test]
fn llama2_matches_transformers() {
    parity("llama2");
}

#[test]
fn llama3_matches_transformers() {
    parity("llama3");
}

#[test]
fn qwen2_matches_transformers() {
    parity("qwen2");
}

#[test]
fn gemma3_matches_transformers() {
    parity("gemma3");
}

#[test]
fn gemma3_multimodal_checkpoint_loads_its_language_model() {
    parity("gemma3_mm");
}

/// A right-padded batch (one causal mask shared by all rows) gives the logits of the same
/// batch left-padded with explicit positions (a per-row padding mask, the path checked
/// against HF above) at every real position, on full and sliding-window layers.
#[test]
fn right_padding_matches_left_padding_at_real_positions() {
    let device = Default::default();
    let long: Vec<i64> = vec![5, 9, 14, 3, 27, 8, 11];
    let short: Vec<i64> = vec![7, 21, 4, 16];
    let (s, pad) = (long.len(), long.len() - short.len());
    let ids = |rows: Vec<Vec<i64>>| {
        let flat: Vec<i64> = rows.concat();
        Tensor::<B, 2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(flat, [2, s]),
            &device,
        )
    };
    let right = ids(vec![long.clone(), [short.clone(), vec![0; pad]].concat()]);
    let left = ids(vec![long.clone(), [vec![0; pad], short.clone()].concat()]);
    let keep = |padding_first: bool| -> Vec<bool> {
        let short_row: Vec<bool> = (0..s).map(|i| (i >= pad) == padding_first).collect();
        [vec![true; s], short_row].concat()
    };
    let right_options = ForwardOptions {
        attention_mask: Some(keep(false)),
        position_ids: None,
    };
    let left_positions: Vec<usize> = (0..s)
        .chain((0..s).map(|i| i.saturating_sub(pad)))
        .collect();
    let left_options = ForwardOptions {
        attention_mask: Some(keep(true)),
        position_ids: Some(left_positions),
    };
    for name in ["llama2", "gemma3"] {
        let model = load_decoder::<B>(&model_dir(name), &device).unwrap();
        let r = model.forward(right.clone(), &right_options).unwrap();
        let l = model.forward(left.clone(), &left_options).unwrap();
        let v = r.dims()[2];
        let (r, l) = (host(r), host(l));
        assert_close(
            &r[..s * v],
            &l[..s * v],
            1e-5,
            &format!("{name}: unpadded row"),
        );
        for t in 0..short.len() {
            let (i, j) = ((s + t) * v, (s + pad + t) * v);
            assert_close(
                &r[i..i + v],
                &l[j..j + v],
                1e-5,
                &format!("{name}: position {t}"),
            );
        }
    }
}

fn generation(name: &str) {
    use burn_ipa::models::generate::{generate, GenerationConfig};
    let expected = fixture(&format!("models/{name}/expected.json"));
    let model = load_decoder::<B>(&model_dir(name), &Default::default()).unwrap();
    let prompt: Vec<u32> = expected["input_ids"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let as_ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };

    let greedy = GenerationConfig::greedy(&model, 8);
    let out = generate(&model, std::slice::from_ref(&prompt), &greedy).unwrap();
    assert_eq!(
        out[0],
        as_ids(&expected["greedy"])[prompt.len()..].to_vec(),
        "{name}: greedy"
    );

    // The same prompt left-padded in a batch beside a longer one decodes the same tokens.
    let longer: Vec<u32> = prompt
        .iter()
        .chain(prompt.iter().take(3))
        .copied()
        .collect();
    let batched = generate(&model, &[longer, prompt.clone()], &greedy).unwrap();
    assert_eq!(batched[1], out[0], "{name}: greedy in a left-padded batch");

    let beams = greedy.clone().with_beams(3);
    let mut beam_config = beams;
    beam_config.max_new_tokens = 6;
    let out = generate(&model, std::slice::from_ref(&prompt), &beam_config).unwrap();
    assert_eq!(
        out[0],
        as_ids(&expected["greedy_beam"])[prompt.len()..].to_vec(),
        "{name}: beam search"
    );
}

#[test]
fn generation_matches_transformers() {
    for name in ["llama2", "llama3", "qwen2", "gemma3"] {
        generation(name);
    }
}

//! The fit pass over a tiny decoder equals fitting each site's captured inputs directly, and
//! padding changes nothing.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use burn_ipa::adapter::AdapterConfig;
use burn_ipa::fit::{positions_from_mask, DecoderFit};
use burn_ipa::models::loading::load_decoder;
use burn_ipa::models::{Decoder, ForwardOptions, Site, SiteKind};
use burn_ipa::projector::FitAlgorithm;
use common::*;

type B = TestBackend;

fn model() -> Decoder<B> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama2");
    load_decoder::<B>(&dir, &Default::default()).unwrap()
}

fn targets() -> Vec<String> {
    ["q_proj", "v_proj", "up_proj", "down_proj"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn ids(rows: &[Vec<i64>]) -> Tensor<B, 2, Int> {
    let (b, s) = (rows.len(), rows[0].len());
    Tensor::from_data(TensorData::new(rows.concat(), [b, s]), &Default::default())
}

const PAD: i64 = 0;

/// Two sequences of different lengths, left-padded into one batch.
fn padded_batch() -> (Vec<Vec<i64>>, Vec<bool>, Vec<Vec<i64>>) {
    let a: Vec<i64> = vec![5, 17, 33, 8, 91, 14, 27, 60];
    let b: Vec<i64> = vec![44, 12, 7, 150, 3];
    let padded_b: Vec<i64> = std::iter::repeat_n(PAD, 3)
        .chain(b.iter().copied())
        .collect();
    let mask: Vec<bool> = (0..16).map(|i| !(8..11).contains(&i)).collect();
    (vec![a.clone(), padded_b], mask, vec![a, b])
}

#[test]
fn fit_pass_equals_direct_fits_of_captured_inputs() {
    let model = model();
    let (rows, mask, _) = padded_batch();
    let alg = FitAlgorithm::Covariance;
    let mut pass = DecoderFit::new(&model, &targets(), None, &alg, 4, 0).unwrap();
    pass.observe(&model, ids(&rows), Some(mask.clone()))
        .unwrap();
    let fitted = pass.finish().unwrap();
    // Distinct sites only: q and v share the attention input, up has the MLP input.
    let kinds: Vec<SiteKind> = fitted
        .keys()
        .filter(|s| s.layer == 0)
        .map(|s| s.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![SiteKind::Attention, SiteKind::Mlp, SiteKind::MlpDown]
    );
    assert_eq!(pass.rows_seen(), 13);

    // The same statistics by hand: capture every site's rows, drop padding, fit directly.
    let mut captured: BTreeMap<Site, (Vec<f64>, usize)> = BTreeMap::new();
    let options = ForwardOptions {
        attention_mask: Some(mask.clone()),
        position_ids: Some(positions_from_mask(&mask, 2, 8)),
    };
    model
        .forward_tap(
            ids(&rows),
            &options,
            &mut |site, t: Tensor<B, 2>, keep: &[bool]| {
                let [_, d] = t.shape().dims();
                let values = host(t);
                let entry = captured.entry(site).or_insert((Vec::new(), d));
                for (i, k) in keep.iter().enumerate() {
                    if *k {
                        entry.0.extend_from_slice(&values[i * d..(i + 1) * d]);
                    }
                }
            },
        )
        .unwrap();
    for (site, f) in &fitted {
        let (values, d) = &captured[site];
        let n = values.len() / d;
        let mut direct = alg.build::<B>(*d, 4, 0, &Default::default()).unwrap();
        direct
            .update(tensor2::<B>(values.clone(), [n, *d]), None)
            .unwrap();
        let want = direct.finish().unwrap();
        assert_close(
            &host(f.components.clone()),
            &host(want.components),
            1e-4,
            &format!("{site:?}"),
        );
        assert_close(
            &f.explained_variance,
            &want.explained_variance,
            1e-4,
            &format!("{site:?} variance"),
        );
    }
}

#[test]
fn padding_changes_nothing() {
    let model = model();
    let (rows, mask, unpadded) = padded_batch();
    let alg = FitAlgorithm::Covariance;
    let mut batched = DecoderFit::new(&model, &targets(), None, &alg, 4, 0).unwrap();
    batched.observe(&model, ids(&rows), Some(mask)).unwrap();
    let mut one_by_one = DecoderFit::new(&model, &targets(), None, &alg, 4, 0).unwrap();
    for seq in &unpadded {
        one_by_one
            .observe(&model, ids(std::slice::from_ref(seq)), None)
            .unwrap();
    }
    let (a, b) = (batched.finish().unwrap(), one_by_one.finish().unwrap());
    for (site, fa) in &a {
        let fb = &b[site];
        assert_eq!(fa.n_samples, fb.n_samples);
        assert_close(
            &host(fa.components.clone()),
            &host(fb.components.clone()),
            1e-4,
            &format!("{site:?}"),
        );
        assert_close(&fa.mean, &fb.mean, 1e-4, &format!("{site:?} mean"));
    }
}

#[test]
fn installed_projectors_are_the_fitted_ones_and_frozen() {
    let mut model = model();
    let (rows, mask, _) = padded_batch();
    let mut pass =
        DecoderFit::new(&model, &targets(), Some(&[1]), &FitAlgorithm::Ipca, 4, 0).unwrap();
    pass.observe(&model, ids(&rows), Some(mask)).unwrap();
    let fitted = pass.finish().unwrap();
    let adapted = pass.install(&mut model, &AdapterConfig::ipa(4)).unwrap();
    assert_eq!(adapted.len(), 4);
    let layer = &model.model.layers[1];
    let attn = &fitted[&Site {
        layer: 1,
        kind: SiteKind::Attention,
    }];
    assert_close(
        &host(layer.self_attn.q_proj.projector().unwrap()),
        &host(attn.components.clone()),
        1e-6,
        "q",
    );
    assert_close(
        &host(layer.self_attn.v_proj.projector().unwrap()),
        &host(attn.components.clone()),
        1e-6,
        "v",
    );
    assert!(model.model.layers[0].self_attn.q_proj.adapter.is_none());
    // IPA with a frozen projector: only B trains.
    assert_eq!(layer.self_attn.q_proj.trainable_params(), 4 * 64);
    // LoRA adapters cannot take fitted projectors.
    assert!(pass.install(&mut model, &AdapterConfig::lora(4)).is_err());
}

#[test]
fn too_few_rows_are_reported_with_their_site() {
    let model = model();
    let mut pass =
        DecoderFit::new(&model, &targets(), None, &FitAlgorithm::Covariance, 4, 0).unwrap();
    // Two real rows for rank 4: finish refuses and names the site.
    pass.observe(&model, ids(&[vec![5, 6]]), None).unwrap();
    let err = pass.finish().unwrap_err().to_string();
    assert!(err.contains("layer 0"), "{err}");
}

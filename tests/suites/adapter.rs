//! Adapter math against HF peft fixtures and closed forms; merge/unmerge; gradients; files.

use super::SuiteBackend;
use crate::common::*;
use burn::backend::Autodiff;
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_ipa::adapter::{
    load_adapter, save_adapter, AdaptedLinear, AdaptedLinearConfig, AdapterConfig, AdapterMethod,
    ProjectorInit, Scaling, ADAPTER_WEIGHTS_FILE,
};
use burn_ipa::Error;

/// Builds the layer a peft fixture case describes.
fn layer_from_peft<B: Backend>(case: &serde_json::Value) -> (AdaptedLinear<B>, AdapterConfig) {
    let (w, [d_out, d_in]) = mat(&case["base_weight"]);
    let r = case["r"].as_u64().unwrap() as usize;
    let config = AdapterConfig {
        method: AdapterMethod::Lora,
        rank: r,
        scaling: Scaling::Alpha {
            alpha: case["lora_alpha"].as_f64().unwrap(),
            rslora: case["use_rslora"].as_bool().unwrap(),
        },
        dora: case["use_dora"].as_bool().unwrap(),
        train_projector: true,
        dropout: 0.0,
    };
    let mut layer = AdaptedLinearConfig::new(d_in, d_out).init::<B>(&Default::default());
    layer.base.weight = Param::from_tensor(tensor2(transpose(&w, d_out, d_in), [d_in, d_out]));
    layer.base.bias = Some(Param::from_tensor(tensor1(vec1(&case["base_bias"]))));
    let layer = AdaptedLinear::new(layer.base);
    let (a, _) = mat(&case["lora_A"]);
    let mut layer = layer
        .attach(&config, ProjectorInit::Fitted(tensor2(a, [r, d_in])))
        .unwrap();
    if config.dora {
        // peft initialises m from the base weight's row norms: check ours does too.
        let m0 = host(
            layer
                .adapter
                .as_ref()
                .unwrap()
                .magnitude
                .as_ref()
                .unwrap()
                .val(),
        );
        assert_close(
            &m0,
            &vec1(&case["initial_magnitude"]),
            1e-6,
            "initial magnitude",
        );
    }
    let (b, _) = mat(&case["lora_B"]);
    let adapter = layer.adapter.as_mut().unwrap();
    adapter.up = Param::from_tensor(tensor2(transpose(&b, d_out, r), [r, d_out]));
    if config.dora {
        adapter.magnitude = Some(Param::from_tensor(tensor1(vec1(&case["magnitude"]))));
    }
    (layer, config)
}

fn peft_case_body<B: Backend>(case: &serde_json::Value, tol: f64) {
    let name = case["name"].as_str().unwrap();
    let (mut layer, config) = layer_from_peft::<B>(case);
    assert!(
        (config.scale() - case["scaling"].as_f64().unwrap()).abs() < 1e-12,
        "{name}: scaling"
    );
    let (x, shape) = mat(&case["x"]);
    let x = tensor2::<B>(x, shape);

    let y = host(layer.forward(x.clone()));
    assert_close(&y, &mat(&case["y"]).0, tol, &format!("{name}: forward"));

    layer.set_enabled(false).unwrap();
    let y_off = host(layer.forward(x.clone()));
    assert_close(
        &y_off,
        &mat(&case["y_disabled"]).0,
        tol,
        &format!("{name}: disabled"),
    );
    layer.set_enabled(true).unwrap();

    let w0 = host(layer.base.weight.val());
    layer.merge().unwrap();
    let (merged, [d_out, d_in]) = mat(&case["merged_weight"]);
    assert_close(
        &host(layer.base.weight.val()),
        &transpose(&merged, d_out, d_in),
        tol,
        &format!("{name}: merged weight"),
    );
    let y_merged = host(layer.forward(x.clone()));
    assert_close(
        &y_merged,
        &mat(&case["y"]).0,
        tol,
        &format!("{name}: merged forward"),
    );
    layer.unmerge().unwrap();
    assert_close(
        &host(layer.base.weight.val()),
        &w0,
        tol,
        &format!("{name}: unmerge"),
    );
    let y_again = host(layer.forward(x));
    assert_close(
        &y_again,
        &y,
        tol,
        &format!("{name}: forward after round trip"),
    );
}

#[test]
fn lora_rslora_dora_match_peft() {
    let fixture = fixture("peft_layers.json");
    for case in fixture["cases"].as_array().unwrap() {
        peft_case_body::<SuiteBackend>(case, tol::<SuiteBackend>(1e-5, 1e-12));
    }
}

/// `y = x W + b + s·x Pᵀ Bᵀ`, written out with loops in f64.
fn lora_closed_form(
    x: &[f64],
    w: &[f64],
    b: &[f64],
    p: &[f64],
    up: &[f64],
    s: f64,
    dims: [usize; 4],
) -> Vec<f64> {
    let [n, d_in, d_out, r] = dims;
    let mut y = vec![0.0; n * d_out];
    for i in 0..n {
        let h: Vec<f64> = (0..r)
            .map(|k| (0..d_in).map(|j| p[k * d_in + j] * x[i * d_in + j]).sum())
            .collect();
        for o in 0..d_out {
            let base: f64 = (0..d_in).map(|j| x[i * d_in + j] * w[j * d_out + o]).sum();
            let low: f64 = (0..r).map(|k| h[k] * up[k * d_out + o]).sum();
            y[i * d_out + o] = base + b[o] + s * low;
        }
    }
    y
}

fn closed_form_body<B: Backend>() {
    let device = Default::default();
    let (n, d_in, d_out, r) = (5, 9, 6, 3);
    let mut layer = AdaptedLinearConfig::new(d_in, d_out).init::<B>(&device);
    let config = AdapterConfig::ipa(r).with_scaling(Scaling::Factor(0.7));
    let p = Tensor::<B, 2>::random(
        [r, d_in],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    layer = layer
        .attach(&config, ProjectorInit::Fitted(p.clone()))
        .unwrap();
    let up = Tensor::<B, 2>::random(
        [r, d_out],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    layer.adapter.as_mut().unwrap().up = Param::from_tensor(up.clone());
    let x = Tensor::<B, 2>::random(
        [n, d_in],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let want = lora_closed_form(
        &host(x.clone()),
        &host(layer.base.weight.val()),
        &host(layer.base.bias.as_ref().unwrap().val()),
        &host(p.clone()),
        &host(up),
        0.7,
        [n, d_in, d_out, r],
    );
    assert_close(
        &host(layer.forward(x.clone())),
        &want,
        tol::<B>(1e-5, 1e-12),
        "closed form",
    );
    // The projector reads back as given, and the 3-D forward equals the 2-D one row by row.
    assert_close(
        &host(layer.projector().unwrap()),
        &host(p),
        1e-12,
        "projector",
    );
    let y3 = host(layer.forward(x.reshape([1, n, d_in])));
    assert_close(&y3, &want, tol::<B>(1e-5, 1e-12), "3-D forward");
}

#[test]
fn forward_equals_closed_form() {
    closed_form_body::<SuiteBackend>();
}

fn dora_closed_form_body<B: Backend>() {
    // DoRA merged weight: column j of (W0 + s·PᵀBᵀ) rescaled to norm m_j.
    let device = Default::default();
    let (d_in, d_out, r) = (7, 4, 2);
    let config = AdapterConfig::lora(r).with_dora(true);
    let mut layer = AdaptedLinearConfig::new(d_in, d_out)
        .init::<B>(&device)
        .attach(&config, ProjectorInit::KaimingUniform)
        .unwrap();
    let up = Tensor::<B, 2>::random(
        [r, d_out],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let m = Tensor::<B, 1>::random(
        [d_out],
        burn::tensor::Distribution::Uniform(0.5, 2.0),
        &device,
    );
    {
        let a = layer.adapter.as_mut().unwrap();
        a.up = Param::from_tensor(up);
        a.magnitude = Some(Param::from_tensor(m.clone()));
    }
    let w0 = host(layer.base.weight.val());
    let delta = host(layer.delta_weight().unwrap());
    layer.merge().unwrap();
    let merged = host(layer.base.weight.val());
    let m = host(m);
    for j in 0..d_out {
        let norm: f64 = (0..d_in)
            .map(|i| merged[i * d_out + j].powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            (norm - m[j]).abs() < tol::<B>(1e-5, 1e-12),
            "column {j} norm {norm} != {}",
            m[j]
        );
    }
    let w_plus: Vec<f64> = w0.iter().zip(&delta).map(|(a, b)| a + b).collect();
    assert_close(&merged, &w_plus, tol::<B>(1e-5, 1e-12), "delta_weight");
    layer.unmerge().unwrap();
    assert_close(
        &host(layer.base.weight.val()),
        &w0,
        tol::<B>(1e-5, 1e-12),
        "DoRA unmerge",
    );
}

#[test]
fn dora_merge_normalises_columns_and_unmerges() {
    dora_closed_form_body::<SuiteBackend>();
}

fn grads_body(train_projector: bool, dora: bool) {
    type AB = Autodiff<SuiteBackend>;
    let device = Default::default();
    let config = AdapterConfig::lora(2)
        .with_train_projector(train_projector)
        .with_dora(dora);
    let mut layer = AdaptedLinearConfig::new(6, 5)
        .init::<AB>(&device)
        .attach(&config, ProjectorInit::KaimingUniform)
        .unwrap();
    // Non-zero B so every adapter parameter is on the gradient path.
    let up = Tensor::<AB, 2>::random(
        [2, 5],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    layer.adapter.as_mut().unwrap().up = Param::from_tensor(up);
    let x = Tensor::<AB, 2>::random(
        [4, 6],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let grads = layer.forward(x).square().sum().backward();
    let a = layer.adapter.as_ref().unwrap();
    assert!(
        layer.base.weight.grad(&grads).is_none(),
        "base weight got a gradient"
    );
    assert!(
        layer.base.bias.as_ref().unwrap().grad(&grads).is_none(),
        "base bias got a gradient"
    );
    assert!(a.up.grad(&grads).is_some(), "B got no gradient");
    assert_eq!(
        a.projector.grad(&grads).is_some(),
        train_projector,
        "projector gradient"
    );
    assert_eq!(
        a.magnitude.as_ref().map(|m| m.grad(&grads).is_some()),
        dora.then_some(true)
    );
    let expected = 2 * 5 + if train_projector { 2 * 6 } else { 0 } + if dora { 5 } else { 0 };
    assert_eq!(layer.trainable_params(), expected);
}

#[test]
fn gradients_reach_only_adapter_parameters() {
    for train in [false, true] {
        for dora in [false, true] {
            grads_body(train, dora);
        }
    }
}

/// Dropout against its definition: each element kept with probability 1 − p and scaled by
/// 1/(1 − p), a new mask each call, the identity without autodiff. (That a seed fixes the
/// masks is the training suite's resume test, with dropout on: the generator is global to the
/// process, and this suite's tests run in parallel.)
#[test]
fn dropout_keeps_one_minus_p_scaled_by_its_inverse() {
    type A = Autodiff<SuiteBackend>;
    let device = Default::default();
    let n = 200_000;
    let p = 0.1;
    let draw = |seed: u64| {
        A::seed(&device, seed);
        let x = Tensor::<A, 2>::ones([n / 1000, 1000], &device);
        host(burn_ipa::adapter::dropout(x, p))
    };
    let a = draw(3);
    let scale = 1.0 / (1.0 - p);
    let dropped = a.iter().filter(|&&v| v == 0.0).count();
    let tol = tol::<SuiteBackend>(1e-6, 1e-12);
    assert!(
        a.iter()
            .all(|&v| v == 0.0 || (v - scale).abs() <= tol * scale),
        "kept elements scaled by 1/(1 - p)"
    );
    // Binomial(n, p): 5 standard deviations.
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (dropped as f64 - n as f64 * p).abs() < 5.0 * sd,
        "{dropped} of {n} dropped, expected {}",
        n as f64 * p
    );
    assert_ne!(a, draw(4), "another mask");
    // Inference (no autodiff) and p = 0 leave the input alone.
    let x = Tensor::<SuiteBackend, 2>::ones([4, 5], &device);
    assert!(host(burn_ipa::adapter::dropout(x, 0.5))
        .iter()
        .all(|&v| v == 1.0));
    let x = Tensor::<A, 2>::ones([4, 5], &device);
    assert!(host(burn_ipa::adapter::dropout(x, 0.0))
        .iter()
        .all(|&v| v == 1.0));
}

#[test]
fn trainable_parameter_counts() {
    // Llama-2 7B q_proj at r = 32: B is 4096·32, P another 4096·32, DoRA adds 4096.
    let ipa = AdapterConfig::ipa(32);
    assert_eq!(ipa.trainable_params(4096, 4096), 131_072);
    assert_eq!(
        ipa.clone()
            .with_train_projector(true)
            .trainable_params(4096, 4096),
        262_144
    );
    assert_eq!(
        ipa.with_dora(true).trainable_params(4096, 11008),
        32 * 11008 + 11008
    );
}

#[test]
fn scaling_rules() {
    assert_eq!(AdapterConfig::lora(8).scale(), 2.0);
    let rs = Scaling::Alpha {
        alpha: 16.0,
        rslora: true,
    };
    assert!((rs.factor(16) - 4.0).abs() < 1e-12);
    assert_eq!(Scaling::Factor(0.25).factor(32), 0.25);
}

#[test]
fn bad_configurations_are_errors() {
    let device = Default::default();
    let layer = || AdaptedLinearConfig::new(8, 4).init::<SuiteBackend>(&device);
    let err =
        |r: burn_ipa::Result<AdaptedLinear<SuiteBackend>>| r.expect_err("should fail").to_string();
    assert!(
        err(layer().attach(&AdapterConfig::lora(0), ProjectorInit::KaimingUniform))
            .contains("at least 1")
    );
    // LoRA: rank ≤ min(d_in, d_out) = 4; IPA: rank ≤ d_in = 8.
    assert!(
        err(layer().attach(&AdapterConfig::lora(5), ProjectorInit::KaimingUniform))
            .contains("min(d_in, d_out) = 4")
    );
    assert!(layer()
        .attach(&AdapterConfig::ipa(8), ProjectorInit::Zeros)
        .is_ok());
    assert!(err(layer().attach(&AdapterConfig::ipa(9), ProjectorInit::Zeros)).contains("d_in = 8"));
    assert!(err(layer().attach(
        &AdapterConfig::ipa(2).with_dropout(1.0),
        ProjectorInit::Zeros
    ))
    .contains("dropout"));
    let wrong = Tensor::<SuiteBackend, 2>::zeros([2, 7], &device);
    assert!(matches!(
        layer().attach(&AdapterConfig::ipa(2), ProjectorInit::Fitted(wrong.clone())),
        Err(Error::Shape { .. })
    ));

    let mut l = layer()
        .attach(&AdapterConfig::ipa(2), ProjectorInit::Zeros)
        .unwrap();
    assert!(matches!(l.set_projector(wrong), Err(Error::Shape { .. })));
    assert!(l.unmerge().is_err(), "unmerge of an unmerged layer");
    l.merge().unwrap();
    assert!(l.merge().is_err(), "double merge");
    assert!(l.set_enabled(false).is_err(), "disable while merged");
    let mut bare = layer();
    assert!(bare.merge().is_err(), "merge with no adapter");
}

/// A toy model with two adapted layers, to exercise paths in adapter files.
#[derive(Module, Debug)]
struct Toy<B: Backend> {
    first: AdaptedLinear<B>,
    second: AdaptedLinear<B>,
}

fn toy<B: Backend>(d: usize, config: &AdapterConfig) -> Toy<B> {
    let device = Default::default();
    let mut t = Toy {
        first: AdaptedLinearConfig::new(d, 6)
            .init(&device)
            .attach(config, ProjectorInit::KaimingUniform)
            .unwrap(),
        second: AdaptedLinearConfig::new(6, 3)
            .init(&device)
            .attach(config, ProjectorInit::KaimingUniform)
            .unwrap(),
    };
    for l in [&mut t.first, &mut t.second] {
        let a = l.adapter.as_mut().unwrap();
        let shape = a.up.val().shape();
        a.up = Param::from_tensor(Tensor::random(
            shape,
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        ));
    }
    t
}

#[test]
fn adapter_files_round_trip_and_refuse_mismatches() {
    let dir = std::env::temp_dir().join(format!(
        "burn-ipa-adapter-test-{}-{}",
        std::process::id(),
        tol::<SuiteBackend>(32.0, 64.0)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let config = AdapterConfig::lora(2).with_dora(true);
    let source = toy::<SuiteBackend>(5, &config);
    save_adapter(&source, &config, Default::default(), &dir).unwrap();

    // peft names and layouts in the file.
    let bytes = std::fs::read(dir.join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("first.lora_A.weight").unwrap().shape(), &[2, 5]);
    assert_eq!(st.tensor("first.lora_B.weight").unwrap().shape(), &[6, 2]);
    assert_eq!(
        st.tensor("second.lora_magnitude_vector").unwrap().shape(),
        &[3]
    );

    // Same base weights, fresh adapters: loading must reproduce the source exactly.
    let mut target = Toy {
        first: source
            .first
            .clone()
            .attach(&config, ProjectorInit::KaimingUniform)
            .unwrap(),
        second: source
            .second
            .clone()
            .attach(&config, ProjectorInit::KaimingUniform)
            .unwrap(),
    };
    let loaded = load_adapter(&mut target, &dir).unwrap();
    assert_eq!(loaded.adapter, config);
    assert_close(
        &host(target.first.projector().unwrap()),
        &host(source.first.projector().unwrap()),
        1e-6,
        "projector",
    );
    let up = |t: &Toy<SuiteBackend>| host(t.second.adapter.as_ref().unwrap().up.val());
    assert_close(&up(&target), &up(&source), 1e-6, "up");
    let mag = |t: &Toy<SuiteBackend>| {
        host(
            t.second
                .adapter
                .as_ref()
                .unwrap()
                .magnitude
                .as_ref()
                .unwrap()
                .val(),
        )
    };
    assert_close(&mag(&target), &mag(&source), 1e-6, "magnitude");
    assert_eq!(loaded.layers["first"], [5, 6]);
    let x = Tensor::<SuiteBackend, 2>::random(
        [3, 5],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    assert_close(
        &host(target.second.forward(target.first.forward(x.clone()))),
        &host(source.second.forward(source.first.forward(x.clone()))),
        1e-6,
        "reloaded model",
    );

    // A model of another width: the error names the tensor and the model is untouched.
    let mut other = toy::<SuiteBackend>(4, &config);
    let before = host(other.first.projector().unwrap());
    let err = load_adapter(&mut other, &dir).unwrap_err();
    assert!(
        matches!(&err, Error::Tensor { tensor, .. } if tensor == "first.lora_A.weight"),
        "{err}"
    );
    assert_eq!(host(other.first.projector().unwrap()), before);

    // A model without DoRA does not take the magnitude vectors.
    let mut plain = toy::<SuiteBackend>(5, &AdapterConfig::lora(2));
    let err = load_adapter(&mut plain, &dir).unwrap_err();
    assert!(err.to_string().contains("lora_magnitude_vector"), "{err}");

    // A model with DoRA refuses a file without magnitudes.
    let plain_dir = dir.join("plain");
    save_adapter(
        &toy::<SuiteBackend>(5, &AdapterConfig::lora(2)),
        &AdapterConfig::lora(2),
        Default::default(),
        &plain_dir,
    )
    .unwrap();
    let err = load_adapter(&mut toy::<SuiteBackend>(5, &config), &plain_dir).unwrap_err();
    assert!(err.to_string().contains("missing from the file"), "{err}");

    // A truncated weights file: the error names the file.
    std::fs::write(dir.join(ADAPTER_WEIGHTS_FILE), &bytes[..bytes.len() / 2]).unwrap();
    let err = load_adapter(&mut target, &dir).unwrap_err();
    assert!(err.to_string().contains(ADAPTER_WEIGHTS_FILE), "{err}");

    // A config with a missing field: the error names the file.
    std::fs::write(
        dir.join("adapter_config.json"),
        b"{\"format\": \"burn-ipa-adapter\"}",
    )
    .unwrap();
    let err = load_adapter(&mut target, &dir).unwrap_err();
    assert!(err.to_string().contains("adapter_config.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

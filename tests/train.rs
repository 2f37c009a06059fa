//! The training loop: loss, schedule, optimizer scope, checkpoints and exact resume.

mod common;

use std::path::Path;

use burn::backend::Autodiff;
use burn::optim::lr_scheduler::LrScheduler;
use burn::tensor::{Int, Tensor, TensorData};
use burn_ipa::adapter::{AdapterConfig, ProjectorInit};
use burn_ipa::data::instruction::{TokenizedExample, IGNORE_INDEX};
use burn_ipa::models::loading::load_decoder;
use burn_ipa::train::{
    causal_lm_loss, lm_batch, train, CausalLm, RunOptions, TrainConfig, WarmupLinearDecay,
};
use common::*;

type B = Autodiff<TestBackend>;

fn targets() -> Vec<String> {
    ["q_proj", "v_proj", "up_proj", "down_proj"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The tiny fixture decoder with adapters of `config` on `targets()`.
fn adapted_model(config: &AdapterConfig) -> CausalLm<B> {
    let mut decoder = load_decoder::<B>(&llama2_dir(), &Default::default()).unwrap();
    decoder
        .attach_adapters(&targets(), None, config, |_| ProjectorInit::KaimingUniform)
        .unwrap();
    CausalLm { decoder }
}

fn config() -> TrainConfig {
    TrainConfig {
        learning_rate: 1e-2,
        weight_decay: 0.0,
        epochs: 2,
        batch_size: 4,
        micro_batch_size: 2,
        warmup_steps: 2,
        max_steps: None,
        checkpoint_every: 2,
        valid_every: 0,
        seed: 7,
    }
}

fn run(
    model: CausalLm<B>,
    items: &[TokenizedExample],
    config: &TrainConfig,
    options: &RunOptions,
) -> burn_ipa::Result<burn_ipa::train::TrainOutcome<CausalLm<B>>> {
    let device = Default::default();
    train(
        model,
        items,
        config,
        options,
        &device,
        |batch: &[&TokenizedExample]| {
            let owned: Vec<TokenizedExample> = batch.iter().map(|e| (*e).clone()).collect();
            lm_batch::<B>(&owned, 0, &device)
        },
        None,
    )
}

#[test]
fn causal_lm_loss_is_the_mean_shifted_cross_entropy_over_labelled_tokens() {
    let _serial = serial();
    type C = TestBackend;
    let device = Default::default();
    // batch 1, seq 3, vocab 2: positions 0 and 1 predict labels 1 and 2; label 2 is ignored.
    let logits = Tensor::<C, 3>::from_data(
        TensorData::new(vec![0.0f32, 1.0, 2.0, 0.0, 5.0, 5.0], [1, 3, 2]),
        &device,
    );
    let labels = Tensor::<C, 2, Int>::from_data(
        TensorData::new(vec![9i64, 1, IGNORE_INDEX], [1, 3]),
        &device,
    );
    let (loss, count) = causal_lm_loss(logits, labels);
    assert_eq!(count, 1);
    // −log softmax([0, 1])[1] = log(1 + e^−1)
    let want = (1.0f64 + (-1.0f64).exp()).ln();
    let got = loss.into_scalar() as f64;
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
}

#[test]
fn schedule_matches_linear_warmup_then_linear_decay() {
    let _serial = serial();
    // HF get_linear_schedule_with_warmup(peak 1, warmup 4, total 10).
    let mut s = WarmupLinearDecay::new(1.0, 4, 10);
    let want = [
        0.0,
        0.25,
        0.5,
        0.75,
        1.0,
        5.0 / 6.0,
        4.0 / 6.0,
        0.5,
        2.0 / 6.0,
        1.0 / 6.0,
        0.0,
    ];
    for (k, w) in want.iter().enumerate() {
        let lr = s.step();
        assert!((lr - w).abs() < 1e-12, "step {k}: {lr} vs {w}");
    }
}

#[test]
fn a_few_steps_lower_the_loss() {
    let _serial = serial();
    let items = ragged_examples(8);
    let mut cfg = config();
    cfg.epochs = 6;
    let out = run(
        adapted_model(&AdapterConfig::lora(4)),
        &items,
        &cfg,
        &RunOptions::default(),
    )
    .unwrap();
    let first = out.history.first().unwrap().loss;
    let last = out.history.last().unwrap().loss;
    assert_eq!(out.history.len(), cfg.total_steps(items.len()));
    assert!(last < 0.8 * first, "loss {first} → {last}");
}

#[test]
fn resume_after_interruption_reproduces_the_uninterrupted_run() {
    let _serial = serial();
    let items = ragged_examples(10);
    let cfg = config();
    let adapter = AdapterConfig::lora(4).with_dropout(0.1);
    let fingerprint = serde_json::json!({"config": cfg, "adapter": adapter});

    // The reference: one uninterrupted run. Initial adapters must be equal in both runs, so
    // both start from the same saved initial model.
    let initial = adapted_model(&adapter);
    let whole = run(initial.clone(), &items, &cfg, &RunOptions::default()).unwrap();

    let dir = temp_dir("train-resume");
    let options = RunOptions {
        out_dir: Some(dir.clone()),
        resume: true,
        fingerprint: fingerprint.clone(),
        stop_after: Some(3),
        progress: false,
    };
    let first = run(initial.clone(), &items, &cfg, &options).unwrap();
    assert_eq!(first.history.len(), 3);

    // A fresh process: a new model (new parameter ids, other random adapters) resumes.
    let fresh = adapted_model(&adapter);
    let options = RunOptions {
        stop_after: None,
        ..options
    };
    let resumed = run(fresh, &items, &cfg, &options).unwrap();
    assert_eq!(resumed.resumed_from, 3);
    assert_eq!(resumed.history, whole.history);
    assert_eq!(adapter_values(&resumed.model), adapter_values(&whole.model));

    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + whole.history.len());
}

#[test]
fn resume_refuses_a_checkpoint_of_another_run() {
    let _serial = serial();
    let items = ragged_examples(6);
    let cfg = config();
    let dir = temp_dir("train-other-run");
    let options = |lr: f64| RunOptions {
        out_dir: Some(dir.clone()),
        resume: true,
        fingerprint: serde_json::json!({"learning_rate": lr}),
        stop_after: Some(1),
        progress: false,
    };
    run(
        adapted_model(&AdapterConfig::lora(2)),
        &items,
        &cfg,
        &options(1e-2),
    )
    .unwrap();
    let err = run(
        adapted_model(&AdapterConfig::lora(2)),
        &items,
        &cfg,
        &options(2e-2),
    )
    .err()
    .expect("a different run must not resume")
    .to_string();
    assert!(
        err.contains("checkpoints") && err.contains("learning_rate"),
        "{err}"
    );
}

fn checkpoint_param_paths(dir: &Path) -> Vec<String> {
    let latest = std::fs::read_to_string(dir.join("checkpoints/latest")).unwrap();
    let ids = std::fs::read_to_string(
        dir.join("checkpoints")
            .join(latest.trim())
            .join("param_ids.json"),
    )
    .unwrap();
    let map: std::collections::BTreeMap<String, String> = serde_json::from_str(&ids).unwrap();
    map.into_keys().collect()
}

#[test]
fn the_optimizer_holds_only_adapter_parameters() {
    let _serial = serial();
    let items = ragged_examples(4);
    let mut cfg = config();
    cfg.epochs = 1;
    for (adapter, trained) in [
        (AdapterConfig::ipa(2), vec!["adapter.up"]),
        (
            AdapterConfig::ipa(2).with_train_projector(true),
            vec!["adapter.projector", "adapter.up"],
        ),
        (
            AdapterConfig::lora(2).with_dora(true),
            vec!["adapter.magnitude", "adapter.projector", "adapter.up"],
        ),
    ] {
        let dir = temp_dir("train-scope");
        let options = RunOptions {
            out_dir: Some(dir.clone()),
            ..RunOptions::default()
        };
        let model = adapted_model(&adapter);
        run(model, &items, &cfg, &options).unwrap();
        let paths = checkpoint_param_paths(&dir);
        // 2 layers × 4 targets, each with the listed tensors and nothing else.
        assert_eq!(paths.len(), 8 * trained.len(), "{paths:?}");
        for p in &paths {
            assert!(
                trained.iter().any(|t| p.ends_with(t)),
                "{p} is not an adapter tensor"
            );
        }
    }
}

#[test]
fn bad_settings_are_reported_by_field() {
    let _serial = serial();
    let items = ragged_examples(4);
    let mut cfg = config();
    cfg.micro_batch_size = 3;
    let err = run(
        adapted_model(&AdapterConfig::lora(2)),
        &items,
        &cfg,
        &RunOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("micro_batch_size"), "{err}");
    let err = run(
        adapted_model(&AdapterConfig::lora(2)),
        &[],
        &config(),
        &RunOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn a_failed_checkpoint_write_is_an_error_and_keeps_the_previous_one() {
    let _serial = serial();
    let items = ragged_examples(10);
    let cfg = config();
    let adapter = AdapterConfig::lora(2);
    let dir = temp_dir("train-write-fail");
    let options = RunOptions {
        out_dir: Some(dir.clone()),
        resume: true,
        fingerprint: serde_json::json!({"run": "write-fail"}),
        stop_after: Some(2),
        progress: false,
    };
    let initial = adapted_model(&adapter);
    let whole = run(initial.clone(), &items, &cfg, &RunOptions::default()).unwrap();
    run(initial.clone(), &items, &cfg, &options).unwrap();
    // Something in the way of the next checkpoint (step 4): the write fails mid-run.
    let blocker = dir.join("checkpoints/step-4.tmp");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let options = RunOptions {
        stop_after: None,
        ..options
    };
    let err = run(adapted_model(&adapter), &items, &cfg, &options)
        .err()
        .expect("the checkpoint write must fail")
        .to_string();
    assert!(err.contains("step-4.tmp"), "{err}");
    let latest = std::fs::read_to_string(dir.join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "step-2");
    // Once the obstacle is gone, the run resumes from step 2 and ends as an uninterrupted one.
    std::fs::remove_file(&blocker).unwrap();
    let resumed = run(adapted_model(&adapter), &items, &cfg, &options).unwrap();
    assert_eq!(resumed.resumed_from, 2);
    assert_eq!(resumed.history, whole.history);
}

#[test]
fn data_parallel_steps_equal_single_device_steps() {
    let _serial = serial();
    // Two workers on the same device: the threads, forks and gradient gathering all run, and
    // without dropout the result must be the single-device run's, to the bit.
    let items = ragged_examples(10);
    let cfg = config();
    let initial = adapted_model(&AdapterConfig::lora(4));
    let single = run(initial.clone(), &items, &cfg, &RunOptions::default()).unwrap();
    let device: <B as burn::tensor::backend::BackendTypes>::Device = Default::default();
    let devices = [device.clone(), device];
    let parallel = burn_ipa::train::train_on_devices(
        initial,
        &items,
        &cfg,
        &RunOptions::default(),
        &devices,
        &|batch: &[&TokenizedExample], device| {
            let owned: Vec<TokenizedExample> = batch.iter().map(|e| (*e).clone()).collect();
            lm_batch::<B>(&owned, 0, device)
        },
        None,
        None,
    )
    .unwrap();
    assert_eq!(parallel.history, single.history);
    assert_eq!(
        adapter_values(&parallel.model),
        adapter_values(&single.model)
    );
}

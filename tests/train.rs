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
    causal_lm_loss, decoder_loss, frozen_head_loss_in_chunks, lm_batch, train, trainable_lm,
    CausalLm, Monitor, RunOptions, TrainConfig, Trainable, Validation, WarmupLinearDecay,
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
        ..TrainConfig::default()
    }
}

fn run(
    model: CausalLm<B>,
    items: &[TokenizedExample],
    config: &TrainConfig,
    options: &RunOptions,
) -> burn_ipa::Result<burn_ipa::train::TrainOutcome<CausalLm<B>>> {
    run_validated(model, items, config, options, None)
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

/// `got` within `tol` times the largest magnitude of `want` (which must not be all zeros).
fn assert_close_to_scale(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: size");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "{what}: the reference is all zeros");
    let worst = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst <= tol * scale,
        "{what}: differs by {worst} (scale {scale})"
    );
}

/// The loss through a frozen head (computed detached, gradient injected) against the plain
/// autodiff loss on full logits: value and gradient with respect to the final hidden states,
/// on an untied head (Llama-2 fixture) and a tied one (Qwen-2), with padding, a masked prompt
/// and more rows than one chunk holds.
#[test]
fn frozen_head_loss_matches_the_loss_on_full_logits_and_its_gradient() {
    let _serial = serial();
    let device = Default::default();
    for model in ["llama2", "qwen2"] {
        let dir = source_root().join("tests/fixtures/models").join(model);
        let decoder = load_decoder::<B>(&dir, &Default::default()).unwrap();
        let mut items = ragged_examples(5);
        for label in items[1].labels.iter_mut().take(3) {
            *label = IGNORE_INDEX;
        }
        let batch = lm_batch::<B>(&items, 0, &device);
        let hidden = decoder
            .hidden_states(batch.input_ids.clone(), &batch.options)
            .unwrap()
            .detach()
            .require_grad();
        let (want, want_count) =
            causal_lm_loss(decoder.logits(hidden.clone()), batch.labels.clone());
        let want_grad = hidden.grad(&want.backward()).unwrap();
        let hidden = hidden.detach().require_grad();
        let weight = decoder
            .frozen_head()
            .expect("an adapter-only model's head is frozen");
        // 7 rows a chunk: the ~30 labelled rows take five chunks, the last one short.
        let (got, got_count) =
            frozen_head_loss_in_chunks(hidden.clone(), weight, batch.labels.clone(), 7);
        let got_value: f64 = got.clone().into_scalar().into();
        let got_grad = hidden.grad(&got.backward()).unwrap();
        assert_eq!(got_count, want_count, "{model}");
        // 5 rows of up to 10 tokens: the ignored prompt and each row's last position drop out.
        let labelled: usize = items
            .iter()
            .map(|e| e.labels[1..].iter().filter(|&&l| l != IGNORE_INDEX).count())
            .sum();
        assert_eq!(got_count, labelled, "{model}");
        let want_value: f64 = want.into_scalar().into();
        assert!(
            (got_value - want_value).abs() < 1e-5,
            "{model}: {got_value} vs {want_value}"
        );
        let (g, w) = (
            got_grad.into_data().to_vec::<f32>().unwrap(),
            want_grad.into_data().to_vec::<f32>().unwrap(),
        );
        assert_close_to_scale(&g, &w, 1e-5, &format!("{model}: gradient of the states"));
        // The whole model's loss goes through it, to the same value.
        let (through, _) = decoder_loss(
            &decoder,
            batch.input_ids.clone(),
            &batch.options,
            batch.labels.clone(),
        )
        .unwrap();
        let through: f64 = through.into_scalar().into();
        assert!(
            (through - want_value).abs() < 1e-5,
            "{model}: {through} vs {want_value}"
        );
    }
    // Through a whole adapted model: the adapters' gradients match the plain loss's.
    let lora = AdapterConfig::lora(4).with_dropout(0.0);
    for (k, model) in ["llama2", "qwen2"].into_iter().enumerate() {
        let dir = source_root().join("tests/fixtures/models").join(model);
        let mut decoder = load_decoder::<B>(&dir, &Default::default()).unwrap();
        decoder
            .attach_adapters(&targets(), None, &lora, |_| ProjectorInit::KaimingUniform)
            .unwrap();
        // A non-zero up-projection, so the projectors' gradients are non-zero too.
        for (_, linear) in decoder.linears_mut() {
            if let Some(adapter) = linear.adapter.as_mut() {
                let shape = adapter.up.val().shape();
                let up = Tensor::<B, 2>::random(
                    shape,
                    burn::tensor::Distribution::Normal(0.0, 0.1),
                    &device,
                );
                adapter.up = burn::module::Param::from_tensor(up);
            }
        }
        let items = ragged_examples(4 + k);
        let batch = lm_batch::<B>(&items, 0, &device);
        let grads_of = |loss: Tensor<B, 1>, decoder: &mut burn_ipa::models::llama::Decoder<B>| {
            let grads = loss.backward();
            decoder
                .linears_mut()
                .into_iter()
                .filter_map(|(_, l)| l.adapter.as_ref().map(|a| (a.up.val(), a.projector.val())))
                .flat_map(|(up, p)| [up.grad(&grads).unwrap(), p.grad(&grads).unwrap()])
                .flat_map(|g| g.into_data().to_vec::<f32>().unwrap())
                .collect::<Vec<f32>>()
        };
        let logits = decoder
            .forward(batch.input_ids.clone(), &batch.options)
            .unwrap();
        let (plain, _) = causal_lm_loss(logits, batch.labels.clone());
        let want = grads_of(plain, &mut decoder);
        let (fused, _) = decoder_loss(
            &decoder,
            batch.input_ids.clone(),
            &batch.options,
            batch.labels.clone(),
        )
        .unwrap();
        let got = grads_of(fused, &mut decoder);
        assert_close_to_scale(&got, &want, 1e-4, &format!("{model}: adapter gradients"));
    }
    // A head that trains (full fine-tuning) is not frozen: the plain loss serves it.
    let inner = load_decoder::<TestBackend>(&llama2_dir(), &Default::default()).unwrap();
    let full: CausalLm<B> = trainable_lm(inner, &Trainable::All);
    assert!(full.decoder.frozen_head().is_none());
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

/// A resumed run against the uninterrupted one (see `SAME_RUN_TOL`).
fn assert_same_run(
    resumed: &burn_ipa::train::TrainOutcome<CausalLm<B>>,
    whole: &burn_ipa::train::TrainOutcome<CausalLm<B>>,
) {
    assert_same_history(&resumed.history, &whole.history);
    assert_close_f32(
        &adapter_values(&resumed.model),
        &adapter_values(&whole.model),
        SAME_RUN_TOL,
        "adapters of the resumed run",
    );
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
        monitor: Monitor::silent(),
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
    assert_same_run(&resumed, &whole);

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
        monitor: Monitor::silent(),
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
        monitor: Monitor::silent(),
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
    // Device is Copy on the CPU backends, not on the GPU ones.
    #[allow(clippy::clone_on_copy)]
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

/// What a burn-train metrics renderer was told: metric entries `(split, name, value)`, the
/// iteration of each progress report, and the registered metrics.
#[derive(Clone, Default)]
struct Recorded {
    entries: Shared<(&'static str, String, f64)>,
    iterations: Shared<(&'static str, Option<usize>)>,
    registered: Shared<(burn::train::metric::MetricId, String)>,
}

type Shared<T> = std::sync::Arc<std::sync::Mutex<Vec<T>>>;

struct RecordingRenderer(Recorded);

mod recording {
    use super::*;
    use burn::train::metric::{MetricDefinition, NumericEntry};
    use burn::train::renderer::{
        EvaluationName, EvaluationProgress, MetricState, MetricsRenderer,
        MetricsRendererEvaluation, MetricsRendererTraining, ProgressType, TrainingProgress,
    };

    fn numeric(state: &MetricState) -> (String, f64) {
        match state {
            MetricState::Numeric(entry, NumericEntry::Value(v)) => {
                (entry.serialized_entry.serialized.clone(), *v)
            }
            other => panic!("expected a plain numeric entry, got {other:?}"),
        }
    }

    impl RecordingRenderer {
        fn push(&self, split: &'static str, state: MetricState) {
            let (serialized, value) = numeric(&state);
            // The serialized text is the value itself.
            assert_eq!(serialized.parse::<f64>().unwrap(), value);
            let MetricState::Numeric(entry, _) = &state else {
                unreachable!()
            };
            let name = self
                .0
                .registered
                .lock()
                .unwrap()
                .iter()
                .find(|(id, _)| *id == entry.metric_id)
                .unwrap_or_else(|| panic!("metric {:?} was not registered", entry.metric_id))
                .1
                .clone();
            self.0.entries.lock().unwrap().push((split, name, value));
        }
    }

    impl MetricsRendererTraining for RecordingRenderer {
        fn update_train(&mut self, state: MetricState) {
            self.push("train", state);
        }
        fn update_valid(&mut self, state: MetricState) {
            self.push("valid", state);
        }
        fn render_train(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
            let p = item.progress.expect("progress within the epoch");
            assert!(p.items_processed >= 1 && p.items_processed <= p.items_total);
            self.0
                .iterations
                .lock()
                .unwrap()
                .push(("train", item.iteration));
        }
        fn render_valid(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
            self.0
                .iterations
                .lock()
                .unwrap()
                .push(("valid", item.iteration));
        }
    }

    impl MetricsRendererEvaluation for RecordingRenderer {
        fn update_test(&mut self, _: EvaluationName, _: MetricState) {
            panic!("training reports no test split");
        }
        fn render_test(&mut self, _: EvaluationProgress, _: Vec<ProgressType>) {}
    }

    impl MetricsRenderer for RecordingRenderer {
        fn manual_close(&mut self) {}
        fn register_metric(&mut self, definition: MetricDefinition) {
            self.0
                .registered
                .lock()
                .unwrap()
                .push((definition.metric_id, definition.name));
        }
    }
}

fn run_with_validation(
    model: CausalLm<B>,
    items: &[TokenizedExample],
    config: &TrainConfig,
    options: &RunOptions,
    valid: &mut Validation<'_, CausalLm<B>>,
) -> burn_ipa::Result<burn_ipa::train::TrainOutcome<CausalLm<B>>> {
    run_validated(model, items, config, options, Some(valid))
}

/// Trains the causal LM on `items` (pad id 0), with a validation if given.
fn run_validated(
    model: CausalLm<B>,
    items: &[TokenizedExample],
    config: &TrainConfig,
    options: &RunOptions,
    valid: Option<&mut Validation<'_, CausalLm<B>>>,
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
        valid,
    )
}

#[test]
fn a_metrics_renderer_sees_every_step_and_validation_of_the_history() {
    let _serial = serial();
    let items = ragged_examples(10);
    let cfg = TrainConfig {
        valid_every: 2,
        ..config()
    };
    let recorded = Recorded::default();
    let monitor = Monitor::with_renderer(Box::new(RecordingRenderer(recorded.clone())));
    let options = RunOptions {
        monitor,
        ..RunOptions::default()
    };
    let mut calls = 0;
    let mut valid = |_: &CausalLm<B>, _: usize| {
        calls += 1;
        Ok(1.0 / calls as f64)
    };
    let outcome = run_with_validation(
        adapted_model(&AdapterConfig::lora(4)),
        &items,
        &cfg,
        &options,
        &mut valid,
    )
    .unwrap();

    let names: Vec<String> = recorded
        .registered
        .lock()
        .unwrap()
        .iter()
        .map(|(_, n)| n.clone())
        .collect();
    assert_eq!(names, ["Loss", "Learning Rate", "Accuracy"]);
    let mut expected = Vec::new();
    let mut iterations = Vec::new();
    for r in &outcome.history {
        expected.push(("train", "Loss".to_string(), r.loss));
        expected.push(("train", "Learning Rate".to_string(), r.lr));
        iterations.push(("train", Some(r.step)));
        if let Some(v) = r.valid_loss {
            expected.push(("valid", "Loss".to_string(), v));
            iterations.push(("valid", Some(r.step)));
        }
    }
    // 10 examples in batches of 4: 3 steps an epoch, 2 epochs; validations at 2, 4, 6.
    assert_eq!(outcome.history.len(), 6);
    assert_eq!(iterations.iter().filter(|(s, _)| *s == "valid").count(), 3);
    assert_eq!(*recorded.entries.lock().unwrap(), expected);
    assert_eq!(*recorded.iterations.lock().unwrap(), iterations);
    // A causal LM has no accuracy.
    assert!(outcome.history.iter().all(|r| r.accuracy.is_none()));
}

#[test]
fn a_stop_request_checkpoints_the_step_and_resume_finishes_the_run() {
    let _serial = serial();
    let items = ragged_examples(10);
    let cfg = TrainConfig {
        checkpoint_every: 0,
        valid_every: 1,
        ..config()
    };
    let adapter = AdapterConfig::lora(4).with_dropout(0.1);
    let initial = adapted_model(&adapter);
    let mut constant = |_: &CausalLm<B>, _: usize| Ok(0.5);
    let whole = run_with_validation(
        initial.clone(),
        &items,
        &cfg,
        &RunOptions::default(),
        &mut constant,
    )
    .unwrap();
    assert!(!whole.stopped_early);

    // The user asks to stop during step 3 (here: from its validation); no checkpoint was due.
    let dir = temp_dir("train-stop");
    let monitor = Monitor::silent();
    let options = RunOptions {
        out_dir: Some(dir.clone()),
        resume: true,
        fingerprint: serde_json::json!({"run": "stop"}),
        stop_after: None,
        monitor: monitor.clone(),
    };
    let mut step = 0;
    let mut stopping = |_: &CausalLm<B>, _: usize| {
        step += 1;
        if step == 3 {
            monitor.request_stop();
        }
        Ok(0.5)
    };
    let first =
        run_with_validation(initial.clone(), &items, &cfg, &options, &mut stopping).unwrap();
    assert!(first.stopped_early);
    assert_eq!(first.history.len(), 3);
    assert_eq!(
        std::fs::read_to_string(dir.join("checkpoints/latest"))
            .unwrap()
            .trim(),
        "step-3"
    );

    // A new process: a fresh monitor, a fresh model; it resumes at step 3 and ends as the
    // uninterrupted run did.
    let options = RunOptions {
        monitor: Monitor::silent(),
        ..options
    };
    let resumed = run_with_validation(
        adapted_model(&adapter),
        &items,
        &cfg,
        &options,
        &mut constant,
    )
    .unwrap();
    assert!(!resumed.stopped_early);
    assert_eq!(resumed.resumed_from, 3);
    assert_same_run(&resumed, &whole);
}

/// Dropout during training: each element kept with probability 1 − p and scaled by
/// 1 / (1 − p), overall and within each stretch of 65 536 elements, the same mask again under
/// the same seed and another under another seed, no stretch repeating the one before.
#[test]
fn dropout_keeps_one_minus_p_of_the_elements_and_rescales_them() {
    // The backend's generator is process-wide: every test of this binary holds the lock.
    let _serial = serial();
    type A = B;
    let device = Default::default();
    let (p, block, n) = (0.25, 65_536, 3 * 65_536 + 5);
    let x = Tensor::<A, 1>::ones([n], &device).require_grad();
    let draw = |seed: u64| {
        <A as burn::tensor::backend::Backend>::seed(&device, seed);
        host(burn_ipa::adapter::dropout(x.clone(), p).inner())
    };
    let mask = draw(11);
    assert_eq!(mask, draw(11), "same seed, same mask");
    assert_ne!(mask, draw(12), "another seed, another mask");
    let scale = 1.0 / (1.0 - p);
    assert!(mask.iter().all(|&m| m == 0.0 || (m - scale).abs() < 1e-6));
    let kept =
        |values: &[f64]| values.iter().filter(|&&m| m != 0.0).count() as f64 / values.len() as f64;
    let sd = |len: usize| (p * (1.0 - p) / len as f64).sqrt();
    assert!(
        (kept(&mask) - (1.0 - p)).abs() < 5.0 * sd(n),
        "kept {}",
        kept(&mask)
    );
    for (i, values) in mask.chunks_exact(block).enumerate() {
        let k = kept(values);
        assert!(
            (k - (1.0 - p)).abs() < 5.0 * sd(block),
            "block {i}: kept {k}"
        );
    }
    assert_ne!(
        mask[..block],
        mask[block..2 * block],
        "stretches draw apart"
    );
}

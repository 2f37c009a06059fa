//! burn-train's Learner path (`burn_ipa::train::learner`) against the step loop on the tiny
//! fixture decoder: the same adapters after the same steps, adapter-only records that give
//! parameters their ids back, a run stopped inside a window resuming to the uninterrupted
//! result, damaged or unwritable checkpoints reported as errors, several devices through
//! burn-train's multi-device strategy.

mod common;

use std::path::Path;
use std::sync::Arc;

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module};
use burn_ipa::adapter::{AdapterConfig, ProjectorInit};
use burn_ipa::data::instruction::TokenizedExample;
use burn_ipa::models::loading::load_decoder;
use burn_ipa::train::learner::{
    checkpoint_file, learn, AdapterOnly, KeepBest, LearnerOutcome, LearnerSettings, StepOptions,
    ValidSet,
};
use burn_ipa::train::{lm_batch, CausalLm, LmBatcher, RunOptions, TrainConfig};
use common::*;

type B = Autodiff<TestBackend>;
type Inner = TestBackend;

fn targets() -> Vec<String> {
    ["q_proj", "v_proj", "up_proj", "down_proj"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The fixture decoder with LoRA adapters (random projectors, seeded), trainable.
fn adapted_model(config: &AdapterConfig) -> CausalLm<B> {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 11);
    let mut decoder = load_decoder::<B>(&llama2_dir(), &device).unwrap();
    decoder
        .attach_adapters(&targets(), None, config, |_| ProjectorInit::KaimingUniform)
        .unwrap();
    CausalLm { decoder }
}

fn config() -> TrainConfig {
    TrainConfig {
        learning_rate: 1e-2,
        weight_decay: 0.01,
        epochs: 2,
        batch_size: 4,
        micro_batch_size: 2,
        warmup_steps: 2,
        max_steps: None,
        checkpoint_every: 2,
        valid_every: 2,
        seed: 7,
        max_grad_norm: 0.05,
        ..TrainConfig::default()
    }
}

/// Validation batches of two examples each from `valid`.
fn valid_set(valid: &[TokenizedExample]) -> ValidSet<Inner, burn_ipa::train::LmBatch<Inner>> {
    let valid = Arc::new(valid.to_vec());
    ValidSet {
        batches: valid.len().div_ceil(2),
        make: Arc::new(move |i, device| {
            let end = ((i + 1) * 2).min(valid.len());
            Ok(lm_batch::<Inner>(&valid[i * 2..end], 0, device))
        }),
    }
}

fn settings(cfg: &TrainConfig, n: usize, out: &Path) -> LearnerSettings {
    let mut s = LearnerSettings::from_train_config(cfg, n, out).unwrap();
    // `max_steps` only says where a process stops: not part of what identifies the run.
    s.fingerprint = serde_json::json!({"run": "learner test", "seed": cfg.seed});
    s.keep = KeepBest::LowestLoss;
    s
}

fn run_learner(
    model: CausalLm<B>,
    items: &[TokenizedExample],
    valid: &[TokenizedExample],
    settings: &LearnerSettings,
    devices: usize,
) -> burn_ipa::Result<LearnerOutcome<AdapterOnly<Inner, CausalLm<Inner>>>> {
    let device = Default::default();
    learn::<B, CausalLm<B>, TokenizedExample>(
        model,
        Arc::new(items.to_vec()),
        Arc::new(LmBatcher { pad_id: 0 }),
        valid_set(valid),
        settings,
        &vec![device; devices],
    )
}

#[track_caller]
#[test]
fn the_learner_takes_the_step_loops_steps() {
    let _serial = serial();
    let items = ragged_examples(10);
    let valid = ragged_examples(3);
    let cfg = config();
    // No dropout: both paths must compute the same thing.
    let initial = adapted_model(&AdapterConfig::lora(4));

    let mut validate = |m: &CausalLm<B>, _: usize| {
        burn_ipa::train::validation_loss(&m.decoder.valid(), &valid, 2, 0)
    };
    let looped = burn_ipa::train::train_with_hook(
        initial.clone(),
        &items,
        &cfg,
        &RunOptions::default(),
        &Default::default(),
        |batch: &[&TokenizedExample]| {
            let owned: Vec<TokenizedExample> = batch.iter().map(|e| (*e).clone()).collect();
            lm_batch::<B>(&owned, 0, &Default::default())
        },
        Some(&mut validate),
        None,
    )
    .unwrap();

    let dir = temp_dir("learner-equal");
    let learned = run_learner(initial, &items, &valid, &settings(&cfg, 10, &dir), 1).unwrap();
    assert!(!learned.stopped_early);
    assert_eq!(learned.log.history.len(), looped.history.len());
    for (a, b) in learned.log.history.iter().zip(&looped.history) {
        assert_eq!((a.step, a.epoch), (b.step, b.epoch));
        assert_eq!(a.lr, b.lr, "step {}: the schedule", a.step);
        assert!(
            (a.loss - b.loss).abs() <= 1e-6 * (1.0 + b.loss),
            "step {}",
            a.step
        );
        assert_eq!(
            a.valid_loss.is_some(),
            b.valid_loss.is_some(),
            "step {}",
            a.step
        );
        if let (Some(x), Some(y)) = (a.valid_loss, b.valid_loss) {
            assert!(
                (x - y).abs() <= 1e-6 * (1.0 + y),
                "step {}: {x} vs {y}",
                a.step
            );
        }
        let (x, y) = (a.grad_norm.unwrap(), b.grad_norm.unwrap());
        assert!(
            (x - y).abs() <= 1e-6 * (1.0 + y),
            "step {}: grad norm",
            a.step
        );
    }
    // Clipping was active (max norm 0.05), so the same adapters also mean the same clipping.
    assert!(looped.history.iter().any(|r| r.grad_norm.unwrap() > 0.05));
    // On one device the Learner runs the loop's operations in the loop's order: the same
    // values (to the bit in practice; `SAME_RUN_TOL` says why that is not promised).
    assert_close_f32(
        &adapter_values(&learned.model),
        &adapter_values(&looped.model.valid()),
        SAME_RUN_TOL,
        "adapters after the run",
    );

    // metrics.csv holds the loop's columns, a line per step.
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + looped.history.len());
    assert!(csv.starts_with(burn_ipa::train::trainer::METRICS_HEADER));

    // The best window is the lowest validation loss, and its adapters are the checkpoint's.
    let (best, best_model) = learned.best.expect("the run validated");
    let lowest = learned
        .log
        .windows
        .iter()
        .filter_map(|w| w.valid_loss)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(best.valid_loss, Some(lowest));
    let again = burn_ipa::train::validation_loss(&best_model.inner.decoder, &valid, 2, 0).unwrap();
    assert!((again - lowest).abs() < 1e-6, "{again} vs {lowest}");
}

#[test]
fn adapter_records_hold_the_adapters_and_give_back_their_ids() {
    let _serial = serial();
    let model = AdapterOnly::new(
        adapted_model(&AdapterConfig::lora(2)),
        StepOptions::default(),
    );
    let record = model.clone().into_record();
    // 2 layers × 4 targets, projector and up-projection each; nothing of the base.
    assert_eq!(record.layers.len(), 8);
    assert_eq!(record.num_tensors(), 16);
    assert!(record.num_values() * 20 < model.num_params());

    // A fresh model (new parameter ids, zero adapters) takes the record's values and ids.
    let fresh = AdapterOnly::new(
        adapted_model(&AdapterConfig::lora(2).with_dropout(0.0)),
        StepOptions::default(),
    );
    let ids = |m: &AdapterOnly<B, CausalLm<B>>| -> Vec<String> {
        burn_store::ModuleSnapshot::collect(m, None, None, false)
            .into_iter()
            .filter(|s| s.full_path().contains(".adapter."))
            .map(|s| s.tensor_id.unwrap().serialize())
            .collect()
    };
    assert_ne!(ids(&fresh), ids(&model));
    let loaded = fresh.load_record(record);
    assert_eq!(ids(&loaded), ids(&model));
    assert_eq!(adapter_values(&loaded), adapter_values(&model));

    // A record of other layers is refused by name.
    let other = AdapterOnly::new(
        {
            let mut decoder = load_decoder::<B>(&llama2_dir(), &Default::default()).unwrap();
            decoder
                .attach_adapters(
                    &["q_proj".to_string()],
                    None,
                    &AdapterConfig::lora(2),
                    |_| ProjectorInit::KaimingUniform,
                )
                .unwrap();
            CausalLm { decoder }
        },
        StepOptions::default(),
    );
    let why = other.check_record(&model.into_record()).unwrap_err();
    assert!(
        why.contains("down_proj") && why.contains("does not adapt"),
        "{why}"
    );
}

#[test]
fn a_run_stopped_inside_a_window_resumes_to_the_uninterrupted_adapters() {
    let _serial = serial();
    let items = ragged_examples(10);
    let valid = ragged_examples(2);
    let cfg = config();
    // With dropout: the masks are seeded per step and micro-batch, as in the step loop.
    let adapter = AdapterConfig::lora(4).with_dropout(0.1);
    let initial = adapted_model(&adapter);
    let whole_dir = temp_dir("learner-whole");
    let whole = run_learner(
        initial.clone(),
        &items,
        &valid,
        &settings(&cfg, 10, &whole_dir),
        1,
    )
    .unwrap();

    let dir = temp_dir("learner-stop");
    let mut first = settings(&cfg, 10, &dir);
    first.resume = true;
    // Stop before step 4 (0-based 3): inside window 2, whose steps 3 and 4 are lost.
    first.stop_after = Some(3);
    let stopped = run_learner(initial, &items, &valid, &first, 1).unwrap();
    assert!(stopped.stopped_early);
    assert_eq!(stopped.steps(), 2);
    assert!(checkpoint_file(&dir, "model", 1).is_file());
    assert!(!checkpoint_file(&dir, "model", 2).is_file());

    // A new process: a fresh model (other random adapters, new ids) resumes at window 1.
    let resumed = run_learner(
        adapted_model(&AdapterConfig::lora(4).with_dropout(0.1)),
        &items,
        &valid,
        &LearnerSettings {
            stop_after: None,
            // A new process: a fresh monitor, without the first one's stop request.
            monitor: burn_ipa::train::Monitor::silent(),
            ..first
        },
        1,
    )
    .unwrap();
    assert!(!resumed.stopped_early);
    assert_eq!(resumed.resumed_from, 2);
    assert_same_history(&resumed.log.history, &whole.log.history);
    assert_close_f32(
        &adapter_values(&resumed.model),
        &adapter_values(&whole.model),
        SAME_RUN_TOL,
        "adapters of the resumed run",
    );
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_same_metrics_csv(
        &csv,
        &std::fs::read_to_string(whole_dir.join("metrics.csv")).unwrap(),
    );

    // The checkpoints hold the adapters only: each window's model record is a small share of
    // the base weights it adapts (a record of the whole model would be larger than them).
    let base = std::fs::metadata(llama2_dir().join("model.safetensors"))
        .unwrap()
        .len();
    for w in burn_ipa::train::learner::checkpoint_windows(&dir) {
        let size = std::fs::metadata(checkpoint_file(&dir, "model", w))
            .unwrap()
            .len();
        assert!(size * 8 < base, "window {w}: {size} bytes, the base {base}");
    }
}

#[test]
fn a_resume_with_another_run_or_damaged_checkpoints_is_an_error() {
    let _serial = serial();
    let items = ragged_examples(10);
    let valid = ragged_examples(2);
    let cfg = TrainConfig {
        max_steps: Some(4),
        ..config()
    };
    let adapter = AdapterConfig::lora(2);
    let dir = temp_dir("learner-damaged");
    let mut s = settings(&cfg, 10, &dir);
    s.resume = true;
    let first = run_learner(adapted_model(&adapter), &items, &valid, &s, 1).unwrap();
    assert_eq!(first.steps(), 4);

    // Another run's settings: refused, naming what differs.
    let mut other = s.clone();
    other.fingerprint = serde_json::json!({"config": {"learning_rate": 1}});
    let err = run_learner(adapted_model(&adapter), &items, &valid, &other, 1)
        .err()
        .expect("another run must not resume")
        .to_string();
    assert!(err.contains("learner_log.json"), "{err}");

    // The newest checkpoint truncated: the run goes back to the one before (window 1) and
    // still ends as the uninterrupted run does.
    let model_2 = checkpoint_file(&dir, "model", 2);
    let bytes = std::fs::read(&model_2).unwrap();
    std::fs::write(&model_2, &bytes[..bytes.len() / 2]).unwrap();
    let longer = TrainConfig {
        max_steps: None,
        ..cfg.clone()
    };
    let mut resume = settings(&longer, 10, &dir);
    resume.resume = true;
    let resumed = run_learner(adapted_model(&adapter), &items, &valid, &resume, 1).unwrap();
    assert_eq!(resumed.resumed_from, 2);
    let whole_dir = temp_dir("learner-damaged-whole");
    let whole = run_learner(
        adapted_model(&adapter),
        &items,
        &valid,
        &settings(&longer, 10, &whole_dir),
        1,
    )
    .unwrap();
    assert_close_f32(
        &adapter_values(&resumed.model),
        &adapter_values(&whole.model),
        SAME_RUN_TOL,
        "adapters resumed from the previous window",
    );

    // Every checkpoint damaged: an error naming the file, no panic.
    for w in burn_ipa::train::learner::checkpoint_windows(&dir) {
        std::fs::write(checkpoint_file(&dir, "optim", w), b"not a record").unwrap();
    }
    let err = run_learner(adapted_model(&adapter), &items, &valid, &resume, 1)
        .err()
        .expect("damaged checkpoints must not resume")
        .to_string();
    assert!(
        err.contains("no intact checkpoint") && err.contains("optim-"),
        "{err}"
    );
}

#[test]
fn a_checkpoint_that_cannot_be_written_is_an_error() {
    let _serial = serial();
    let items = ragged_examples(6);
    let dir = temp_dir("learner-unwritable");
    // burn-train's checkpoint folder is a file: every save fails.
    std::fs::create_dir_all(dir.join("learner")).unwrap();
    std::fs::write(dir.join("learner/checkpoint"), b"in the way").unwrap();
    let err = run_learner(
        adapted_model(&AdapterConfig::lora(2)),
        &items,
        &[],
        &settings(&config(), 6, &dir),
        1,
    )
    .err()
    .expect("a failed save is an error")
    .to_string();
    assert!(err.contains("checkpoint"), "{err}");
}

#[test]
fn several_devices_take_the_same_steps_through_burn_trains_strategy() {
    let _serial = serial();
    // Two workers on the one CPU device: burn-train's multi-device strategy forks the model,
    // splits each step's micro-batches, sums the gradients and clips the sum. The sums are
    // taken in another order than on one device: equal to f32 rounding.
    let items = ragged_examples(10);
    let cfg = config();
    let initial = adapted_model(&AdapterConfig::lora(4));
    let one = run_learner(
        initial.clone(),
        &items,
        &[],
        &settings(&cfg, 10, &temp_dir("learner-one")),
        1,
    )
    .unwrap();
    let two = run_learner(
        initial,
        &items,
        &[],
        &settings(&cfg, 10, &temp_dir("learner-two")),
        2,
    )
    .unwrap();
    assert_eq!(two.log.history.len(), one.log.history.len());
    for (a, b) in two.log.history.iter().zip(&one.log.history) {
        assert_eq!(a.lr, b.lr);
        assert!(
            (a.loss - b.loss).abs() <= 1e-5 * (1.0 + b.loss),
            "step {}",
            a.step
        );
    }
    assert_close_f32(
        &adapter_values(&two.model),
        &adapter_values(&one.model),
        1e-4,
        "adapters on two devices",
    );
}

#[test]
fn validation_points_that_do_not_end_a_window_are_refused() {
    let cfg = TrainConfig {
        valid_every: 3,
        ..config()
    };
    let err = LearnerSettings::from_train_config(&cfg, 10, Path::new("unused"))
        .expect_err("a validation inside a window")
        .to_string();
    assert!(
        err.contains("valid_every") && err.contains("checkpoint_every"),
        "{err}"
    );
}

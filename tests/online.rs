//! Online IPA: projector estimators updated from the training forward passes' inputs.

mod common;

use std::collections::BTreeMap;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn_ipa::adapter::{AdapterConfig, ProjectorInit};
use burn_ipa::data::instruction::TokenizedExample;
use burn_ipa::fit::{site_kind_of, DecoderFit};
use burn_ipa::models::llama::Decoder;
use burn_ipa::models::loading::load_decoder;
use burn_ipa::models::Site;
use burn_ipa::pipelines::online::{finetune_online, OnlineFit, OnlineProjectorFit, WarmStart};
use burn_ipa::projector::{FitAlgorithm, GhaConfig};
use burn_ipa::train::{
    epoch_order, lm_batch, train_with_hook, CausalLm, Monitor, RunOptions, TrainConfig,
    TrainOutcome,
};
use common::*;

type B = Autodiff<TestBackend>;
type Inner = TestBackend;

fn targets() -> Vec<String> {
    ["q_proj", "v_proj", "up_proj", "down_proj"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn base() -> Decoder<Inner> {
    load_decoder::<Inner>(&llama2_dir(), &Default::default()).unwrap()
}

/// The tiny fixture decoder with IPA adapters of `adapter` (placeholder projectors).
fn ipa_model(adapter: &AdapterConfig) -> Decoder<Inner> {
    let mut decoder = base();
    decoder
        .attach_adapters(&targets(), None, adapter, |_| ProjectorInit::Zeros)
        .unwrap();
    decoder
}

fn config() -> TrainConfig {
    TrainConfig {
        learning_rate: 1e-2,
        weight_decay: 0.0,
        epochs: 1,
        batch_size: 4,
        micro_batch_size: 2,
        warmup_steps: 0,
        max_steps: None,
        checkpoint_every: 1,
        valid_every: 0,
        seed: 7,
        ..TrainConfig::default()
    }
}

fn run(
    model: Decoder<Inner>,
    items: &[TokenizedExample],
    cfg: &TrainConfig,
    options: &RunOptions,
    online: &OnlineFit,
) -> burn_ipa::Result<TrainOutcome<CausalLm<B>>> {
    finetune_online::<B>(
        model,
        items,
        cfg,
        options,
        online,
        0,
        &Default::default(),
        None,
    )
}

/// The micro-batches the training loop runs, in order.
fn micro_batches(items: &[TokenizedExample], cfg: &TrainConfig) -> Vec<Vec<TokenizedExample>> {
    let n = items.len();
    let per_epoch = cfg.steps_per_epoch(n);
    let mut out = Vec::new();
    for step in 0..cfg.run_steps(n) {
        let order = epoch_order(n, cfg.seed, step / per_epoch);
        let begin = (step % per_epoch) * cfg.batch_size;
        let end = (begin + cfg.batch_size).min(n);
        for chunk in order[begin..end].chunks(cfg.micro_batch_size) {
            out.push(chunk.iter().map(|&i| items[i].clone()).collect());
        }
    }
    out
}

/// An offline fit of the base model (no adapters) over `batches`, in order.
fn offline_fit(
    algorithm: &FitAlgorithm,
    rank: usize,
    seed: u64,
    batches: &[Vec<TokenizedExample>],
) -> BTreeMap<Site, Vec<f64>> {
    let model = base();
    let mut fit = DecoderFit::new(&model, &targets(), None, algorithm, rank, seed).unwrap();
    let device = Default::default();
    for b in batches {
        let batch = lm_batch::<Inner>(b, 0, &device);
        fit.observe(&model, batch.input_ids, batch.options.attention_mask)
            .unwrap();
    }
    fit.finish()
        .unwrap()
        .into_iter()
        .map(|(site, f)| (site, host(f.components)))
        .collect()
}

/// Every adapter's projector `[r, d]`, by path.
fn projectors<BB: burn::tensor::backend::Backend>(
    decoder: &Decoder<BB>,
) -> BTreeMap<String, Vec<f64>> {
    let mut d = decoder.clone();
    d.linears_mut()
        .into_iter()
        .filter_map(|(path, l)| l.projector().map(|p| (path, host(p))))
        .collect()
}

fn site_of(path: &str) -> Site {
    Site {
        layer: path.split('.').nth(2).unwrap().parse().unwrap(),
        kind: site_kind_of(path.rsplit('.').next().unwrap()).unwrap(),
    }
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn with_a_frozen_up_projection_the_projectors_equal_an_offline_fit_of_the_same_micro_batches() {
    let _serial = serial();
    let items = ragged_examples(10);
    let mut cfg = config();
    // Adam moves each parameter by about the learning rate per step: B stays ≈ 0, so the
    // inputs the layers see are the base model's.
    cfg.learning_rate = 1e-9;
    let rank = 4;
    let cases = [
        (FitAlgorithm::Ipca, WarmStart::Zero),
        (FitAlgorithm::Gha(GhaConfig::default()), WarmStart::Zero),
        (
            FitAlgorithm::Ipca,
            WarmStart::PreFit {
                fraction: 0.5,
                batch_size: 3,
            },
        ),
    ];
    for (algorithm, warm_start) in cases {
        let online = OnlineFit {
            algorithm: algorithm.clone(),
            update_every: 1,
            stop_after: None,
            warm_start: warm_start.clone(),
            seed: 11,
        };
        let out = run(
            ipa_model(&AdapterConfig::ipa(rank)),
            &items,
            &cfg,
            &RunOptions::default(),
            &online,
        )
        .unwrap();
        assert_eq!(out.history.len(), 3);

        let mut batches = Vec::new();
        if let WarmStart::PreFit {
            fraction,
            batch_size,
        } = warm_start
        {
            let order = epoch_order(items.len(), online.seed, 0);
            let take = (items.len() as f64 * fraction).ceil() as usize;
            for chunk in order[..take].chunks(batch_size) {
                batches.push(chunk.iter().map(|&i| items[i].clone()).collect());
            }
        }
        let micro = micro_batches(&items, &cfg);
        assert_eq!(micro.len(), 5);
        batches.extend(micro);
        let want = offline_fit(&algorithm, rank, online.seed, &batches);

        let got = projectors(&out.model.decoder.valid());
        assert_eq!(got.len(), 8);
        for (path, p) in &got {
            let w = &want[&site_of(path)];
            let diff = max_diff(p, w);
            assert!(diff < 1e-4, "{algorithm:?} {warm_start:?} {path}: {diff}");
        }
    }
}

#[test]
fn the_loss_goes_down_with_online_projectors() {
    let _serial = serial();
    let items = ragged_examples(8);
    let mut cfg = config();
    cfg.epochs = 6;
    cfg.warmup_steps = 2;
    cfg.learning_rate = 0.1;
    let out = run(
        ipa_model(&AdapterConfig::ipa(4)),
        &items,
        &cfg,
        &RunOptions::default(),
        &OnlineFit::new("ipca").unwrap(),
    )
    .unwrap();
    assert_eq!(out.history.len(), 12);
    // Steps see different batches: compare the mean loss of the first and the last epoch.
    let epoch_mean = |e: usize| {
        let l: Vec<f64> = out
            .history
            .iter()
            .filter(|h| h.epoch == e)
            .map(|h| h.loss)
            .collect();
        l.iter().sum::<f64>() / l.len() as f64
    };
    let (first, last) = (epoch_mean(0), epoch_mean(5));
    assert!(last < 0.85 * first, "loss {first} → {last}");
}

#[test]
fn projectors_follow_the_estimate_every_update_and_freeze_after_the_stop() {
    let _serial = serial();
    let items = ragged_examples(10);
    let mut cfg = config();
    cfg.epochs = 2;
    let online = OnlineFit {
        update_every: 2,
        stop_after: Some(2),
        ..OnlineFit::default()
    };
    let mut inner = ipa_model(&AdapterConfig::ipa(4));
    let mut fitter = OnlineProjectorFit::new(&inner, &online, &cfg, items.len(), 0).unwrap();
    fitter.zero_projectors(&mut inner).unwrap();
    let mut decoder = Decoder::<B>::from_inner(inner);
    for (_, l) in decoder.linears_mut() {
        l.mark_trainable();
    }
    let path = "model.layers.1.mlp.down_proj";
    let mut seen: Vec<Vec<f64>> = Vec::new();
    let mut hook = |m: &mut CausalLm<B>, batch: &[&TokenizedExample], step: usize| {
        fitter.before_micro_batch(&mut m.decoder, batch, step)?;
        seen.push(projectors(&m.decoder)[path].clone());
        Ok(())
    };
    let device = Default::default();
    let out = train_with_hook(
        CausalLm { decoder },
        &items,
        &cfg,
        &RunOptions::default(),
        &device,
        |batch: &[&TokenizedExample]| {
            let owned: Vec<TokenizedExample> = batch.iter().map(|e| (*e).clone()).collect();
            lm_batch::<B>(&owned, 0, &device)
        },
        None,
        Some(&mut hook),
    )
    .unwrap();
    assert_eq!(out.history.len(), 6);
    // 10 micro-batches (2 + 2 + 1 per epoch); steps 0 and 1 hold micro-batches 0..4.
    assert_eq!(seen.len(), 10);
    assert_eq!(fitter.observed(), 4);
    // Updates after micro-batches 0 and 2 (every 2nd) and 3 (the last before the stop).
    assert_eq!(fitter.updates(), 3);
    let changed = |a: &[f64], b: &[f64]| max_diff(a, b) > 1e-6;
    assert!(seen[0].iter().any(|v| *v != 0.0), "first update");
    assert!(!changed(&seen[1], &seen[0]));
    assert!(changed(&seen[2], &seen[1]));
    assert!(changed(&seen[3], &seen[2]));
    for s in &seen[4..] {
        assert!(!changed(s, &seen[3]), "frozen after the stop");
    }
    let last = projectors(&out.model.decoder)[path].clone();
    assert!(!changed(&last, &seen[3]));
}

#[test]
fn resume_is_refused_while_the_fit_runs_and_exact_after_it_stopped() {
    let _serial = serial();
    let items = ragged_examples(10);
    let mut cfg = config();
    cfg.epochs = 2;
    // A trainable projector: its optimizer state must survive the online updates.
    let adapter = AdapterConfig::ipa(4).with_train_projector(true);
    let fingerprint = serde_json::json!({ "config": cfg });

    let running = OnlineFit::default();
    let dir = temp_dir("online-refused");
    let options = RunOptions {
        out_dir: Some(dir.clone()),
        resume: true,
        fingerprint: fingerprint.clone(),
        stop_after: Some(2),
        monitor: Monitor::silent(),
    };
    run(ipa_model(&adapter), &items, &cfg, &options, &running).unwrap();
    let resume = RunOptions {
        stop_after: None,
        ..options.clone()
    };
    let err = run(ipa_model(&adapter), &items, &cfg, &resume, &running)
        .err()
        .expect("an online fit in progress cannot resume")
        .to_string();
    assert!(
        err.contains("cannot resume") && err.contains("step 2"),
        "{err}"
    );

    let stopping = OnlineFit {
        stop_after: Some(2),
        ..OnlineFit::default()
    };
    let whole = run(
        ipa_model(&adapter),
        &items,
        &cfg,
        &RunOptions::default(),
        &stopping,
    )
    .unwrap();
    let dir = temp_dir("online-resumed");
    let options = RunOptions {
        out_dir: Some(dir.clone()),
        ..options
    };
    let first = run(ipa_model(&adapter), &items, &cfg, &options, &stopping).unwrap();
    assert_eq!(first.history.len(), 2);
    let resume = RunOptions {
        stop_after: None,
        ..options
    };
    let resumed = run(ipa_model(&adapter), &items, &cfg, &resume, &stopping).unwrap();
    assert_eq!(resumed.resumed_from, 2);
    assert_same_history(&resumed.history, &whole.history);
    assert_close_f32(
        &adapter_values(&resumed.model),
        &adapter_values(&whole.model),
        SAME_RUN_TOL,
        "adapters of the resumed run",
    );

    // The online settings are part of the fingerprint.
    let other = OnlineFit {
        update_every: 2,
        ..stopping
    };
    let err = run(ipa_model(&adapter), &items, &cfg, &resume, &other)
        .err()
        .expect("other online settings must not resume")
        .to_string();
    assert!(err.contains("online_fit"), "{err}");
}

#[test]
fn bad_settings_and_models_are_errors() {
    let _serial = serial();
    let items = ragged_examples(4);
    let cfg = config();
    let bad = |online: OnlineFit, model: Decoder<Inner>| {
        run(model, &items, &cfg, &RunOptions::default(), &online)
            .err()
            .expect("must fail")
            .to_string()
    };
    let ipa = || ipa_model(&AdapterConfig::ipa(2));

    let err = bad(
        OnlineFit {
            update_every: 0,
            ..OnlineFit::default()
        },
        ipa(),
    );
    assert!(err.contains("update_every"), "{err}");
    let err = bad(
        OnlineFit {
            stop_after: Some(0),
            ..OnlineFit::default()
        },
        ipa(),
    );
    assert!(err.contains("stop_after"), "{err}");
    for (fraction, batch_size) in [(0.0, 2), (1.5, 2), (0.5, 0)] {
        let err = bad(
            OnlineFit {
                warm_start: WarmStart::PreFit {
                    fraction,
                    batch_size,
                },
                ..OnlineFit::default()
            },
            ipa(),
        );
        assert!(err.contains("warm-start"), "{err}");
    }
    assert!(OnlineFit::new("svd").is_err());

    let mut lora = base();
    lora.attach_adapters(&targets(), None, &AdapterConfig::lora(2), |_| {
        ProjectorInit::KaimingUniform
    })
    .unwrap();
    let err = bad(OnlineFit::default(), lora);
    assert!(err.contains("IPA"), "{err}");

    let err = bad(OnlineFit::default(), base());
    assert!(err.contains("no adapters"), "{err}");

    let mut mixed = base();
    let q = vec!["q_proj".to_string()];
    let up = vec!["up_proj".to_string()];
    mixed
        .attach_adapters(&q, None, &AdapterConfig::ipa(2), |_| ProjectorInit::Zeros)
        .unwrap();
    mixed
        .attach_adapters(&up, None, &AdapterConfig::ipa(3), |_| ProjectorInit::Zeros)
        .unwrap();
    let err = bad(OnlineFit::default(), mixed);
    assert!(err.contains("rank"), "{err}");

    let err = run(
        ipa(),
        &[],
        &cfg,
        &RunOptions::default(),
        &OnlineFit::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn online_settings_round_trip_through_json() {
    let online = OnlineFit {
        algorithm: FitAlgorithm::Gha(GhaConfig {
            lr: 0.5,
            reorthonormalize: false,
            ..GhaConfig::default()
        }),
        update_every: 4,
        stop_after: Some(100),
        warm_start: WarmStart::PreFit {
            fraction: 0.1,
            batch_size: 8,
        },
        seed: 3,
    };
    let json = serde_json::to_value(&online).unwrap();
    assert_eq!(json["algorithm"], "gha");
    assert_eq!(json["update_every"], 4);
    let back: OnlineFit = serde_json::from_value(json).unwrap();
    assert_eq!(back, online);
}

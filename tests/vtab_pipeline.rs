//! The VTAB-1k pipeline on the tiny SigLIP fixture: the vision fit pass against fitting each
//! site's captured inputs directly, a short run end to end (files, falling loss, best adapter
//! reproducing the reported accuracy, interval training equal to one uninterrupted run,
//! resume), and errors on bad inputs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::Tensor;
use burn_ipa::adapter::{read_adapter_config, AdapterConfig, AdapterMethod};
use burn_ipa::data::vtab::{VtabBatcher, VtabDataset, VtabImage, VtabSplit};
use burn_ipa::fit::{fit_count, siglip_fit_pass, FitPassConfig, SiglipFit, VisionSite};
use burn_ipa::models::siglip::{load_siglip, pixel_batch, SiglipSite};
use burn_ipa::pipelines::out_dir::Existing;
use burn_ipa::pipelines::vtab::{
    attach_saved_siglip_adapter, read_report, run_vtab, run_vtab_with, VtabReport, VtabRunConfig,
    VtabRunOptions, BEST_ADAPTER_DIR, EVAL_CSV_FILE, REPORT_FILE, VTAB_CONFIG_FILE,
};
use burn_ipa::projector::FitAlgorithm;
use burn_ipa::train::{epoch_order, evaluate_vtab, Monitor, SiglipClassifier, TrainConfig};
use common::*;

type B = TestBackend;

/// The fixture's image side, text length and width.
const IMAGE_SIZE: usize = 32;
const TEXT_LEN: usize = 8;
const WIDTH: usize = 64;
/// Patches per image: (32 / 16)².
const PATCHES: usize = 4;

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/siglip2")
}

fn temp_root(tag: &str) -> TempDir {
    common::temp_dir(&format!("vtab-pipeline-{tag}"))
}

/// A task folder `<root>/shapes` of three classes with `n` images `images/img <i>.png`.
struct Task {
    root: TempDir,
    dir: PathBuf,
}

const TASK: &str = "shapes";

impl Task {
    fn new(tag: &str, n_images: u32) -> Self {
        let root = temp_root(tag);
        let dir = root.join(TASK);
        for i in 0..n_images {
            write_png(&dir.join(format!("images/img {i}.png")), i);
        }
        std::fs::write(dir.join("classnames.txt"), "circle\nsquare\ntriangle\n").unwrap();
        Self { root, dir }
    }

    /// Writes a split list of images `first..` with the given labels.
    fn write(&self, split: VtabSplit, first: usize, labels: &[usize]) {
        let text: String = labels
            .iter()
            .enumerate()
            .map(|(i, l)| format!("images/img {}.png {l}\n", first + i))
            .collect();
        std::fs::write(self.dir.join(split.file_name()), text).unwrap();
    }

    /// Training and test lists over images 0..8 (images 8..14 exist for other lists).
    fn standard(tag: &str) -> Self {
        let task = Self::new(tag, 14);
        let train = [0, 1, 2, 0, 1, 2, 0, 1];
        for split in [
            VtabSplit::Train800Val200,
            VtabSplit::Train800,
            VtabSplit::Val200,
        ] {
            task.write(split, 0, &train);
        }
        // The test list is the training images (the run is too short to generalise): the
        // accuracy moves as the adapters learn.
        task.write(VtabSplit::Test, 0, &train);
        task
    }
}

/// Token ids standing for the class prompts (the fixture has no tokenizer): distinct rows of
/// the 256-token vocabulary, padded with id 1 to the text length.
fn class_ids(classes: usize) -> Vec<Vec<u32>> {
    (0..classes)
        .map(|c| {
            let mut row = vec![2, 10 + 17 * c as u32, 40 + 29 * c as u32, 7];
            row.resize(TEXT_LEN, 1);
            row
        })
        .collect()
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Runs one test at a time: training seeds the backend's random numbers (dropout, LoRA's
/// projectors), which every thread of a CPU backend shares, and the runs here are compared
/// value for value.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[track_caller]
fn assert_mentions(err: &str, parts: &[&str]) {
    for part in parts {
        assert!(err.contains(part), "`{part}` not in: {err}");
    }
}

#[test]
fn the_siglip_fit_pass_equals_fitting_each_sites_inputs_directly() {
    let _serial = serial();
    let device = Default::default();
    let model = load_siglip::<B>(&model_dir(), &device).unwrap();
    let task = Task::standard("fit");
    let data = VtabDataset::load(&task.root, TASK, VtabSplit::Train800Val200).unwrap();
    let images = data.preload(IMAGE_SIZE).unwrap();
    let n = images.images().len();
    let targets = strings(&["q_proj", "v_proj", "fc1"]);
    let (rank, seed, batch) = (3, 5, 3);

    for (algorithm, fraction) in [("ipca", 1.0), ("ipca", 0.5), ("rsvd", 0.7)] {
        let config = FitPassConfig {
            algorithm: algorithm.into(),
            rank,
            fraction,
            batch_size: batch,
            seed,
        };
        let fit = siglip_fit_pass(&model, images.images(), &targets, &config, false).unwrap();
        let take = fit_count(n, fraction);
        assert_eq!(take, (n as f64 * fraction).ceil() as usize);
        // q and v share the attention input: two sites per layer, two layers.
        let sites = fit.sites();
        assert_eq!(sites.len(), 4, "{sites:?}");
        assert_eq!(fit.rows_seen(), take * PATCHES);
        assert_eq!(fit.batches(), take.div_ceil(batch));

        // The same images, in the same order and batches, captured by the tapping forward and
        // fed to estimators built as the fit pass documents.
        // The split file's order, as the official script's fit reads it.
        let order: Vec<usize> = (0..n).collect();
        let mut captured: BTreeMap<(usize, SiglipSite), Vec<Tensor<B, 2>>> = BTreeMap::new();
        for chunk in order[..take].chunks(batch) {
            let pixels: Vec<Vec<f32>> =
                chunk.iter().map(|&i| images.images()[i].pixels()).collect();
            let pixels = pixel_batch::<B>(&pixels, IMAGE_SIZE, &device).unwrap();
            model
                .vision_model
                .forward_tap(pixels, &mut |layer, site, rows: Tensor<B, 2>| {
                    assert_eq!(rows.dims()[1], WIDTH);
                    captured.entry((layer, site)).or_default().push(rows);
                })
                .unwrap();
        }
        let fitted = fit.finish().unwrap();
        assert_eq!(fitted.keys().copied().collect::<Vec<_>>(), sites);
        let algo = FitAlgorithm::from_name(algorithm).unwrap();
        for (key, got) in &fitted {
            let site_seed = seed + 1000 * key.layer as u64 + key.site as u64;
            let mut direct = algo.build::<B>(WIDTH, rank, site_seed, &device).unwrap();
            for rows in &captured[&(key.layer, key.site)] {
                direct.update(rows.clone(), None).unwrap();
            }
            let want = direct.finish().unwrap();
            let what = format!("{algorithm} {fraction} {key:?}");
            assert_eq!(got.n_samples, take * PATCHES, "{what}");
            assert_close(
                &host(got.components.clone()),
                &host(want.components),
                1e-6,
                &what,
            );
            assert_close(
                &got.explained_variance,
                &want.explained_variance,
                1e-9,
                &what,
            );
        }

        // Installed as IPA adapters: q, v and fc1 of both layers, each with its site's
        // projector, and (B = 0) the model's output unchanged.
        let mut adapted = model.clone();
        let paths = fit
            .install(&mut adapted, &AdapterConfig::ipa(rank))
            .unwrap();
        assert_eq!(paths.len(), 6, "{paths:?}");
        let mut checked = 0;
        for (path, linear) in adapted.linears_mut() {
            let Some(projector) = linear.projector() else {
                continue;
            };
            let layer: usize = path.split('.').nth(3).unwrap().parse().unwrap();
            let site = if path.ends_with("fc1") {
                SiglipSite::Mlp
            } else {
                SiglipSite::Attention
            };
            let want = &fitted[&VisionSite { layer, site }].components;
            assert_eq!(host(projector), host(want.clone()), "{path}");
            checked += 1;
        }
        assert_eq!(checked, 6);
        let pixels = pixel_batch::<B>(&[images.images()[0].pixels()], IMAGE_SIZE, &device).unwrap();
        assert_close(
            &host(adapted.image_features(pixels.clone()).unwrap()),
            &host(model.image_features(pixels).unwrap()),
            1e-6,
            "features with fresh adapters",
        );
    }

    // Targets the fit cannot serve, or does not know.
    let ipca = FitAlgorithm::Ipca;
    for (target, parts) in [
        (
            "out_proj",
            vec!["out_proj", "q_proj, k_proj, v_proj and fc1"],
        ),
        ("o_proj", vec!["o_proj", "unknown"]),
    ] {
        let err = SiglipFit::new(&model, &strings(&[target]), None, &ipca, 2, 0)
            .err()
            .expect("refused")
            .to_string();
        assert_mentions(&err, &parts);
    }
    let err = SiglipFit::new(&model, &strings(&["q_proj"]), Some(&[2]), &ipca, 2, 0)
        .err()
        .expect("refused")
        .to_string();
    assert_mentions(&err, &["layer 2", "2 layers"]);
    // Fitted projectors are for IPA.
    let config = FitPassConfig {
        algorithm: "ipca".into(),
        rank: 2,
        fraction: 1.0,
        batch_size: 4,
        seed: 0,
    };
    let fit = siglip_fit_pass(&model, images.images(), &targets, &config, false).unwrap();
    let err = fit
        .install(&mut model.clone(), &AdapterConfig::lora(2))
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["ipa"]);
}

/// A few-second run: rank 2, 4 epochs of 2 steps (batch 4 in micro-batches of 2),
/// evaluated after every epoch.
fn short_config(method: AdapterMethod) -> VtabRunConfig {
    let mut config = VtabRunConfig::new(TASK);
    config.method = method;
    config.rank = 2;
    config.text_len = TEXT_LEN;
    config.fit_batch_size = 3;
    config.eval_every = 1;
    config.eval_batch_size = 4;
    // A scale that learns in a few steps, the projector frozen (the protocol's defaults,
    // scaling 0.05 with a trainable projector, are checked on their own).
    if method == AdapterMethod::Ipa {
        config.scaling = Some(0.5);
        config.train_projector = Some(false);
    }
    config.train = TrainConfig {
        learning_rate: 2e-2,
        weight_decay: 0.0,
        epochs: 4,
        batch_size: 4,
        micro_batch_size: 2,
        warmup_steps: 0,
        max_steps: None,
        checkpoint_every: 0,
        valid_every: 0,
        seed: 3,
        ..TrainConfig::default()
    };
    config
}

fn options(resume: bool) -> VtabRunOptions {
    VtabRunOptions {
        monitor: Monitor::silent(),
        // A fresh run replaces what an earlier test run left.
        existing: if resume {
            Existing::Resume
        } else {
            Existing::Overwrite
        },
        class_ids: Some(class_ids(3)),
    }
}

/// `metrics.csv` rows as (step, epoch, loss).
fn read_metrics(out: &Path) -> Vec<(usize, usize, f64)> {
    let text = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("step,epoch,loss,lr,valid_loss,accuracy,grad_norm")
    );
    lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

/// `metrics.csv`'s accuracy column (every step of a classification run has one).
fn read_accuracies(out: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|line| line.split(',').nth(5).unwrap().parse().unwrap())
        .collect()
}

/// Two runs' metrics agree: the same steps and epochs, losses within `SAME_RUN_TOL` (f32
/// rounding: the kernels may sum in another order, see there).
#[track_caller]
fn assert_same_metrics(a: &[(usize, usize, f64)], b: &[(usize, usize, f64)]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!((x.0, x.1), (y.0, y.1));
        assert!(
            (x.2 - y.2).abs() <= SAME_RUN_TOL * (1.0 + y.2.abs()),
            "{a:?}\n{b:?}"
        );
    }
}

/// Two reports agree (the final loss as [`assert_same_metrics`] compares losses).
#[track_caller]
fn assert_same_report(a: &VtabReport, b: &VtabReport) {
    let loss = |r: &VtabReport| r.final_loss.unwrap();
    assert!((loss(a) - loss(b)).abs() <= SAME_RUN_TOL * (1.0 + loss(b).abs()));
    let mut a = a.clone();
    a.final_loss = b.final_loss;
    assert_eq!(&a, b);
}

/// The accuracy of the adapter saved in `out/best_adapter`, attached to a freshly loaded
/// model, on the test split.
fn best_adapter_accuracy(task: &Task, out: &Path) -> (usize, usize) {
    let device = Default::default();
    let mut model = load_siglip::<B>(&model_dir(), &device).unwrap();
    let paths = attach_saved_siglip_adapter(&mut model, &out.join(BEST_ADAPTER_DIR)).unwrap();
    assert_eq!(paths.len(), 4, "{paths:?}");
    let classifier = SiglipClassifier::new(model, &class_ids(3)).unwrap();
    let test = VtabDataset::load(&task.root, TASK, VtabSplit::Test).unwrap();
    evaluate_vtab(&classifier, test.batches::<B>(IMAGE_SIZE, 5, &device)).unwrap()
}

/// Checks what every finished run of [`short_config`] reports and writes.
fn check_run(task: &Task, out: &Path, report: &VtabReport) {
    for file in [VTAB_CONFIG_FILE, "metrics.csv", EVAL_CSV_FILE, REPORT_FILE] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    assert_eq!(&read_report(&out.join(REPORT_FILE)).unwrap(), report);
    assert_eq!(report.task, TASK);
    assert_eq!(report.classes, 3);
    assert_eq!(report.train_images, 8);
    assert_eq!(report.eval_images, 8);
    assert_eq!(report.adapted.len(), 4, "{:?}", report.adapted);
    assert!(report
        .adapted
        .iter()
        .all(|p| p.starts_with("vision_model.encoder.layers.")
            && (p.ends_with(".q_proj") || p.ends_with(".v_proj"))));
    assert_eq!(report.steps, 8);
    let epochs: Vec<f64> = report.evaluations.iter().map(|e| e.epoch).collect();
    assert_eq!(epochs, [1.0, 2.0, 3.0, 4.0]);
    let steps: Vec<usize> = report.evaluations.iter().map(|e| e.step).collect();
    assert_eq!(steps, [2, 4, 6, 8]);
    for e in &report.evaluations {
        assert_eq!(e.total, 8);
        assert_eq!(e.accuracy, e.correct as f64 / 8.0);
    }
    // The best is the earliest evaluation of highest accuracy.
    let top = report
        .evaluations
        .iter()
        .map(|e| e.accuracy)
        .fold(f64::MIN, f64::max);
    let best = report.best.clone().expect("a best evaluation");
    assert_eq!(
        Some(&best),
        report.evaluations.iter().find(|e| e.accuracy == top)
    );

    // eval.csv: one line per evaluation with the best so far.
    let csv = std::fs::read_to_string(out.join(EVAL_CSV_FILE)).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "epoch,step,correct,total,accuracy,best_accuracy");
    assert_eq!(lines.len(), 5);
    let last: Vec<&str> = lines[4].split(',').collect();
    assert_eq!(last[1], "8");
    assert_eq!(last[5].parse::<f64>().unwrap(), best.accuracy);

    // metrics.csv: every step, the loss falling from the first epoch to the last.
    let metrics = read_metrics(out);
    assert_eq!(metrics.len(), 8);
    assert_eq!(
        metrics.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    let mean = |epoch: usize| {
        let l: Vec<f64> = metrics
            .iter()
            .filter(|m| m.1 == epoch)
            .map(|m| m.2)
            .collect();
        l.iter().sum::<f64>() / l.len() as f64
    };
    assert!(mean(3) < mean(0), "loss {metrics:?}");
    assert_eq!(report.final_loss, Some(metrics[7].2));

    // Training raised the accuracy on these (training) images.
    assert!(best.accuracy > report.evaluations[0].accuracy, "{report:?}");

    // The saved best adapter is the best evaluation's and, on a fresh model, gives the
    // reported accuracy.
    let saved = read_adapter_config(&out.join(BEST_ADAPTER_DIR)).unwrap();
    assert_eq!(saved.metadata["step"], best.step.to_string());
    assert_eq!(saved.adapter, report.adapter);
    assert_eq!(best_adapter_accuracy(task, out), (best.correct, best.total));
}

#[test]
fn a_short_ipa_run_writes_its_files_learns_and_keeps_the_best_adapter() {
    let _serial = serial();
    let device = Default::default();
    let task = Task::standard("run");
    let config = short_config(AdapterMethod::Ipa);
    let out = temp_root("run-out");
    let report = run_vtab_with::<B>(
        &config,
        &model_dir(),
        &task.root,
        &out,
        &options(false),
        &device,
    )
    .unwrap();
    check_run(&task, &out, &report);
    assert_eq!(report.method, AdapterMethod::Ipa);

    // metrics.csv's accuracy: the share of each step's 4 images classified right before the
    // update. At step 1 the IPA up-projections are still zero, so it is the base model's
    // accuracy on the first batch of the seeded order.
    let accuracies = read_accuracies(&out);
    assert_eq!(accuracies.len(), 8);
    assert!(
        accuracies
            .iter()
            .all(|a| (0.0..=1.0).contains(a) && (a * 4.0).fract() == 0.0),
        "{accuracies:?}"
    );
    let base = SiglipClassifier::new(
        load_siglip::<B>(&model_dir(), &device).unwrap(),
        &class_ids(3),
    )
    .unwrap();
    let train_images = VtabDataset::load(&task.root, TASK, VtabSplit::Train800Val200)
        .unwrap()
        .preload(IMAGE_SIZE)
        .unwrap();
    let order = epoch_order(8, config.train.seed, 0);
    let first: Vec<VtabImage> = order[..4]
        .iter()
        .map(|&i| train_images.images()[i].clone())
        .collect();
    let (correct, total) = evaluate_vtab(
        &base,
        std::iter::once(Ok(VtabBatcher.batch(first, &device))),
    )
    .unwrap();
    assert_eq!(accuracies[0], correct as f64 / total as f64);
    assert_eq!(report.adapter, config.adapter());
    assert!(!report.adapter.train_projector);
    assert_eq!(report.adapter.scale(), 0.5);
    assert_eq!(report.adapter.dropout, 0.1);
    // B (r × 64 per layer) trains, the fitted projector does not.
    assert_eq!(report.trainable_params, 4 * 2 * WIDTH);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(VTAB_CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(saved["config"]["task"], TASK);
    assert_eq!(saved["config"]["train_split"], "train800val200");
    assert_eq!(saved["config"]["eval_split"], "test");
    assert_eq!(saved["image_size"], IMAGE_SIZE);
    assert_eq!(saved["class_names"][2], "triangle");
    let back: VtabRunConfig = serde_json::from_value(saved["config"].clone()).unwrap();
    assert_eq!(back, config);

    // Training in evaluation intervals is one uninterrupted run: the same losses as a run
    // that evaluates only at the end.
    let mut once = config.clone();
    once.eval_every = 0;
    let out_once = temp_root("run-once");
    let single = run_vtab_with::<B>(
        &once,
        &model_dir(),
        &task.root,
        &out_once,
        &options(false),
        &device,
    )
    .unwrap();
    assert_eq!(single.evaluations.len(), 1);
    assert_same_metrics(&read_metrics(&out_once), &read_metrics(&out));
    assert_eq!(single.evaluations[0], report.evaluations[3]);

    // Stopped after 2 epochs (max_steps), then resumed: the same run, metrics and report.
    let out_resumed = temp_root("run-resumed");
    let mut first = config.clone();
    first.train.max_steps = Some(4);
    let part = run_vtab_with::<B>(
        &first,
        &model_dir(),
        &task.root,
        &out_resumed,
        &options(false),
        &device,
    )
    .unwrap();
    assert_eq!(part.evaluations[..], report.evaluations[..2]);
    let resumed = run_vtab_with::<B>(
        &config,
        &model_dir(),
        &task.root,
        &out_resumed,
        &options(true),
        &device,
    )
    .unwrap();
    assert_same_report(&resumed, &report);
    assert_same_metrics(&read_metrics(&out_resumed), &read_metrics(&out));
    assert_eq!(
        best_adapter_accuracy(&task, &out_resumed),
        best_adapter_accuracy(&task, &out)
    );

    // A stop request (the dashboard's, Ctrl-C) ends the run after the step in progress, with
    // a checkpoint; a resume finishes it as if it had not stopped.
    let out_stopped = temp_root("run-stopped");
    let stopping = options(false);
    stopping.monitor.request_stop();
    let part = run_vtab_with::<B>(
        &config,
        &model_dir(),
        &task.root,
        &out_stopped,
        &stopping,
        &device,
    )
    .unwrap();
    assert_eq!(part.steps, 1);
    assert!(part.evaluations.is_empty());
    let resumed = run_vtab_with::<B>(
        &config,
        &model_dir(),
        &task.root,
        &out_stopped,
        &options(true),
        &device,
    )
    .unwrap();
    assert_same_report(&resumed, &report);
    assert_same_metrics(&read_metrics(&out_stopped), &read_metrics(&out));

    // A resume with other settings is refused before anything is written.
    let mut other = config.clone();
    other.train.learning_rate = 1e-3;
    let before = std::fs::read(out_resumed.join(VTAB_CONFIG_FILE)).unwrap();
    let err = run_vtab_with::<B>(
        &other,
        &model_dir(),
        &task.root,
        &out_resumed,
        &options(true),
        &device,
    )
    .unwrap_err()
    .to_string();
    assert_mentions(
        &err,
        &["checkpoints", "config.train.learning_rate: 0.02 → 0.001"],
    );
    assert_eq!(
        std::fs::read(out_resumed.join(VTAB_CONFIG_FILE)).unwrap(),
        before
    );
}

#[test]
fn the_protocols_defaults_are_the_official_scripts() {
    // valeoai/peft-ipa `vtab/train_script_siglip2.py` on HF Trainer's defaults.
    let config = VtabRunConfig::new("cifar100");
    let ipa = config.adapter();
    assert_eq!(ipa.method, AdapterMethod::Ipa);
    assert_eq!((ipa.rank, ipa.scale(), ipa.dropout), (8, 0.05, 0.1));
    assert!(ipa.train_projector, "pre_ipca_requires_grad");
    assert_eq!(config.targets, strings(&["q_proj", "v_proj"]));
    assert_eq!((config.fit_fraction, config.fit_batch_size), (1.0, 64));
    let t = &config.train;
    assert_eq!(
        (t.learning_rate, t.weight_decay, t.warmup_steps),
        (1e-3, 0.0, 0)
    );
    assert_eq!((t.batch_size, t.epochs), (64, 100));
    assert_eq!((t.max_grad_norm, t.adam_epsilon), (1.0, 1e-8));
    let lora = VtabRunConfig {
        method: AdapterMethod::Lora,
        ..config.clone()
    }
    .adapter();
    assert_eq!((lora.rank, lora.scale(), lora.dropout), (8, 1.0, 0.1));
    assert!(lora.train_projector);
    // The scalings are the method's own: a LoRA alpha on IPA is refused, and so on.
    let mut bad = config.clone();
    bad.alpha = Some(8.0);
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("--scaling"));
}

#[test]
fn a_short_lora_run_trains_the_projector_too() {
    let _serial = serial();
    let device = Default::default();
    let task = Task::standard("lora");
    let config = short_config(AdapterMethod::Lora);
    let out = temp_root("lora-out");
    let report = run_vtab_with::<B>(
        &config,
        &model_dir(),
        &task.root,
        &out,
        &options(false),
        &device,
    )
    .unwrap();
    check_run(&task, &out, &report);
    assert_eq!(report.method, AdapterMethod::Lora);
    assert!(report.adapter.train_projector);
    // The official script's alpha = r.
    assert_eq!(report.adapter.scale(), 1.0);
    // P (r × 64) and B (r × 64) of 4 layers.
    assert_eq!(report.trainable_params, 4 * 2 * 2 * WIDTH);
}

#[test]
fn bad_inputs_are_errors_naming_the_file() {
    let _serial = serial();
    let device = Default::default();
    let config = short_config(AdapterMethod::Ipa);
    let out = temp_root("bad-out");
    let run = |config: &VtabRunConfig, root: &Path, options: &VtabRunOptions| {
        run_vtab_with::<B>(config, &model_dir(), root, &out, options, &device)
            .expect_err("the run must fail")
            .to_string()
    };

    // No task folder.
    let root = temp_root("bad-missing");
    let err = run(&config, &root, &options(false));
    assert_mentions(
        &err,
        &[&root.join(TASK).display().to_string(), "task folder"],
    );

    // A training label outside the classes.
    let task = Task::standard("bad-label");
    task.write(VtabSplit::Train800Val200, 0, &[0, 1, 3, 0]);
    let err = run(&config, &task.root, &options(false));
    assert_mentions(
        &err,
        &["train800val200.txt", "line 3", "label 3", "3 classes"],
    );

    // A missing test image.
    let task = Task::standard("bad-image");
    task.write(VtabSplit::Test, 8, &[0, 1, 2]);
    std::fs::remove_file(task.dir.join("images/img 9.png")).unwrap();
    let err = run(&config, &task.root, &options(false));
    assert_mentions(&err, &["test.txt", "line 2", "img 9.png"]);

    // The fixture has no tokenizer: without class ids the run names the missing file.
    let task = Task::standard("bad-tokenizer");
    let err = run(&config, &task.root, &VtabRunOptions::default());
    assert_mentions(&err, &["tokenizer.json"]);
    let mut long = config.clone();
    long.text_len = 64;
    let err = run(&long, &task.root, &VtabRunOptions::default());
    assert_mentions(&err, &["text_len 64", "8 positions"]);

    // Class prompts that do not match the task's classes.
    let mut two = options(false);
    two.class_ids = Some(class_ids(2));
    let err = run(&config, &task.root, &two);
    assert_mentions(&err, &["2 class prompts", "3 classes"]);

    // Settings: a fitted projector on an input the fit does not tap, an unknown target.
    let mut bad = config.clone();
    bad.targets = strings(&["q_proj", "out_proj"]);
    assert_mentions(&run(&bad, &task.root, &options(false)), &["out_proj"]);
    bad.targets = strings(&["query"]);
    assert_mentions(&run(&bad, &task.root, &options(false)), &["query"]);

    // The public entry point tokenizes, so it reports the missing tokenizer too.
    let err = run_vtab::<B>(&config, &model_dir(), &task.root, &out, &device, false)
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["tokenizer.json"]);
}

/// A word-level tokenizer over `words` (after `<pad>` = 0 and `<unk>` = 1) with a pad token:
/// class prompts for the fixture, whose checkpoint has no tokenizer.
fn write_word_tokenizer(dir: &Path, words: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["<pad>", "<unk>"].iter().chain(words).enumerate() {
        vocab.insert(w.to_string(), serde_json::json!(i));
    }
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<pad>"), special(1, "<unk>")],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"pad_token": "<pad>", "unk_token": "<unk>"}"#,
    )
    .unwrap();
}

#[test]
fn ipa_vtab_runs_the_protocol_from_the_command_line() {
    let _serial = serial();
    let task = Task::standard("cli");
    // Class names as some task lists have them: underscores and capitals.
    std::fs::write(
        task.dir.join("classnames.txt"),
        "Round_Circle\nsquare\nTriangle\n",
    )
    .unwrap();
    let words = ["a", "photo", "of", "round", "circle", "square", "triangle"];
    let tokenizer = task.root.join("tokenizer");
    write_word_tokenizer(&tokenizer, &words);
    let out = task.root.join("out");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "vtab",
            "--model",
            s(&model_dir()),
            "--tokenizer",
            s(&tokenizer),
            "--data-root",
            s(&task.root),
            "--task",
            TASK,
            "--out",
            s(&out),
            "--text-len",
            "8",
            "--rank",
            "2",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--eval-every",
            "1",
            "--eval-batch-size",
            "4",
            "--fit-batch-size",
            "3",
            "--quiet",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let stdout = ipa_ok(&args(&[]));
    assert!(stdout.contains("best:"), "{stdout}");
    let resolved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(VTAB_CONFIG_FILE)).unwrap())
            .unwrap();
    // The official script's defaults: scaling 0.05, the projector trained.
    assert_eq!(resolved["adapter"]["scaling"]["factor"], 0.05);
    assert_eq!(resolved["adapter"]["train_projector"], true);
    assert_eq!(resolved["config"]["train"]["max_grad_norm"], 1.0);
    // "a photo of a round circle": the class name lowercased, its underscore a space.
    let id = |w: &str| 2 + words.iter().position(|x| *x == w).unwrap() as u64;
    let want: Vec<u64> = ["a", "photo", "of", "a", "round", "circle"]
        .iter()
        .map(|w| id(w))
        .chain([0, 0])
        .collect();
    let got: Vec<u64> = resolved["class_ids"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(got, want);
    assert!(out
        .join(BEST_ADAPTER_DIR)
        .join("adapter_model.safetensors")
        .is_file());

    // The folder holds a run: refused, resumed (nothing left to do), or overwritten.
    ipa_err(&args(&[]), &["not empty", "--resume", "--overwrite"]);
    let again = ipa_ok(&args(&["--resume"]));
    assert!(again.contains("4 steps"), "{again}");
    ipa_err(&args(&["--alpha", "4"]), &["--scaling"]);
    ipa_ok(&args(&[
        "--overwrite",
        "--scaling",
        "0.5",
        "--max-grad-norm",
        "0",
    ]));
    let report = read_report(&out.join(REPORT_FILE)).unwrap();
    assert_eq!(report.adapter.scale(), 0.5);
    let resolved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(VTAB_CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(resolved["config"]["train"]["max_grad_norm"], 0.0);
}

#[test]
fn ipa_vtab_with_the_learner_takes_the_step_loops_steps() {
    let _serial = serial();
    let task = Task::standard("cli-learner");
    let words = ["a", "photo", "of", "circle", "square", "triangle"];
    let tokenizer = task.root.join("tokenizer");
    write_word_tokenizer(&tokenizer, &words);
    let args = |out: &Path, trainer: &str| -> Vec<String> {
        [
            "vtab",
            "--model",
            s(&model_dir()),
            "--tokenizer",
            s(&tokenizer),
            "--data-root",
            s(&task.root),
            "--task",
            TASK,
            "--out",
            s(out),
            "--text-len",
            "8",
            "--rank",
            "2",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--micro-batch-size",
            "2",
            "--eval-every",
            "1",
            "--eval-batch-size",
            "3",
            "--fit-batch-size",
            "3",
            "--dropout",
            "0",
            "--trainer",
            trainer,
            "--quiet",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let (looped, learned) = (task.root.join("loop"), task.root.join("learner"));
    ipa_ok(&args(&looped, "loop"));
    let stdout = ipa_ok(&args(&learned, "learner"));
    assert!(stdout.contains("best:"), "{stdout}");
    let (a, b) = (
        read_report(&learned.join(REPORT_FILE)).unwrap(),
        read_report(&looped.join(REPORT_FILE)).unwrap(),
    );
    // The same evaluations (correct counts: exact), the same best.
    let counts = |r: &VtabReport| -> Vec<(usize, usize, usize)> {
        r.evaluations
            .iter()
            .map(|e| (e.step, e.correct, e.total))
            .collect()
    };
    assert_eq!(counts(&a), counts(&b));
    assert_eq!(
        a.best.as_ref().map(|e| e.step),
        b.best.as_ref().map(|e| e.step)
    );
    assert_eq!(a.steps, b.steps);
    let (x, y) = (
        tensors(
            &learned
                .join(BEST_ADAPTER_DIR)
                .join("adapter_model.safetensors"),
        ),
        tensors(
            &looped
                .join(BEST_ADAPTER_DIR)
                .join("adapter_model.safetensors"),
        ),
    );
    assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
    for (name, v) in &x {
        let v: Vec<f64> = v.iter().map(|&f| f as f64).collect();
        let w: Vec<f64> = y[name].iter().map(|&f| f as f64).collect();
        assert_close(&v, &w, 1e-5, name);
    }
    // burn-train's checkpoints of the adapters only.
    let base = std::fs::metadata(model_dir().join("model.safetensors"))
        .unwrap()
        .len();
    for entry in std::fs::read_dir(learned.join("learner/checkpoint")).unwrap() {
        let entry = entry.unwrap();
        let size = entry.metadata().unwrap().len();
        assert!(size * 8 < base, "{:?}: {size} bytes", entry.file_name());
    }
    // Resuming the finished run does nothing more; the step loop's checkpoints between
    // evaluations are refused.
    let again = ipa_ok(&with_flags(args(&learned, "learner"), &["--resume"]));
    assert!(again.contains("4 steps"), "{again}");
    ipa_err(
        &with_flags(
            args(&task.root.join("refused"), "learner"),
            &["--checkpoint-every", "1"],
        ),
        &["--checkpoint-every 1", "--trainer loop"],
    );
}

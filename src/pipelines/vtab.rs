//! The VTAB-1k pipeline of the paper's vision experiments, as library calls: SigLIP-2 classifies
//! an image by its image-to-text logits against the prompts "a photo of a {class}", adapters
//! sit on the vision tower's q and v projections (r = 8, dropout 0.1), training runs on the
//! 1000 images of `train800val200` (batch 64, 100 epochs) and the test accuracy is measured
//! every 10 epochs, the best being reported.
//!
//! * [`SiglipFit`]: the forward-only fit pass over the frozen vision tower: one projector
//!   estimator per distinct input of the targeted linears (q/k/v share the attention input),
//!   installed as IPA adapters with [`SiglipFit::install`];
//! * [`VtabRunConfig`] and [`run_vtab`]: load the model, tokenizer and splits, fit (IPA) or
//!   draw (LoRA) the projectors, train with the crate's loop ([`crate::train::train`]) one
//!   evaluation interval at a time, evaluate, and keep the best adapter. The output folder
//!   holds `vtab_config.json`, `metrics.csv` (one line per optimizer step), `eval.csv` and
//!   `report.json` (one entry per evaluation, with the best), `best_adapter/` and the loop's
//!   `checkpoints/`.
//!
//! With [`VtabRunConfig::trainer`] = [`Trainer::Learner`], burn-train's Learner trains
//! instead ([`crate::train::learner`]): one burn-train epoch per evaluation interval, the
//! evaluation split as its validation, its checkpoints (the adapters only) in `learner/`, and
//! the best evaluation's adapters restored from their checkpoint into `best_adapter/`.
//!
//! Training by intervals is exact: each interval is a call of the loop with `max_steps` at
//! the interval's end that resumes from the checkpoint the previous call left, and the loop's
//! resume reproduces an uninterrupted run (same data order, dropout masks, schedule and
//! optimizer state). The same mechanism resumes an interrupted run
//! ([`VtabRunOptions::resume`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::backend::Autodiff;
use burn::data::dataloader::batcher::Batcher;
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::out_dir::{Existing, OutDir};
use super::trainer::{resumable, Trainer};
use crate::adapter::{
    load_adapter, read_adapter_config, save_adapter, write_atomic, AdapterConfig, AdapterMethod,
    ProjectorInit, Scaling,
};
use crate::data::vtab::{VtabBatcher, VtabDataset, VtabImage, VtabImages, VtabSplit};
use crate::fit::{siglip_fit_pass, FitPassConfig};
use crate::models::siglip::{
    attach_vision_adapters, check_vision_targets, load_siglip, siglip_site_of, SiglipModel,
};
use crate::models::tokenizer::Tokenizer;
use crate::projector::FitAlgorithm;
use crate::train::learner::{learn, KeepBest, LearnerSettings, ValidSet};
use crate::train::monitor::progress_bar;
use crate::train::{
    class_prompt_ids, evaluate_vtab, latest_checkpoint, train, Monitor, RunMetric, RunOptions,
    SiglipClassifier, StepRecord, TrainConfig,
};
use crate::{Error, Result};

/// Attaches the adapters of a saved adapter folder (written by [`run_vtab`] or
/// [`crate::adapter::save_adapter`] from a [`SiglipModel`]) to `model` and loads their
/// weights. Returns the adapted paths.
pub fn attach_saved_siglip_adapter<B: Backend>(
    model: &mut SiglipModel<B>,
    dir: &Path,
) -> Result<Vec<String>> {
    let saved = read_adapter_config(dir)?;
    let wanted: BTreeSet<String> = saved.layers.keys().cloned().collect();
    let adapted = model.attach_adapters(
        |path| wanted.contains(path),
        &saved.adapter,
        |_| ProjectorInit::Zeros,
    )?;
    if let Some(path) = wanted.iter().find(|p| !adapted.contains(p)) {
        return Err(Error::file(
            dir,
            format!("the adapter is for `{path}`, which the model does not have"),
        ));
    }
    load_adapter(model, dir)?;
    Ok(adapted)
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// Settings of a VTAB-1k run (the paper's protocol where the design notes give it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VtabRunConfig {
    /// The task, named like its folder under the data root (`cifar100`, `dtd`, ...).
    pub task: String,
    /// The split trained on (`train800val200`: the 1000 training images).
    #[serde(with = "split_name")]
    pub train_split: VtabSplit,
    /// The split evaluated (`test`).
    #[serde(with = "split_name")]
    pub eval_split: VtabSplit,
    /// IPA (fitted projector) or LoRA (random projector).
    pub method: AdapterMethod,
    /// Adapter rank `r` (8).
    pub rank: usize,
    /// LoRA-style `alpha`: the update is scaled by `alpha / r`. `None`: LoRA's `alpha = r`
    /// (the official script's 8 at r = 8; the paper's text says 2r).
    pub alpha: Option<f64>,
    /// IPA's plain scaling factor. `None`: 0.05, the official script's (the paper's text
    /// says 0.5).
    #[serde(default)]
    pub scaling: Option<f64>,
    /// Dropout on the adapter input (0.1).
    pub dropout: f64,
    /// Whether the projector trains. `None`: it does, for IPA too (the official script's
    /// `pre_ipca_requires_grad`).
    pub train_projector: Option<bool>,
    /// Vision linears to adapt, in every encoder layer (`q_proj`, `v_proj`).
    pub targets: Vec<String>,
    /// Fit algorithm (IPA): `ipca`, `rsvd`, `gha` or `covariance`.
    pub fit_algorithm: String,
    /// Fraction of the training images the fit reads, from the start of the split file
    /// (1.0: all 1000, in file order, as the official script).
    pub fit_fraction: f64,
    /// Images per fit forward pass.
    pub fit_batch_size: usize,
    /// Optimisation (batch 64, 100 epochs; `valid_every` is unused, `max_steps` caps the run).
    pub train: TrainConfig,
    /// Evaluate every this many epochs (10), and after the last step; 0: only at the end.
    pub eval_every: usize,
    /// Images per evaluation forward pass.
    pub eval_batch_size: usize,
    /// Tokens per class prompt, padded (64 for SigLIP-2).
    pub text_len: usize,
    /// Folder with the tokenizer (`tokenizer.json`); `None`: the model folder.
    pub tokenizer: Option<PathBuf>,
    /// Which loop trains: the step loop (trained one evaluation interval at a time) or
    /// burn-train's Learner (one burn-train epoch per evaluation interval, the evaluation
    /// split as its validation).
    #[serde(default, skip_serializing_if = "Trainer::is_loop")]
    pub trainer: Trainer,
}

impl VtabRunConfig {
    /// The protocol's settings for `task`, as the official script (`train_script_siglip2.py`)
    /// runs it: IPA on the vision q and v projections, r = 8, scaling 0.05, dropout 0.1,
    /// projector trainable, fit on every training image in file order (64 a batch), batch
    /// 64, 100 epochs, learning rate 1e-3 with HF Trainer's defaults (no warm-up, linear
    /// decay, no weight decay, AdamW ε 1e-8, gradient norm clipped at 1.0), test accuracy
    /// every 10 epochs with the best kept, prompts of 64 tokens.
    pub fn new(task: impl Into<String>) -> Self {
        Self {
            task: task.into(),
            train_split: VtabSplit::Train800Val200,
            eval_split: VtabSplit::Test,
            method: AdapterMethod::Ipa,
            rank: 8,
            alpha: None,
            scaling: None,
            dropout: 0.1,
            train_projector: None,
            targets: vec!["q_proj".into(), "v_proj".into()],
            fit_algorithm: "ipca".into(),
            fit_fraction: 1.0,
            fit_batch_size: 64,
            train: TrainConfig {
                learning_rate: 1e-3,
                weight_decay: 0.0,
                epochs: 100,
                batch_size: 64,
                micro_batch_size: 64,
                warmup_steps: 0,
                max_steps: None,
                checkpoint_every: 0,
                valid_every: 0,
                seed: 42,
                ..TrainConfig::default()
            },
            eval_every: 10,
            eval_batch_size: 64,
            text_len: 64,
            tokenizer: None,
            trainer: Trainer::Loop,
        }
    }

    /// The adapter every targeted linear gets.
    pub fn adapter(&self) -> AdapterConfig {
        let base = match self.method {
            AdapterMethod::Ipa => AdapterConfig::ipa(self.rank),
            AdapterMethod::Lora => AdapterConfig::lora(self.rank),
        };
        let scaling = match self.method {
            AdapterMethod::Ipa => Scaling::Factor(self.scaling.unwrap_or(0.05)),
            AdapterMethod::Lora => Scaling::Alpha {
                alpha: self.alpha.unwrap_or(self.rank as f64),
                rslora: false,
            },
        };
        let train_projector = self.train_projector.unwrap_or(true);
        base.with_scaling(scaling)
            .with_train_projector(train_projector)
            .with_dropout(self.dropout)
    }

    /// The fit pass's settings (seeded by the training seed).
    pub fn fit_pass(&self) -> FitPassConfig {
        FitPassConfig {
            algorithm: self.fit_algorithm.clone(),
            rank: self.rank,
            fraction: self.fit_fraction,
            batch_size: self.fit_batch_size,
            seed: self.train.seed,
        }
    }

    /// Checks the settings that do not depend on the model or data.
    pub fn validate(&self) -> Result<()> {
        if self.task.is_empty() {
            return Err(Error::Config("no VTAB-1k task given".into()));
        }
        self.train.validate()?;
        check_vision_targets(&self.targets)?;
        if self.method == AdapterMethod::Ipa {
            FitAlgorithm::from_name(&self.fit_algorithm)?;
            for target in &self.targets {
                siglip_site_of(target)?;
            }
            if !(self.fit_fraction > 0.0 && self.fit_fraction <= 1.0) {
                return Err(Error::Config(format!(
                    "fit_fraction must be in (0, 1], got {}",
                    self.fit_fraction
                )));
            }
            if self.fit_batch_size == 0 {
                return Err(Error::Config("fit_batch_size must be at least 1".into()));
            }
        }
        if self.rank == 0 {
            return Err(Error::Config("rank must be at least 1".into()));
        }
        match self.method {
            AdapterMethod::Ipa if self.alpha.is_some() => {
                return Err(Error::Config(
                    "IPA's update is scaled by a plain factor: give --scaling, not --alpha".into(),
                ))
            }
            AdapterMethod::Lora if self.scaling.is_some() => {
                return Err(Error::Config(
                    "LoRA's update is scaled by alpha / r: give --alpha, not --scaling".into(),
                ))
            }
            _ => {}
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "dropout {} is not in [0, 1)",
                self.dropout
            )));
        }
        if self.eval_batch_size == 0 {
            return Err(Error::Config("eval_batch_size must be at least 1".into()));
        }
        if self.text_len == 0 {
            return Err(Error::Config("text_len must be at least 1".into()));
        }
        if self.trainer == Trainer::Learner && self.train.checkpoint_every > 0 {
            return Err(Error::Config(format!(
                "--checkpoint-every {}: --trainer learner checkpoints at the end of each \
                 evaluation interval (its burn-train epochs); use --trainer loop to checkpoint \
                 between evaluations",
                self.train.checkpoint_every
            )));
        }
        Ok(())
    }

    /// The optimizer steps after which the run evaluates, for `n` training images: the end of
    /// every `eval_every`-th epoch and the last step (steps capped by `train.max_steps`).
    pub fn eval_steps(&self, n: usize) -> Vec<usize> {
        let per_epoch = self.train.steps_per_epoch(n);
        let last = self.train.run_steps(n);
        let mut steps: Vec<usize> = if self.eval_every == 0 {
            Vec::new()
        } else {
            (1..=self.train.epochs)
                .filter(|e| e % self.eval_every == 0)
                .map(|e| e * per_epoch)
                .filter(|&s| s <= last)
                .collect()
        };
        if steps.last() != Some(&last) {
            steps.push(last);
        }
        steps
    }
}

/// `VtabSplit` as its name in JSON.
mod split_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::data::vtab::VtabSplit;

    pub fn serialize<S: Serializer>(split: &VtabSplit, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(split.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VtabSplit, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What a run does besides its settings.
#[derive(Clone, Debug, Default)]
pub struct VtabRunOptions {
    /// Where progress goes: bars (and a line per evaluation on standard error), the
    /// dashboard, or nothing; a stop request ends the run after a checkpoint.
    pub monitor: Monitor,
    /// What to do with a non-empty output folder: refuse (the default), resume from its
    /// latest checkpoint (with the evaluations in its `report.json`; the checkpoint must come
    /// from the same settings, model and data), or overwrite it.
    pub existing: Existing,
    /// Token ids of the class prompts (one row per class in label order, all of one length)
    /// instead of tokenizing "a photo of a {class}" with the tokenizer.
    pub class_ids: Option<Vec<Vec<u32>>>,
}

/// One evaluation of the run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VtabEval {
    /// Epochs trained (fractional when `max_steps` ends the run inside an epoch).
    pub epoch: f64,
    /// Optimizer steps taken.
    pub step: usize,
    /// Images classified correctly.
    pub correct: usize,
    /// Images evaluated.
    pub total: usize,
    /// `correct / total`.
    pub accuracy: f64,
}

/// What a run reports (`report.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VtabReport {
    /// The task.
    pub task: String,
    /// The adapter method.
    pub method: AdapterMethod,
    /// The adapter every targeted linear got.
    pub adapter: AdapterConfig,
    /// The adapted linears.
    pub adapted: Vec<String>,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// Classes of the task.
    pub classes: usize,
    /// The split trained on.
    pub train_split: String,
    /// Training images.
    pub train_images: usize,
    /// The split evaluated.
    pub eval_split: String,
    /// Evaluated images.
    pub eval_images: usize,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Mean training loss of the last step.
    pub final_loss: Option<f64>,
    /// Every evaluation, in order.
    pub evaluations: Vec<VtabEval>,
    /// The evaluation of highest accuracy (the earliest among equals): the one whose adapter
    /// is in `best_adapter/`.
    pub best: Option<VtabEval>,
}

/// The settings and what they resolved to (adapter, image size, class names and prompt ids).
pub const VTAB_CONFIG_FILE: &str = "vtab_config.json";
/// The evaluations as CSV: `epoch,step,correct,total,accuracy,best_accuracy`.
pub const EVAL_CSV_FILE: &str = "eval.csv";
/// The [`VtabReport`].
pub const REPORT_FILE: &str = "report.json";
/// The adapter of the best evaluation.
pub const BEST_ADAPTER_DIR: &str = "best_adapter";

/// What `vtab_config.json` holds: the settings and what they resolved to.
#[derive(Serialize)]
struct ResolvedConfig<'a> {
    config: &'a VtabRunConfig,
    adapter: AdapterConfig,
    model: &'a Path,
    data_root: &'a Path,
    image_size: usize,
    class_names: &'a [String],
    class_ids: &'a [Vec<u32>],
}

/// Runs the VTAB-1k protocol on backend `B` (trained on `Autodiff<B>`): see the module
/// documentation. `model_dir` is a SigLIP folder (`config.json`, weights and, unless
/// `config.tokenizer` names another folder, `tokenizer.json`); the task folder is
/// `data_root/<task>/`. Errors on inputs name the file concerned.
pub fn run_vtab<B: Backend>(
    config: &VtabRunConfig,
    model_dir: &Path,
    data_root: &Path,
    out_dir: &Path,
    device: &B::Device,
    progress: bool,
) -> Result<VtabReport> {
    let options = VtabRunOptions {
        monitor: Monitor::bars_if(progress),
        ..VtabRunOptions::default()
    };
    run_vtab_with::<B>(config, model_dir, data_root, out_dir, &options, device)
}

/// [`run_vtab`] with resume and pre-tokenized class prompts ([`VtabRunOptions`]).
pub fn run_vtab_with<B: Backend>(
    config: &VtabRunConfig,
    model_dir: &Path,
    data_root: &Path,
    out_dir: &Path,
    options: &VtabRunOptions,
    device: &B::Device,
) -> Result<VtabReport> {
    type AB<B> = Autodiff<B>;
    config.validate()?;
    let adapter = config.adapter();
    let train_set = VtabDataset::load(data_root, &config.task, config.train_split)?;
    let eval_set = VtabDataset::load(data_root, &config.task, config.eval_split)?;
    let classes = train_set.num_classes();

    let mut model: SiglipModel<B> = load_siglip(model_dir, device)?;
    let image_size = model.vision_model.config.image_size;
    let class_ids = match &options.class_ids {
        Some(ids) => ids.clone(),
        None => {
            let max = model.text_model.config.max_position_embeddings;
            if config.text_len > max {
                return Err(Error::Config(format!(
                    "text_len {} exceeds the text tower's {max} positions",
                    config.text_len
                )));
            }
            let dir = config.tokenizer.as_deref().unwrap_or(model_dir);
            let tokenizer = Tokenizer::from_dir(dir)?;
            class_prompt_ids(&tokenizer, train_set.class_names(), config.text_len)?
        }
    };
    if class_ids.len() != classes {
        return Err(Error::Config(format!(
            "{} class prompts for the {classes} classes of `{}`",
            class_ids.len(),
            config.task
        )));
    }

    let dir = OutDir::lock(out_dir, "ipa vtab")?;
    dir.prepare(options.existing, "a VTAB run", true)?;
    let resolved = ResolvedConfig {
        config,
        adapter: adapter.clone(),
        model: model_dir,
        data_root,
        image_size,
        class_names: train_set.class_names(),
        class_ids: &class_ids,
    };

    // Everything that makes two runs the same run; `max_steps` only says where to stop.
    let mut fingerprint = serde_json::to_value(&resolved).expect("json");
    if let Some(train) = fingerprint
        .get_mut("config")
        .and_then(|c| c.get_mut("train"))
        .and_then(|t| t.as_object_mut())
    {
        train.remove("max_steps");
    }

    let per_epoch = config.train.steps_per_epoch(train_set.items().len());
    let resuming = options.existing == Existing::Resume && resumable(out_dir, config.trainer)?;
    let resume_from = if resuming && config.trainer == Trainer::Loop {
        latest_checkpoint(out_dir)?
    } else {
        None
    };
    let mut evaluations: Vec<VtabEval> = Vec::new();
    let mut history: Vec<StepRecord> = Vec::new();
    if let Some(dir) = &resume_from {
        let state = crate::train::checkpoint::read_state(dir)?;
        if state.fingerprint != fingerprint {
            return Err(Error::file(
                dir,
                format!(
                    "was written by another run; {}",
                    crate::train::fingerprint::describe_difference(
                        &state.fingerprint,
                        &fingerprint
                    )
                ),
            ));
        }
        let reached = state.step;
        history = state.history;
        let report = out_dir.join(REPORT_FILE);
        if report.is_file() {
            evaluations = read_report(&report)?
                .evaluations
                .into_iter()
                .filter(|e| e.step <= reached)
                .map(|mut e| {
                    // Derived again from the integers, so a resumed run reports them bit for
                    // bit as an uninterrupted one (JSON need not round-trip every float).
                    e.epoch = e.step as f64 / per_epoch as f64;
                    e
                })
                .collect();
        }
    }

    write_json(&out_dir.join(VTAB_CONFIG_FILE), &resolved)?;

    let images = train_set.preload(image_size)?;
    let adapted = if resuming {
        // The checkpoint holds every adapter tensor, the fitted projectors included.
        attach_vision_adapters(&mut model, &config.targets, None, &adapter, |_| {
            ProjectorInit::Zeros
        })?
    } else {
        match config.method {
            AdapterMethod::Ipa => {
                let fit = siglip_fit_pass(
                    &model,
                    images.images(),
                    &config.targets,
                    &config.fit_pass(),
                    options.monitor.shows_bars(),
                )?;
                fit.install(&mut model, &adapter)?
            }
            AdapterMethod::Lora => {
                B::seed(device, config.train.seed);
                attach_vision_adapters(&mut model, &config.targets, None, &adapter, |_| {
                    ProjectorInit::KaimingUniform
                })?
            }
        }
    };
    let trainable_params: usize = model
        .linears_mut()
        .into_iter()
        .map(|(_, l)| l.trainable_params())
        .sum();

    let mut trained = SiglipModel::<AB<B>>::from_inner(model);
    for (_, linear) in trained.linears_mut() {
        linear.mark_trainable();
    }
    let mut classifier = SiglipClassifier::new(trained, &class_ids)?;

    let n = images.images().len();
    let mut report = VtabReport {
        task: config.task.clone(),
        method: config.method,
        adapter: adapter.clone(),
        adapted,
        trainable_params,
        classes,
        train_split: config.train_split.name().into(),
        train_images: n,
        eval_split: config.eval_split.name().into(),
        eval_images: eval_set.items().len(),
        steps: 0,
        final_loss: None,
        best: best_of(&evaluations),
        evaluations,
    };
    if config.trainer == Trainer::Learner {
        learn_vtab::<B>(
            classifier,
            config,
            &images,
            &eval_set,
            LearnerSettings {
                train: config.train.clone(),
                window_steps: if config.eval_every > 0 {
                    config.eval_every * per_epoch
                } else {
                    config.train.run_steps(n)
                },
                valid_steps: config.eval_steps(n).into_iter().collect(),
                keep: KeepBest::HighestAccuracy,
                classifies: true,
                out_dir: out_dir.to_path_buf(),
                resume: resuming,
                fingerprint,
                monitor: options.monitor.clone(),
                stop_after: None,
            },
            model_dir,
            &mut report,
            device,
        )?;
        write_eval_csv(&out_dir.join(EVAL_CSV_FILE), &report.evaluations)?;
        write_json(&out_dir.join(REPORT_FILE), &report)?;
        return Ok(report);
    }
    for (i, &target) in config.eval_steps(n).iter().enumerate() {
        if report.evaluations.iter().any(|e| e.step == target) {
            continue;
        }
        let mut chunk = config.train.clone();
        chunk.max_steps = Some(target);
        let run = RunOptions {
            out_dir: Some(out_dir.to_path_buf()),
            // Later intervals continue from the checkpoint the previous one wrote.
            resume: resume_from.is_some() || i > 0,
            fingerprint: fingerprint.clone(),
            stop_after: None,
            monitor: options.monitor.clone(),
        };
        let outcome = train::<AB<B>, _, _>(
            classifier,
            images.images(),
            &chunk,
            &run,
            device,
            |batch: &[&VtabImage]| {
                let owned = batch.iter().map(|img| (*img).clone()).collect();
                Batcher::<AB<B>, _, _>::batch(&VtabBatcher, owned, device)
            },
            None,
        )?;
        classifier = outcome.model;
        history = outcome.history;
        if outcome.stopped_early {
            // Stopped on request: the checkpoint holds the step; `resume` continues.
            break;
        }

        let frozen = classifier.valid();
        let bar = progress_bar(
            options.monitor.shows_bars(),
            eval_set.items().len().div_ceil(config.eval_batch_size),
            "eval",
        );
        let (correct, total) = evaluate_vtab(
            &frozen,
            eval_set
                .batches::<B>(image_size, config.eval_batch_size, device)
                .inspect(|_| {
                    if let Some(b) = &bar {
                        b.inc(1);
                    }
                }),
        )?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let eval = VtabEval {
            epoch: target as f64 / per_epoch as f64,
            step: target,
            correct,
            total,
            accuracy: correct as f64 / total.max(1) as f64,
        };
        let improved = report
            .best
            .as_ref()
            .is_none_or(|b| eval.accuracy > b.accuracy);
        if improved {
            let metadata = BTreeMap::from([
                ("base_model".to_string(), model_dir.display().to_string()),
                ("task".to_string(), config.task.clone()),
                ("step".to_string(), eval.step.to_string()),
                ("epoch".to_string(), eval.epoch.to_string()),
                ("accuracy".to_string(), eval.accuracy.to_string()),
            ]);
            save_adapter(
                &frozen.model,
                &adapter,
                metadata,
                &out_dir.join(BEST_ADAPTER_DIR),
            )?;
            report.best = Some(eval.clone());
        }
        options
            .monitor
            .evaluated(RunMetric::Accuracy, 100.0 * eval.accuracy, eval.step);
        if options.monitor.shows_bars() {
            eprintln!(
                "epoch {}: {} accuracy {:.2}% ({correct}/{total}){}",
                eval.epoch,
                config.eval_split,
                100.0 * eval.accuracy,
                if improved { ", best so far" } else { "" }
            );
        }
        report.evaluations.push(eval);
        report.steps = target;
        report.final_loss = history.last().map(|r| r.loss);
        write_eval_csv(&out_dir.join(EVAL_CSV_FILE), &report.evaluations)?;
        write_json(&out_dir.join(REPORT_FILE), &report)?;
    }
    if let Some(last) = history.last() {
        report.steps = last.step;
        report.final_loss = Some(last.loss);
    }
    write_eval_csv(&out_dir.join(EVAL_CSV_FILE), &report.evaluations)?;
    write_json(&out_dir.join(REPORT_FILE), &report)?;
    Ok(report)
}

/// `ipa vtab --trainer learner`: the run through burn-train's Learner, one burn-train epoch
/// per evaluation interval, the evaluation split as its validation; fills `report` with the
/// evaluations (those before a resume included) and writes the best one's adapter.
#[allow(clippy::too_many_arguments)]
fn learn_vtab<B: Backend>(
    classifier: SiglipClassifier<Autodiff<B>>,
    config: &VtabRunConfig,
    images: &VtabImages,
    eval_set: &VtabDataset,
    settings: LearnerSettings,
    model_dir: &Path,
    report: &mut VtabReport,
    device: &B::Device,
) -> Result<()> {
    let n = images.images().len();
    let per_epoch = config.train.steps_per_epoch(n);
    let image_size = images.image_size();
    let eval = Arc::new(eval_set.clone());
    let batch_size = config.eval_batch_size;
    let valid = ValidSet {
        batches: eval.items().len().div_ceil(batch_size),
        make: Arc::new(move |i: usize, device: &B::Device| {
            eval.batch::<B>(i, image_size, batch_size, device)
                .map_err(|e| e.to_string())
        }),
    };
    let outcome = learn::<Autodiff<B>, SiglipClassifier<Autodiff<B>>, VtabImage>(
        classifier,
        Arc::new(images.images().to_vec()),
        Arc::new(VtabBatcher),
        valid,
        &settings,
        std::slice::from_ref(device),
    )?;
    let done_before = report.evaluations.len();
    report.evaluations = outcome
        .log
        .windows
        .iter()
        .filter_map(|w| {
            let (correct, total) = w.valid_correct?;
            Some(VtabEval {
                epoch: w.step as f64 / per_epoch as f64,
                step: w.step,
                correct,
                total,
                accuracy: correct as f64 / total.max(1) as f64,
            })
        })
        .collect();
    report.best = best_of(&report.evaluations);
    report.steps = outcome.steps();
    report.final_loss = outcome.log.history.last().map(|r| r.loss);
    if let Some((window, model)) = &outcome.best {
        let eval = report
            .best
            .clone()
            .filter(|b| b.step == window.step)
            .ok_or_else(|| Error::State("the best window has no evaluation".into()))?;
        let metadata = BTreeMap::from([
            ("base_model".to_string(), model_dir.display().to_string()),
            ("task".to_string(), config.task.clone()),
            ("step".to_string(), eval.step.to_string()),
            ("epoch".to_string(), eval.epoch.to_string()),
            ("accuracy".to_string(), eval.accuracy.to_string()),
        ]);
        save_adapter(
            &model.inner.model,
            &config.adapter(),
            metadata,
            &settings.out_dir.join(BEST_ADAPTER_DIR),
        )?;
    }
    if settings.monitor.shows_bars() {
        for e in report.evaluations.iter().skip(done_before) {
            eprintln!(
                "epoch {}: {} accuracy {:.2}% ({}/{})",
                e.epoch,
                config.eval_split,
                100.0 * e.accuracy,
                e.correct,
                e.total
            );
        }
    }
    Ok(())
}

/// The earliest evaluation of highest accuracy.
fn best_of(evaluations: &[VtabEval]) -> Option<VtabEval> {
    evaluations
        .iter()
        .fold(None::<&VtabEval>, |best, e| match best {
            Some(b) if b.accuracy >= e.accuracy => Some(b),
            _ => Some(e),
        })
        .cloned()
}

/// Reads a `report.json` written by [`run_vtab`].
pub fn read_report(path: &Path) -> Result<VtabReport> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let mut report: VtabReport = serde_json::from_str(&text)
        .map_err(|e| Error::file(path, format!("not a VTAB report: {e}")))?;
    // `accuracy` is `correct / total` by definition: derived again, exactly.
    for e in report.evaluations.iter_mut().chain(report.best.iter_mut()) {
        e.accuracy = e.correct as f64 / e.total.max(1) as f64;
    }
    Ok(report)
}

/// Writes `eval.csv`: `epoch,step,correct,total,accuracy,best_accuracy` (the best so far).
fn write_eval_csv(path: &Path, evaluations: &[VtabEval]) -> Result<()> {
    let mut text = String::from("epoch,step,correct,total,accuracy,best_accuracy\n");
    let mut best = f64::NEG_INFINITY;
    for e in evaluations {
        best = best.max(e.accuracy);
        text.push_str(&format!(
            "{},{},{},{},{},{}\n",
            e.epoch, e.step, e.correct, e.total, e.accuracy, best
        ));
    }
    write_atomic(path, text.as_bytes())
}

fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).expect("serialisable");
    write_atomic(path, &bytes)
}

//! Online IPA: the projector estimators learn from the inputs the adapted layers see during
//! fine-tuning, and the adapters' projectors follow the current estimate as training goes
//! (the official code's `online_ipca` and `online_gha` modes).
//!
//! Before each micro-batch's training forward pass, the current model's decoder runs once
//! more without autodiff ([`Decoder::forward_tap`], through [`DecoderFit::observe`]) over the
//! same micro-batch; every distinct input site's estimator is updated with the real tokens'
//! inputs (padding excluded), and every [`OnlineFit::update_every`] micro-batches each
//! adapter's projector is replaced by its site's current estimate, which the training forward
//! of that micro-batch then uses.
//!
//! How this relates to the official code:
//! * **Adapters are active in the taps**, as in the official training forward: the input a
//!   layer sees depends on the adapters of the layers before it. One difference: the official
//!   code updates layer `l`'s projector inside the forward pass, so layer `l + 1` already sees
//!   the output of the updated layer `l`; here the whole tap pass runs with the projectors of
//!   the previous update, then all are replaced at once. Dropout is off in the tap pass (the
//!   official estimators also read the input before the adapter's dropout).
//! * q/k/v (and gate/up) share one estimator, since they read the same input; padding never
//!   enters a statistic (the official code includes it).
//! * The official `online_ipca` runs `torch.svd_lowrank` per batch (the `rsvd` algorithm
//!   here); `ipca` is the exact scikit-learn update. `online_gha` is `gha`, with this crate's
//!   scale-free step and re-orthonormalisation rather than a fixed `lr = 1e-3`.
//! * **A trainable projector** (`_requires_grad`, [`AdapterConfig::train_projector`]) is
//!   overwritten by the estimate at every update, which discards the gradient steps taken on
//!   it since the previous update, as the official IPCA update does (`basis.data = Vt`); the
//!   official GHA instead adds its Hebbian step to the gradient-updated basis. The estimators
//!   here keep their own state and never read the projector back. The projector keeps its
//!   parameter id, so its AdamW moments carry over; once the online fit stops
//!   ([`OnlineFit::stop_after`]) the projector trains by gradient alone from the last
//!   estimate.
//! * Cost: one extra forward pass (no autodiff) per micro-batch, plus the estimator updates.
//!
//! **Resume.** The estimators' state is not checkpointed, so a run cannot resume exactly while
//! the online fit is still running: [`finetune_online`] refuses to resume from a checkpoint
//! taken before [`OnlineFit::stop_after`] steps (or from any checkpoint without a stop). A
//! checkpoint at or after the stop holds the final projectors, and resuming from it is exact.
//!
//! [`AdapterConfig::train_projector`]: crate::adapter::AdapterConfig::train_projector

use std::collections::{BTreeMap, BTreeSet};

use burn::module::{AutodiffModule, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::adapter::{AdaptedLinear, AdapterMethod};
use crate::data::instruction::TokenizedExample;
use crate::fit::{site_kind_of, DecoderFit};
use crate::models::llama::Decoder;
use crate::models::Site;
use crate::projector::FitAlgorithm;
use crate::train::checkpoint::read_state;
use crate::train::monitor::progress_bar;
use crate::train::{
    epoch_order, latest_checkpoint, lm_batch, train_with_hook, trainable_lm, CausalLm, RunOptions,
    TrainConfig, TrainOutcome, Validation,
};
use crate::{Error, Result};

/// Where the estimators start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmStart {
    /// From no data: the estimators start empty (GHA from its seeded random orthonormal
    /// start) and the projectors are set to zero until the first update.
    Zero,
    /// From a forward-only pre-fit with the adapters disabled (as the `pre_` modes do) over
    /// the first `fraction` of a shuffle of the training set seeded by [`OnlineFit::seed`],
    /// in batches of `batch_size` sequences; the projectors start at its result and the
    /// estimators continue from its state.
    PreFit {
        /// Fraction of the training set, in (0, 1].
        fraction: f64,
        /// Sequences per pre-fit forward pass.
        batch_size: usize,
    },
}

/// Settings of an online projector fit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OnlineFit {
    /// The estimator (`ipca`, `rsvd`, `gha` or `covariance`, with its settings).
    #[serde(flatten)]
    pub algorithm: FitAlgorithm,
    /// Replace the projectors every this many micro-batches (counted from the first one
    /// observed, which is always followed by an update).
    pub update_every: usize,
    /// Stop the online fit after this many optimizer steps: the micro-batches of the first
    /// `stop_after` steps are observed, the projectors get the final estimate before the
    /// last of them, and stay fixed afterwards (`None`: the fit runs to the end).
    pub stop_after: Option<usize>,
    /// Where the estimators start.
    pub warm_start: WarmStart,
    /// Seeds the randomized estimators and the pre-fit's shuffle.
    pub seed: u64,
}

impl Default for OnlineFit {
    fn default() -> Self {
        Self {
            algorithm: FitAlgorithm::Ipca,
            update_every: 1,
            stop_after: None,
            warm_start: WarmStart::Zero,
            seed: 42,
        }
    }
}

impl OnlineFit {
    /// Default settings with the algorithm named `algorithm` (see
    /// [`FitAlgorithm::from_name`]).
    pub fn new(algorithm: &str) -> Result<Self> {
        Ok(Self {
            algorithm: FitAlgorithm::from_name(algorithm)?,
            ..Self::default()
        })
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.update_every == 0 {
            return Err(Error::Config(
                "online fit: update_every must be at least 1 micro-batch".into(),
            ));
        }
        if self.stop_after == Some(0) {
            return Err(Error::Config(
                "online fit: stop_after must be at least 1 step (a fit before training is \
                 the pre-fit mode)"
                    .into(),
            ));
        }
        if let WarmStart::PreFit {
            fraction,
            batch_size,
        } = self.warm_start
        {
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(Error::Config(format!(
                    "online fit: warm-start fraction must be in (0, 1], got {fraction}"
                )));
            }
            if batch_size == 0 {
                return Err(Error::Config(
                    "online fit: warm-start batch size must be at least 1".into(),
                ));
            }
        }
        Ok(())
    }

    /// Whether the fit is over before optimizer step `step` (0-based).
    pub fn stopped_at(&self, step: usize) -> bool {
        self.stop_after.is_some_and(|s| step >= s)
    }
}

/// The online estimators of a decoder's IPA adapters and the schedule of their updates.
///
/// [`finetune_online`] drives it; call [`OnlineProjectorFit::before_micro_batch`] from a
/// [`train_with_hook`] hook to use it with another loop.
pub struct OnlineProjectorFit<B: Backend> {
    fit: DecoderFit<B>,
    config: OnlineFit,
    rank: usize,
    pad_id: u32,
    items: usize,
    batch_size: usize,
    micro_batch_size: usize,
    /// (step, micro-batch within the step) of the last hook call.
    position: Option<(usize, usize)>,
    observed: usize,
    updates: usize,
}

impl<B: Backend> OnlineProjectorFit<B> {
    /// Estimators for the IPA adapters attached to `decoder`, for a run of `train` over
    /// `items` training examples padded with `pad_id`.
    ///
    /// Every adapter must be an active (enabled, unmerged) IPA adapter, all of one rank.
    pub fn new(
        decoder: &Decoder<B>,
        config: &OnlineFit,
        train: &TrainConfig,
        items: usize,
        pad_id: u32,
    ) -> Result<Self> {
        config.validate()?;
        train.validate()?;
        if items == 0 {
            return Err(Error::Config("the training set is empty".into()));
        }
        let (targets, layers, rank) = adapted_sites(decoder)?;
        let all_layers = layers.len() == decoder.config.num_hidden_layers;
        let layers: Vec<usize> = layers.into_iter().collect();
        let fit = DecoderFit::new(
            decoder,
            &targets,
            (!all_layers).then_some(layers.as_slice()),
            &config.algorithm,
            rank,
            config.seed,
        )?;
        Ok(Self {
            fit,
            config: config.clone(),
            rank,
            pad_id,
            items,
            batch_size: train.batch_size,
            micro_batch_size: train.micro_batch_size,
            position: None,
            observed: 0,
            updates: 0,
        })
    }

    /// Runs the warm start the config asks for: with [`WarmStart::PreFit`], the pre-fit
    /// over `examples` with every adapter of `decoder` disabled; with [`WarmStart::Zero`],
    /// nothing.
    pub fn warm_start(
        &mut self,
        decoder: &Decoder<B>,
        examples: &[TokenizedExample],
        progress: bool,
    ) -> Result<()> {
        let WarmStart::PreFit {
            fraction,
            batch_size,
        } = self.config.warm_start
        else {
            return Ok(());
        };
        if examples.is_empty() {
            return Err(Error::Config("the training set is empty".into()));
        }
        let mut base = decoder.clone();
        for (_, linear) in base.linears_mut() {
            if linear.adapter.is_some() {
                linear.set_enabled(false)?;
            }
        }
        let order = epoch_order(examples.len(), self.config.seed, 0);
        let take = ((examples.len() as f64 * fraction).ceil() as usize).clamp(1, examples.len());
        let device = base.model.embed_tokens.weight.device();
        let bar = progress_bar(progress, take.div_ceil(batch_size), "prefit");
        for chunk in order[..take].chunks(batch_size) {
            let items: Vec<TokenizedExample> = chunk.iter().map(|&i| examples[i].clone()).collect();
            let batch = lm_batch::<B>(&items, self.pad_id, &device);
            self.fit
                .observe(&base, batch.input_ids, batch.options.attention_mask)?;
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
        if let Some(b) = bar {
            b.finish();
        }
        Ok(())
    }

    /// The hook body: before micro-batch `examples` of optimizer step `step` (0-based),
    /// observe it with the current model (adapters active, no autodiff) and, when an update
    /// is due, write the current estimate into every adapter's projector. Does nothing once
    /// the fit has stopped.
    pub fn before_micro_batch<AB>(
        &mut self,
        decoder: &mut Decoder<AB>,
        examples: &[&TokenizedExample],
        step: usize,
    ) -> Result<()>
    where
        AB: AutodiffBackend<InnerBackend = B>,
    {
        let micro = match self.position {
            Some((s, m)) if s == step => m + 1,
            _ => 0,
        };
        self.position = Some((step, micro));
        if self.config.stopped_at(step) {
            return Ok(());
        }
        let inner = decoder.valid();
        let device = inner.model.embed_tokens.weight.device();
        let owned: Vec<TokenizedExample> = examples.iter().map(|e| (*e).clone()).collect();
        let batch = lm_batch::<B>(&owned, self.pad_id, &device);
        self.fit
            .observe(&inner, batch.input_ids, batch.options.attention_mask)?;
        let index = self.observed;
        self.observed += 1;
        let last_before_stop = self.config.stop_after == Some(step + 1)
            && micro + 1 == self.micro_batches_in_step(step);
        let due = index.is_multiple_of(self.config.update_every) || last_before_stop;
        // IPCA and GHA need more rows than the rank before they have an estimate; until then
        // the projectors stay as they are.
        if due && self.fit.rows_seen() > self.rank {
            self.write_projectors(decoder)?;
        }
        Ok(())
    }

    /// Writes the current estimate into the projector of every adapter of `decoder` (kept
    /// frozen or trainable as each adapter's config says, with its parameter id). Returns
    /// the number of adapters written.
    pub fn write_projectors<D: Backend>(&mut self, decoder: &mut Decoder<D>) -> Result<usize> {
        let fitted = self.fit.finish()?;
        let projectors: BTreeMap<Site, Tensor<B, 2>> = fitted
            .into_iter()
            .map(|(site, f)| (site, f.components))
            .collect();
        let mut written = 0;
        for (path, linear) in decoder.linears_mut() {
            if linear.adapter.is_none() {
                continue;
            }
            let site = site_of(&path)?;
            let p = projectors
                .get(&site)
                .ok_or_else(|| Error::Fit(format!("no online estimate for {path}")))?;
            let device = linear_device(linear);
            let p = Tensor::<D, 2>::from_data(p.to_data(), &device);
            replace_projector(linear, p).map_err(|e| Error::State(format!("{path}: {e}")))?;
            written += 1;
        }
        self.updates += 1;
        Ok(written)
    }

    /// Sets every adapter's projector of `decoder` to zero (the adapters then add nothing and
    /// their up-projections get no gradient until the first update).
    pub fn zero_projectors<D: Backend>(&self, decoder: &mut Decoder<D>) -> Result<()> {
        for (path, linear) in decoder.linears_mut() {
            if linear.adapter.is_none() {
                continue;
            }
            let device = linear_device(linear);
            let p = Tensor::<D, 2>::zeros([self.rank, linear.d_input()], &device);
            replace_projector(linear, p).map_err(|e| Error::State(format!("{path}: {e}")))?;
        }
        Ok(())
    }

    /// The estimators.
    pub fn estimator(&self) -> &DecoderFit<B> {
        &self.fit
    }

    /// Micro-batches observed during training (the pre-fit not included).
    pub fn observed(&self) -> usize {
        self.observed
    }

    /// Times the projectors were written.
    pub fn updates(&self) -> usize {
        self.updates
    }

    /// The adapters' rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Micro-batches the training loop runs in optimizer step `step` (0-based): the last
    /// step of an epoch may take fewer examples.
    fn micro_batches_in_step(&self, step: usize) -> usize {
        let per_epoch = self.items.div_ceil(self.batch_size);
        let begin = (step % per_epoch) * self.batch_size;
        let end = (begin + self.batch_size).min(self.items);
        (end - begin).div_ceil(self.micro_batch_size)
    }
}

/// Fine-tunes the IPA adapters of `model` (built on the inner backend, with IPA adapters
/// attached; their projectors may be placeholders) on `examples` while fitting their
/// projectors online (see the [module documentation](self)). Otherwise as
/// [`crate::train::finetune`]: `valid` computes the validation loss, checkpoints and
/// metrics as `options` says.
///
/// The online settings are added to the run's fingerprint (key `online_fit`), so a
/// checkpoint of a run with other settings is not resumed. Resuming is refused while the
/// online fit would still be running (its estimators' state is not checkpointed).
#[allow(clippy::too_many_arguments)]
pub fn finetune_online<B: AutodiffBackend>(
    model: Decoder<B::InnerBackend>,
    examples: &[TokenizedExample],
    config: &TrainConfig,
    options: &RunOptions,
    online: &OnlineFit,
    pad_id: u32,
    device: &B::Device,
    valid: Option<&mut Validation<'_, CausalLm<B>>>,
) -> Result<TrainOutcome<CausalLm<B>>> {
    online.validate()?;
    config.validate()?;
    let mut options = options.clone();
    options.fingerprint = with_online_fingerprint(options.fingerprint, online);
    let fit_done = resume_past_fit(&options, online)?;

    let mut model = model;
    let mut fitter = OnlineProjectorFit::new(&model, online, config, examples.len(), pad_id)?;
    if !fit_done {
        match online.warm_start {
            WarmStart::Zero => fitter.zero_projectors(&mut model)?,
            WarmStart::PreFit { .. } => {
                fitter.warm_start(&model, examples, options.monitor.shows_bars())?;
                fitter.write_projectors(&mut model)?;
            }
        }
    }

    let model = trainable_lm::<B>(model, &crate::train::Trainable::Adapters);
    let mut hook = |m: &mut CausalLm<B>, batch: &[&TokenizedExample], step: usize| {
        fitter.before_micro_batch(&mut m.decoder, batch, step)
    };
    train_with_hook(
        model,
        examples,
        config,
        &options,
        device,
        |batch: &[&TokenizedExample]| {
            let owned: Vec<TokenizedExample> = batch.iter().map(|e| (*e).clone()).collect();
            lm_batch::<B>(&owned, pad_id, device)
        },
        valid,
        Some(&mut hook),
    )
}

/// The run's fingerprint with the online settings under `online_fit`.
fn with_online_fingerprint(
    fingerprint: serde_json::Value,
    online: &OnlineFit,
) -> serde_json::Value {
    let settings = serde_json::to_value(online).expect("online settings serialise");
    match fingerprint {
        serde_json::Value::Object(mut map) => {
            map.insert("online_fit".into(), settings);
            serde_json::Value::Object(map)
        }
        other => serde_json::json!({ "run": other, "online_fit": settings }),
    }
}

/// Whether the run resumes from a checkpoint taken after the online fit stopped; an error if
/// it would resume while the fit is still running.
fn resume_past_fit(options: &RunOptions, online: &OnlineFit) -> Result<bool> {
    if !options.resume {
        return Ok(false);
    }
    let Some(out) = options.out_dir.as_deref() else {
        return Ok(false);
    };
    let Some(dir) = latest_checkpoint(out)? else {
        return Ok(false);
    };
    let step = read_state(&dir)?.step;
    if online.stopped_at(step) {
        return Ok(true);
    }
    let until = match online.stop_after {
        Some(s) => format!("until step {s}"),
        None => "for the whole run".into(),
    };
    Err(Error::Config(format!(
        "cannot resume from {} (step {step}): the online projector fit runs {until} and its \
         estimators' state is not checkpointed, so the resumed run would differ; start afresh, \
         or set stop_after at or below the checkpoint's step",
        dir.display()
    )))
}

/// Targets, layers and rank of the adapters attached to `decoder`, checked for online fits.
fn adapted_sites<B: Backend>(
    decoder: &Decoder<B>,
) -> Result<(Vec<String>, BTreeSet<usize>, usize)> {
    let mut probe = decoder.clone();
    let mut targets = BTreeSet::new();
    let mut layers = BTreeSet::new();
    let mut rank = None;
    for (path, linear) in probe.linears_mut() {
        let Some(adapter) = linear.adapter.as_ref() else {
            continue;
        };
        let config = &adapter.config;
        if config.method != AdapterMethod::Ipa {
            return Err(Error::Config(format!(
                "{path}: online projector fits are for IPA adapters, found {:?}",
                config.method
            )));
        }
        if !linear.adapter_active() {
            return Err(Error::State(format!(
                "{path}: the adapter is disabled or merged; online fits train active adapters"
            )));
        }
        match rank {
            None => rank = Some(config.rank),
            Some(r) if r != config.rank => {
                return Err(Error::Config(format!(
                    "{path}: rank {} differs from the other adapters' rank {r}; one online fit \
                     serves adapters of one rank",
                    config.rank
                )))
            }
            Some(_) => {}
        }
        let site = site_of(&path)?;
        let name = path.rsplit('.').next().unwrap_or_default().to_string();
        targets.insert(name);
        layers.insert(site.layer);
    }
    let rank = rank.ok_or_else(|| {
        Error::Config("the model has no adapters; attach IPA adapters before an online fit".into())
    })?;
    Ok((targets.into_iter().collect(), layers, rank))
}

/// The input site a linear at `path` (`model.layers.<i>.<block>.<name>`) reads.
fn site_of(path: &str) -> Result<Site> {
    let layer = path
        .split('.')
        .nth(2)
        .and_then(|s| s.parse::<usize>().ok())
        .ok_or_else(|| Error::State(format!("`{path}` is not a decoder layer's linear")))?;
    let kind = site_kind_of(path.rsplit('.').next().unwrap_or_default())?;
    Ok(Site { layer, kind })
}

fn linear_device<D: Backend>(linear: &AdaptedLinear<D>) -> D::Device {
    linear.base.weight.val().device()
}

/// Replaces the projector of `linear` by `p` (`[r, d_in]`), in the projector's dtype,
/// keeping its parameter id (so an optimizer's state for a trainable projector carries
/// over) and its trainability.
fn replace_projector<D: Backend>(linear: &mut AdaptedLinear<D>, p: Tensor<D, 2>) -> Result<()> {
    let (id, dtype) = match linear.adapter.as_ref() {
        Some(a) => (a.projector.id, a.projector.val().dtype()),
        None => return Err(Error::State("no adapter attached".into())),
    };
    linear.set_projector(p.cast(dtype))?;
    if let Some(a) = linear.adapter.as_mut() {
        a.projector = Param::initialized(id, a.projector.val());
    }
    Ok(())
}

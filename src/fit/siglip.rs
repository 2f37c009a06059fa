//! The SigLIP vision tower's fit pass: one estimator per distinct input of the targeted vision
//! linears (q/k/v share the attention input), every patch of every image a row.

use std::collections::BTreeMap;

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{attach_fitted, FitPassConfig, SiteEstimators};
use crate::adapter::AdapterConfig;
use crate::data::vtab::{VtabBatcher, VtabImage};
use crate::models::siglip::{
    attach_vision_adapters, check_vision_layers, check_vision_targets, siglip_site_of,
    vision_layer_target, SiglipModel, SiglipSite,
};
use crate::projector::{FitAlgorithm, FittedProjector};
use crate::train::monitor::progress_bar;
use crate::{Error, Result};

/// A distinct input of the vision encoder: a layer and which of its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VisionSite {
    /// The encoder layer.
    pub layer: usize,
    /// The attention input (q/k/v) or the MLP input (fc1).
    pub site: SiglipSite,
}

/// One projector estimator per distinct input of the targeted vision linears, fed by the
/// frozen vision tower ([`SiglipFit::observe`]); every patch of every image is a row.
pub struct SiglipFit<B: Backend> {
    estimators: SiteEstimators<VisionSite, B>,
    targets: Vec<String>,
    layers: Option<Vec<usize>>,
}

fn describe_vision_site(key: &VisionSite) -> String {
    format!("vision layer {} {:?}", key.layer, key.site)
}

impl<B: Backend> SiglipFit<B> {
    /// Estimators of rank `rank` for `targets` (HF names: q_proj, k_proj, v_proj, fc1) of the
    /// vision encoder, in all layers or only `layers`. The estimator of layer `i`'s site `s`
    /// is seeded with `seed + 1000 i + s` (as [`crate::fit::DecoderFit`] does).
    pub fn new(
        model: &SiglipModel<B>,
        targets: &[String],
        layers: Option<&[usize]>,
        algorithm: &FitAlgorithm,
        rank: usize,
        seed: u64,
    ) -> Result<Self> {
        check_vision_targets(targets)?;
        check_vision_layers(model, layers)?;
        let c = &model.vision_model.config;
        let device = model.logit_scale.val().device();
        let mut sites = Vec::new();
        for layer in 0..c.num_hidden_layers {
            if layers.is_some_and(|l| !l.contains(&layer)) {
                continue;
            }
            for target in targets {
                let site = siglip_site_of(target)?;
                // Both inputs are hidden states of width `hidden_size`.
                let key = VisionSite { layer, site };
                sites.push((key, layer, site as usize, c.hidden_size));
            }
        }
        Ok(Self {
            estimators: SiteEstimators::new(sites, algorithm, rank, seed, &device)?,
            targets: targets.to_vec(),
            layers: layers.map(<[usize]>::to_vec),
        })
    }

    /// Runs the vision tower on pixels `[batch, 3, H, W]` and updates every estimator with the
    /// inputs of its site (every patch of every image). Run it before any adapter is trained
    /// (or with adapters disabled), so the statistics are those of the base model.
    pub fn observe(&mut self, model: &SiglipModel<B>, pixels: Tensor<B, 4>) -> Result<()> {
        let mut first_error: Option<Error> = None;
        let estimators = &mut self.estimators;
        model.vision_model.forward_tap(
            pixels,
            &mut |layer: usize, site: SiglipSite, rows: Tensor<B, 2>| {
                if first_error.is_some() {
                    return;
                }
                let key = VisionSite { layer, site };
                if let Some(Err(e)) = estimators.update(&key, rows, None) {
                    first_error = Some(e.in_context(describe_vision_site(&key)));
                }
            },
        )?;
        if let Some(e) = first_error {
            return Err(e);
        }
        self.estimators.batch_done();
        Ok(())
    }

    /// Batches observed.
    pub fn batches(&self) -> usize {
        self.estimators.batches()
    }

    /// Rows (patches) seen by the estimators (the same for every site).
    pub fn rows_seen(&self) -> usize {
        self.estimators.rows_seen()
    }

    /// The sites with an estimator.
    pub fn sites(&self) -> Vec<VisionSite> {
        self.estimators.sites()
    }

    /// The fitted projector of every site.
    pub fn finish(&self) -> Result<BTreeMap<VisionSite, FittedProjector<B>>> {
        self.estimators.finish(describe_vision_site)
    }

    /// Attaches IPA adapters (`ProjectorInit::Fitted`) with the fitted projectors to the
    /// targeted vision linears. Returns the adapted paths.
    pub fn install(
        &self,
        model: &mut SiglipModel<B>,
        adapter: &AdapterConfig,
    ) -> Result<Vec<String>> {
        let projectors = self
            .finish()?
            .into_iter()
            .map(|(key, f)| (key, f.components))
            .collect();
        install_vision_projectors(
            model,
            &self.targets,
            self.layers.as_deref(),
            adapter,
            &projectors,
        )
    }

    /// The targets this fit serves.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }
}

/// Attaches IPA adapters to the vision encoder's `targets` (in all layers or `layers`) with
/// the projector (`[r, d]`) of each one's site; a target without a projector is an error
/// naming it.
pub fn install_vision_projectors<B: Backend>(
    model: &mut SiglipModel<B>,
    targets: &[String],
    layers: Option<&[usize]>,
    adapter: &AdapterConfig,
    projectors: &BTreeMap<VisionSite, Tensor<B, 2>>,
) -> Result<Vec<String>> {
    for target in targets {
        siglip_site_of(target)?;
    }
    attach_fitted(
        adapter,
        |path| {
            let (layer, name) = vision_layer_target(path)?;
            let site = siglip_site_of(name).ok()?;
            projectors.get(&VisionSite { layer, site }).cloned()
        },
        |init| attach_vision_adapters(model, targets, layers, adapter, init),
    )
}

/// The fit pass over images: runs the frozen vision tower (no adapters, no autodiff) over the
/// first `config.fraction` of `images` in their order (the split file's, as the official
/// script's evaluation loader reads them), `config.batch_size` images per forward, and fits
/// one projector per distinct input of `targets`.
pub fn siglip_fit_pass<B: Backend>(
    model: &SiglipModel<B>,
    images: &[VtabImage],
    targets: &[String],
    config: &FitPassConfig,
    progress: bool,
) -> Result<SiglipFit<B>> {
    if !(config.fraction > 0.0 && config.fraction <= 1.0) {
        return Err(Error::Config(format!(
            "fit fraction must be in (0, 1], got {}",
            config.fraction
        )));
    }
    if config.batch_size == 0 {
        return Err(Error::Config("fit batch size must be at least 1".into()));
    }
    if images.is_empty() {
        return Err(Error::Config("the fit pass has no images".into()));
    }
    let algorithm = FitAlgorithm::from_name(&config.algorithm)?;
    let mut fit = SiglipFit::new(model, targets, None, &algorithm, config.rank, config.seed)?;
    // File order, as the official script's evaluation data loader reads them.
    let take = fit_count(images.len(), config.fraction);
    let order: Vec<usize> = (0..take).collect();
    let device = model.logit_scale.val().device();
    let bar = progress_bar(progress, take.div_ceil(config.batch_size), "fit");
    for chunk in order[..take].chunks(config.batch_size) {
        let batch: Vec<VtabImage> = chunk.iter().map(|&i| images[i].clone()).collect();
        let batch = Batcher::<B, _, _>::batch(&VtabBatcher, batch, &device);
        fit.observe(model, batch.pixels)?;
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish();
    }
    Ok(fit)
}

/// Images a fit over `fraction` of `n` reads: `ceil(n · fraction)`, at least one.
pub fn fit_count(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).ceil() as usize).clamp(1, n.max(1))
}

//! The forward-only fit pass: run the frozen model over data, feed the inputs of every
//! targeted linear to a projector estimator, and install the fitted projectors as IPA
//! adapters.
//!
//! Linears that read the same input share one estimator: q/k/v read the attention input,
//! gate/up the MLP input. Padding positions never enter a statistic.
//!
//! * [`decoder`]: the decoders' fit ([`DecoderFit`], [`fit_pass`]);
//! * [`siglip`]: the SigLIP vision tower's fit ([`SiglipFit`], [`siglip_fit_pass`]);
//! * [`projectors_file`]: fitted projectors on disk (`ipa fit`'s output).

pub mod decoder;
pub mod projectors_file;
pub mod siglip;

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

use crate::adapter::{AdapterConfig, AdapterMethod, ProjectorInit};
use crate::projector::{FitAlgorithm, FittedProjector, ProjectorFit};
use crate::{Error, Result};

pub use decoder::{fit_pass, install_projectors, site_kind_of, DecoderFit};
pub use projectors_file::{load_projectors, save_projectors, PROJECTORS_FILE};
pub use siglip::{fit_count, install_vision_projectors, siglip_fit_pass, SiglipFit, VisionSite};

/// Settings of a fit pass over data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FitPassConfig {
    /// Fit algorithm: `ipca`, `rsvd`, `gha` or `covariance`.
    pub algorithm: String,
    /// Projector rank.
    pub rank: usize,
    /// Fraction of the training set, taken from the start of the seeded shuffle.
    pub fraction: f64,
    /// Sequences (or images) per forward pass.
    pub batch_size: usize,
    /// Seeds the shuffle and the randomized fits.
    pub seed: u64,
}

impl FitPassConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(Error::Config(format!(
                "fit fraction must be in (0, 1], got {}",
                self.fraction
            )));
        }
        if self.batch_size == 0 {
            return Err(Error::Config("fit batch size must be at least 1".into()));
        }
        if self.rank == 0 {
            return Err(Error::Config("projector rank must be at least 1".into()));
        }
        FitAlgorithm::from_name(&self.algorithm)?;
        Ok(())
    }
}

/// Positions counted over real tokens, as HF's `generate` computes them for left-padded
/// batches (`cumsum(mask) − 1`, 1 at padding), so padding does not shift the real tokens.
pub fn positions_from_mask(mask: &[bool], batch: usize, seq: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(batch * seq);
    for b in 0..batch {
        let mut count = 0usize;
        for s in 0..seq {
            if mask[b * seq + s] {
                out.push(count);
                count += 1;
            } else {
                out.push(1);
            }
        }
    }
    out
}

/// One projector estimator per input site `K`: what a fit pass keeps whatever the model
/// ([`DecoderFit`] for decoders, `SiglipFit` for the SigLIP vision tower).
pub(crate) struct SiteEstimators<K, B: Backend> {
    estimators: BTreeMap<K, Box<dyn ProjectorFit<B>>>,
    batches: usize,
}

impl<K: Ord + Copy, B: Backend> SiteEstimators<K, B> {
    /// An estimator per distinct site of `sites` (`(site, layer, site index, input width)`;
    /// repeats are ignored), of rank `rank`, the one of layer `l`'s site `i` seeded with
    /// `seed + 1000 l + i`.
    pub(crate) fn new(
        sites: impl IntoIterator<Item = (K, usize, usize, usize)>,
        algorithm: &FitAlgorithm,
        rank: usize,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self> {
        let mut estimators = BTreeMap::new();
        for (site, layer, index, width) in sites {
            if let std::collections::btree_map::Entry::Vacant(slot) = estimators.entry(site) {
                let seed = seed.wrapping_add(1000 * layer as u64 + index as u64);
                slot.insert(algorithm.build::<B>(width, rank, seed, device)?);
            }
        }
        Ok(Self {
            estimators,
            batches: 0,
        })
    }

    /// Feeds `rows` (and the mask of the rows to keep) to the estimator of `site`, if there is
    /// one.
    pub(crate) fn update(
        &mut self,
        site: &K,
        rows: Tensor<B, 2>,
        keep: Option<Tensor<B, 1, Bool>>,
    ) -> Option<Result<()>> {
        self.estimators
            .get_mut(site)
            .map(|estimator| estimator.update(rows, keep))
    }

    /// Whether `site` has an estimator.
    pub(crate) fn contains(&self, site: &K) -> bool {
        self.estimators.contains_key(site)
    }

    /// Counts a batch as observed.
    pub(crate) fn batch_done(&mut self) {
        self.batches += 1;
    }

    /// Batches observed.
    pub(crate) fn batches(&self) -> usize {
        self.batches
    }

    /// Rows seen by the estimators (the same for every site).
    pub(crate) fn rows_seen(&self) -> usize {
        self.estimators
            .values()
            .next()
            .map(|e| e.rows_seen())
            .unwrap_or(0)
    }

    /// The sites with an estimator.
    pub(crate) fn sites(&self) -> Vec<K> {
        self.estimators.keys().copied().collect()
    }

    /// The fitted projector of every site; an error names the site with `describe`.
    pub(crate) fn finish(
        &self,
        describe: impl Fn(&K) -> String,
    ) -> Result<BTreeMap<K, FittedProjector<B>>> {
        self.estimators
            .iter()
            .map(|(site, e)| {
                e.finish()
                    .map(|f| (*site, f))
                    .map_err(|err| Error::Fit(format!("{}: {err}", describe(site))))
            })
            .collect()
    }
}

/// Attaches IPA adapters through `attach` (a model's `attach_adapters`, handed the projector
/// init of each path) with the projector `projector_of` finds for each adapted path. The
/// adapter must be IPA; a path without a projector is an error naming it.
pub(crate) fn attach_fitted<B: Backend>(
    adapter: &AdapterConfig,
    projector_of: impl Fn(&str) -> Option<Tensor<B, 2>>,
    attach: impl FnOnce(&mut dyn FnMut(&str) -> ProjectorInit<B>) -> Result<Vec<String>>,
) -> Result<Vec<String>> {
    if adapter.method != AdapterMethod::Ipa {
        return Err(Error::Config(
            "fitted projectors are for IPA adapters (method ipa)".into(),
        ));
    }
    let mut missing = None;
    let adapted = attach(&mut |path: &str| match projector_of(path) {
        Some(p) => ProjectorInit::Fitted(p),
        None => {
            missing.get_or_insert_with(|| path.to_string());
            ProjectorInit::Zeros
        }
    })?;
    if let Some(path) = missing {
        return Err(Error::Fit(format!("no fitted projector for {path}")));
    }
    Ok(adapted)
}

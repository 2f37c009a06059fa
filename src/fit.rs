//! The forward-only fit pass: run the frozen model over data, feed the inputs of every
//! targeted linear to a projector estimator, and install the fitted projectors as IPA
//! adapters.
//!
//! Linears that read the same input share one estimator: q/k/v read the attention input,
//! gate/up the MLP input. Padding positions never enter a statistic.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::adapter::{AdapterConfig, AdapterMethod, ProjectorInit};
use crate::models::{Decoder, ForwardOptions, Site, SiteKind};
use crate::projector::{FitAlgorithm, FittedProjector, ProjectorFit};
use crate::{Error, Result};

/// The site a target linear reads.
pub fn site_kind_of(target: &str) -> Result<SiteKind> {
    Ok(match target {
        "q_proj" | "k_proj" | "v_proj" => SiteKind::Attention,
        "o_proj" => SiteKind::AttentionOutput,
        "gate_proj" | "up_proj" => SiteKind::Mlp,
        "down_proj" => SiteKind::MlpDown,
        other => return Err(Error::Config(format!("unknown target module `{other}`"))),
    })
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

/// One estimator per distinct input site of the targeted linears.
pub struct DecoderFit<B: Backend> {
    estimators: BTreeMap<Site, Box<dyn ProjectorFit<B>>>,
    targets: Vec<String>,
    layers: Option<Vec<usize>>,
    batches: usize,
}

impl<B: Backend> DecoderFit<B> {
    /// Estimators of rank `rank` for `targets` (HF names) in all layers or only `layers`.
    pub fn new(
        model: &Decoder<B>,
        targets: &[String],
        layers: Option<&[usize]>,
        algorithm: &FitAlgorithm,
        rank: usize,
        seed: u64,
    ) -> Result<Self> {
        let c = &model.config;
        let device = model.model.embed_tokens.weight.device();
        let width = |kind: SiteKind| match kind {
            SiteKind::Attention | SiteKind::Mlp => c.hidden_size,
            SiteKind::AttentionOutput => c.num_attention_heads * c.head_dim,
            SiteKind::MlpDown => c.intermediate_size,
        };
        let mut estimators = BTreeMap::new();
        for layer in 0..c.num_hidden_layers {
            if layers.is_some_and(|l| !l.contains(&layer)) {
                continue;
            }
            for target in targets {
                let site = Site {
                    layer,
                    kind: site_kind_of(target)?,
                };
                if !estimators.contains_key(&site) {
                    let seed = seed.wrapping_add(1000 * layer as u64 + site.kind as u64);
                    estimators.insert(
                        site,
                        algorithm.build::<B>(width(site.kind), rank, seed, &device)?,
                    );
                }
            }
        }
        Ok(Self {
            estimators,
            targets: targets.to_vec(),
            layers: layers.map(<[usize]>::to_vec),
            batches: 0,
        })
    }

    /// Runs the model on one batch (`[batch, seq]` ids, optional padding mask) and updates
    /// every estimator with the real tokens' inputs. Run it with adapters disabled, or before
    /// any adapter is trained, so the statistics are those of the base model.
    pub fn observe(
        &mut self,
        model: &Decoder<B>,
        input_ids: Tensor<B, 2, Int>,
        mask: Option<Vec<bool>>,
    ) -> Result<()> {
        let [batch, seq] = input_ids.shape().dims();
        let device = input_ids.device();
        let mask = mask.unwrap_or_else(|| vec![true; batch * seq]);
        let options = ForwardOptions {
            position_ids: Some(positions_from_mask(&mask, batch, seq)),
            attention_mask: Some(mask),
        };
        let mut first_error: Option<Error> = None;
        let estimators = &mut self.estimators;
        model.forward_tap(
            input_ids,
            &options,
            &mut |site: Site, rows: Tensor<B, 2>, keep: &[bool]| {
                if first_error.is_some() {
                    return;
                }
                if let Some(estimator) = estimators.get_mut(&site) {
                    let keep = Tensor::<B, 1, Bool>::from_data(
                        TensorData::new(keep.to_vec(), [keep.len()]),
                        &device,
                    );
                    if let Err(e) = estimator.update(rows, Some(keep)) {
                        first_error = Some(Error::Fit(format!(
                            "layer {} {:?}: {e}",
                            site.layer, site.kind
                        )));
                    }
                }
            },
        )?;
        if let Some(e) = first_error {
            return Err(e);
        }
        self.batches += 1;
        Ok(())
    }

    /// Batches observed.
    pub fn batches(&self) -> usize {
        self.batches
    }

    /// Rows seen by the estimators (real tokens; the same for every site).
    pub fn rows_seen(&self) -> usize {
        self.estimators
            .values()
            .next()
            .map(|e| e.rows_seen())
            .unwrap_or(0)
    }

    /// The fitted projector of every site.
    pub fn finish(&self) -> Result<BTreeMap<Site, FittedProjector<B>>> {
        self.estimators
            .iter()
            .map(|(site, e)| {
                e.finish().map(|f| (*site, f)).map_err(|err| {
                    Error::Fit(format!("layer {} {:?}: {err}", site.layer, site.kind))
                })
            })
            .collect()
    }

    /// Attaches IPA adapters with the fitted projectors to the targeted linears.
    /// Returns the adapted paths.
    pub fn install(&self, model: &mut Decoder<B>, adapter: &AdapterConfig) -> Result<Vec<String>> {
        if adapter.method != AdapterMethod::Ipa {
            return Err(Error::Config(
                "fitted projectors are for IPA adapters (method ipa)".into(),
            ));
        }
        let fitted = self.finish()?;
        let mut missing = None;
        let adapted =
            model.attach_adapters(&self.targets, self.layers.as_deref(), adapter, |path| {
                let layer = path
                    .split('.')
                    .nth(2)
                    .and_then(|s| s.parse::<usize>().ok())
                    .unwrap_or(0);
                let name = path.rsplit('.').next().unwrap_or_default();
                match site_kind_of(name)
                    .ok()
                    .and_then(|kind| fitted.get(&Site { layer, kind }))
                {
                    Some(f) => ProjectorInit::Fitted(f.components.clone()),
                    None => {
                        missing = Some(path.to_string());
                        ProjectorInit::Zeros
                    }
                }
            })?;
        if let Some(path) = missing {
            return Err(Error::Fit(format!("no fitted projector for {path}")));
        }
        Ok(adapted)
    }
}

//! The decoders' fit pass: one estimator per distinct input site of the targeted linears,
//! fed by the frozen decoder's tapping forward.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use super::{attach_fitted, positions_from_mask, FitPassConfig, SiteEstimators};
use crate::adapter::AdapterConfig;
use crate::data::instruction::TokenizedExample;
use crate::models::{Decoder, ForwardOptions, Site, SiteKind};
use crate::projector::{FitAlgorithm, FittedProjector};
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

/// One estimator per distinct input site of the targeted linears.
pub struct DecoderFit<B: Backend> {
    estimators: SiteEstimators<Site, B>,
    targets: Vec<String>,
    layers: Option<Vec<usize>>,
}

fn describe_site(site: &Site) -> String {
    format!("layer {} {:?}", site.layer, site.kind)
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
        let mut sites = Vec::new();
        for layer in 0..c.num_hidden_layers {
            if layers.is_some_and(|l| !l.contains(&layer)) {
                continue;
            }
            for target in targets {
                let kind = site_kind_of(target)?;
                sites.push((Site { layer, kind }, layer, kind as usize, width(kind)));
            }
        }
        Ok(Self {
            estimators: SiteEstimators::new(sites, algorithm, rank, seed, &device)?,
            targets: targets.to_vec(),
            layers: layers.map(<[usize]>::to_vec),
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
                if first_error.is_some() || !estimators.contains(&site) {
                    return;
                }
                let keep = Tensor::<B, 1, Bool>::from_data(
                    TensorData::new(keep.to_vec(), [keep.len()]),
                    &device,
                );
                if let Some(Err(e)) = estimators.update(&site, rows, Some(keep)) {
                    first_error = Some(e.in_context(describe_site(&site)));
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

    /// Rows seen by the estimators (real tokens; the same for every site).
    pub fn rows_seen(&self) -> usize {
        self.estimators.rows_seen()
    }

    /// The fitted projector of every site.
    pub fn finish(&self) -> Result<BTreeMap<Site, FittedProjector<B>>> {
        self.estimators.finish(describe_site)
    }

    /// Attaches IPA adapters with the fitted projectors to the targeted linears.
    /// Returns the adapted paths.
    pub fn install(&self, model: &mut Decoder<B>, adapter: &AdapterConfig) -> Result<Vec<String>> {
        let projectors = self
            .finish()?
            .into_iter()
            .map(|(site, f)| (site, f.components))
            .collect();
        install_projectors(
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

/// Attaches IPA adapters to `targets` (in all layers or `layers`) with the projector of each
/// one's site (`[r, d]`); a target without a projector is an error naming it.
pub fn install_projectors<B: Backend>(
    model: &mut Decoder<B>,
    targets: &[String],
    layers: Option<&[usize]>,
    adapter: &AdapterConfig,
    projectors: &BTreeMap<Site, Tensor<B, 2>>,
) -> Result<Vec<String>> {
    attach_fitted(
        adapter,
        |path| {
            let layer = path.split('.').nth(2)?.parse::<usize>().ok()?;
            let kind = site_kind_of(path.rsplit('.').next()?).ok()?;
            projectors.get(&Site { layer, kind }).cloned()
        },
        |init| model.attach_adapters(targets, layers, adapter, init),
    )
}

/// Runs the frozen model (no adapters, no autodiff) over the first `fraction` of the seeded
/// shuffle of `examples` and fits one projector per distinct input site of `targets`.
/// Padding is excluded from the statistics.
pub fn fit_pass<B: Backend>(
    model: &Decoder<B>,
    examples: &[TokenizedExample],
    targets: &[String],
    config: &FitPassConfig,
    pad_id: u32,
    progress: bool,
) -> Result<DecoderFit<B>> {
    config.validate()?;
    if examples.is_empty() {
        return Err(Error::Config("the fit pass has no examples".into()));
    }
    let algorithm = FitAlgorithm::from_name(&config.algorithm)?;
    let mut fit = DecoderFit::new(model, targets, None, &algorithm, config.rank, config.seed)?;
    let order = crate::train::epoch_order(examples.len(), config.seed, 0);
    let take = super::fit_count(examples.len(), config.fraction);
    let device = model.model.embed_tokens.weight.device();
    let bar =
        crate::train::monitor::progress_bar(progress, take.div_ceil(config.batch_size), "fit");
    for chunk in order[..take].chunks(config.batch_size) {
        let items: Vec<TokenizedExample> = chunk.iter().map(|&i| examples[i].clone()).collect();
        let batch = crate::train::lm_batch::<B>(&items, pad_id, &device);
        fit.observe(model, batch.input_ids, batch.options.attention_mask)?;
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish();
    }
    Ok(fit)
}

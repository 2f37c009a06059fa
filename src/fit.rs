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
                    first_error = Some(Error::Fit(format!("{}: {e}", describe_site(&site))));
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

/// File name of saved projectors inside a fit output folder.
pub const PROJECTORS_FILE: &str = "projectors.safetensors";

fn site_name(site: &Site) -> String {
    let kind = match site.kind {
        SiteKind::Attention => "attention_input",
        SiteKind::AttentionOutput => "attention_output",
        SiteKind::Mlp => "mlp_input",
        SiteKind::MlpDown => "mlp_down_input",
    };
    format!("layers.{}.{kind}", site.layer)
}

fn parse_site(name: &str) -> Option<Site> {
    let rest = name.strip_prefix("layers.")?;
    let (layer, kind) = rest.split_once('.')?;
    let kind = match kind {
        "attention_input" => SiteKind::Attention,
        "attention_output" => SiteKind::AttentionOutput,
        "mlp_input" => SiteKind::Mlp,
        "mlp_down_input" => SiteKind::MlpDown,
        _ => return None,
    };
    Some(Site {
        layer: layer.parse().ok()?,
        kind,
    })
}

/// Saves fitted projectors (`P`, `[r, d]` per site, f32) to `dir/projectors.safetensors`,
/// with the explained-variance ratio of each in the file's metadata.
pub fn save_projectors<B: Backend>(
    fitted: &BTreeMap<Site, FittedProjector<B>>,
    dir: &std::path::Path,
) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let mut entries = Vec::new();
    let mut meta = std::collections::HashMap::new();
    for (site, f) in fitted {
        let [r, d] = f.components.shape().dims::<2>();
        let values = crate::projector::host::download_vec(f.components.clone());
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| (*v as f32).to_le_bytes())
            .collect();
        let ratio: f64 =
            f.explained_variance.iter().sum::<f64>() / f.total_variance.max(f64::MIN_POSITIVE);
        meta.insert(
            format!("{}.explained_variance_ratio", site_name(site)),
            format!("{ratio:.6}"),
        );
        meta.insert(
            format!("{}.n_samples", site_name(site)),
            f.n_samples.to_string(),
        );
        entries.push((site_name(site), vec![r, d], bytes));
    }
    let views = entries
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::State(format!("projector `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| Error::State(format!("serialising projectors: {e}")))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    crate::adapter::write_atomic(&dir.join(PROJECTORS_FILE), &bytes)
}

/// Loads projectors saved by [`save_projectors`] from `dir` (or the file itself).
pub fn load_projectors<B: Backend>(
    path: &std::path::Path,
    device: &B::Device,
) -> Result<BTreeMap<Site, Tensor<B, 2>>> {
    let file = if path.is_dir() {
        path.join(PROJECTORS_FILE)
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file).map_err(|e| Error::file(&file, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(&file, format!("not a safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let bad = |message: String| Error::Tensor {
            path: file.clone(),
            tensor: name.clone(),
            message,
        };
        let site = parse_site(&name)
            .ok_or_else(|| bad("not a projector name (layers.N.<site>)".into()))?;
        if view.dtype() != safetensors::Dtype::F32 || view.shape().len() != 2 {
            return Err(bad(format!(
                "expected a 2-d f32 tensor, found {:?} {:?}",
                view.dtype(),
                view.shape()
            )));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let shape = [view.shape()[0], view.shape()[1]];
        let dtype = Tensor::<B, 1>::empty([0], device).dtype();
        out.insert(
            site,
            Tensor::from_data(TensorData::new(values, shape).convert_dtype(dtype), device),
        );
    }
    Ok(out)
}

//! Forward-only fit algorithms for the IPA projector.
//!
//! Every algorithm implements [`ProjectorFit`]: feed batches of input rows (one row per token
//! or patch) with an optional mask that drops padding, then [`ProjectorFit::finish`] into a
//! [`FittedProjector`] holding the top-`r` principal directions as orthonormal rows.
//!
//! | algorithm | per batch | result |
//! |---|---|---|
//! | [`IncrementalPca`] exact | SVD of `(r + n + 1) × d` (scikit-learn's `IncrementalPCA`) | exact sequence of IPCA states |
//! | [`IncrementalPca`] randomized | `(r + p)`-column sketch + power iterations (the authors' `svd_lowrank`) | approximate |
//! | [`Gha`] | two GEMMs of `n × d × r` (Sanger's rule) | converges with enough data |
//! | [`CovariancePca`] | one `d × d × n` GEMM | exact PCA of all rows seen |
//!
//! Inputs are cast to f32 when the model runs in a half type, so statistics are accumulated in
//! f32 or better; means and variances are kept on the host in f64.

mod covariance;
pub mod device;
mod gha;
pub mod host;
mod ipca;
mod moments;

pub use covariance::CovariancePca;
pub use gha::{Gha, GhaConfig, GhaStepScale};
pub use ipca::{IncrementalPca, IpcaSolver};
pub use moments::RunningMoments;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, FloatDType, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A streaming estimator of the top principal directions of a layer's inputs.
pub trait ProjectorFit<B: Backend> {
    /// Updates the estimate with a batch `x` of shape `[n, d]`. With a mask (`[n]`, true = keep),
    /// only the kept rows count. A batch with NaN or infinite values in kept rows is refused and
    /// leaves the state unchanged.
    fn update(&mut self, x: Tensor<B, 2>, mask: Option<Tensor<B, 1, Bool>>) -> Result<()>;

    /// Rows counted so far.
    fn rows_seen(&self) -> usize;

    /// The projector fitted so far. Fails if fewer rows than the rank have been seen.
    fn finish(&self) -> Result<FittedProjector<B>>;
}

/// The result of a fit: the projector `P` and what is known of the spectrum.
#[derive(Clone, Debug)]
pub struct FittedProjector<B: Backend> {
    /// `P`, shape `[r, d]`, orthonormal rows in order of decreasing variance, each row's entry
    /// of largest magnitude positive (scikit-learn's sign rule).
    pub components: Tensor<B, 2>,
    /// Variance of the inputs along each component (scikit-learn's `explained_variance_`).
    pub explained_variance: Vec<f64>,
    /// Singular values of the centered data along each component (`singular_values_`).
    pub singular_values: Vec<f64>,
    /// Mean of the inputs (`mean_`).
    pub mean: Vec<f64>,
    /// Total variance of the inputs: the sum of per-feature variances (population, as
    /// scikit-learn's `var_.sum()`).
    pub total_variance: f64,
    /// Rows the fit saw.
    pub n_samples: usize,
}

impl<B: Backend> FittedProjector<B> {
    /// Share of the total variance each component explains (`explained_variance_ratio_`).
    pub fn explained_variance_ratio(&self) -> Vec<f64> {
        let total = self.total_variance * self.n_samples as f64;
        self.singular_values
            .iter()
            .map(|s| if total > 0.0 { s * s / total } else { 0.0 })
            .collect()
    }
}

/// Which fit algorithm to run, with its settings (what the CLI and configs name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "snake_case")]
pub enum FitAlgorithm {
    /// Incremental PCA with an exact SVD per batch (scikit-learn semantics).
    Ipca,
    /// Incremental PCA with a randomized SVD per batch; `oversample = 0, niter = 3` is the
    /// authors' `svd_lowrank(M, q=r, niter=3)`.
    Rsvd {
        /// Extra sketch columns beyond the rank.
        oversample: usize,
        /// Power iterations.
        niter: usize,
    },
    /// The generalized Hebbian algorithm.
    Gha(GhaConfig),
    /// Exact PCA from the streamed covariance.
    Covariance,
}

impl FitAlgorithm {
    /// A short name: `ipca`, `rsvd`, `gha` or `covariance`.
    pub fn name(&self) -> &'static str {
        match self {
            FitAlgorithm::Ipca => "ipca",
            FitAlgorithm::Rsvd { .. } => "rsvd",
            FitAlgorithm::Gha(_) => "gha",
            FitAlgorithm::Covariance => "covariance",
        }
    }

    /// Parses a name, optionally followed by settings: `gha:lr=0.5,decay=0,scale=largest`,
    /// `rsvd:niter=5,oversample=8`. Settings not given keep their defaults.
    pub fn from_name(spec: &str) -> Result<Self> {
        let (name, settings) = match spec.split_once(':') {
            Some((name, settings)) => (name, settings),
            None => (spec, ""),
        };
        let mut algorithm = match name {
            "ipca" => FitAlgorithm::Ipca,
            "rsvd" => FitAlgorithm::Rsvd {
                oversample: 0,
                niter: 3,
            },
            "gha" => FitAlgorithm::Gha(GhaConfig::default()),
            "covariance" | "cov" => FitAlgorithm::Covariance,
            other => {
                return Err(Error::Config(format!(
                    "unknown fit algorithm `{other}` (expected ipca, rsvd, gha or covariance)"
                )))
            }
        };
        for setting in settings.split(',').filter(|s| !s.is_empty()) {
            let Some((key, value)) = setting.split_once('=') else {
                return Err(Error::Config(format!(
                    "fit algorithm `{spec}`: setting `{setting}` is not key=value"
                )));
            };
            let bad = |what: &str| {
                Error::Config(format!(
                    "fit algorithm `{spec}`: {key}={value} is not {what}"
                ))
            };
            let number = || value.parse::<f64>().map_err(|_| bad("a number"));
            let count = || value.parse::<usize>().map_err(|_| bad("a whole number"));
            match (&mut algorithm, key) {
                (FitAlgorithm::Gha(c), "lr") => c.lr = number()?,
                (FitAlgorithm::Gha(c), "decay") => c.decay = number()?,
                (FitAlgorithm::Gha(c), "reorthonormalize") => {
                    c.reorthonormalize = value.parse().map_err(|_| bad("true or false"))?
                }
                (FitAlgorithm::Gha(c), "scale") => {
                    c.step_scale = match value {
                        "component" => GhaStepScale::Component,
                        "largest" => GhaStepScale::Largest,
                        _ => return Err(bad("component or largest")),
                    }
                }
                (FitAlgorithm::Rsvd { niter, .. }, "niter") => *niter = count()?,
                (FitAlgorithm::Rsvd { oversample, .. }, "oversample") => *oversample = count()?,
                _ => {
                    let known = match algorithm {
                        FitAlgorithm::Gha(_) => "lr, decay, scale, reorthonormalize",
                        FitAlgorithm::Rsvd { .. } => "niter, oversample",
                        _ => "none",
                    };
                    return Err(Error::Config(format!(
                        "fit algorithm `{spec}`: unknown setting `{key}` for {name} (known: {known})"
                    )));
                }
            }
        }
        Ok(algorithm)
    }

    /// Creates the estimator for inputs of width `d` and rank `rank`.
    pub fn build<B: Backend>(
        &self,
        d: usize,
        rank: usize,
        seed: u64,
        device: &B::Device,
    ) -> Result<Box<dyn ProjectorFit<B>>> {
        Ok(match self {
            FitAlgorithm::Ipca => {
                Box::new(IncrementalPca::new(d, rank, IpcaSolver::Exact, device)?)
            }
            FitAlgorithm::Rsvd { oversample, niter } => Box::new(IncrementalPca::new(
                d,
                rank,
                IpcaSolver::Randomized {
                    oversample: *oversample,
                    niter: *niter,
                    seed,
                },
                device,
            )?),
            FitAlgorithm::Gha(cfg) => Box::new(Gha::new(d, rank, cfg.clone(), seed, device)?),
            FitAlgorithm::Covariance => Box::new(CovariancePca::new(d, rank, device)?),
        })
    }
}

pub(crate) fn check_rank(d: usize, rank: usize) -> Result<()> {
    if rank == 0 || rank > d {
        return Err(Error::Config(format!(
            "projector rank {rank} must be between 1 and the input width {d}"
        )));
    }
    Ok(())
}

/// Column sums of `x` (`[n, d]` → `[1, d]`) as a product with a row of ones: one GEMM, which
/// every backend runs at full speed, where a strided reduction over rows may not.
pub(crate) fn column_sums<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let [n, _] = x.shape().dims();
    let ones = Tensor::<B, 2>::ones([1, n], &x.device()).cast(x.dtype());
    ones.matmul(x)
}

/// Validates a batch and keeps its unmasked rows, in f32 or better. `None` if no row is kept.
pub(crate) fn prepare_rows<B: Backend>(
    x: Tensor<B, 2>,
    mask: Option<Tensor<B, 1, Bool>>,
    d: usize,
) -> Result<Option<Tensor<B, 2>>> {
    let [n, width] = x.shape().dims();
    if width != d {
        return Err(Error::shape("fit batch", ["n", &d.to_string()], [n, width]));
    }
    let x = match x.dtype() {
        DType::F16 | DType::BF16 => x.cast(FloatDType::F32),
        _ => x,
    };
    let x = match mask {
        None => x,
        Some(mask) => {
            let [m] = mask.shape().dims();
            if m != n {
                return Err(Error::shape("fit mask", [n], [m]));
            }
            let keep: Vec<i64> = bool_values(mask)
                .into_iter()
                .enumerate()
                .filter_map(|(i, k)| k.then_some(i as i64))
                .collect();
            if keep.is_empty() {
                return Ok(None);
            }
            if keep.len() == n {
                x
            } else {
                let device = x.device();
                let idx = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(keep.clone(), [keep.len()]),
                    &device,
                );
                x.select(0, idx)
            }
        }
    };
    if n == 0 {
        return Ok(None);
    }
    // NaN and ±inf propagate into the sum: one reduction instead of an elementwise test, which
    // is far slower on some backends. A finite batch whose sum overflows is checked exactly.
    let total = host::download_vec(x.clone().sum())[0];
    if !total.is_finite() && !bool_values(x.clone().is_finite().all())[0] {
        return Err(Error::NonFinite("fit batch".into()));
    }
    Ok(Some(x))
}

fn bool_values<B: Backend, const D: usize>(t: Tensor<B, D, Bool>) -> Vec<bool> {
    t.int()
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("converted to i64")
        .into_iter()
        .map(|v| v != 0)
        .collect()
}

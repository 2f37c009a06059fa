//! Incremental PCA (Ross et al. 2008), as scikit-learn's `IncrementalPCA.partial_fit`.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

use super::device::randomized_svd;
use super::host;
use super::moments::{BatchMoments, RunningMoments};
use super::{check_rank, prepare_rows, FittedProjector, ProjectorFit};
use crate::{Error, Result};

/// How each batch's SVD is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpcaSolver {
    /// The exact top singular triplets of the stacked matrix, on the host in f64 (scikit-learn
    /// takes a full SVD; we eigendecompose the smaller Gram matrix, which gives the same top
    /// triplets in f64). Costs `O(m·d·min(m, d))` per batch: the reference, for moderate widths.
    Exact,
    /// A randomized SVD on the device with `rank + oversample` sketch columns and `niter` power
    /// iterations. `oversample = 0, niter = 3` is the authors' `svd_lowrank(M, q=r, niter=3)`.
    Randomized {
        /// Extra sketch columns beyond the rank.
        oversample: usize,
        /// Power iterations.
        niter: usize,
        /// Seed of the Gaussian sketches (each batch uses `seed + batch index`).
        seed: u64,
    },
}

/// Incremental PCA. Each update stacks the previous components scaled by their singular
/// values, the centered batch, and a mean-correction row, and keeps the top `rank` right
/// singular vectors of that matrix:
///
/// `M = [diag(S)·V ; X − x̄ ; √(N·n/(N+n))·(μ − x̄)]`
///
/// **A first batch of fewer rows than `rank`** is accepted, where scikit-learn refuses it
/// (`n_components must be less or equal to the batch number of samples` on the first
/// `partial_fit`): with padding removed, a batch's real rows are not the user's to choose.
/// Nothing is truncated while fewer than `rank` directions exist, so after the batches that
/// bring the count to `rank` the state equals one update on their concatenation — what
/// scikit-learn gives when those batches come as one. [`ProjectorFit::finish`] needs more than
/// `rank` rows in all.
pub struct IncrementalPca<B: Backend> {
    d: usize,
    rank: usize,
    solver: IpcaSolver,
    batches: u64,
    moments: RunningMoments,
    /// `[k, d]` with `k ≤ rank` (fewer while fewer rows than the rank have been seen).
    components: Option<Tensor<B, 2>>,
    singular_values: Vec<f64>,
    device: B::Device,
}

impl<B: Backend> IncrementalPca<B> {
    /// A new estimator for inputs of width `d`.
    pub fn new(d: usize, rank: usize, solver: IpcaSolver, device: &B::Device) -> Result<Self> {
        check_rank(d, rank)?;
        Ok(Self {
            d,
            rank,
            solver,
            batches: 0,
            moments: RunningMoments::default(),
            components: None,
            singular_values: Vec::new(),
            device: device.clone(),
        })
    }

    /// The running statistics (mean, variance) of the rows seen.
    pub fn moments(&self) -> &RunningMoments {
        &self.moments
    }

    fn stacked(&self, batch: &BatchMoments<B>) -> Tensor<B, 2> {
        let Some(components) = &self.components else {
            return batch.centered.clone();
        };
        let k = self.singular_values.len();
        let scales = host::upload_vec::<B, 2>(self.singular_values.clone(), [k, 1], &self.device);
        let (n_old, n_new) = (self.moments.n as f64, batch.n as f64);
        let factor = (n_old * n_new / (n_old + n_new)).sqrt();
        let correction: Vec<f64> = self
            .moments
            .mean
            .iter()
            .zip(&batch.mean_host)
            .map(|(mu, xbar)| factor * (mu - xbar))
            .collect();
        let correction = host::upload_vec::<B, 2>(correction, [1, self.d], &self.device);
        Tensor::cat(
            vec![
                components.clone() * scales,
                batch.centered.clone(),
                correction,
            ],
            0,
        )
    }

    fn decompose(&self, m: Tensor<B, 2>) -> Result<(Vec<f64>, Tensor<B, 2>)> {
        match self.solver {
            IpcaSolver::Exact => {
                let (s, vt) = host::top_right_singular(&host::download(m), self.rank)?;
                Ok((s, host::upload(&vt, &self.device)))
            }
            IpcaSolver::Randomized {
                oversample,
                niter,
                seed,
            } => randomized_svd(
                m,
                self.rank,
                self.rank + oversample,
                niter,
                seed.wrapping_add(self.batches),
            ),
        }
    }
}

impl<B: Backend> ProjectorFit<B> for IncrementalPca<B> {
    fn update(&mut self, x: Tensor<B, 2>, mask: Option<Tensor<B, 1, Bool>>) -> Result<()> {
        let Some(rows) = prepare_rows(x, mask, self.d)? else {
            return Ok(());
        };
        let batch = BatchMoments::of(rows);
        let stacked = self.stacked(&batch);
        let (s, vt) = self.decompose(stacked)?;
        // Only now, with every fallible step done, does the state change.
        self.moments
            .merge(batch.n, &batch.mean_host, &batch.m2_host);
        self.components = Some(vt);
        self.singular_values = s;
        self.batches += 1;
        Ok(())
    }

    fn rows_seen(&self) -> usize {
        self.moments.n
    }

    fn finish(&self) -> Result<FittedProjector<B>> {
        let n = self.moments.n;
        let components = match &self.components {
            Some(c) if n > self.rank && self.singular_values.len() == self.rank => c.clone(),
            _ => {
                return Err(Error::Fit(format!(
                    "incremental PCA saw {n} rows; at least {} are needed for rank {}",
                    self.rank + 1,
                    self.rank
                )))
            }
        };
        let mut vt = host::download(components);
        host::flip_rows_by_max_abs(&mut vt);
        let denom = (n as f64 - 1.0).max(1.0);
        Ok(FittedProjector {
            components: host::upload(&vt, &self.device),
            explained_variance: self.singular_values.iter().map(|s| s * s / denom).collect(),
            singular_values: self.singular_values.clone(),
            mean: self.moments.mean.clone(),
            total_variance: self.moments.total_variance(),
            n_samples: n,
        })
    }
}

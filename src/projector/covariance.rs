//! Exact PCA from the streamed covariance: one GEMM per batch, one eigensolve at the end.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};
use faer::Mat;

use super::device::{gaussian, orthonormalize_columns};
use super::host;
use super::{check_rank, column_sums, prepare_rows, FittedProjector, ProjectorFit};
use crate::{Error, Result};

/// Widths up to this are decomposed on the host with a full symmetric eigensolver; wider
/// covariances use subspace iteration on the device.
pub const HOST_EIGEN_MAX_WIDTH: usize = 1024;

/// Streams `Σ(x−c)` and `Σ(x−c)(x−c)ᵀ` with a fixed shift `c` (the first batch's mean, which
/// avoids the cancellation of `E[xxᵀ] − μμᵀ`), then takes the top eigenvectors of the covariance
/// once. Memory: one `d × d` matrix on the device (64 MiB in f32 at d = 4096).
pub struct CovariancePca<B: Backend> {
    d: usize,
    rank: usize,
    shift: Option<Tensor<B, 2>>,
    shift_host: Vec<f64>,
    n: usize,
    sum: Tensor<B, 2>,
    scatter: Tensor<B, 2>,
    host_eigen_max_width: usize,
    device: B::Device,
}

impl<B: Backend> CovariancePca<B> {
    /// A new estimator for inputs of width `d`.
    pub fn new(d: usize, rank: usize, device: &B::Device) -> Result<Self> {
        check_rank(d, rank)?;
        Ok(Self {
            d,
            rank,
            shift: None,
            shift_host: vec![0.0; d],
            n: 0,
            sum: Tensor::zeros([1, d], device),
            scatter: Tensor::zeros([d, d], device),
            host_eigen_max_width: HOST_EIGEN_MAX_WIDTH,
            device: device.clone(),
        })
    }

    /// Widths up to `width` use the host eigensolver at `finish`; wider ones use subspace
    /// iteration on the device (default [`HOST_EIGEN_MAX_WIDTH`]).
    pub fn with_host_eigen_max_width(mut self, width: usize) -> Self {
        self.host_eigen_max_width = width;
        self
    }

    /// The sample covariance of the rows seen, `[d, d]` on the device, and the mean.
    pub fn covariance(&self) -> Result<(Tensor<B, 2>, Vec<f64>)> {
        if self.n < 2 {
            return Err(Error::Fit(format!(
                "covariance needs at least 2 rows, saw {}",
                self.n
            )));
        }
        let n = self.n as f64;
        let cov = (self.scatter.clone()
            - self.sum.clone().transpose().matmul(self.sum.clone()) / n)
            / (n - 1.0);
        let sum = host::download_vec(self.sum.clone());
        let mean = self
            .shift_host
            .iter()
            .zip(sum)
            .map(|(c, s)| c + s / n)
            .collect();
        Ok((cov, mean))
    }
}

impl<B: Backend> ProjectorFit<B> for CovariancePca<B> {
    fn update(&mut self, x: Tensor<B, 2>, mask: Option<Tensor<B, 1, Bool>>) -> Result<()> {
        let Some(rows) = prepare_rows(x, mask, self.d)? else {
            return Ok(());
        };
        let [n, _] = rows.shape().dims();
        let shift = match &self.shift {
            Some(s) => s.clone(),
            None => {
                let s = column_sums(rows.clone()) / n as f64;
                self.shift_host = host::download_vec(s.clone());
                self.shift = Some(s.clone());
                s
            }
        };
        let xs = rows - shift;
        self.sum = self.sum.clone() + column_sums(xs.clone());
        self.scatter = self.scatter.clone() + xs.clone().transpose().matmul(xs);
        self.n += n;
        Ok(())
    }

    fn rows_seen(&self) -> usize {
        self.n
    }

    fn finish(&self) -> Result<FittedProjector<B>> {
        if self.n <= self.rank {
            return Err(Error::Fit(format!(
                "covariance PCA saw {} rows; at least {} are needed for rank {}",
                self.n,
                self.rank + 1,
                self.rank
            )));
        }
        let (cov, mean) = self.covariance()?;
        let trace_sample: f64 =
            host::download_vec(burn::tensor::linalg::trace::<B, 2, 1>(cov.clone()))[0];
        let (values, mut vt) = if self.d <= self.host_eigen_max_width {
            let (values, vectors) = host::symmetric_eigen_desc(&host::download(cov))?;
            let vt = Mat::from_fn(self.rank, self.d, |i, j| vectors[(j, i)]);
            (values[..self.rank].to_vec(), vt)
        } else {
            top_eigen_subspace(cov, self.rank)?
        };
        host::flip_rows_by_max_abs(&mut vt);
        let n = self.n as f64;
        let explained: Vec<f64> = values.iter().map(|v| v.max(0.0)).collect();
        Ok(FittedProjector {
            components: host::upload(&vt, &self.device),
            singular_values: explained.iter().map(|v| (v * (n - 1.0)).sqrt()).collect(),
            explained_variance: explained,
            mean,
            total_variance: trace_sample * (n - 1.0) / n,
            n_samples: self.n,
        })
    }
}

/// Top-`rank` eigenpairs of a symmetric PSD matrix by block subspace iteration with
/// Rayleigh–Ritz on the device (block size `2·rank`, at least `rank + 8`). The error in the
/// subspace shrinks by `ρ = λ_q / λ_rank` per iteration; we iterate until `√d · ρᵏ` is below
/// the float type's resolution (1e-6 in f32, 1e-12 in f64), at most 1000 times. One `d × d × q`
/// product per iteration.
fn top_eigen_subspace<B: Backend>(c: Tensor<B, 2>, rank: usize) -> Result<(Vec<f64>, Mat<f64>)> {
    let device = c.device();
    let [d, _] = c.shape().dims();
    let q = (2 * rank).max(rank + 8).min(d);
    let tolerance = match c.dtype() {
        burn::tensor::DType::F64 => 1e-12,
        _ => 1e-6,
    };
    let mut basis = orthonormalize_columns(gaussian::<B>(d, q, 0x5eed, &device))?;
    let mut error_bound = (d as f64).sqrt();
    for _ in 0..1000 {
        let image = c.clone().matmul(basis.clone()); // C·Q, [d, q]
        let ritz = host::download(basis.clone().transpose().matmul(image.clone()));
        let (values, _) = host::symmetric_eigen_desc(&ritz)?;
        basis = orthonormalize_columns(image)?;
        let rate = if values[rank - 1] > 0.0 {
            (values[q - 1].max(0.0) / values[rank - 1]).min(1.0)
        } else {
            0.0 // rank-deficient: the subspace is exact already
        };
        error_bound *= rate;
        if error_bound < tolerance {
            break;
        }
    }
    let ritz = host::download(basis.clone().transpose().matmul(c.matmul(basis.clone())));
    let (values, vectors) = host::symmetric_eigen_desc(&ritz)?;
    let w = Mat::from_fn(q, rank, |i, j| vectors[(i, j)]);
    let v = host::download(basis.matmul(host::upload(&w, &device))); // [d, rank]
    let vt = Mat::from_fn(rank, d, |i, j| v[(j, i)]);
    Ok((values[..rank].to_vec(), vt))
}

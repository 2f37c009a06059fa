//! Running per-feature mean and variance, merged batch by batch (Chan, Golub & LeVeque 1979),
//! on the host in f64.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{column_sums, host};

/// Per-feature count, mean and sum of squared deviations of all rows seen.
#[derive(Clone, Debug, Default)]
pub struct RunningMoments {
    /// Rows seen.
    pub n: usize,
    /// Per-feature mean.
    pub mean: Vec<f64>,
    /// Per-feature sum of squared deviations from the mean.
    pub m2: Vec<f64>,
}

/// The statistics of one batch, computed on the device.
pub struct BatchMoments<B: Backend> {
    /// Rows in the batch.
    pub n: usize,
    /// The batch centered on its own mean, `[n, d]`.
    pub centered: Tensor<B, 2>,
    /// The batch mean on the host.
    pub mean_host: Vec<f64>,
    /// Per-feature sum of squared deviations from the batch mean, on the host.
    pub m2_host: Vec<f64>,
}

impl<B: Backend> BatchMoments<B> {
    /// Computes the batch mean, centered rows and squared deviations of `x` (`[n, d]`).
    pub fn of(x: Tensor<B, 2>) -> Self {
        let [n, _] = x.shape().dims();
        let mean = column_sums(x.clone()) / n as f64;
        let centered = x - mean.clone();
        let m2 = column_sums(centered.clone().square());
        Self {
            n,
            mean_host: host::download_vec(mean.clone()),
            m2_host: host::download_vec(m2),
            centered,
        }
    }
}

impl RunningMoments {
    /// Merges a batch's statistics.
    pub fn merge(&mut self, n: usize, mean: &[f64], m2: &[f64]) {
        if self.n == 0 {
            self.n = n;
            self.mean = mean.to_vec();
            self.m2 = m2.to_vec();
            return;
        }
        let (na, nb) = (self.n as f64, n as f64);
        let total = na + nb;
        for j in 0..self.mean.len() {
            let delta = mean[j] - self.mean[j];
            self.mean[j] += delta * nb / total;
            self.m2[j] += m2[j] + delta * delta * na * nb / total;
        }
        self.n += n;
    }

    /// Per-feature population variance (scikit-learn's `var_`).
    pub fn variance(&self) -> Vec<f64> {
        let n = self.n.max(1) as f64;
        self.m2.iter().map(|v| v / n).collect()
    }

    /// Sum of the per-feature population variances.
    pub fn total_variance(&self) -> f64 {
        self.variance().iter().sum()
    }
}

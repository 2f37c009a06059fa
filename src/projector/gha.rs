//! The generalized Hebbian algorithm (Sanger 1989) in mini-batches.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};
use faer::{Mat, Side};
use serde::{Deserialize, Serialize};

use super::device::{gaussian, orthonormalize_columns};
use super::host;
use super::moments::{BatchMoments, RunningMoments};
use super::{check_rank, prepare_rows, FittedProjector, ProjectorFit};
use crate::{Error, Result};

/// How [`Gha`] scales its step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GhaStepScale {
    /// Row `i` of `P` steps by `lr / λ̂ᵢ`, its own variance estimate: every component moves at
    /// the same relative speed, so the small components converge as fast as the first (with
    /// re-orthonormalisation each step is a stochastic subspace iteration). The default.
    Component,
    /// Every row steps by `lr / λ̂₁`, the largest variance (Sanger's rule with a scale-free
    /// step): component `i` moves `λᵢ/λ₁` times slower than the first, so a slowly decaying
    /// spectrum needs many passes.
    Largest,
}

/// Settings of [`Gha`].
///
/// The defaults are chosen to converge within one pass over a layer's inputs. Measured on
/// SmolLM2-135M-Instruct (attention and down-projection inputs of layers 2, 15 and 28, 9075
/// tokens of WordNet glosses, batches of 512 rows, ranks 16 and 32), one pass captures
/// 97.4–99.98% of the variance the exact top-r subspace holds, against 73.6–99.9% for Sanger's
/// rule at `lr / λ₁` (which needs about 20 passes to match); the exact fit on half the tokens
/// captures 99.1–100%.
/// (The largest principal angle is not a usable yardstick there: `λᵣ/λᵣ₊₁` is 1.02–1.09, and
/// the exact fits on half the tokens and on all of them already differ by 13–81°.)
/// The authors' code steps by a fixed `1e-3` without re-orthonormalisation; its scale depends
/// on the inputs' magnitude, which is why this one is relative.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GhaConfig {
    /// Step size, relative to the variance named by `step_scale`: stable for `lr ≤ 1`.
    pub lr: f64,
    /// Re-orthonormalise the rows of `P` after each step (order-preserving, Gram–Schmidt).
    pub reorthonormalize: bool,
    /// Which variance normalises the step.
    #[serde(default = "default_step_scale")]
    pub step_scale: GhaStepScale,
    /// Step `t` (0-based) uses `lr / (1 + decay · t)`: early batches move `P` far, later ones
    /// average out the noise of single batches. 0 keeps the step constant (for tracking
    /// inputs that drift, as online fits may want).
    #[serde(default)]
    pub decay: f64,
}

fn default_step_scale() -> GhaStepScale {
    GhaStepScale::Largest
}

impl Default for GhaConfig {
    fn default() -> Self {
        Self {
            lr: 1.0,
            reorthonormalize: true,
            step_scale: GhaStepScale::Component,
            decay: 0.1,
        }
    }
}

/// Sanger's rule on centered inputs `x − μ` (μ the running mean), with `y = P(x − μ)`:
/// `ΔP = η (yᵀ(x−μ)/n − tril(yᵀy/n) P)`. The rows of `P` converge to the top principal
/// directions in order. The explained variances it reports are running estimates (an average
/// of `yᵢ²` over recent batches), not exact.
pub struct Gha<B: Backend> {
    d: usize,
    rank: usize,
    config: GhaConfig,
    /// `[rank, d]`.
    p: Tensor<B, 2>,
    moments: RunningMoments,
    /// Upper estimate of the largest eigenvalue, for the step size.
    lambda_max: f64,
    variance_estimate: Vec<f64>,
    /// Updates applied so far (for the step decay).
    steps: usize,
    device: B::Device,
}

impl<B: Backend> Gha<B> {
    /// A new estimator starting from a random orthonormal `P` drawn from `seed`.
    pub fn new(
        d: usize,
        rank: usize,
        config: GhaConfig,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self> {
        check_rank(d, rank)?;
        if !(config.lr > 0.0 && config.lr.is_finite()) {
            return Err(Error::Config(format!(
                "GHA learning rate {} must be positive",
                config.lr
            )));
        }
        if !(config.decay >= 0.0 && config.decay.is_finite()) {
            return Err(Error::Config(format!(
                "GHA step decay {} must be zero or positive",
                config.decay
            )));
        }
        let p = orthonormalize_columns(gaussian::<B>(d, rank, seed, device))?.transpose();
        Ok(Self {
            d,
            rank,
            config,
            p,
            moments: RunningMoments::default(),
            lambda_max: 0.0,
            variance_estimate: vec![0.0; rank],
            steps: 0,
            device: device.clone(),
        })
    }

    /// Largest eigenvalue of the batch covariance by a few power iterations (device GEMVs).
    fn power_estimate(&self, xc: &Tensor<B, 2>, n: usize) -> f64 {
        let mut v = gaussian::<B>(self.d, 1, 7, &self.device);
        let mut lambda = 0.0;
        for _ in 0..20 {
            // (uᵀ·X)ᵀ rather than Xᵀ·u: a transposed tall left operand is slow on some backends.
            let u = xc.clone().matmul(v.clone());
            let w = u.transpose().matmul(xc.clone()).transpose() / n as f64;
            let norm = host::download_vec(w.clone().square().sum())[0].sqrt();
            if norm == 0.0 {
                return 0.0;
            }
            lambda = norm;
            v = w / norm;
        }
        lambda
    }
}

impl<B: Backend> ProjectorFit<B> for Gha<B> {
    fn update(&mut self, x: Tensor<B, 2>, mask: Option<Tensor<B, 1, Bool>>) -> Result<()> {
        let Some(rows) = prepare_rows(x, mask, self.d)? else {
            return Ok(());
        };
        let batch = BatchMoments::of(rows.clone());
        let mut moments = self.moments.clone();
        moments.merge(batch.n, &batch.mean_host, &batch.m2_host);
        let mu = host::upload_vec::<B, 2>(moments.mean.clone(), [1, self.d], &self.device);
        let xc = rows - mu;
        let n = batch.n as f64;

        let y = xc.clone().matmul(self.p.clone().transpose()); // [n, r]
        let hebb = y.clone().transpose().matmul(xc.clone()) / n; // P C, [r, d]
        let yy = y.clone().transpose().matmul(y) / n; // P C Pᵀ, [r, r]
        let yy_host = host::download(yy.clone());

        let mut lambda_max = self.lambda_max;
        if lambda_max == 0.0 {
            lambda_max = self.power_estimate(&xc, batch.n);
        }
        // ‖(P C)ᵢ‖ ≥ λ̂ᵢ bounds each row's scale from below: keep the step safe as the estimates
        // improve.
        let row_norms: Vec<f64> = host::download_vec(hebb.clone().square().sum_dim(1))
            .into_iter()
            .map(f64::sqrt)
            .collect();
        for v in &row_norms {
            lambda_max = lambda_max.max(*v);
        }
        if lambda_max <= 0.0 {
            return Err(Error::Fit("GHA batch has zero variance".into()));
        }
        let lr = self.config.lr / (1.0 + self.config.decay * self.steps as f64);
        let delta = hebb - yy.tril(0).matmul(self.p.clone());
        let p = match self.config.step_scale {
            GhaStepScale::Largest => self.p.clone() + delta * (lr / lambda_max),
            GhaStepScale::Component => {
                // A row with no variance in this batch would divide by ~0: it steps as the
                // largest does instead.
                let floor = lambda_max * 1e-12;
                let steps: Vec<f64> = (0..self.rank)
                    .map(|i| {
                        let scale = yy_host[(i, i)].max(row_norms[i]);
                        if scale > floor {
                            lr / scale
                        } else {
                            lr / lambda_max
                        }
                    })
                    .collect();
                let steps = host::upload_vec::<B, 2>(steps, [self.rank, 1], &self.device);
                self.p.clone() + delta * steps
            }
        };
        let p = if self.config.reorthonormalize {
            orthonormalize_rows_in_order(p)?
        } else {
            p
        };

        let beta = if self.moments.n == 0 { 1.0 } else { 0.2 };
        for i in 0..self.rank {
            self.variance_estimate[i] =
                (1.0 - beta) * self.variance_estimate[i] + beta * yy_host[(i, i)];
        }
        self.p = p;
        self.moments = moments;
        self.lambda_max = lambda_max;
        self.steps += 1;
        Ok(())
    }

    fn rows_seen(&self) -> usize {
        self.moments.n
    }

    fn finish(&self) -> Result<FittedProjector<B>> {
        let n = self.moments.n;
        if n <= self.rank {
            return Err(Error::Fit(format!(
                "GHA saw {n} rows; at least {} are needed for rank {}",
                self.rank + 1,
                self.rank
            )));
        }
        let mut vt = host::download(orthonormalize_rows_in_order(self.p.clone())?);
        host::flip_rows_by_max_abs(&mut vt);
        let denom = (n as f64 - 1.0).max(1.0);
        // Sample variance along each component (population estimate rescaled like sklearn).
        let explained: Vec<f64> = self
            .variance_estimate
            .iter()
            .map(|v| v * n as f64 / denom)
            .collect();
        Ok(FittedProjector {
            components: host::upload(&vt, &self.device),
            singular_values: explained.iter().map(|v| (v * denom).sqrt()).collect(),
            explained_variance: explained,
            mean: self.moments.mean.clone(),
            total_variance: self.moments.total_variance(),
            n_samples: n,
        })
    }
}

/// Orthonormalises the rows of `p` (`[r, d]`) keeping their order: with `P Pᵀ = L Lᵀ`
/// (Cholesky on the host), `Q = L⁻¹ P`, so row `i` of `Q` depends only on rows `≤ i` of `P`,
/// as in Gram–Schmidt.
pub fn orthonormalize_rows_in_order<B: Backend>(p: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
    let device = p.device();
    let gram = host::download(p.clone().matmul(p.clone().transpose()));
    let r = gram.nrows();
    let sym = Mat::from_fn(r, r, |i, j| 0.5 * (gram[(i, j)] + gram[(j, i)]));
    let llt = sym
        .llt(Side::Lower)
        .map_err(|e| Error::LinearAlgebra(format!("GHA re-orthonormalisation: {e:?}")))?;
    let l_inv = llt.L().to_owned();
    // Invert the lower-triangular factor by forward substitution.
    let mut inv = Mat::<f64>::zeros(r, r);
    for col in 0..r {
        for i in col..r {
            let mut acc = if i == col { 1.0 } else { 0.0 };
            for k in col..i {
                acc -= l_inv[(i, k)] * inv[(k, col)];
            }
            inv[(i, col)] = acc / l_inv[(i, i)];
        }
    }
    Ok(host::upload(&inv, &device).matmul(p))
}

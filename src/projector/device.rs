//! Device-resident building blocks: orthonormalisation and a randomized truncated SVD.
//!
//! Every product with a tall matrix runs on the device; the host only sees `k × k` Gram
//! matrices and one `m × k` sketch.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use faer::Mat;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use super::host;
use crate::Result;

/// Orthonormalises the columns of `y` (`[m, k]`) by SVQB (Stathopoulos & Wu 2002): with
/// `G = YᵀY = U Λ Uᵀ` on the host, `Q = Y U Λ^{-1/2}`. Done twice, which fixes the loss of
/// orthogonality of one pass on ill-conditioned `Y`. Directions with negligible weight
/// (rank deficiency) come out as zero columns rather than noise.
pub fn orthonormalize_columns<B: Backend>(y: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
    let q = svqb_pass(y)?;
    svqb_pass(q)
}

fn svqb_pass<B: Backend>(y: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
    let device = y.device();
    let gram = host::download(y.clone().transpose().matmul(y.clone()));
    let (values, vectors) = host::symmetric_eigen_desc(&gram)?;
    let k = values.len();
    let top = values.first().copied().unwrap_or(0.0).max(0.0);
    // Below this relative level a direction is numerical noise of a rank-deficient Y.
    let floor = top * 1e-12 * k as f64;
    let transform = Mat::from_fn(k, k, |i, j| {
        let l = values[j];
        if l > floor && l > 0.0 {
            vectors[(i, j)] / l.sqrt()
        } else {
            0.0
        }
    });
    Ok(y.matmul(host::upload(&transform, &device)))
}

/// A Gaussian `[rows, cols]` matrix drawn on the host from `seed`, so results are identical on
/// every backend.
pub fn gaussian<B: Backend>(
    rows: usize,
    cols: usize,
    seed: u64,
    device: &B::Device,
) -> Tensor<B, 2> {
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f64> = (0..rows * cols)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    host::upload_vec(values, [rows, cols], device)
}

/// Randomized truncated SVD of `m` (`[rows, d]`) keeping `k` triplets, in the manner of
/// `torch.svd_lowrank(M, q, niter)` (Halko, Martinsson & Tropp 2011): a `q`-column sketch of
/// the row space, `niter` power iterations, then the exact SVD of the small `rows × q` matrix
/// `M Q` on the host. Returns `(S, Vᵀ)` with `Vᵀ` of shape `[min(k, q), d]`.
pub fn randomized_svd<B: Backend>(
    m: Tensor<B, 2>,
    k: usize,
    q: usize,
    niter: usize,
    seed: u64,
) -> Result<(Vec<f64>, Tensor<B, 2>)> {
    let device = m.device();
    let [rows, d] = m.shape().dims();
    let q = q.min(d).min(rows.max(1));
    // Mᵀ·L is computed as (Lᵀ·M)ᵀ: a transposed tall left operand is slow on some backends.
    let left_times = |left: Tensor<B, 2>| left.transpose().matmul(m.clone()).transpose();
    let omega = gaussian::<B>(rows, q, seed, &device);
    let mut basis = orthonormalize_columns(left_times(omega))?; // [d, q]
    for _ in 0..niter {
        let left = orthonormalize_columns(m.clone().matmul(basis))?; // [rows, q]
        basis = orthonormalize_columns(left_times(left))?; // [d, q]
    }
    let sketch = host::download(m.matmul(basis.clone())); // [rows, q]
    let (_u, s, w) = host::thin_svd(&sketch)?; // sketch = U S Wᵀ
    let keep = k.min(s.len());
    let w_top = Mat::from_fn(w.nrows(), keep, |i, j| w[(i, j)]);
    let vt = basis.matmul(host::upload(&w_top, &device)).transpose(); // [keep, d]
    Ok((s[..keep].to_vec(), vt))
}

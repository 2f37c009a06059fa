//! Host-side linear algebra on small matrices (f64, with faer), and device ↔ host transfers.
//!
//! The fit algorithms keep every O(n·d) operation on the device; only matrices of size
//! `(r+p)²`, `m × (r+p)` or one `d × d` come here.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use faer::{Mat, Side};

use crate::{Error, Result};

/// Copies a device matrix to the host in f64.
pub fn download<B: Backend>(t: Tensor<B, 2>) -> Mat<f64> {
    let [rows, cols] = t.shape().dims();
    let values = download_vec(t);
    Mat::from_fn(rows, cols, |i, j| values[i * cols + j])
}

/// Copies any device tensor to a flat host vector in f64 (row-major).
pub fn download_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("data converted to f64 holds f64 values")
}

/// Copies a host matrix to the device, in the backend's float type.
pub fn upload<B: Backend>(m: &Mat<f64>, device: &B::Device) -> Tensor<B, 2> {
    let (rows, cols) = (m.nrows(), m.ncols());
    let mut values = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        for j in 0..cols {
            values.push(m[(i, j)]);
        }
    }
    upload_vec(values, [rows, cols], device)
}

/// Copies a flat row-major host vector to the device.
pub fn upload_vec<B: Backend, const D: usize>(
    values: Vec<f64>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    let dtype = Tensor::<B, 1>::empty([0], device).dtype();
    Tensor::from_data(TensorData::new(values, shape).convert_dtype(dtype), device)
}

/// Eigen-decomposition of a symmetric matrix, eigenvalues in **descending** order with the
/// eigenvectors as the matching columns.
pub fn symmetric_eigen_desc(m: &Mat<f64>) -> Result<(Vec<f64>, Mat<f64>)> {
    let n = m.nrows();
    // Symmetrise: device products are symmetric only up to rounding.
    let sym = Mat::from_fn(n, n, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    let evd = sym
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::LinearAlgebra(format!("symmetric eigendecomposition failed: {e:?}")))?;
    let s = evd.S();
    let u = evd.U();
    let values: Vec<f64> = (0..n).rev().map(|i| s[i]).collect();
    let vectors = Mat::from_fn(n, n, |i, j| u[(i, n - 1 - j)]);
    Ok((values, vectors))
}

/// Thin SVD `M = U diag(S) Vᵀ`, singular values descending. Returns `(U, S, V)`.
pub fn thin_svd(m: &Mat<f64>) -> Result<(Mat<f64>, Vec<f64>, Mat<f64>)> {
    let svd = m
        .thin_svd()
        .map_err(|e| Error::LinearAlgebra(format!("SVD failed: {e:?}")))?;
    let k = m.nrows().min(m.ncols());
    let s: Vec<f64> = (0..k).map(|i| svd.S()[i]).collect();
    Ok((svd.U().to_owned(), s, svd.V().to_owned()))
}

/// The top `k` singular values and right singular vectors (`Vᵀ`, `[k', d]` with
/// `k' = min(k, rank)`) of `m` (`[rows, d]`), from the eigendecomposition of the smaller Gram
/// matrix in f64: `MᵀM = V S² Vᵀ`, or `MMᵀ = U S² Uᵀ` and `Vᵀ = S⁻¹ Uᵀ M`. Squaring costs
/// precision only for singular values far below the largest (relative error ~ 1e-16·σ₁²/σᵢ²).
pub fn top_right_singular(m: &Mat<f64>, k: usize) -> Result<(Vec<f64>, Mat<f64>)> {
    let (rows, d) = (m.nrows(), m.ncols());
    let keep = k.min(rows).min(d);
    if d <= rows {
        let gram = m.transpose() * m;
        let (values, vectors) = symmetric_eigen_desc(&gram)?;
        let s = values[..keep].iter().map(|v| v.max(0.0).sqrt()).collect();
        Ok((s, Mat::from_fn(keep, d, |i, j| vectors[(j, i)])))
    } else {
        let gram = m * m.transpose();
        let (values, vectors) = symmetric_eigen_desc(&gram)?;
        let s: Vec<f64> = values[..keep].iter().map(|v| v.max(0.0).sqrt()).collect();
        let scaled_ut = Mat::from_fn(keep, rows, |i, j| {
            if s[i] > 0.0 {
                vectors[(j, i)] / s[i]
            } else {
                0.0
            }
        });
        Ok((s, scaled_ut * m))
    }
}

/// scikit-learn's `svd_flip(u_based_decision=False)` on the rows of `Vᵀ`: the entry of largest
/// magnitude in each row becomes positive. Returns the sign applied to each row.
pub fn flip_rows_by_max_abs(vt: &mut Mat<f64>) -> Vec<f64> {
    let mut signs = Vec::with_capacity(vt.nrows());
    for i in 0..vt.nrows() {
        let mut best = 0.0f64;
        let mut sign = 1.0;
        for j in 0..vt.ncols() {
            let v = vt[(i, j)];
            if v.abs() > best {
                best = v.abs();
                sign = v.signum();
            }
        }
        if sign < 0.0 {
            for j in 0..vt.ncols() {
                vt[(i, j)] = -vt[(i, j)];
            }
        }
        signs.push(sign);
    }
    signs
}

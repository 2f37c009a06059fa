//! Rotary position embeddings as HF transformers applies them (`rotate_half`, not
//! interleaved), with Llama-3 and linear frequency scaling. Angles are computed in f64 on the
//! host for the positions of each call.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::config::{RopeConfig, RopeScaling};

/// Inverse frequencies `θ^(−2i/d)` for `i < d/2`, after any rescaling.
pub fn inverse_frequencies(head_dim: usize, rope: &RopeConfig) -> Vec<f64> {
    let half = head_dim / 2;
    let base: Vec<f64> = (0..half)
        .map(|i| 1.0 / rope.theta.powf((2 * i) as f64 / head_dim as f64))
        .collect();
    match &rope.scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: original,
        }) => {
            let low_wavelen = original / low_freq_factor;
            let high_wavelen = original / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (original / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// Row-major `[positions, head_dim]` cosine and signed sine tables for the given positions.
///
/// The sine table's first half is negated, so that [`apply_rope`]'s `rotate_half` is a plain
/// swap of the two halves: `rotate_half(x)·sin = swap(x)·sin_signed` with
/// `swap([x1, x2]) = [x2, x1]` and `sin_signed = [−sin, sin]`.
pub fn rope_tables(inv: &[f64], positions: &[usize], head_dim: usize) -> (Vec<f64>, Vec<f64>) {
    let half = inv.len();
    let mut cos = Vec::with_capacity(positions.len() * head_dim);
    let mut sin = Vec::with_capacity(positions.len() * head_dim);
    for &p in positions {
        for k in 0..head_dim {
            let angle = p as f64 * inv[k % half];
            cos.push(angle.cos());
            sin.push(if k < half { -angle.sin() } else { angle.sin() });
        }
    }
    (cos, sin)
}

/// `x·cos + rotate_half(x)·sin` for `x` of shape `[batch, seq, heads, head_dim]` and tables
/// from [`rope_tables`] of the same shape (or broadcastable to it).
pub fn apply_rope<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin_signed: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    let dtype = x.dtype();
    x.clone() * cos.clone().cast(dtype) + swap_halves(x) * sin_signed.clone().cast(dtype)
}

/// `[x1, x2] → [x2, x1]` over the last dimension.
fn swap_halves<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, n, s, h] = x.shape().dims();
    let x1 = x.clone().slice([0..b, 0..n, 0..s, 0..h / 2]);
    let x2 = x.slice([0..b, 0..n, 0..s, h / 2..h]);
    Tensor::cat(vec![x2, x1], 3)
}

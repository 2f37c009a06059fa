//! Dropout on an adapter's input (LoRA's `lora_dropout`).
//!
//! burn-nn's `Dropout` draws its mask through the backend's `random`, which on the CPU
//! backends samples every element through a ChaCha generator and a distribution object: on
//! SmolLM2-135M with LoRA on five linears per layer that was 12% of a training step (about
//! 60M draws a step). On a backend whose tensors live in host memory the mask is drawn here
//! instead, from a small fast generator seeded by one draw of the backend's own generator,
//! so a run stays reproducible under `Backend::seed` exactly as before; other backends keep
//! burn's device-side draw. Either way the mask keeps each element with probability
//! `1 − p` and scales kept elements by `1 / (1 − p)`, as `torch.nn.Dropout` does.

use std::any::TypeId;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, FloatDType, Int, Tensor, TensorData};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

/// Dropout of `x` with drop probability `prob`; the identity outside training (no autodiff)
/// or when `prob` is 0.
pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, prob: f64) -> Tensor<B, D> {
    let device = x.device();
    if prob <= 0.0 || !B::ad_enabled(&device) {
        return x;
    }
    let keep = 1.0 - prob;
    if !on_host::<B>() {
        let mask = x.random_like(Distribution::Bernoulli(keep));
        return x * mask * (1.0 / keep);
    }
    // One draw of the backend's generator (two 31-bit integers: int tensors may be i32, and
    // `Distribution::Default` means 8 bits on some backends) seeds the host generator.
    let bits31 = Distribution::Uniform(0.0, 2147483647.0);
    let seed: Vec<i64> = Tensor::<B, 1, Int>::random([2], bits31, &device)
        .into_data()
        .convert::<i64>()
        .into_vec()
        .expect("an int tensor reads back as i64");
    let mut rng = SmallRng::seed_from_u64(((seed[0] as u64) << 31) | seed[1] as u64);
    // Keep when a uniform 32-bit draw falls under keep·2³² (exact to 2⁻³²).
    let threshold = (keep * 4294967296.0).round() as u64;
    let shape = x.shape();
    let n = shape.num_elements();
    let dtype = x.dtype();
    let data = if dtype == DType::F64 {
        TensorData::new(mask_values(&mut rng, n, threshold, 1.0 / keep), shape)
    } else {
        // Built in f32 and cast on the host backend (bf16/f16 under `--bf16`).
        TensorData::new(
            mask_values(&mut rng, n, threshold, (1.0 / keep) as f32),
            shape,
        )
    };
    let mask = Tensor::<B, D>::from_data(data, &device).cast(FloatDType::from(dtype));
    x * mask
}

/// `n` mask values: `scale` where a 32-bit draw is under `threshold`, else 0.
fn mask_values<T: Copy + Default>(
    rng: &mut SmallRng,
    n: usize,
    threshold: u64,
    scale: T,
) -> Vec<T> {
    let value = |bits: u64| {
        if bits < threshold {
            scale
        } else {
            T::default()
        }
    };
    let mut mask = Vec::with_capacity(n);
    while mask.len() + 2 <= n {
        let r = rng.next_u64();
        mask.push(value(r & 0xffff_ffff));
        mask.push(value(r >> 32));
    }
    if mask.len() < n {
        mask.push(value(rng.next_u64() & 0xffff_ffff));
    }
    mask
}

/// Whether `B`'s tensors live in host memory (the CPU backends), where a mask made on the host
/// costs no transfer.
fn on_host<B: Backend>() -> bool {
    let device = TypeId::of::<B::Device>();
    #[cfg(feature = "flex")]
    if device == TypeId::of::<burn::backend::flex::FlexDevice>() {
        return true;
    }
    #[cfg(feature = "ndarray")]
    if device == TypeId::of::<burn::backend::ndarray::NdArrayDevice>() {
        return true;
    }
    let _ = device;
    false
}

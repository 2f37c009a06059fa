//! RMSNorm as the HF decoders compute it: in f32, scaled by `w` (Llama, Qwen) or `1 + w` (Gemma).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};

/// Root-mean-square normalisation over the last dimension.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// The scale `w`, `[d]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Added to `w` before scaling: 0 for Llama/Qwen, 1 for Gemma.
    #[module(skip)]
    pub offset: f64,
    /// Epsilon inside the square root.
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// A norm of width `d` with weights `init` (Gemma stores `w` around 0, others around 1).
    pub fn new(d: usize, offset: f64, eps: f64, device: &B::Device) -> Self {
        let init = if offset == 0.0 {
            Tensor::ones([d], device)
        } else {
            Tensor::zeros([d], device)
        };
        Self {
            weight: Param::from_tensor(init).set_require_grad(false),
            offset,
            eps,
        }
    }

    /// Normalises `[..., d]`, computing in f32 whatever the input type.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let rms = (x.clone().square().mean_dim(D - 1) + self.eps).sqrt();
        let scale = self.weight.val().cast(FloatDType::F32) + self.offset;
        (x / rms * scale.unsqueeze::<D>()).cast(dtype)
    }
}

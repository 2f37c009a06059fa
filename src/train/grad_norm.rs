//! The gradient of an optimizer step as HF's Trainer forms it: the mean over the step's
//! micro-batches, clipped to a maximum *global* L2 norm (`torch.nn.utils.clip_grad_norm_`).
//!
//! burn's own `GradientClipping::Norm` clips each parameter's gradient by its own norm, which
//! is a different update; the official runs clip the norm of all gradients together.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};

/// Sums the squared entries of every gradient (in f32 or better, on the device).
struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) else {
            return;
        };
        let part = grad
            .cast(burn::tensor::FloatDType::F32)
            .square()
            .sum()
            .reshape([1]);
        self.sum = Some(match self.sum.take() {
            Some(sum) => sum + part,
            None => part,
        });
    }
}

/// Multiplies every gradient by a factor.
struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, grad.mul_scalar(self.factor));
        }
    }
}

/// The global L2 norm of `grads` over the parameters of `model`.
pub fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut visitor = SquaredNorm::<B> { grads, sum: None };
    model.visit(&mut visitor);
    visitor
        .sum
        .map_or(0.0, |s| s.into_scalar().elem::<f64>().sqrt())
}

/// Turns the summed gradients of `micro_batches` micro-batches into their mean and, when
/// `max_norm > 0`, rescales them so their global norm is at most `max_norm` (with PyTorch's
/// `max_norm / (norm + 1e-6)` factor). Returns the global norm of the mean gradient, before
/// clipping.
pub fn mean_and_clip<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    micro_batches: usize,
    max_norm: f64,
) -> f64 {
    let mean = 1.0 / micro_batches.max(1) as f64;
    let norm = global_norm::<B, M>(model, grads) * mean;
    let mut factor = mean;
    if max_norm > 0.0 {
        let clip = max_norm / (norm + 1e-6);
        if clip < 1.0 {
            factor *= clip;
        }
    }
    if factor != 1.0 {
        model.visit(&mut Scale { grads, factor });
    }
    norm
}

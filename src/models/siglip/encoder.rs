//! The blocks both towers share: layer norm, attention, MLP and the pre-LN encoder.

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::activation::{gelu_approximate, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};

use crate::adapter::{AdaptedLinear, AdaptedLinearConfig};

/// model's float type.
#[derive(Module, Debug)]
pub struct SiglipLayerNorm<B: Backend> {
    /// Scale, `[d]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Shift, `[d]`.
    pub bias: Param<Tensor<B, 1>>,
    /// Epsilon added to the variance.
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> SiglipLayerNorm<B> {
    /// A norm of width `d` (ones and zeros until loaded).
    pub fn new(d: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: Initializer::Ones.init([d], device).set_require_grad(false),
            bias: Initializer::Zeros.init([d], device).set_require_grad(false),
            eps,
        }
    }

    /// Normalises `[..., d]` over the last dimension (biased variance, as PyTorch).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let centered = x.clone() - x.mean_dim(D - 1);
        let var = centered.clone().square().mean_dim(D - 1);
        let normed = centered / (var + self.eps).sqrt();
        let w = self.weight.val().cast(FloatDType::F32).unsqueeze::<D>();
        let b = self.bias.val().cast(FloatDType::F32).unsqueeze::<D>();
        (normed * w + b).cast(dtype)
    }
}

/// Scaled dot-product attention over `[b, heads, s, hd]` tensors, scores and softmax in f32
/// (no mask: both SigLIP towers attend bidirectionally to every position).
pub(super) fn attend<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f64,
) -> Tensor<B, 4> {
    let dtype = q.dtype();
    let scores = q
        .cast(FloatDType::F32)
        .matmul(k.cast(FloatDType::F32).swap_dims(2, 3))
        * scale;
    softmax(scores, 3).cast(dtype).matmul(v)
}

/// `SiglipAttention`: multi-head self-attention with biased q/k/v/out projections.
#[derive(Module, Debug)]
pub struct SiglipAttention<B: Backend> {
    /// Query projection.
    pub q_proj: AdaptedLinear<B>,
    /// Key projection.
    pub k_proj: AdaptedLinear<B>,
    /// Value projection.
    pub v_proj: AdaptedLinear<B>,
    /// Output projection.
    pub out_proj: AdaptedLinear<B>,
    /// Heads.
    #[module(skip)]
    pub num_heads: usize,
}

impl<B: Backend> SiglipAttention<B> {
    pub(super) fn new(d: usize, num_heads: usize, device: &B::Device) -> Self {
        let lin = || AdaptedLinearConfig::new(d, d).init_lazy(device);
        Self {
            q_proj: lin(),
            k_proj: lin(),
            v_proj: lin(),
            out_proj: lin(),
            num_heads,
        }
    }

    /// Self-attention on `[b, s, d]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, d] = x.shape().dims();
        let nh = self.num_heads;
        let hd = d / nh;
        let split = |t: Tensor<B, 3>| t.reshape([b, s, nh, hd]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let out = attend(q, k, v, (hd as f64).powf(-0.5))
            .swap_dims(1, 2)
            .reshape([b, s, d]);
        self.out_proj.forward(out)
    }
}

/// `SiglipMLP`: `fc2(gelu_tanh(fc1(x)))`.
#[derive(Module, Debug)]
pub struct SiglipMlp<B: Backend> {
    /// Up projection.
    pub fc1: AdaptedLinear<B>,
    /// Down projection.
    pub fc2: AdaptedLinear<B>,
}

impl<B: Backend> SiglipMlp<B> {
    pub(super) fn new(d: usize, inner: usize, device: &B::Device) -> Self {
        Self {
            fc1: AdaptedLinearConfig::new(d, inner).init_lazy(device),
            fc2: AdaptedLinearConfig::new(inner, d).init_lazy(device),
        }
    }

    /// The MLP on `[..., d]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.fc2.forward(gelu_approximate(self.fc1.forward(x)))
    }
}

/// The distinct inputs of a SigLIP encoder layer that a projector fit reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SiglipSite {
    /// `layer_norm1`'s output, read by q_proj, k_proj and v_proj.
    Attention,
    /// `layer_norm2`'s output, read by fc1.
    Mlp,
}

impl SiglipSite {
    /// The HF module names of the linears that read this input.
    pub fn targets(&self) -> &'static [&'static str] {
        match self {
            SiglipSite::Attention => &["q_proj", "k_proj", "v_proj"],
            SiglipSite::Mlp => &["fc1"],
        }
    }
}

/// Receives `(layer, site, rows [batch·seq, d])` during a tapping forward pass. Every row is a
/// real position (SigLIP has no padding mask).
pub type SiglipTap<'a, B> = dyn FnMut(usize, SiglipSite, Tensor<B, 2>) + 'a;

/// `SiglipEncoderLayer`: pre-LN attention and MLP blocks with residuals.
#[derive(Module, Debug)]
pub struct SiglipEncoderLayer<B: Backend> {
    /// Norm before attention.
    pub layer_norm1: SiglipLayerNorm<B>,
    /// Self-attention.
    pub self_attn: SiglipAttention<B>,
    /// Norm before the MLP.
    pub layer_norm2: SiglipLayerNorm<B>,
    /// The MLP.
    pub mlp: SiglipMlp<B>,
}

/// `SiglipEncoder`: the stack of layers.
#[derive(Module, Debug)]
pub struct SiglipEncoder<B: Backend> {
    /// The layers.
    pub layers: Vec<SiglipEncoderLayer<B>>,
}

impl<B: Backend> SiglipEncoder<B> {
    pub(super) fn new(
        d: usize,
        inner: usize,
        layers: usize,
        heads: usize,
        eps: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            layers: (0..layers)
                .map(|_| SiglipEncoderLayer {
                    layer_norm1: SiglipLayerNorm::new(d, eps, device),
                    self_attn: SiglipAttention::new(d, heads, device),
                    layer_norm2: SiglipLayerNorm::new(d, eps, device),
                    mlp: SiglipMlp::new(d, inner, device),
                })
                .collect(),
        }
    }

    /// Runs every layer on `[b, s, d]`, reporting the normed inputs to `tap`.
    pub fn forward(
        &self,
        mut h: Tensor<B, 3>,
        mut tap: Option<&mut SiglipTap<'_, B>>,
    ) -> Tensor<B, 3> {
        let [b, s, d] = h.shape().dims();
        for (i, layer) in self.layers.iter().enumerate() {
            let x = layer.layer_norm1.forward(h.clone());
            if let Some(tap) = tap.as_deref_mut() {
                tap(i, SiglipSite::Attention, x.clone().reshape([b * s, d]));
            }
            h = h + layer.self_attn.forward(x);
            let x = layer.layer_norm2.forward(h.clone());
            if let Some(tap) = tap.as_deref_mut() {
                tap(i, SiglipSite::Mlp, x.clone().reshape([b * s, d]));
            }
            h = h + layer.mlp.forward(x);
        }
        h
    }
}

/// The weights of a frozen embedding table of `rows × d` (drawn only if read before loading).
pub(super) fn frozen_embedding<B: Backend>(
    rows: usize,
    d: usize,
    device: &B::Device,
) -> Embedding<B> {
    let e = EmbeddingConfig::new(rows, d).init(device);
    Embedding {
        weight: e.weight.set_require_grad(false),
    }
}

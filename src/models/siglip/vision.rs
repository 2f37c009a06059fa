//! The vision tower (HF's `vision_model.`): patch embedding, encoder, post-layernorm and the
//! attention-pooling head.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, Initializer};
use burn::tensor::backend::Backend;
use burn::tensor::module::linear;
use burn::tensor::Tensor;

use super::*;
use crate::adapter::{AdaptedLinear, AdaptedLinearConfig};
use crate::{Error, Result};

/// `SiglipVisionEmbeddings`: non-overlapping patch convolution plus learned positions (no
/// class token, no interpolation: inputs must be `image_size` square).
#[derive(Module, Debug)]
pub struct SiglipVisionEmbeddings<B: Backend> {
    /// `[d, channels, patch, patch]` convolution with stride `patch`, with bias.
    pub patch_embedding: Conv2d<B>,
    /// Position table `[num_patches, d]`, row-major over the patch grid.
    pub position_embedding: Embedding<B>,
}

impl<B: Backend> SiglipVisionEmbeddings<B> {
    /// Patch embeddings plus positions, `[b, num_patches, d]`, for `[b, c, H, W]` pixels.
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        let patches = self.patch_embedding.forward(pixel_values);
        let [b, d, gh, gw] = patches.shape().dims();
        let patches = patches.reshape([b, d, gh * gw]).swap_dims(1, 2);
        patches + self.position_embedding.weight.val().unsqueeze::<3>()
    }
}

/// `torch.nn.MultiheadAttention` as the pooling head uses it: packed q/k/v projection in
/// PyTorch layout (`in_proj_weight` `[3d, d]`, rows q then k then v), then `out_proj`.
#[derive(Module, Debug)]
pub struct SiglipPoolingAttention<B: Backend> {
    /// Packed q/k/v weights `[3d, d]` (`[out, in]`, not transposed on load).
    pub in_proj_weight: Param<Tensor<B, 2>>,
    /// Packed q/k/v biases `[3d]`.
    pub in_proj_bias: Param<Tensor<B, 1>>,
    /// Output projection.
    pub out_proj: AdaptedLinear<B>,
    /// Heads.
    #[module(skip)]
    pub num_heads: usize,
}

impl<B: Backend> SiglipPoolingAttention<B> {
    /// Attention of queries `[b, sq, d]` over keys/values `[b, sk, d]`.
    pub fn forward(&self, query: Tensor<B, 3>, kv: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, sq, d] = query.shape().dims();
        let sk = kv.shape().dims::<3>()[1];
        let nh = self.num_heads;
        let hd = d / nh;
        let w = self.in_proj_weight.val();
        let bias = self.in_proj_bias.val();
        // Row block `i` of the packed weight, as a burn-layout `[d_in, d_out]` matrix.
        let project = |x: Tensor<B, 3>, i: usize| {
            let wi = w.clone().slice([i * d..(i + 1) * d, 0..d]).transpose();
            let bi = bias.clone().slice([i * d..(i + 1) * d]);
            linear(x, wi, Some(bi))
        };
        let split = |t: Tensor<B, 3>, s: usize| t.reshape([b, s, nh, hd]).swap_dims(1, 2);
        let q = split(project(query, 0), sq);
        let k = split(project(kv.clone(), 1), sk);
        let v = split(project(kv, 2), sk);
        let out = attend(q, k, v, (hd as f64).powf(-0.5))
            .swap_dims(1, 2)
            .reshape([b, sq, d]);
        self.out_proj.forward(out)
    }
}

/// `SiglipMultiheadAttentionPoolingHead`: a learned probe attends over the patch states, then
/// a pre-LN MLP block with a residual; the probe's output is the pooled embedding.
#[derive(Module, Debug)]
pub struct SiglipMultiheadAttentionPoolingHead<B: Backend> {
    /// The query, `[1, 1, d]`.
    pub probe: Param<Tensor<B, 3>>,
    /// Attention of the probe over the patches.
    pub attention: SiglipPoolingAttention<B>,
    /// Norm before the MLP.
    pub layernorm: SiglipLayerNorm<B>,
    /// The MLP.
    pub mlp: SiglipMlp<B>,
}

impl<B: Backend> SiglipMultiheadAttentionPoolingHead<B> {
    /// Pools `[b, n, d]` into `[b, d]`.
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        let [b, _, d] = hidden.shape().dims();
        let probe = self.probe.val().repeat_dim(0, b);
        let h = self.attention.forward(probe, hidden);
        let h = h.clone() + self.mlp.forward(self.layernorm.forward(h));
        h.slice([0..b, 0..1, 0..d]).reshape([b, d])
    }
}

/// The vision tower (HF's `vision_model.`).
#[derive(Module, Debug)]
pub struct SiglipVisionTransformer<B: Backend> {
    /// Embeddings.
    pub embeddings: SiglipVisionEmbeddings<B>,
    /// Encoder layers.
    pub encoder: SiglipEncoder<B>,
    /// Norm after the last layer.
    pub post_layernorm: SiglipLayerNorm<B>,
    /// Attention pooling head.
    pub head: SiglipMultiheadAttentionPoolingHead<B>,
    /// The configuration.
    #[module(skip)]
    pub config: SiglipVisionConfig,
}

impl<B: Backend> SiglipVisionTransformer<B> {
    /// A vision tower of the given shape (weights are then loaded by name).
    pub fn init(c: &SiglipVisionConfig, device: &B::Device) -> Self {
        let d = c.hidden_size;
        let p = c.patch_size;
        let mut conv = Conv2dConfig::new([c.num_channels, d], [p, p])
            .with_stride([p, p])
            .init(device);
        conv.weight = conv.weight.set_require_grad(false);
        conv.bias = conv.bias.map(|b| b.set_require_grad(false));
        Self {
            embeddings: SiglipVisionEmbeddings {
                patch_embedding: conv,
                position_embedding: frozen_embedding(c.num_patches(), d, device),
            },
            encoder: SiglipEncoder::new(
                d,
                c.intermediate_size,
                c.num_hidden_layers,
                c.num_attention_heads,
                c.layer_norm_eps,
                device,
            ),
            post_layernorm: SiglipLayerNorm::new(d, c.layer_norm_eps, device),
            head: SiglipMultiheadAttentionPoolingHead {
                probe: Initializer::Zeros
                    .init([1, 1, d], device)
                    .set_require_grad(false),
                attention: SiglipPoolingAttention {
                    in_proj_weight: Initializer::Zeros
                        .init([3 * d, d], device)
                        .set_require_grad(false),
                    in_proj_bias: Initializer::Zeros
                        .init([3 * d], device)
                        .set_require_grad(false),
                    out_proj: AdaptedLinearConfig::new(d, d).init_lazy(device),
                    num_heads: c.num_attention_heads,
                },
                layernorm: SiglipLayerNorm::new(d, c.layer_norm_eps, device),
                mlp: SiglipMlp::new(d, c.intermediate_size, device),
            },
            config: c.clone(),
        }
    }

    /// `(last_hidden_state [b, num_patches, d], pooled [b, d])` for pixels `[b, c, H, W]`
    /// (`H = W = image_size`, values as [`preprocess_image`] makes them). `last_hidden_state`
    /// is after `post_layernorm`; `pooled` is the attention pooling head's output.
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Result<(Tensor<B, 3>, Tensor<B, 2>)> {
        self.run(pixel_values, None)
    }

    /// Like [`forward`](Self::forward), reporting to `tap` the input of q/k/v
    /// ([`SiglipSite::Attention`], `layer_norm1`'s output) and of fc1 ([`SiglipSite::Mlp`],
    /// `layer_norm2`'s output) of every layer, as `[b · num_patches, d]` rows.
    pub fn forward_tap(
        &self,
        pixel_values: Tensor<B, 4>,
        tap: &mut SiglipTap<'_, B>,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>)> {
        self.run(pixel_values, Some(tap))
    }

    fn run(
        &self,
        pixel_values: Tensor<B, 4>,
        tap: Option<&mut SiglipTap<'_, B>>,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>)> {
        let c = &self.config;
        let [b, ch, h, w] = pixel_values.shape().dims();
        let want = [b, c.num_channels, c.image_size, c.image_size];
        if [ch, h, w] != want[1..] {
            return Err(Error::shape("pixel_values", want, [b, ch, h, w]));
        }
        let x = self.embeddings.forward(pixel_values);
        let x = self.post_layernorm.forward(self.encoder.forward(x, tap));
        let pooled = self.head.forward(x.clone());
        Ok((x, pooled))
    }
}

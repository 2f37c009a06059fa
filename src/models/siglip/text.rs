//! The text tower (HF's `text_model.`): token and position embeddings, encoder, final norm,
//! last-token pooling and head.

use burn::module::Module;
use burn::nn::Embedding;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::*;
use crate::adapter::{AdaptedLinear, AdaptedLinearConfig};
use crate::{Error, Result};

/// `SiglipTextEmbeddings`: token plus learned absolute position embeddings.
#[derive(Module, Debug)]
pub struct SiglipTextEmbeddings<B: Backend> {
    /// Token table `[vocab, d]`.
    pub token_embedding: Embedding<B>,
    /// Position table `[max_position_embeddings, d]`.
    pub position_embedding: Embedding<B>,
}

/// The text tower (HF's `text_model.`).
#[derive(Module, Debug)]
pub struct SiglipTextTransformer<B: Backend> {
    /// Embeddings.
    pub embeddings: SiglipTextEmbeddings<B>,
    /// Encoder layers.
    pub encoder: SiglipEncoder<B>,
    /// Norm after the last layer.
    pub final_layer_norm: SiglipLayerNorm<B>,
    /// Projection of the pooled (last-position) state.
    pub head: AdaptedLinear<B>,
    /// The configuration.
    #[module(skip)]
    pub config: SiglipTextConfig,
}

impl<B: Backend> SiglipTextTransformer<B> {
    /// A text tower of the given shape (weights are then loaded by name).
    pub fn init(c: &SiglipTextConfig, device: &B::Device) -> Self {
        let d = c.hidden_size;
        Self {
            embeddings: SiglipTextEmbeddings {
                token_embedding: frozen_embedding(c.vocab_size, d, device),
                position_embedding: frozen_embedding(c.max_position_embeddings, d, device),
            },
            encoder: SiglipEncoder::new(
                d,
                c.intermediate_size,
                c.num_hidden_layers,
                c.num_attention_heads,
                c.layer_norm_eps,
                device,
            ),
            final_layer_norm: SiglipLayerNorm::new(d, c.layer_norm_eps, device),
            head: AdaptedLinearConfig::new(d, c.projection_size).init_lazy(device),
            config: c.clone(),
        }
    }

    /// `(last_hidden_state [b, s, d], pooled [b, projection_size])` for token ids `[b, s]`.
    /// The pooled output is `head` applied to the last position after `final_layer_norm`
    /// (padding included: SigLIP is trained on sequences padded to a fixed length, and its
    /// processors send no attention mask).
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Result<(Tensor<B, 3>, Tensor<B, 2>)> {
        self.run(input_ids, None)
    }

    /// Like [`forward`](Self::forward), reporting each layer's normed inputs to `tap`.
    pub fn forward_tap(
        &self,
        input_ids: Tensor<B, 2, Int>,
        tap: &mut SiglipTap<'_, B>,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>)> {
        self.run(input_ids, Some(tap))
    }

    fn run(
        &self,
        input_ids: Tensor<B, 2, Int>,
        tap: Option<&mut SiglipTap<'_, B>>,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>)> {
        let [b, s] = input_ids.shape().dims();
        let max = self.config.max_position_embeddings;
        if s == 0 || s > max {
            return Err(Error::Config(format!(
                "text sequence length {s} must be between 1 and max_position_embeddings = {max}"
            )));
        }
        let d = self.config.hidden_size;
        let positions = self
            .embeddings
            .position_embedding
            .weight
            .val()
            .slice([0..s, 0..d]);
        let h = self.embeddings.token_embedding.forward(input_ids) + positions.unsqueeze::<3>();
        let h = self.final_layer_norm.forward(self.encoder.forward(h, tap));
        let last = h.clone().slice([0..b, s - 1..s, 0..d]).reshape([b, d]);
        Ok((h, self.head.forward(last)))
    }
}

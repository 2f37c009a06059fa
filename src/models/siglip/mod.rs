//! SigLIP (HF `model_type: "siglip"`, `SiglipModel`): a ViT image tower with an attention
//! pooling head and a bidirectional text tower, trained with a sigmoid image–text loss. The
//! fixed-resolution SigLIP-2 checkpoints (`siglip2-base-patch16-224`, ...) use the same
//! architecture and load here too; the NaFlex variants (`model_type: "siglip2"`) do not.
//!
//! Module and parameter names mirror the HF checkpoints (`vision_model.encoder.layers.N.
//! self_attn.q_proj`, ...), so weights load by name, and every linear layer of both towers
//! (including the text head and the pooling head's `out_proj` and MLP) is an
//! [`AdaptedLinear`]. The pooling head's packed q/k/v projection is kept as HF stores it
//! (`in_proj_weight` `[3d, d]`, `in_proj_bias` `[3d]`, PyTorch layout) and applied by hand.
//!
//! Layer norms compute in f32 whatever the model's float type, as PyTorch's `nn.LayerNorm`
//! does for half types; attention scores and softmax are computed in f32 too.
//!
//! One file per part: [`config`], the shared [`encoder`] blocks, the [`text`] and [`vision`]
//! towers, the dual encoder and its loading here, and image [`preprocess`]ing.

pub mod adapters;
pub mod config;
pub mod encoder;
pub mod preprocess;
pub mod text;
pub mod vision;

pub use adapters::*;
pub use config::*;
pub use encoder::*;
pub use preprocess::*;
pub use text::*;
pub use vision::*;

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use burn_store::KeyRemapper;

use crate::adapter::{AdaptedLinear, AdapterConfig, ProjectorInit};
use crate::models::loading::{load_weights, weight_files};
use crate::Result;

/// What [`SiglipModel::forward`] returns.
#[derive(Clone, Debug)]
pub struct SiglipOutput<B: Backend> {
    /// L2-normalised image embeddings `[n_img, d]`.
    pub image_embeds: Tensor<B, 2>,
    /// L2-normalised text embeddings `[n_txt, d]`.
    pub text_embeds: Tensor<B, 2>,
    /// `exp(logit_scale) · cos + logit_bias`, `[n_img, n_txt]`; `sigmoid` of it is the
    /// probability that the pair matches.
    pub logits_per_image: Tensor<B, 2>,
    /// The transpose, `[n_txt, n_img]`.
    pub logits_per_text: Tensor<B, 2>,
}

/// `SiglipModel`: both towers plus the learned logit scale and bias.
#[derive(Module, Debug)]
pub struct SiglipModel<B: Backend> {
    /// The text tower.
    pub text_model: SiglipTextTransformer<B>,
    /// The vision tower.
    pub vision_model: SiglipVisionTransformer<B>,
    /// `log` of the logit temperature, `[1]`.
    pub logit_scale: Param<Tensor<B, 1>>,
    /// Logit bias, `[1]`.
    pub logit_bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> SiglipModel<B> {
    /// A randomly initialised model of the given shape (weights are then loaded by name).
    pub fn init(config: &SiglipConfig, device: &B::Device) -> Self {
        Self {
            text_model: SiglipTextTransformer::init(&config.text_config, device),
            vision_model: SiglipVisionTransformer::init(&config.vision_config, device),
            logit_scale: Initializer::Zeros.init([1], device).set_require_grad(false),
            logit_bias: Initializer::Zeros.init([1], device).set_require_grad(false),
        }
    }

    /// The configuration of both towers.
    pub fn config(&self) -> SiglipConfig {
        SiglipConfig {
            text_config: self.text_model.config.clone(),
            vision_config: self.vision_model.config.clone(),
        }
    }

    /// Pooled image embeddings `[b, d]` before normalisation (HF's `get_image_features`
    /// pooler output).
    pub fn image_features(&self, pixel_values: Tensor<B, 4>) -> Result<Tensor<B, 2>> {
        Ok(self.vision_model.forward(pixel_values)?.1)
    }

    /// Pooled text embeddings `[b, projection_size]` before normalisation (HF's
    /// `get_text_features` pooler output).
    pub fn text_features(&self, input_ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 2>> {
        Ok(self.text_model.forward(input_ids)?.1)
    }

    /// Normalised embeddings of both towers and the image–text logits.
    pub fn forward(
        &self,
        pixel_values: Tensor<B, 4>,
        input_ids: Tensor<B, 2, Int>,
    ) -> Result<SiglipOutput<B>> {
        let image_embeds = l2_normalize(self.image_features(pixel_values)?);
        let text_embeds = l2_normalize(self.text_features(input_ids)?);
        Ok(self.logits(image_embeds, text_embeds))
    }

    /// Logits between already normalised image `[n_img, d]` and text `[n_txt, d]` embeddings.
    pub fn logits(&self, image_embeds: Tensor<B, 2>, text_embeds: Tensor<B, 2>) -> SiglipOutput<B> {
        let scale = self.logit_scale.val().exp().unsqueeze::<2>();
        let bias = self.logit_bias.val().unsqueeze::<2>();
        let logits_per_text =
            text_embeds.clone().matmul(image_embeds.clone().transpose()) * scale + bias;
        SiglipOutput {
            logits_per_image: logits_per_text.clone().transpose(),
            logits_per_text,
            image_embeds,
            text_embeds,
        }
    }

    /// Every adapted linear with its HF-style path (`vision_model.encoder.layers.3.self_attn.
    /// q_proj`, `vision_model.head.attention.out_proj`, `text_model.head`, ...).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut AdaptedLinear<B>)> {
        let mut out = Vec::new();
        let vision = &mut self.vision_model;
        encoder_linears("vision_model", &mut vision.encoder, &mut out);
        let head = &mut vision.head;
        out.push((
            "vision_model.head.attention.out_proj".to_string(),
            &mut head.attention.out_proj,
        ));
        out.push(("vision_model.head.mlp.fc1".to_string(), &mut head.mlp.fc1));
        out.push(("vision_model.head.mlp.fc2".to_string(), &mut head.mlp.fc2));
        let text = &mut self.text_model;
        encoder_linears("text_model", &mut text.encoder, &mut out);
        out.push(("text_model.head".to_string(), &mut text.head));
        out
    }

    /// Attaches an adapter to every linear whose [`linears_mut`](Self::linears_mut) path
    /// `select` accepts; `init` gives each projector from its path. Returns the paths adapted.
    pub fn attach_adapters(
        &mut self,
        select: impl Fn(&str) -> bool,
        config: &AdapterConfig,
        mut init: impl FnMut(&str) -> ProjectorInit<B>,
    ) -> Result<Vec<String>> {
        let mut adapted = Vec::new();
        for (path, linear) in self.linears_mut() {
            if select(&path) {
                let projector = init(&path);
                *linear = linear
                    .clone()
                    .attach(config, projector)
                    .map_err(|e| e.in_context(&path))?;
                adapted.push(path);
            }
        }
        Ok(adapted)
    }
}

/// Appends the adapted linears of an encoder's layers, with paths under `prefix`.
fn encoder_linears<'a, B: Backend>(
    prefix: &str,
    encoder: &'a mut SiglipEncoder<B>,
    out: &mut Vec<(String, &'a mut AdaptedLinear<B>)>,
) {
    for (i, layer) in encoder.layers.iter_mut().enumerate() {
        let p = format!("{prefix}.encoder.layers.{i}");
        let a = &mut layer.self_attn;
        out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
        out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
        out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
        out.push((format!("{p}.self_attn.out_proj"), &mut a.out_proj));
        out.push((format!("{p}.mlp.fc1"), &mut layer.mlp.fc1));
        out.push((format!("{p}.mlp.fc2"), &mut layer.mlp.fc2));
    }
}

/// Rows divided by their L2 norm (no epsilon, as HF).
fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().square().sum_dim(1).sqrt();
    x / norm
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// HF key → burn module path for SigLIP: the weights and biases of every linear layer (encoder
/// q/k/v/out projections and MLPs, the pooling head's `out_proj` and MLP, the text `head`) sit
/// under `base` of an [`AdaptedLinear`]. Everything else (norms, embeddings, the patch
/// convolution, `head.probe`, `head.attention.in_proj_*`, `logit_*`) keeps its HF name.
pub fn siglip_remapper() -> KeyRemapper {
    KeyRemapper::from_patterns(vec![
        (
            r"^(.+\.(?:q_proj|k_proj|v_proj|out_proj|fc1|fc2))\.(weight|bias)$",
            "$1.base.$2",
        ),
        (r"^(text_model\.head)\.(weight|bias)$", "$1.base.$2"),
    ])
    .expect("static patterns compile")
}

/// Loads a SigLIP model (`config.json` plus `model.safetensors` or a sharded index) from an HF
/// model directory into the device's default float type.
pub fn load_siglip<B: Backend>(dir: &Path, device: &B::Device) -> Result<SiglipModel<B>> {
    let config = SiglipConfig::from_file(&dir.join("config.json"))?;
    let files = weight_files(dir)?;
    let mut model = SiglipModel::<B>::init(&config, device);
    let dtype = Tensor::<B, 1>::empty([0], device).dtype();
    load_weights(&mut model, &files, siglip_remapper(), dtype)?;
    Ok(model)
}

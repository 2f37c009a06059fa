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

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::activation::{gelu_approximate, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::linear;
use burn::tensor::{FloatDType, Int, Tensor};
use burn_store::KeyRemapper;
use serde_json::Value;

use super::json_fields::Fields;
use super::loading::{load_weights, weight_files};
use crate::adapter::{AdaptedLinear, AdaptedLinearConfig, AdapterConfig, ProjectorInit};
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// The text tower's shapes (HF `text_config`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SiglipTextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Longest token sequence (rows of the position table).
    pub max_position_embeddings: usize,
    /// Output width of the text `head`.
    pub projection_size: usize,
}

/// The vision tower's shapes (HF `vision_config`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SiglipVisionConfig {
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Side of the (square) input image in pixels.
    pub image_size: usize,
    /// Side of a (square) patch in pixels.
    pub patch_size: usize,
    /// Input channels.
    pub num_channels: usize,
}

impl SiglipVisionConfig {
    /// Patches per image side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patches per image (the vision sequence length; there is no class token).
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
}

/// A SigLIP checkpoint's configuration: both towers.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SiglipConfig {
    /// The text tower.
    pub text_config: SiglipTextConfig,
    /// The vision tower.
    pub vision_config: SiglipVisionConfig,
}

/// SigLIP-specific checks on a tower's config object.
trait TowerChecks {
    fn check_act(&self) -> Result<()>;
    fn heads(&self, hidden: usize) -> Result<usize>;
}

impl TowerChecks for Fields<'_> {
    /// `hidden_act` must be the tanh-approximated GELU every SigLIP checkpoint uses.
    fn check_act(&self) -> Result<()> {
        match self.get("hidden_act") {
            None => Ok(()),
            Some(v) if v.as_str() == Some("gelu_pytorch_tanh") => Ok(()),
            Some(v) => Err(self.err(
                "hidden_act",
                format!("{v} is not supported (expected \"gelu_pytorch_tanh\")"),
            )),
        }
    }
    /// Hidden size and head count that divide evenly.
    fn heads(&self, hidden: usize) -> Result<usize> {
        let heads = self.positive_or("num_attention_heads", 12)?;
        if !hidden.is_multiple_of(heads) {
            return Err(self.err(
                "num_attention_heads",
                format!("{heads} does not divide hidden_size = {hidden}"),
            ));
        }
        Ok(heads)
    }
}

impl SiglipConfig {
    /// Reads `config.json` from a file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::file(path, e))?;
        Self::from_json(&value, path)
    }

    /// Parses a `config.json` value; `file` names it in errors. Keys absent from a tower's
    /// object take HF's `SiglipTextConfig` / `SiglipVisionConfig` defaults (the published
    /// SigLIP configs rely on them), but both objects must be present.
    pub fn from_json(value: &Value, file: &Path) -> Result<Self> {
        let top = Fields {
            value,
            file,
            prefix: "",
        };
        match top.str("model_type") {
            Some("siglip") => {}
            Some(other) => {
                return Err(top.err(
                    "model_type",
                    format!("`{other}` is not supported (expected `siglip`)"),
                ))
            }
            None => return Err(top.err("model_type", "missing (expected `siglip`)")),
        }
        let t = Fields {
            value: top.object("text_config")?,
            file,
            prefix: "text_config.",
        };
        let v = Fields {
            value: top.object("vision_config")?,
            file,
            prefix: "vision_config.",
        };
        t.check_act()?;
        v.check_act()?;

        let text_hidden = t.positive_or("hidden_size", 768)?;
        let text_config = SiglipTextConfig {
            vocab_size: t.positive_or("vocab_size", 32000)?,
            hidden_size: text_hidden,
            intermediate_size: t.positive_or("intermediate_size", 3072)?,
            num_hidden_layers: t.usize_or("num_hidden_layers", 12)?,
            num_attention_heads: t.heads(text_hidden)?,
            layer_norm_eps: t.f64_or("layer_norm_eps", 1e-6)?,
            max_position_embeddings: t.positive_or("max_position_embeddings", 64)?,
            projection_size: t.positive_or("projection_size", text_hidden)?,
        };

        let vision_hidden = v.positive_or("hidden_size", 768)?;
        for key in ["image_size", "patch_size"] {
            if let Some(x) = v.get(key).filter(|x| !x.is_u64()) {
                return Err(v.err(key, format!("expected one integer (square), found {x}")));
            }
        }
        let image_size = v.positive_or("image_size", 224)?;
        let patch_size = v.positive_or("patch_size", 16)?;
        if patch_size > image_size {
            return Err(v.err(
                "patch_size",
                format!("{patch_size} exceeds image_size = {image_size}"),
            ));
        }
        if !v.bool_or("vision_use_head", true)? {
            return Err(v.err(
                "vision_use_head",
                "SiglipModel needs the attention pooling head (got false)",
            ));
        }
        let vision_config = SiglipVisionConfig {
            hidden_size: vision_hidden,
            intermediate_size: v.positive_or("intermediate_size", 3072)?,
            num_hidden_layers: v.usize_or("num_hidden_layers", 12)?,
            num_attention_heads: v.heads(vision_hidden)?,
            layer_norm_eps: v.f64_or("layer_norm_eps", 1e-6)?,
            image_size,
            patch_size,
            num_channels: v.positive_or("num_channels", 3)?,
        };
        if text_config.projection_size != vision_config.hidden_size {
            return Err(t.err(
                "projection_size",
                format!(
                    "{} differs from vision_config.hidden_size = {}: the embeddings could \
                     not be compared",
                    text_config.projection_size, vision_config.hidden_size
                ),
            ));
        }
        Ok(Self {
            text_config,
            vision_config,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Shared blocks
// ---------------------------------------------------------------------------------------------

/// `nn.LayerNorm` with HF's parameter names (`weight`, `bias`), computed in f32.
///
/// Not burn's `LayerNorm`: that one names its parameters `gamma`/`beta` and computes in the
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
fn attend<B: Backend>(
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
    fn new(d: usize, num_heads: usize, device: &B::Device) -> Self {
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
    fn new(d: usize, inner: usize, device: &B::Device) -> Self {
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
    fn new(
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
fn frozen_embedding<B: Backend>(rows: usize, d: usize, device: &B::Device) -> Embedding<B> {
    let e = EmbeddingConfig::new(rows, d).init(device);
    Embedding {
        weight: e.weight.set_require_grad(false),
    }
}

// ---------------------------------------------------------------------------------------------
// Text tower
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Vision tower
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// The dual encoder
// ---------------------------------------------------------------------------------------------

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
                    .map_err(|e| Error::Config(format!("{path}: {e}")))?;
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

// ---------------------------------------------------------------------------------------------
// Image preprocessing
// ---------------------------------------------------------------------------------------------

/// The resampling filter of [`preprocess_image_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ResizeFilter {
    /// PIL's bilinear filter (`resample: 2`, the SigLIP-2 processors).
    #[default]
    Bilinear,
    /// PIL's bicubic filter, `a = −0.5` (`resample: 3`, the original SigLIP processors).
    Bicubic,
}

impl ResizeFilter {
    /// Support radius of the kernel at scale 1.
    fn support(self) -> f64 {
        match self {
            ResizeFilter::Bilinear => 1.0,
            ResizeFilter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            ResizeFilter::Bilinear => (1.0 - x).max(0.0),
            ResizeFilter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Reads an image file and prepares it as `SiglipImageProcessor` does, with bilinear
/// resampling: see [`preprocess_image_with`].
pub fn preprocess_image(path: &Path, image_size: usize) -> Result<Vec<f32>> {
    preprocess_image_with(path, image_size, ResizeFilter::Bilinear)
}

/// Reads an image file (PNG or JPEG) and prepares it as HF's `SiglipImageProcessor` does:
/// convert to RGB (alpha dropped), resize to `image_size × image_size` (no crop, aspect ratio
/// not kept), rescale by 1/255, normalise with mean 0.5 and std 0.5 to `[-1, 1]`. Returns
/// `3 · image_size²` values, channels first (`[3, H, W]`, row-major). See [`preprocess_rgb8`]
/// for the resampling.
pub fn preprocess_image_with(
    path: &Path,
    image_size: usize,
    filter: ResizeFilter,
) -> Result<Vec<f32>> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::file(path, format!("cannot open the image: {e}")))?
        .with_guessed_format()
        .map_err(|e| Error::file(path, format!("cannot read the image: {e}")))?;
    let img = reader
        .decode()
        .map_err(|e| Error::file(path, format!("not a readable PNG or JPEG image: {e}")))?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    preprocess_rgb8(rgb.as_raw(), w as usize, h as usize, image_size, filter)
        .map_err(|e| Error::file(path, e))
}

/// Prepares an interleaved 8-bit RGB image (`[h, w, 3]`, row-major) as
/// [`preprocess_image_with`] does, returning `[3, image_size, image_size]` values in `[-1, 1]`.
///
/// The resize reproduces what HF's default (torchvision) `SiglipImageProcessor` does on an
/// x86 CPU: PyTorch's antialiased `uint8` resize, itself a port of PIL's `Image.resize` (a
/// separable filter whose support widens with the downscaling factor; fixed-point weights; a
/// horizontal pass rounded and clipped to 8 bits, then a vertical pass). PIL proper (the
/// `SiglipImageProcessorPil` backend) keeps 22 fractional bits in its weights where PyTorch
/// keeps about 15, and PyTorch without AVX2 resizes in floating point, so those give the same
/// image up to one grey level (0.008 after normalisation) on some pixels.
pub fn preprocess_rgb8(
    rgb: &[u8],
    width: usize,
    height: usize,
    image_size: usize,
    filter: ResizeFilter,
) -> Result<Vec<f32>> {
    if image_size == 0 {
        return Err(Error::Config("image_size must be positive".into()));
    }
    if width == 0 || height == 0 || rgb.len() != width * height * 3 {
        return Err(Error::shape("RGB image", [height, width, 3], [rgb.len()]));
    }
    let resized = resize_rgb8(rgb, width, height, image_size, image_size, filter);
    let plane = image_size * image_size;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in resized.chunks_exact(3).enumerate() {
        for c in 0..3 {
            // Rescale by 1/255 and normalise with mean = std = 0.5, fused as HF's
            // torchvision backend does it: (x − 127.5) / 127.5 in f32.
            out[c * plane + i] = (px[c] as f32 - 127.5) / 127.5;
        }
    }
    Ok(out)
}

/// One axis of a separable resize: for each output index, the first input index it reads
/// and the fixed-point weights of the inputs, plus the number of fractional bits.
struct AxisCoeffs {
    taps: Vec<(usize, Vec<i64>)>,
    precision: u32,
}

/// The filter taps of one axis as PyTorch's antialiased `uint8` resize computes them (after
/// PIL's `precompute_coeffs`): support widened by the downscaling factor, weights normalised
/// to sum 1, then scaled to integers with as many fractional bits (at most 22) as keep the
/// largest weight within `i16`.
fn resample_coeffs(in_size: usize, out_size: usize, filter: ResizeFilter) -> AxisCoeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let inv = 1.0 / filterscale;
    let float_taps: Vec<(usize, Vec<f64>)> = (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // Truncation toward zero after adding 0.5, as PIL and PyTorch.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax.max(xmin))
                .map(|x| filter.weight((x as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (xmin, w)
        })
        .collect();
    let wt_max = float_taps
        .iter()
        .flat_map(|(_, w)| w.iter().copied())
        .fold(0.0f64, f64::max);
    let mut precision = 0u32;
    while precision < 22 && ((0.5 + wt_max * (1u64 << (precision + 1)) as f64) as i64) < 1 << 15 {
        precision += 1;
    }
    let one = (1u64 << precision) as f64;
    let taps = float_taps
        .into_iter()
        .map(|(xmin, w)| {
            let fixed = w
                .iter()
                .map(|&v| {
                    // Round half away from zero (truncating casts).
                    let v = v * one;
                    if v < 0.0 {
                        (v - 0.5) as i64
                    } else {
                        (v + 0.5) as i64
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect();
    AxisCoeffs { taps, precision }
}

/// One output sample: the weighted sum with rounding, clipped to 8 bits.
fn sample(coeffs: &AxisCoeffs, weights: &[i64], first: usize, pixel: impl Fn(usize) -> u8) -> u8 {
    let half = 1i64 << coeffs.precision >> 1;
    let acc = weights
        .iter()
        .enumerate()
        .fold(half, |acc, (i, &w)| acc + pixel(first + i) as i64 * w);
    (acc >> coeffs.precision).clamp(0, 255) as u8
}

/// Two-pass resize of interleaved RGB: horizontal first (when the width changes), then
/// vertical (when the height changes), each pass rounded and clipped to 8 bits.
fn resize_rgb8(
    rgb: &[u8],
    w: usize,
    h: usize,
    out_w: usize,
    out_h: usize,
    filter: ResizeFilter,
) -> Vec<u8> {
    let mut cur = rgb.to_vec();
    let mut cur_w = w;
    if out_w != w {
        let coeffs = resample_coeffs(w, out_w, filter);
        let mut next = vec![0u8; out_w * h * 3];
        for y in 0..h {
            let row = &cur[y * w * 3..(y + 1) * w * 3];
            for (xx, (xmin, k)) in coeffs.taps.iter().enumerate() {
                for c in 0..3 {
                    next[(y * out_w + xx) * 3 + c] = sample(&coeffs, k, *xmin, |x| row[x * 3 + c]);
                }
            }
        }
        cur = next;
        cur_w = out_w;
    }
    if out_h != h {
        let coeffs = resample_coeffs(h, out_h, filter);
        let mut next = vec![0u8; cur_w * out_h * 3];
        for (yy, (ymin, k)) in coeffs.taps.iter().enumerate() {
            for x in 0..cur_w {
                for c in 0..3 {
                    next[(yy * cur_w + x) * 3 + c] =
                        sample(&coeffs, k, *ymin, |y| cur[(y * cur_w + x) * 3 + c]);
                }
            }
        }
        cur = next;
    }
    cur
}

/// Stacks preprocessed images (each `[3, image_size, image_size]` as from
/// [`preprocess_image`]) into a `[n, 3, image_size, image_size]` batch on `device`.
pub fn pixel_batch<B: Backend>(
    images: &[Vec<f32>],
    image_size: usize,
    device: &B::Device,
) -> Result<Tensor<B, 4>> {
    let per = 3 * image_size * image_size;
    if let Some((i, img)) = images.iter().enumerate().find(|(_, v)| v.len() != per) {
        return Err(Error::shape(
            format!("image {i}"),
            [3, image_size, image_size],
            [img.len()],
        ));
    }
    let data: Vec<f32> = images.concat();
    let dtype = Tensor::<B, 1>::empty([0], device).dtype();
    let data = burn::tensor::TensorData::new(data, [images.len(), 3, image_size, image_size])
        .convert_dtype(dtype);
    Ok(Tensor::from_data(data, device))
}

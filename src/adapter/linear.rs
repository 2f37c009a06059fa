//! [`AdaptedLinear`]: a frozen base linear layer with an optional low-rank adapter.
//!
//! Layout note: burn's [`Linear`] stores its weight as `[d_in, d_out]` and computes `x W + b`.
//! We keep that layout for every matrix, so the adapter stores `Pᵀ` (`[d_in, r]`) and `Bᵀ`
//! (`[r, d_out]`); HF peft's `lora_A.weight` is `P` and `lora_B.weight` is `B`. The math in the
//! docs is written in the paper's orientation, `y = W0 x + s · B P x`.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::module::linear;
use burn::tensor::{Distribution, Tensor};

use super::config::AdapterConfig;
use crate::projector::host::{download_vec, upload_vec};
use crate::{Error, Result};

/// Configuration of an [`AdaptedLinear`] with a freshly initialised base (tests, toy models).
/// Models loaded from checkpoints wrap their loaded [`Linear`] with [`AdaptedLinear::new`].
#[derive(Clone, Debug)]
pub struct AdaptedLinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Whether the base layer has a bias.
    pub bias: bool,
}

impl AdaptedLinearConfig {
    /// A config for a `d_input → d_output` layer with bias.
    pub fn new(d_input: usize, d_output: usize) -> Self {
        Self {
            d_input,
            d_output,
            bias: true,
        }
    }

    /// Sets whether the base has a bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// A randomly initialised, frozen base layer with no adapter.
    ///
    /// The weights are drawn now, not lazily: burn re-draws a lazily initialised parameter in
    /// each clone, so clones of a never-read layer would otherwise differ.
    pub fn init<B: Backend>(&self, device: &B::Device) -> AdaptedLinear<B> {
        let base = LinearConfig::new(self.d_input, self.d_output)
            .with_bias(self.bias)
            .init(device);
        let base = Linear {
            weight: Param::from_tensor(base.weight.val()),
            bias: base.bias.map(|b| Param::from_tensor(b.val())),
        };
        AdaptedLinear::new(base)
    }

    /// A frozen base layer whose weights are drawn only if read before being loaded: for
    /// models built from a config and then filled from a checkpoint.
    pub fn init_lazy<B: Backend>(&self, device: &B::Device) -> AdaptedLinear<B> {
        AdaptedLinear::new(
            LinearConfig::new(self.d_input, self.d_output)
                .with_bias(self.bias)
                .init(device),
        )
    }
}

/// How a new adapter's projector `P` is initialised.
#[derive(Clone, Debug)]
pub enum ProjectorInit<B: Backend> {
    /// LoRA's kaiming-uniform draw with `a = √5`: `U(−1/√d_in, 1/√d_in)`, as HF peft.
    KaimingUniform,
    /// Orthonormal rows spanning a uniformly random `r`-dimensional subspace (a Gaussian draw,
    /// orthonormalised), as the official code's frozen random projector
    /// (`nn.init.orthogonal_`). Needs `r ≤ d_in`.
    Orthogonal,
    /// All zeros: a placeholder until a fit provides the projector (the output is unchanged).
    Zeros,
    /// A fitted projector `P`, shape `[r, d_in]` with orthonormal rows for IPA.
    Fitted(Tensor<B, 2>),
}

/// The trainable part of an adapted layer: projector, up-projection and DoRA magnitude.
#[derive(Module, Debug)]
pub struct LowRankAdapter<B: Backend> {
    /// `Pᵀ`, shape `[d_in, r]`. Frozen unless the config trains the projector.
    pub projector: Param<Tensor<B, 2>>,
    /// `Bᵀ`, shape `[r, d_out]`, zero at initialisation.
    pub up: Param<Tensor<B, 2>>,
    /// DoRA's magnitude `m`, shape `[d_out]`, initialised to the row norms of `W0`.
    pub magnitude: Option<Param<Tensor<B, 1>>>,
    /// Dropout on the adapter input (active only while training on an autodiff backend).
    pub dropout: Dropout,
    /// The adapter's configuration.
    #[module(skip)]
    pub config: AdapterConfig,
}

/// What [`AdaptedLinear::merge`] keeps to make [`AdaptedLinear::unmerge`] exact.
#[derive(Clone, Debug)]
struct MergeRecord {
    /// DoRA: the column norm of `W0 + s·B·P` used at merge time (held on the host).
    dora_norm: Option<Vec<f64>>,
}

/// A frozen linear layer `y = W0 x + b` with an optional low-rank adapter:
///
/// * LoRA / IPA: `y = W0 x + b + s · B P x'` (`x'` = dropout of `x`)
/// * DoRA: `y = m ⊙ (W0 + s·B·P) x / ‖W0 + s·B·P‖ + b`, the norm taken per output over the
///   input dimension and detached from the graph, as in the DoRA paper and HF peft.
///
/// The base weight and bias never receive gradients.
#[derive(Module, Debug)]
pub struct AdaptedLinear<B: Backend> {
    /// The frozen base layer (`W0`, `b`), weight in burn's `[d_in, d_out]` layout.
    pub base: Linear<B>,
    /// The adapter, if one is attached.
    pub adapter: Option<LowRankAdapter<B>>,
    #[module(skip)]
    disabled: bool,
    #[module(skip)]
    merged: Option<MergeRecord>,
}

impl<B: Backend> AdaptedLinear<B> {
    /// Wraps a base layer, freezing its parameters. No adapter is attached.
    pub fn new(base: Linear<B>) -> Self {
        let base = Linear {
            weight: base.weight.set_require_grad(false),
            bias: base.bias.map(|b| b.set_require_grad(false)),
        };
        Self {
            base,
            adapter: None,
            disabled: false,
            merged: None,
        }
    }

    /// The base weight `[d_in, d_out]` when the layer is a plain matmul: no bias, no adapter.
    pub fn plain_weight(&self) -> Option<Tensor<B, 2>> {
        (self.adapter.is_none() && self.base.bias.is_none()).then(|| self.base.weight.val())
    }

    /// Input features.
    pub fn d_input(&self) -> usize {
        self.base.weight.shape().dims::<2>()[0]
    }

    /// Output features.
    pub fn d_output(&self) -> usize {
        self.base.weight.shape().dims::<2>()[1]
    }

    /// Attaches a new adapter (`B = 0`, so the output is unchanged), replacing any existing one.
    pub fn attach(mut self, config: &AdapterConfig, init: ProjectorInit<B>) -> Result<Self> {
        if self.merged.is_some() {
            return Err(Error::State(
                "cannot attach an adapter to a merged layer; unmerge first".into(),
            ));
        }
        let (d_in, d_out) = (self.d_input(), self.d_output());
        config.validate(d_in, d_out)?;
        let device = self.base.weight.device();
        let r = config.rank;
        let projector_t = match init {
            ProjectorInit::KaimingUniform => {
                let bound = 1.0 / (d_in as f64).sqrt();
                Tensor::random([d_in, r], Distribution::Uniform(-bound, bound), &device)
            }
            ProjectorInit::Orthogonal => {
                if r > d_in {
                    return Err(Error::Config(format!(
                        "an orthogonal projector of rank {r} needs r ≤ d_in = {d_in}"
                    )));
                }
                let g = Tensor::random([d_in, r], Distribution::Normal(0.0, 1.0), &device);
                crate::projector::device::orthonormalize_columns(g)?
            }
            ProjectorInit::Zeros => Tensor::zeros([d_in, r], &device),
            ProjectorInit::Fitted(p) => {
                check_projector_shape(&p, r, d_in)?;
                p.detach().transpose()
            }
        };
        let magnitude = config.dora.then(|| {
            let norm = column_norm(self.base.weight.val().detach());
            Param::from_tensor(norm).set_require_grad(true)
        });
        self.adapter = Some(LowRankAdapter {
            projector: Param::from_tensor(projector_t).set_require_grad(config.train_projector),
            up: Param::from_tensor(Tensor::zeros([r, d_out], &device)),
            magnitude,
            dropout: DropoutConfig::new(config.dropout).init(),
            config: config.clone(),
        });
        self.disabled = false;
        Ok(self)
    }

    /// Replaces the projector with a fitted `P` (`[r, d_in]`), keeping the rest of the adapter.
    pub fn set_projector(&mut self, projector: Tensor<B, 2>) -> Result<()> {
        if self.merged.is_some() {
            return Err(Error::State(
                "cannot change the projector of a merged layer".into(),
            ));
        }
        let d_in = self.d_input();
        let adapter = self
            .adapter
            .as_mut()
            .ok_or_else(|| Error::State("no adapter attached".into()))?;
        check_projector_shape(&projector, adapter.config.rank, d_in)?;
        let trainable = adapter.config.train_projector;
        adapter.projector =
            Param::from_tensor(projector.detach().transpose()).set_require_grad(trainable);
        Ok(())
    }

    /// The projector `P`, shape `[r, d_in]`.
    pub fn projector(&self) -> Option<Tensor<B, 2>> {
        self.adapter.as_ref().map(|a| a.projector.val().transpose())
    }

    /// Whether an adapter is attached, enabled and not merged (so it acts in `forward`).
    pub fn adapter_active(&self) -> bool {
        self.adapter.is_some() && !self.disabled && self.merged.is_none()
    }

    /// Whether the adapter is merged into the base weight.
    pub fn is_merged(&self) -> bool {
        self.merged.is_some()
    }

    /// Turns the adapter on or off (off: the layer computes the base output only).
    /// A merged adapter cannot be disabled; unmerge it first.
    pub fn set_enabled(&mut self, enabled: bool) -> Result<()> {
        if !enabled && self.merged.is_some() {
            return Err(Error::State(
                "cannot disable a merged adapter; unmerge first".into(),
            ));
        }
        self.disabled = !enabled;
        Ok(())
    }

    /// Forward pass on `[..., d_in]` inputs.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let adapter = match &self.adapter {
            Some(a) if self.adapter_active() => a,
            _ => {
                let bias = self.base.bias.as_ref().map(|b| b.val());
                return linear_2d(x, self.base.weight.val(), bias);
            }
        };
        let w0 = self.base.weight.val();
        let bias = self.base.bias.as_ref().map(|b| b.val());
        let s = adapter.config.scale();
        let dropout_active = adapter.dropout.prob > 0.0 && B::ad_enabled(&x.device());
        let x_drop = super::dropout(x.clone(), adapter.dropout.prob);
        let residual = linear_2d(
            linear_2d(x_drop.clone(), adapter.projector.val(), None),
            adapter.up.val(),
            None,
        )
        .mul_scalar(s);
        match &adapter.magnitude {
            None => linear_2d(x, w0, bias) + residual,
            Some(m) => {
                let adapted = w0.clone() + adapter.delta_lowrank();
                let scale = (m.val() / column_norm(adapted).detach()).unsqueeze::<D>();
                let base_plain = linear_2d(x.clone(), w0.clone(), None);
                // With dropout, the DoRA correction sees the dropped input, as in HF peft.
                let base_drop = if dropout_active {
                    linear_2d(x_drop, w0, None)
                } else {
                    base_plain.clone()
                };
                let mut y = base_plain + base_drop * (scale.clone() - 1.0) + residual * scale;
                if let Some(b) = bias {
                    y = y + b.unsqueeze::<D>();
                }
                y
            }
        }
    }

    /// The change the adapter makes to the base weight, `[d_in, d_out]` (burn layout):
    /// `s·(B·P)ᵀ`, or for DoRA `m/‖W0 + s·B·P‖ ⊙ (W0 + s·B·P) − W0`.
    /// `None` without an adapter. Computed from `W0` (the unmerged weight) in either state.
    pub fn delta_weight(&self) -> Option<Tensor<B, 2>> {
        let adapter = self.adapter.as_ref()?;
        let w0 = self.original_weight().ok()?;
        let low = adapter.delta_lowrank();
        Some(match &adapter.magnitude {
            None => low,
            Some(m) => {
                let adapted = w0.clone() + low;
                let scale = (m.val() / column_norm(adapted.clone())).unsqueeze::<2>();
                adapted * scale - w0
            }
        })
    }

    /// Folds the adapter into the base weight so `forward` costs one matmul.
    pub fn merge(&mut self) -> Result<()> {
        if self.merged.is_some() {
            return Err(Error::State("adapter is already merged".into()));
        }
        let adapter = self
            .adapter
            .as_ref()
            .ok_or_else(|| Error::State("no adapter attached to merge".into()))?;
        let w0 = self.base.weight.val().detach();
        let adapted = w0 + adapter.delta_lowrank().detach();
        let (merged, dora_norm) = match &adapter.magnitude {
            None => (adapted, None),
            Some(m) => {
                let norm = column_norm(adapted.clone());
                let norm_host = download_vec(norm.clone());
                let scale = (m.val().detach() / norm).unsqueeze::<2>();
                (adapted * scale, Some(norm_host))
            }
        };
        self.base.weight = Param::initialized(self.base.weight.id, merged.set_require_grad(false));
        self.merged = Some(MergeRecord { dora_norm });
        Ok(())
    }

    /// Restores the base weight `W0` from a merged layer.
    pub fn unmerge(&mut self) -> Result<()> {
        let w0 = self.original_weight()?;
        if self.merged.is_none() {
            return Err(Error::State("adapter is not merged".into()));
        }
        self.base.weight = Param::initialized(self.base.weight.id, w0.set_require_grad(false));
        self.merged = None;
        Ok(())
    }

    /// `W0`: the base weight itself, or recovered from the merged weight.
    fn original_weight(&self) -> Result<Tensor<B, 2>> {
        let w = self.base.weight.val().detach();
        let (Some(record), Some(adapter)) = (&self.merged, &self.adapter) else {
            return Ok(w);
        };
        let low = adapter.delta_lowrank().detach();
        Ok(match (&record.dora_norm, &adapter.magnitude) {
            (None, _) => w - low,
            (Some(norm), Some(m)) => {
                let norm = upload_vec::<B, 1>(norm.clone(), [norm.len()], &w.device());
                let inv_scale = (norm / m.val().detach()).unsqueeze::<2>();
                w * inv_scale - low
            }
            (Some(_), None) => {
                return Err(Error::State(
                    "merged with DoRA but the magnitude vector is gone".into(),
                ))
            }
        })
    }

    /// Marks which parameters train: the base never, `up` and DoRA's magnitude always, the
    /// projector as the config says.
    ///
    /// burn keeps the flag on autodiff tensors only, so a layer built on a plain backend and
    /// moved to an autodiff one (`Module::train`, `AutodiffModule::from_inner`) comes back
    /// with every parameter frozen; call this after the move.
    pub fn mark_trainable(&mut self) {
        self.base.weight = self.base.weight.clone().set_require_grad(false);
        self.base.bias = self.base.bias.take().map(|b| b.set_require_grad(false));
        if let Some(a) = self.adapter.as_mut() {
            a.projector = a
                .projector
                .clone()
                .set_require_grad(a.config.train_projector);
            a.up = a.up.clone().set_require_grad(true);
            a.magnitude = a.magnitude.take().map(|m| m.set_require_grad(true));
        }
    }

    /// Trainable parameters of the adapter (0 without one); the base never trains.
    pub fn trainable_params(&self) -> usize {
        self.adapter
            .as_ref()
            .map(|a| a.config.trainable_params(self.d_input(), self.d_output()))
            .unwrap_or(0)
    }
}

impl<B: Backend> LowRankAdapter<B> {
    /// `s · (B P)ᵀ` in burn layout, `[d_in, d_out]`.
    fn delta_lowrank(&self) -> Tensor<B, 2> {
        self.projector
            .val()
            .matmul(self.up.val())
            .mul_scalar(self.config.scale())
    }
}

/// Norm of each output's weights over the input dimension: `[d_in, d_out] → [d_out]`.
fn column_norm<B: Backend>(w: Tensor<B, 2>) -> Tensor<B, 1> {
    w.square().sum_dim(0).sqrt().squeeze_dim::<1>(0)
}

fn check_projector_shape<B: Backend>(p: &Tensor<B, 2>, rank: usize, d_in: usize) -> Result<()> {
    let dims = p.shape().dims::<2>();
    if dims != [rank, d_in] {
        return Err(Error::shape("projector P", [rank, d_in], dims));
    }
    Ok(())
}

/// `x·w (+ b)` with `x` folded to `[rows, d_in]` first: one GEMM against the weight as stored.
/// Burn's batched `linear` broadcasts the weight over the leading axes, which runs one small
/// GEMM per batch row, and its weight gradient is a batch of GEMMs summed afterwards. A plain
/// 2-D matmul also keeps the input gradient `grad·wᵀ` on a transposed view of `w`, where
/// `linear`'s backward reshapes the transposed weight and so copies every frozen weight
/// matrix on every backward pass.
fn linear_2d<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    if D == 1 {
        return linear(x, w, bias);
    }
    let dims = x.shape().dims::<D>();
    let rows: usize = dims[..D - 1].iter().product();
    let mut y = x.reshape([rows, dims[D - 1]]).matmul(w);
    if let Some(b) = bias {
        y = y + b.unsqueeze::<2>();
    }
    let mut out = dims;
    out[D - 1] = y.shape().dims::<2>()[1];
    y.reshape(out)
}

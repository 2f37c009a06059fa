//! Causal-LM instruction tuning: batches of tokenized examples and the next-token loss.

use burn::data::dataloader::batcher::Batcher;
use burn::module::{AutodiffModule, Module};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{FloatDType, Int, Tensor, TensorData};
use burn::train::metric::ItemLazy;
use burn::train::{InferenceStep, TrainOutput, TrainStep};

use super::frozen_head_loss::frozen_head_loss;
use super::StepOutput;
use crate::data::instruction::{TokenizedExample, IGNORE_INDEX};
use crate::models::llama::{Decoder, ForwardOptions};
use crate::Result;

/// A right-padded batch of tokenized examples.
#[derive(Clone, Debug)]
pub struct LmBatch<B: Backend> {
    /// Token ids `[batch, seq]`, padding filled with the pad id.
    pub input_ids: Tensor<B, 2, Int>,
    /// Labels `[batch, seq]` aligned with the ids (the loss shifts them); [`IGNORE_INDEX`] on
    /// padding and on masked prompts.
    pub labels: Tensor<B, 2, Int>,
    /// Padding mask and positions.
    pub options: ForwardOptions,
    /// Number of examples.
    pub items: usize,
}

/// Pads tokenized examples on the right to the longest one (as HF's
/// `DataCollatorForSeq2Seq` with `padding=True`).
#[derive(Clone, Debug)]
pub struct LmBatcher {
    /// Id written in the padded positions (masked out; any valid id works).
    pub pad_id: u32,
}

impl<B: Backend> Batcher<B, TokenizedExample, LmBatch<B>> for LmBatcher {
    fn batch(&self, items: Vec<TokenizedExample>, device: &B::Device) -> LmBatch<B> {
        lm_batch(&items, self.pad_id, device)
    }
}

/// The batch of `items` (see [`LmBatcher`]).
pub fn lm_batch<B: Backend>(
    items: &[TokenizedExample],
    pad_id: u32,
    device: &B::Device,
) -> LmBatch<B> {
    let batch = items.len();
    let seq = items
        .iter()
        .map(|e| e.input_ids.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut ids = vec![pad_id as i64; batch * seq];
    let mut labels = vec![IGNORE_INDEX; batch * seq];
    let mut mask = vec![false; batch * seq];
    for (row, ex) in items.iter().enumerate() {
        for (j, (&id, &label)) in ex.input_ids.iter().zip(&ex.labels).enumerate() {
            ids[row * seq + j] = id as i64;
            labels[row * seq + j] = label;
            mask[row * seq + j] = true;
        }
    }
    let padded = mask.iter().any(|m| !m);
    LmBatch {
        input_ids: Tensor::from_data(TensorData::new(ids, [batch, seq]), device),
        labels: Tensor::from_data(TensorData::new(labels, [batch, seq]), device),
        options: ForwardOptions {
            // Right padding leaves positions 0..len of real tokens unchanged.
            attention_mask: padded.then_some(mask),
            position_ids: None,
        },
        items: batch,
    }
}

/// Mean next-token cross-entropy over the labelled positions, and how many there were.
///
/// Position `t`'s logits predict label `t + 1`, as HF's `ForCausalLMLoss` shifts them. The
/// log-softmax and the sum run in f32 whatever the logits' dtype (HF upcasts too).
pub fn causal_lm_loss<B: Backend>(
    logits: Tensor<B, 3>,
    labels: Tensor<B, 2, Int>,
) -> (Tensor<B, 1>, usize) {
    let [batch, seq, _] = logits.dims();
    if seq < 2 {
        // No next token to predict. The zero stays connected to the logits so a backward
        // pass through it is valid (and gives zero gradients).
        let zero = logits.cast(FloatDType::F32).sum().mul_scalar(0.0);
        return (zero, 0);
    }
    // The labels move left by one instead of the logits: slicing `[b, s−1, vocab]` out of the
    // logits would copy the largest activation of the step (and its gradient) for nothing.
    let device = labels.device();
    let targets = Tensor::cat(
        vec![
            labels.slice([0..batch, 1..seq]),
            Tensor::<B, 2, Int>::full([batch, 1], IGNORE_INDEX, &device),
        ],
        1,
    );
    let keep = targets.clone().not_equal_elem(IGNORE_INDEX);
    let count = keep.clone().int().sum().into_scalar().elem::<i64>() as usize;
    let safe_targets = targets.mask_fill(keep.clone().bool_not(), 0);
    let logp = log_softmax(logits.cast(FloatDType::F32), 2)
        .gather(2, safe_targets.unsqueeze_dim::<3>(2))
        .squeeze_dim::<2>(2);
    let nll = logp.mask_fill(keep.bool_not(), 0.0).sum().neg();
    (nll / (count.max(1) as f64), count)
}

use burn::tensor::ElementConversion;

/// The decoder's mean next-token loss on a batch, and the labelled-token count: through
/// [`frozen_head_loss`] when the output head is a frozen matrix (adapters, partial
/// fine-tuning), else through the full logits ([`causal_lm_loss`]).
pub fn decoder_loss<B: Backend>(
    decoder: &Decoder<B>,
    input_ids: Tensor<B, 2, Int>,
    options: &ForwardOptions,
    labels: Tensor<B, 2, Int>,
) -> Result<(Tensor<B, 1>, usize)> {
    Ok(match decoder.frozen_head() {
        Some(weight) => {
            frozen_head_loss(decoder.hidden_states(input_ids, options)?, weight, labels)
        }
        None => causal_lm_loss(decoder.forward(input_ids, options)?, labels),
    })
}

/// A decoder trained as a causal language model: the unit burn-train's `TrainStep` and
/// `InferenceStep` run on.
#[derive(Module, Debug)]
pub struct CausalLm<B: Backend> {
    /// The decoder, with its adapters.
    pub decoder: Decoder<B>,
}

/// What a causal-LM step reports.
#[derive(Clone, Debug)]
pub struct LmOutput {
    /// Mean loss over the labelled tokens of the batch.
    pub loss: f64,
    /// Labelled tokens in the batch.
    pub tokens: usize,
    /// Examples in the batch.
    pub items: usize,
}

impl StepOutput for LmOutput {
    fn loss(&self) -> f64 {
        self.loss
    }
    fn items(&self) -> usize {
        self.items
    }
    fn loss_weight(&self) -> usize {
        self.tokens
    }
}

impl ItemLazy for LmOutput {
    type ItemSync = LmOutput;
    fn sync(self) -> Self::ItemSync {
        self
    }
}

impl<B: Backend> CausalLm<B> {
    /// The loss tensor (differentiable) and the step's figures.
    pub fn forward_loss(&self, batch: LmBatch<B>) -> Result<(Tensor<B, 1>, LmOutput)> {
        let (loss, tokens) =
            decoder_loss(&self.decoder, batch.input_ids, &batch.options, batch.labels)?;
        let value = loss.clone().into_scalar().elem::<f64>();
        Ok((
            loss,
            LmOutput {
                loss: value,
                tokens,
                items: batch.items,
            },
        ))
    }
}

impl<B: AutodiffBackend> TrainStep for CausalLm<B> {
    type Input = LmBatch<B>;
    type Output = LmOutput;

    fn step(&self, batch: LmBatch<B>) -> TrainOutput<LmOutput> {
        // The batch was built from validated examples; a shape error here is a bug.
        let (loss, output) = self
            .forward_loss(batch)
            .expect("a batch from LmBatcher fits the decoder");
        TrainOutput::new(self, loss.backward(), output)
    }
}

impl<B: Backend> InferenceStep for CausalLm<B> {
    type Input = LmBatch<B>;
    type Output = LmOutput;

    fn step(&self, batch: LmBatch<B>) -> LmOutput {
        self.forward_loss(batch)
            .expect("a batch from LmBatcher fits the decoder")
            .1
    }
}

/// Mean loss of `model` over `examples` in batches of `batch_size` (no autodiff), weighted by
/// labelled tokens.
pub fn validation_loss<B: Backend>(
    model: &Decoder<B>,
    examples: &[TokenizedExample],
    batch_size: usize,
    pad_id: u32,
) -> Result<f64> {
    let device = model.model.embed_tokens.weight.device();
    let (mut sum, mut tokens) = (0.0, 0usize);
    for chunk in examples.chunks(batch_size.max(1)) {
        let batch = lm_batch::<B>(chunk, pad_id, &device);
        let (loss, count) = decoder_loss(model, batch.input_ids, &batch.options, batch.labels)?;
        sum += loss.into_scalar().elem::<f64>() * count as f64;
        tokens += count;
    }
    Ok(sum / tokens.max(1) as f64)
}

/// Which parameters of a decoder train.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trainable {
    /// The adapters' (up-projections, DoRA magnitudes, projectors marked trainable); the base
    /// stays frozen.
    Adapters,
    /// The weights and biases of the linears named (HF names such as `q_proj`), in every
    /// layer: fine-tuning those weights themselves, without an adapter.
    Weights(Vec<String>),
    /// Every weight of the model (full fine-tuning).
    All,
}

/// Marks every float parameter as requiring gradients.
struct RequireGrad;

impl<B: Backend> burn::module::ModuleMapper<B> for RequireGrad {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<B, D>>,
    ) -> burn::module::Param<Tensor<B, D>> {
        param.set_require_grad(true)
    }
}

/// The decoder on the autodiff backend with the parameters `what` names marked trainable
/// (everything else stays without gradients).
pub fn trainable_lm<B: AutodiffBackend>(
    model: Decoder<B::InnerBackend>,
    what: &Trainable,
) -> CausalLm<B> {
    let mut decoder = Decoder::<B>::from_inner(model);
    for (_, linear) in decoder.linears_mut() {
        linear.mark_trainable();
    }
    match what {
        Trainable::Adapters => {}
        Trainable::Weights(targets) => {
            for (path, linear) in decoder.linears_mut() {
                let name = path.rsplit('.').next().unwrap_or_default();
                if path.contains(".layers.") && targets.iter().any(|t| t == name) {
                    linear.base.weight = linear.base.weight.clone().set_require_grad(true);
                    linear.base.bias = linear.base.bias.take().map(|b| b.set_require_grad(true));
                }
            }
        }
        Trainable::All => decoder = decoder.map(&mut RequireGrad),
    }
    CausalLm { decoder }
}

/// Trainable parameters of `model` under `what`.
pub fn count_trainable<B: Backend>(model: &Decoder<B>, what: &Trainable) -> usize {
    let mut model = model.clone();
    match what {
        Trainable::Adapters => model
            .linears_mut()
            .into_iter()
            .map(|(_, l)| l.trainable_params())
            .sum(),
        Trainable::Weights(targets) => model
            .linears_mut()
            .into_iter()
            .filter(|(path, _)| {
                let name = path.rsplit('.').next().unwrap_or_default();
                path.contains(".layers.") && targets.iter().any(|t| t == name)
            })
            .map(|(_, l)| {
                l.d_input() * l.d_output() + l.base.bias.as_ref().map_or(0, |_| l.d_output())
            })
            .sum(),
        Trainable::All => model.num_params(),
    }
}

/// Fine-tunes the adapters of `model` (built on the inner backend, moved to autodiff here)
/// on `examples` with the step loop ([`crate::train::train`]), training the parameters `what`
/// names; `valid` (when given) computes the validation loss. With several `devices`, each step's micro-batches are spread over
/// them (see [`crate::train::train_on_devices`]); the model and optimizer live on the first.
pub fn finetune<B: AutodiffBackend>(
    model: Decoder<B::InnerBackend>,
    examples: &[TokenizedExample],
    config: &crate::train::TrainConfig,
    options: &crate::train::RunOptions,
    pad_id: u32,
    devices: &[B::Device],
    what: &Trainable,
    valid: Option<&mut crate::train::Validation<'_, CausalLm<B>>>,
) -> Result<crate::train::TrainOutcome<CausalLm<B>>> {
    let device = devices
        .first()
        .ok_or_else(|| crate::Error::Config("no device to train on".into()))?;
    let model = trainable_lm::<B>(model, what);
    let batch = |batch: &[&TokenizedExample], device: &B::Device| {
        let owned: Vec<TokenizedExample> = batch.iter().map(|e| (*e).clone()).collect();
        lm_batch::<B>(&owned, pad_id, device)
    };
    if devices.len() > 1 {
        crate::train::train_on_devices(
            model, examples, config, options, devices, &batch, valid, None,
        )
    } else {
        crate::train::train(
            model,
            examples,
            config,
            options,
            device,
            |items: &[&TokenizedExample]| batch(items, device),
            valid,
        )
    }
}

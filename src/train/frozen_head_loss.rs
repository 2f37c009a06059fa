//! The next-token loss through a frozen output head, without an autodiff graph over the
//! vocabulary.
//!
//! With `logits = h · Wᵀ` and `W` frozen, the mean cross-entropy's gradient with respect to
//! the hidden state of a labelled position is `(softmax(logits) − onehot(target)) · W / n`.
//! The plain path ([`causal_lm_loss`](super::causal_lm_loss) on full logits) keeps the
//! `[tokens, vocab]` logits, their log-softmax intermediates and their gradients alive
//! through the backward pass (half a dozen 100 MB tensors a step for SmolLM2 at 512 tokens,
//! gigabytes for Llama-3's 128k vocabulary) and runs every elementwise op on them through
//! the autodiff graph. Here the logits, softmax and loss value are computed detached, over
//! labelled positions only, in row chunks of bounded size; the gradient reaches the hidden
//! states through `sum(h ⊙ G)` with that `G` held constant. Same value, same gradients (up
//! to summation order), as HF's loss on full logits.

use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Int, Tensor, TensorData};

use crate::data::instruction::IGNORE_INDEX;

/// Elements of one chunk's `[rows, vocab]` logits: 16M (64 MiB in f32).
const CHUNK_ELEMENTS: usize = 1 << 24;

/// Mean next-token cross-entropy over the labelled positions, and how many there were,
/// from the final hidden states `[batch, seq, d]` and a frozen head `weight` `[vocab, d]`
/// (logits are `hidden · weightᵀ`).
///
/// Position `t` predicts label `t + 1`, as in [`causal_lm_loss`](super::causal_lm_loss). The
/// softmax and the loss run in f32 whatever the hidden states' dtype; the logits' matmul runs
/// in the model's dtype, as the plain head does. The returned loss is differentiable with
/// respect to `hidden` on an autodiff backend; `weight` gets no gradient (the caller
/// checks that it needs none).
pub fn frozen_head_loss<B: Backend>(
    hidden: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    labels: Tensor<B, 2, Int>,
) -> (Tensor<B, 1>, usize) {
    let rows = (CHUNK_ELEMENTS / weight.dims()[0].max(1)).max(1);
    frozen_head_loss_in_chunks(hidden, weight, labels, rows)
}

/// [`frozen_head_loss`] with the logits computed `chunk` labelled rows at a time.
pub fn frozen_head_loss_in_chunks<B: Backend>(
    hidden: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    labels: Tensor<B, 2, Int>,
    chunk: usize,
) -> (Tensor<B, 1>, usize) {
    let [batch, seq, d] = hidden.dims();
    let chunk = chunk.max(1);
    let device = hidden.device();
    let labels: Vec<i64> = labels
        .into_data()
        .convert::<i64>()
        .into_vec()
        .expect("int labels read back as i64");
    // Row `b·seq + t` of the flattened states predicts `labels[b, t + 1]`.
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for b in 0..batch {
        for t in 0..seq.saturating_sub(1) {
            let y = labels[b * seq + t + 1];
            if y != IGNORE_INDEX {
                rows.push((b * seq + t) as i64);
                targets.push(y);
            }
        }
    }
    let count = rows.len();
    if count == 0 {
        // Nothing to predict; the zero stays connected to `hidden` (zero gradients).
        return (hidden.cast(FloatDType::F32).sum().mul_scalar(0.0), 0);
    }
    // Under autodiff the states are (almost always) an intermediate of tracked parameters,
    // which `is_require_grad` does not report (it means a leaf); the gradient part is built
    // whenever the backend differentiates and costs a matmul the plain backward pays too.
    let tracked = B::ad_enabled(&device);
    let dtype = hidden.dtype();
    let selected = hidden.reshape([batch * seq, d]).select(
        0,
        Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [count]), &device),
    );
    let detached = selected.clone().detach();
    let mut nll = Tensor::<B, 1>::zeros([1], &device).cast(FloatDType::F32);
    let mut gradient = Vec::new();
    for lo in (0..count).step_by(chunk) {
        let hi = (lo + chunk).min(count);
        let h = detached.clone().slice([lo..hi, 0..d]);
        let y = Tensor::<B, 1, Int>::from_data(
            TensorData::new(targets[lo..hi].to_vec(), [hi - lo]),
            &device,
        );
        let logits = h.matmul(weight.clone().transpose()).cast(FloatDType::F32);
        let max = logits.clone().max_dim(1);
        let picked = logits.clone().gather(1, y.clone().unsqueeze_dim(1));
        let exp = (logits - max.clone()).exp();
        let sum = exp.clone().sum_dim(1);
        // −log softmax(target) = max + log Σ exp(logit − max) − logit(target).
        nll = nll + (max + sum.clone().log() - picked).sum();
        if tracked {
            let softmax = (exp / sum).cast(dtype);
            gradient.push(softmax.matmul(weight.clone()) - weight.clone().select(0, y));
        }
    }
    let mean = nll / count as f64;
    if !tracked {
        return (mean, count);
    }
    let gradient = Tensor::cat(gradient, 0) / count as f64;
    // Value 0, gradient `G` on the selected rows (the select's backward scatters it back).
    let surrogate = (selected * gradient).sum().cast(FloatDType::F32);
    let zero = surrogate.clone() - surrogate.detach();
    (zero + mean, count)
}

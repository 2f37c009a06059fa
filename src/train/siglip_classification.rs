//! Image classification with SigLIP as the IPA paper fine-tunes it on VTAB-1k: each class is the
//! text "a photo of a {class}" (padded to the text tower's length, 64 tokens for SigLIP-2), the
//! class scores are SigLIP's image-to-text logits `exp(logit_scale) · cos(image, text) +
//! logit_bias`, and the loss is the cross-entropy over the classes. Adapters sit on the vision
//! tower (q and v projections, attached with [`SiglipModel::attach_adapters`]); the text tower
//! is not trained, so the class embeddings are computed once and kept as a constant.

use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, FloatDType, Int, Tensor, TensorData};
use burn::train::metric::ItemLazy;
use burn::train::{InferenceStep, TrainOutput, TrainStep};

use super::StepOutput;
use crate::data::vtab::VtabBatch;
use crate::models::siglip::SiglipModel;
use crate::models::tokenizer::Tokenizer;
use crate::{Error, Result};

/// The text standing for a class: `a photo of a {class}`, with the class name's underscores
/// turned into spaces and lowercased, as the official VTAB script does
/// (`label.replace('_', ' ').lower()`).
pub fn class_prompt(class_name: &str) -> String {
    format!(
        "a photo of a {}",
        class_name.replace('_', " ").to_lowercase()
    )
}

/// Token ids of every class prompt ([`class_prompt`]), with the tokenizer's special tokens,
/// padded with its pad token to `max_len` (64 for SigLIP-2), as SigLIP's processor does with
/// `padding="max_length"`. A prompt longer than `max_len` tokens is an error rather than
/// truncated.
pub fn class_prompt_ids(
    tokenizer: &Tokenizer,
    class_names: &[String],
    max_len: usize,
) -> Result<Vec<Vec<u32>>> {
    let pad = tokenizer.pad_token_id.ok_or_else(|| {
        Error::Config(
            "the tokenizer has no pad token (tokenizer_config.json `pad_token`); SigLIP pads \
             its texts to a fixed length"
                .into(),
        )
    })?;
    class_names
        .iter()
        .map(|name| {
            let prompt = class_prompt(name);
            let mut ids = tokenizer.encode(&prompt, true)?;
            if ids.len() > max_len {
                return Err(Error::Config(format!(
                    "the prompt `{prompt}` has {} tokens, more than the text length {max_len}",
                    ids.len()
                )));
            }
            ids.resize(max_len, pad);
            Ok(ids)
        })
        .collect()
}

/// Mean cross-entropy of `logits` `[batch, classes]` against class indices `[batch]`, computed
/// in f32.
pub fn classification_loss<B: Backend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let [batch, _] = logits.dims();
    let logp = log_softmax(logits.cast(FloatDType::F32), 1);
    let picked = logp.gather(1, labels.unsqueeze_dim::<2>(1));
    picked.sum().neg() / (batch.max(1) as f64)
}

/// Rows divided by their L2 norm (as SigLIP normalises its embeddings).
fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().square().sum_dim(1).sqrt();
    x / norm
}

/// SigLIP as a classifier over a fixed set of classes: the model (with its adapters) plus the
/// normalised text embeddings of the class prompts.
///
/// The class embeddings are plain tensors of the module, not parameters: they receive no
/// gradient, no optimizer state, and are not part of records or checkpoints. They are computed
/// from the text tower when the classifier is built; call
/// [`refresh_text_embeddings`](Self::refresh_text_embeddings) after changing the text tower.
#[derive(Module, Debug)]
pub struct SiglipClassifier<B: Backend> {
    /// The SigLIP model.
    pub model: SiglipModel<B>,
    /// The class prompts' token ids, `[classes, text_len]`.
    class_ids: Tensor<B, 2, Int>,
    /// L2-normalised class text embeddings, `[classes, d]`, detached.
    text_embeds: Tensor<B, 2>,
}

impl<B: Backend> SiglipClassifier<B> {
    /// A classifier over the classes whose prompt token ids are `class_ids` (one row per class
    /// in label order, all of one length, e.g. from [`class_prompt_ids`]).
    pub fn new(model: SiglipModel<B>, class_ids: &[Vec<u32>]) -> Result<Self> {
        let classes = class_ids.len();
        let len = class_ids.first().map_or(0, Vec::len);
        if classes == 0 || len == 0 {
            return Err(Error::Config(
                "a classifier needs at least one class prompt of at least one token".into(),
            ));
        }
        if let Some((i, row)) = class_ids.iter().enumerate().find(|(_, r)| r.len() != len) {
            return Err(Error::shape(
                format!("token ids of class {i}"),
                [len],
                [row.len()],
            ));
        }
        let vocab = model.text_model.config.vocab_size;
        if let Some(&id) = class_ids.iter().flatten().find(|&&id| id as usize >= vocab) {
            return Err(Error::Config(format!(
                "token id {id} is outside the text vocabulary ({vocab} tokens)"
            )));
        }
        let device = model.logit_scale.val().device();
        let flat: Vec<i64> = class_ids.iter().flatten().map(|&id| id as i64).collect();
        let class_ids = Tensor::from_data(TensorData::new(flat, [classes, len]), &device);
        let text_embeds = Self::embed_classes(&model, class_ids.clone())?;
        Ok(Self {
            model,
            class_ids,
            text_embeds,
        })
    }

    fn embed_classes(model: &SiglipModel<B>, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 2>> {
        Ok(l2_normalize(model.text_features(ids)?).detach())
    }

    /// Recomputes the class embeddings from the current text tower.
    pub fn refresh_text_embeddings(&mut self) -> Result<()> {
        self.text_embeds = Self::embed_classes(&self.model, self.class_ids.clone())?;
        Ok(())
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.text_embeds.dims()[0]
    }

    /// The normalised class embeddings, `[classes, d]`.
    pub fn text_embeds(&self) -> Tensor<B, 2> {
        self.text_embeds.clone()
    }

    /// Class logits `[batch, classes]` of pixels `[batch, 3, H, W]`: SigLIP's image-to-text
    /// logits against the class prompts.
    pub fn logits(&self, pixels: Tensor<B, 4>) -> Result<Tensor<B, 2>> {
        let image_embeds = l2_normalize(self.model.image_features(pixels)?);
        Ok(self
            .model
            .logits(image_embeds, self.text_embeds.clone())
            .logits_per_image)
    }

    /// The loss tensor (differentiable) and the step's figures for a batch.
    pub fn forward_classification(
        &self,
        batch: VtabBatch<B>,
    ) -> Result<(Tensor<B, 1>, ClassificationStep)> {
        let labels = self.host_labels(&batch.labels)?;
        let logits = self.logits(batch.pixels)?;
        let predictions = host_argmax(logits.clone().detach());
        let loss = classification_loss(logits, batch.labels);
        let value = loss.clone().into_scalar().elem::<f64>();
        let correct = predictions
            .iter()
            .zip(&labels)
            .filter(|(p, l)| p == l)
            .count();
        Ok((
            loss,
            ClassificationStep {
                loss: value,
                correct,
                items: labels.len(),
                predictions,
                labels,
            },
        ))
    }

    /// The predicted class of each image of `pixels`.
    pub fn predict(&self, pixels: Tensor<B, 4>) -> Result<Vec<usize>> {
        Ok(host_argmax(self.logits(pixels)?))
    }

    /// Labels on the host, each checked against the class count.
    fn host_labels(&self, labels: &Tensor<B, 1, Int>) -> Result<Vec<usize>> {
        let classes = self.num_classes();
        let values = labels.clone().into_data().convert::<i64>();
        let values = values
            .to_vec::<i64>()
            .map_err(|e| Error::Config(format!("reading labels: {e:?}")))?;
        values
            .into_iter()
            .map(|l| {
                usize::try_from(l)
                    .ok()
                    .filter(|&l| l < classes)
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "label {l} is outside the classifier's {classes} classes"
                        ))
                    })
            })
            .collect()
    }
}

/// Row-wise argmax on the host.
fn host_argmax<B: Backend>(logits: Tensor<B, 2>) -> Vec<usize> {
    logits
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("argmax gives integers")
        .into_iter()
        .map(|i| i as usize)
        .collect()
}

/// What a classification step reports (already on the host).
#[derive(Clone, Debug, PartialEq)]
pub struct ClassificationStep {
    /// Mean cross-entropy over the batch.
    pub loss: f64,
    /// Images classified correctly (argmax of the logits equals the label).
    pub correct: usize,
    /// Images in the batch.
    pub items: usize,
    /// The predicted class of each image.
    pub predictions: Vec<usize>,
    /// The label of each image.
    pub labels: Vec<usize>,
}

impl StepOutput for ClassificationStep {
    fn loss(&self) -> f64 {
        self.loss
    }
    fn items(&self) -> usize {
        self.items
    }
    fn correct(&self) -> Option<(usize, usize)> {
        Some((self.correct, self.items))
    }
}

impl ItemLazy for ClassificationStep {
    type ItemSync = ClassificationStep;
    fn sync(self) -> Self::ItemSync {
        self
    }
}

impl<B: AutodiffBackend> TrainStep for SiglipClassifier<B> {
    type Input = VtabBatch<B>;
    type Output = ClassificationStep;

    fn step(&self, batch: VtabBatch<B>) -> TrainOutput<ClassificationStep> {
        // Batches come from validated splits; a shape or label error here is a bug.
        let (loss, output) = self
            .forward_classification(batch)
            .expect("a VTAB batch fits the classifier");
        TrainOutput::new(self, loss.backward(), output)
    }
}

impl<B: Backend> InferenceStep for SiglipClassifier<B> {
    type Input = VtabBatch<B>;
    type Output = ClassificationStep;

    fn step(&self, batch: VtabBatch<B>) -> ClassificationStep {
        self.forward_classification(batch)
            .expect("a VTAB batch fits the classifier")
            .1
    }
}

/// Top-1 accuracy over `batches` (e.g. [`VtabDataset::batches`] or [`VtabImages::batches`]):
/// `(correct, total)`. The first batch error (an unreadable image) or a label outside the
/// classifier's classes is returned as an error.
///
/// Evaluate a classifier on a plain backend (for a trained one, `classifier.valid()`): on an
/// autodiff backend adapter dropout is active.
///
/// [`VtabDataset::batches`]: crate::data::vtab::VtabDataset::batches
/// [`VtabImages::batches`]: crate::data::vtab::VtabImages::batches
pub fn evaluate_vtab<B: Backend>(
    classifier: &SiglipClassifier<B>,
    batches: impl IntoIterator<Item = Result<VtabBatch<B>>>,
) -> Result<(usize, usize)> {
    let (mut correct, mut total) = (0, 0);
    for batch in batches {
        let batch = batch?;
        let labels = classifier.host_labels(&batch.labels)?;
        let predictions = classifier.predict(batch.pixels)?;
        correct += predictions
            .iter()
            .zip(&labels)
            .filter(|(p, l)| p == l)
            .count();
        total += labels.len();
    }
    Ok((correct, total))
}

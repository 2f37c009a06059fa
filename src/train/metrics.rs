//! What a training or validation step reports to the loop.

/// The figures a step's output hands to the training loop for its metrics (loss, and the
/// number of correct predictions where the task has them).
///
/// Implemented by the output items of every `burn_train::TrainStep` / `InferenceStep` this
/// crate trains.
pub trait StepOutput {
    /// Mean loss of the step's batch (already synchronised to the host).
    fn loss(&self) -> f64;
    /// Number of items (sequences, images) in the batch, used to weight averages.
    fn items(&self) -> usize;
    /// How many units the loss is a mean over (the labelled tokens of a causal LM; the items
    /// otherwise): the weight of the batch in a validation's mean loss.
    fn loss_weight(&self) -> usize {
        self.items()
    }
    /// `(correct, total)` predictions, for tasks that classify.
    fn correct(&self) -> Option<(usize, usize)> {
        None
    }
}

//! Evaluation by generation: every test prompt is answered by the model (greedy or beam
//! search), the first answer word of the task's format is read from the text and compared
//! with the reference, as LLM-Adapters' `commonsense_evaluate.py` does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::Serialize;

use super::commonsense::{Accuracy, EvalTask, Task};
use crate::adapter::write_atomic;
use crate::data::instruction::{load_examples, InstructionExample, PromptStyle};
use crate::models::generate::{generate, GenerationConfig};
use crate::models::llama::Decoder;
use crate::models::tokenizer::Tokenizer;
use crate::train::monitor::progress_bar;
use crate::{Error, Result};

/// One task's test set, with the file it came from (named in errors).
#[derive(Clone, Debug)]
pub struct TestSet {
    /// The task (its answer format).
    pub task: EvalTask,
    /// The file the examples were read from.
    pub path: PathBuf,
    /// The examples, in file order.
    pub examples: Vec<InstructionExample>,
}

impl TestSet {
    /// Reads `<data_dir>/<name>/test.json`, keeping the first `limit` examples when given. The
    /// answers are read by `answer_pattern` when given, else by the official answer words of
    /// the eight commonsense tasks, else by the distinct `answer` values of the task's data.
    pub fn load(
        data_dir: &Path,
        name: &str,
        answer_pattern: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Self> {
        let path = data_dir.join(name).join("test.json");
        let all = load_examples(&path, true)?;
        let task = match (answer_pattern, Task::from_name(name)) {
            (Some(pattern), _) => EvalTask::with_pattern(name, pattern)?,
            (None, Ok(builtin)) => EvalTask::builtin(builtin),
            (None, Err(_)) => EvalTask::from_answers(name, all.iter().map(|e| e.answer.as_str()))
                .map_err(|e| Error::file(&path, e))?,
        };
        let mut examples = all;
        if let Some(limit) = limit {
            examples.truncate(limit);
        }
        Ok(Self {
            task,
            path,
            examples,
        })
    }

    /// A test set of a built-in task from examples in memory (`path` only names it).
    pub fn builtin(task: Task, path: PathBuf, examples: Vec<InstructionExample>) -> Self {
        Self {
            task: EvalTask::builtin(task),
            path,
            examples,
        }
    }
}

/// One evaluated example.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    /// The task's dataset name.
    pub task: String,
    /// Index in the task's test file.
    pub index: usize,
    /// The generated text.
    pub output: String,
    /// The extracted answer word, if any.
    pub predicted: Option<String>,
    /// The reference answer.
    pub answer: String,
    /// Whether they agree.
    pub correct: bool,
}

/// Checks, before anything is generated, that every prompt fits the model's positions with
/// `max_new_tokens` more; an error names the task file and the example.
fn check_prompt_lengths(
    prompts: &[(usize, Vec<u32>)],
    set: &TestSet,
    generation: &GenerationConfig,
    max_positions: usize,
) -> Result<()> {
    for (index, ids) in prompts {
        let need = ids.len() + generation.max_new_tokens;
        if need > max_positions {
            return Err(Error::file(
                &set.path,
                format!(
                    "example {index}: the prompt has {} tokens and {} new ones are generated, \
                     {need} in all, beyond the model's max_position_embeddings = {max_positions} \
                     (shorten the example or lower --max-new-tokens)",
                    ids.len(),
                    generation.max_new_tokens
                ),
            ));
        }
    }
    Ok(())
}

/// Generates an answer for every test example (after the evaluation prompt) and scores the
/// first answer word of each task's format. Every prompt is tokenized and checked against
/// the model's positions before the first generation.
pub fn evaluate<B: Backend>(
    model: &Decoder<B>,
    tokenizer: &Tokenizer,
    style: PromptStyle,
    tests: &[TestSet],
    generation: &GenerationConfig,
    batch_size: usize,
    progress: bool,
) -> Result<(Accuracy, Vec<Prediction>)> {
    if batch_size == 0 {
        return Err(Error::Config(
            "evaluation batch size must be at least 1".into(),
        ));
    }
    let mut prompts = Vec::with_capacity(tests.len());
    for set in tests {
        let ids = set
            .examples
            .iter()
            .enumerate()
            .map(|(i, ex)| {
                tokenizer
                    .encode(&style.prompt(ex), true)
                    .map(|ids| (i, ids))
                    .map_err(|e| Error::file(&set.path, format!("example {i}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        check_prompt_lengths(&ids, set, generation, model.config.max_position_embeddings)?;
        prompts.push(ids);
    }
    let mut accuracy = Accuracy::default();
    let mut predictions = Vec::new();
    let total: usize = tests
        .iter()
        .map(|t| t.examples.len().div_ceil(batch_size))
        .sum();
    let bar = progress_bar(progress, total, "eval");
    for (set, ids) in tests.iter().zip(&prompts) {
        for chunk in ids.chunks(batch_size) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|(_, p)| p.clone()).collect();
            let outputs = generate(model, &batch, generation)
                .map_err(|e| Error::file(&set.path, format!("generating: {e}")))?;
            for ((index, _), out) in chunk.iter().zip(outputs) {
                let ex = &set.examples[*index];
                let text = tokenizer.decode(&out, true)?;
                let predicted = set.task.extract_answer(&text);
                accuracy.record(&set.task.name, predicted, &ex.answer);
                predictions.push(Prediction {
                    task: set.task.name.clone(),
                    index: *index,
                    correct: predicted == Some(ex.answer.trim()),
                    predicted: predicted.map(str::to_string),
                    answer: ex.answer.clone(),
                    output: text,
                });
            }
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
    }
    if let Some(b) = bar {
        b.finish();
    }
    Ok((accuracy, predictions))
}

/// Writes predictions as JSON lines.
pub fn write_predictions(path: &Path, predictions: &[Prediction]) -> Result<()> {
    let mut text = String::new();
    for p in predictions {
        text.push_str(&serde_json::to_string(p).expect("predictions serialise"));
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

/// Accuracy per task and the average, as a JSON-friendly map.
pub fn accuracy_summary(accuracy: &Accuracy) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (task, _, _) in &accuracy.per_task {
        if let Some(a) = accuracy.of(task) {
            out.insert(task.clone(), a);
        }
    }
    if let Some(avg) = accuracy.average() {
        out.insert("average".into(), avg);
    }
    out
}
